"""Case discovery for the layouts users keep on disk: PI-CAI, BraTS, Prostate158, nnU-Net v2 raw
folders and datalists (JSON, MONAI/MSD decathlon JSON, CSV).

A ``Case`` is what every later step needs to know about one study: its id, the patient it
belongs to (folds are grouped by patient), the path of each modality or ``None`` when the
modality is absent (normal data, not an error), the label path or ``None``, any clinical
columns found beside it, and how to read the label (its source, value convention and grid).

Discovery reads file names, folder listings and small text files (JSON, CSV), never the images.
Every mistake it finds (two files for one image, a case id that could escape a folder, a folder
whose names match no known naming) is one ``DataError`` line naming the file; it never picks
between two candidates silently. Hidden entries (names starting with ``.``, such as macOS's
``._*`` and ``.DS_Store``) are not data and are skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from medssl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

LAYOUTS = ("picai", "brats", "prostate158", "nnunet", "datalist")
MODALITIES = {
    "picai": ("t2w", "adc", "hbv"),
    "brats": ("t1", "t1ce", "t2", "flair"),
    "prostate158": ("t2w", "adc", "hbv"),
}
# The grid every modality is resampled onto: PI-CAI's and Prostate158's T2W (their labels are
# delineated there, or resampled there); BraTS volumes are co-registered, so the first present
# of this order serves.
REFERENCE_ORDER = {"picai": ("t2w",), "brats": ("t1", "t1ce", "t2", "flair"), "prostate158": ("t2w",)}
# Largest label value a layout's label files may hold. PI-CAI: ISUP 2..5 (1 in AI-derived masks);
# BraTS: 4 (2021 naming; 3 is ET in 2023); Prostate158 tumour masks: 0/1, 2 where a second lesion
# is numbered. All lesion labels are binarised as label >= 1.
LABEL_MAX = {"picai": 5, "brats": 4, "prostate158": 2}
IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".mhd", ".nrrd")

PICAI_LABEL_SOURCES = ("human_expert", "AI", "human_expert+AI")
PICAI_LABEL_DIRS = {
    "human_expert": "csPCa_lesion_delineations/human_expert/resampled",
    "AI": "csPCa_lesion_delineations/AI/Bosma22a",
}

# BraTS file-name tail -> medssl modality, per release naming: <case><separator><tail>.nii.gz
BRATS_NAMINGS = {
    "brats2021": ("_", {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}),
    "brats2023": ("-", {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair", "seg": "seg"}),
}
BRATS_ET_LABEL = {"brats2021": 4, "brats2023": 3}
_BRATS_LIKE = re.compile(r"[_-](t1|t1ce|t1c|t1n|t1gd|t2|t2w|t2f|flair|seg)$", re.IGNORECASE)

# Prostate158 file (and CSV column) of each medssl modality; its DWI is the high-b image.
PROSTATE158_FILES = {"t2w": "t2", "adc": "adc", "hbv": "dwi"}
PROSTATE158_LABEL = "adc_tumor_reader1"  # lesion mask on the ADC grid; t2_anatomy_* are zones
PROSTATE158_EMPTY = "empty"  # the all-zero tumour mask its CSVs give a case without a lesion
PROSTATE158_SPLITS = ("train", "valid", "test")


@dataclass
class Case:
    """One study.

    Args:
        case_id: ``<patient_id>_<study_id>`` for PI-CAI, the folder name for BraTS and
            Prostate158, the file-name case for nnU-Net, the listed id for a datalist.
        patient_id: what folds are grouped by.
        images: modality -> path, ``None`` where the case lacks the modality.
        label: label path, ``None`` for an unlabelled case.
        clinical: marksheet or datalist columns, as read.
        label_source: PI-CAI only: where the label came from, ``human_expert``, ``AI`` (Bosma22a)
            or ``user`` (a plain folder of ``<case_id>.nii.gz``); ``None`` when unlabelled.
        label_convention: the label values' meaning: ``brats2021`` (enhancing tumour = 4),
            ``brats2023`` (enhancing tumour = 3) or ``None`` (lesion masks, binarised >= 1).
        label_grid: the modality whose grid the label is delineated on (Prostate158: ``adc``),
            to be resampled onto the reference grid with nearest neighbour; ``None``: the
            reference grid itself.
        channels: modality -> channel index, when ``images[m]`` is a 4-D multi-channel file
            (an MSD-style datalist's single ``image``); ``None``: every image is 3-D.

    Example:
        >>> Case("10000_1000000", "10000", {"t2w": "a.mha", "adc": None, "hbv": "b.mha"}).present
        ['t2w', 'hbv']
    """

    case_id: str
    patient_id: str
    images: dict[str, str | None]
    label: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)
    label_source: str | None = None
    label_convention: str | None = None
    label_grid: str | None = None
    channels: dict[str, int] | None = None

    @property
    def present(self) -> list[str]:
        return [m for m, p in self.images.items() if p is not None]

    def to_item(self) -> dict[str, Any]:
        """The dict a MONAI dataset carries, with a fingerprint so edited files invalidate the cache."""
        paths = [p for p in (*self.images.values(), self.label) if p is not None]
        stats = []
        for p in paths:
            try:
                st = Path(p).stat()
                stats.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                stats.append("missing")
        return {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "images": dict(self.images),
            "label": self.label,
            "label_source": self.label_source,
            "label_convention": self.label_convention,
            "label_grid": self.label_grid,
            "channels": dict(self.channels) if self.channels is not None else None,
            "fingerprint": "|".join(stats),
        }


# -- helpers ----------------------------------------------------------------------------------------
def _strip_image_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _is_image_path(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES)


def _existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root does not exist or is not a folder", path=str(root))
    return root


def _visible(folder: Path, dirs: bool | None = None) -> list[Path]:
    """The entries of ``folder``, sorted, without hidden ones; only folders (True) or files (False)."""
    entries = (p for p in folder.iterdir() if not p.name.startswith("."))
    if dirs is not None:
        entries = (p for p in entries if p.is_dir() == dirs)
    return sorted(entries)


def _find_file(folder: Path, stem: str, case_id: str | None = None) -> str | None:
    """``folder/<stem><suffix>`` for the one image suffix present; two present is a DataError."""
    found = [folder / f"{stem}{s}" for s in IMAGE_SUFFIXES if (folder / f"{stem}{s}").is_file()]
    if len(found) > 1:
        raise DataError(f"two files for one image, {found[0].name} and {found[1].name}: keep one",
                        case_id, str(folder))
    return str(found[0]) if found else None


def check_id(value: str, what: str, where: str | Path) -> str:
    """``value`` when it is safe as part of a file name, else one DataError line naming ``where``.

    Case and patient ids become file names (predictions, cache entries), so one holding a path
    separator, ``..``, a leading dot or a control character, or an absolute path, is refused.

    Example:
        >>> check_id("10000_1000000", "case id", "marksheet.csv")
        '10000_1000000'
    """
    problem = None
    if not value:
        problem = "is empty"
    elif any(unicodedata.category(c) == "Cc" for c in value):
        problem = "holds a control character"
    elif "/" in value or "\\" in value:
        problem = "holds a path separator"
    elif ".." in value:
        problem = "holds '..'"
    elif value.startswith("."):
        problem = "starts with a dot"
    elif PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        problem = "is an absolute path"
    if problem:
        raise DataError(f"{what} {value!r} {problem}; ids become file names, so use letters, digits, '_' and '-'",
                        path=str(where))
    return value


def _warn_without_patient(missing: int, total: int, where: str | Path) -> None:
    if missing:
        logger.warning("%s: %d of %d cases have no patient_id; each counts as its own patient, so folds "
                       "cannot keep one patient's studies together", where, missing, total)


def _read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a UTF-8 CSV (a byte-order mark does not rename the first column)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except UnicodeDecodeError:
        raise DataError("is not UTF-8 text (Latin-1 or another legacy encoding?): save it as UTF-8 "
                        "(Excel: 'CSV UTF-8')", path=str(path)) from None
    except csv.Error as e:
        raise DataError(f"cannot parse CSV: {e}", path=str(path)) from None
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise DataError(f"column {repeated[0]!r} appears twice in the header", path=str(path))
    for i, row in enumerate(rows):
        if None in row:
            raise DataError(f"row {i + 2} has more values than the header has columns", path=str(path))
    return rows


# -- PI-CAI -----------------------------------------------------------------------------------------
def picai_images_root(root: str | Path) -> Path:
    """``root`` may hold ``images/`` or be the ``images/`` folder itself."""
    root = _existing_dir(root)
    return root / "images" if (root / "images").is_dir() else root


def picai_labels_root(root: str | Path, labels_root: str | Path | None) -> Path | None:
    if labels_root is not None:
        labels_root = Path(labels_root)
        if not labels_root.is_dir():
            raise DataError("labels root does not exist or is not a folder", path=str(labels_root))
        return labels_root
    images = picai_images_root(root)
    for candidate in (Path(root) / "picai_labels", images.parent / "picai_labels"):
        if candidate.is_dir():
            return candidate
    return None


def _read_marksheet(labels_root: Path | None) -> dict[str, dict[str, Any]]:
    if labels_root is None:
        return {}
    for path in (labels_root / "clinical_information" / "marksheet.csv", labels_root / "marksheet.csv"):
        if path.is_file():
            rows = _read_csv(path)
            if rows and not {"patient_id", "study_id"} <= set(rows[0]):
                raise DataError("marksheet lacks patient_id/study_id columns", path=str(path))
            return {f"{r['patient_id']}_{r['study_id']}": r for r in rows}
    return {}


def _plain_label_kind(folder: Path) -> str:
    """What a folder of ``<case_id>.nii.gz`` holds, by its place in a picai_labels tree."""
    folder = folder.resolve()
    if folder.name == "Bosma22a" or (folder.name == "AI" and folder.parent.name == "csPCa_lesion_delineations"):
        return "AI"
    if folder.parent.name == "human_expert" or folder.name == "human_expert":
        return "human_expert"
    return "user"


def picai_label_dirs(labels: Path | None, label_source: str) -> list[tuple[str, Path]]:
    """The label folders to look in, in order of preference, with the source each records.

    A ``picai_labels`` tree (holding ``csPCa_lesion_delineations/``) gives the expert folder, the
    AI (Bosma22a) folder or both (``human_expert+AI``: expert first). Any other folder is a plain
    folder of ``<case_id>.nii.gz``: its labels are recorded as ``AI`` or ``human_expert`` when it is
    one of those picai_labels folders, else as ``user``.
    """
    if labels is None:
        return []
    if (labels / "csPCa_lesion_delineations").is_dir():
        wanted = ["human_expert", "AI"] if label_source == "human_expert+AI" else [label_source]
        dirs = [(s, labels / PICAI_LABEL_DIRS[s]) for s in wanted]
        present = [(s, d) for s, d in dirs if d.is_dir()]
        if not present:
            raise DataError(f"no {label_source} label folder {PICAI_LABEL_DIRS[wanted[0]]}", path=str(labels))
        for s, d in dirs:
            if (s, d) not in present:
                logger.warning("%s: no %s label folder, so no case gets its label from there", d, s)
        return present
    kind = _plain_label_kind(labels)
    if label_source != "human_expert+AI" and kind != "user" and kind != label_source:
        raise ConfigError(f"data.label_source is {label_source!r} but {labels} holds {kind} labels: "
                          f"set data.label_source to {kind!r} or human_expert+AI, or give the {label_source} folder")
    return [(kind, labels)]


def discover_picai(
    root: str | Path, labels_root: str | Path | None = None, label_source: str = "human_expert+AI"
) -> list[Case]:
    """Cases of a PI-CAI folder: ``images/<pid>/<pid>_<sid>_<modality>.mha`` plus ``picai_labels``.

    Args:
        root: the folder holding ``images/``, or ``images/`` itself.
        labels_root: the ``picai_labels`` folder, or a plain folder of ``<case_id>.nii.gz`` (its
            labels record ``label_source`` ``user`` unless it is picai_labels' expert or AI
            folder); looked for beside ``images/`` when not given.
        label_source: ``human_expert+AI`` (default: the expert mask where one exists, else the
            AI-derived Bosma22a one, the cohort of published numbers), ``human_expert`` or ``AI``.
            Each case records the source its label came from.

    Example:
        >>> cases = discover_picai("/data/picai")  # doctest: +SKIP
    """
    if label_source not in PICAI_LABEL_SOURCES:
        raise ConfigError(f"data.label_source {label_source!r}: choose one of {list(PICAI_LABEL_SOURCES)}")
    images_root = picai_images_root(root)
    labels = picai_labels_root(root, labels_root)
    if labels is not None and labels.name == "csPCa_lesion_delineations":  # one level down: the tree is above
        labels = labels.parent
    label_dirs = picai_label_dirs(labels, label_source)
    marksheet = _read_marksheet(labels)
    pattern = re.compile(r"^(?P<pid>[^_]+)_(?P<sid>[^_]+)_(?P<mod>[a-z0-9]+)$")
    found: dict[str, dict[str, Any]] = {}
    for patient_dir in _visible(images_root, dirs=True):
        for f in _visible(patient_dir, dirs=False):
            stem = _strip_image_suffix(f.name)
            match = pattern.match(stem) if stem else None
            if match is None:
                continue
            check_id(match["pid"], "patient id", f)
            case_id = check_id(f"{match['pid']}_{match['sid']}", "case id", f)
            entry = found.setdefault(case_id, {"patient_id": match["pid"], "files": {}})
            if match["mod"] in entry["files"]:
                raise DataError(f"two files for one image, {entry['files'][match['mod']]} and {f}: keep one", case_id)
            entry["files"][match["mod"]] = str(f)
    if not found:
        raise DataError(
            "no PI-CAI cases found (expected images/<patient_id>/<patient_id>_<study_id>_t2w.mha)",
            path=str(images_root),
        )
    cases = []
    for case_id, entry in sorted(found.items()):
        label, source = None, None
        for s, d in label_dirs:
            if label := _find_file(d, case_id, case_id):
                source = s
                break
        images = {m: entry["files"].get(m) for m in MODALITIES["picai"]}
        cases.append(Case(case_id, entry["patient_id"], images, label, marksheet.get(case_id, {}),
                          label_source=source))
    if label_dirs and not any(c.label for c in cases):
        logger.warning("%s: no <case_id>.nii.gz label for any of the %d cases in %s", labels, len(cases),
                       ", ".join(str(d) for _, d in label_dirs))
    return cases


# -- BraTS ------------------------------------------------------------------------------------------
def _brats_folder(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The naming of one case folder and its files, ``{t1, t1ce, t2, flair, seg: path}``."""
    namings: dict[str, Path] = {}
    files: dict[str, Path] = {}
    for f in _visible(folder, dirs=False):
        stem = _strip_image_suffix(f.name)
        if stem is None:
            continue
        key = None
        for naming, (separator, tails) in BRATS_NAMINGS.items():
            prefix = f"{folder.name}{separator}"
            if stem.startswith(prefix) and stem[len(prefix):] in tails:
                key = tails[stem[len(prefix):]]
                namings.setdefault(naming, f)
                break
        if key is None:
            if _BRATS_LIKE.search(stem):
                raise DataError(f"{f.name} looks like a BraTS image but matches neither <case>_{{t1,t1ce,t2,flair,"
                                f"seg}} (2021) nor <case>-{{t1n,t1c,t2w,t2f,seg}} (2023) for the folder name "
                                f"{folder.name}", path=str(f))
            continue
        if key in files:
            raise DataError(f"two files for one image, {files[key].name} and {f.name}: keep one",
                            folder.name, str(folder))
        files[key] = f
    if len(namings) > 1:
        a, b = namings["brats2021"], namings["brats2023"]
        raise DataError(f"mixes BraTS 2021 names ({a.name}) and 2023 names ({b.name}): keep one release",
                        path=str(folder))
    return next(iter(namings), None), {k: str(p) for k, p in files.items()}


def discover_brats(root: str | Path, brats_labels: str | int | None = None) -> list[Case]:
    """Cases of a BraTS folder, in the 2021 or the 2023/2024 naming.

    2021: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``, enhancing tumour = label 4.
    2023/2024: ``<root>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` read as t1, t1ce, t2, flair,
    enhancing tumour = label 3; a case ``BraTS-GLI-<id>-<timepoint>`` belongs to patient
    ``BraTS-GLI-<id>``. A missing sequence is normal data; a folder (or data set) mixing the two
    namings, or a BraTS-looking file matching neither, is an error.

    Args:
        root: the folder of case folders.
        brats_labels: ``"2021"`` or ``"2023"`` to say which label convention the segmentations
            follow; ``None`` (default) tells it from the file names. Recorded on every case as
            ``label_convention`` (``brats2021`` / ``brats2023``).

    Example:
        >>> cases = discover_brats("/data/BraTS2023-GLI")  # doctest: +SKIP
    """
    if brats_labels is not None and str(brats_labels) not in ("2021", "2023"):
        raise ConfigError(f"data.brats_labels {brats_labels!r}: choose 2021 (enhancing tumour = 4), 2023 (= 3) "
                          f"or null to tell from the file names")
    root = _existing_dir(root)
    found: dict[str, list[tuple[Path, dict[str, str]]]] = {}
    for folder in _visible(root, dirs=True):
        naming, files = _brats_folder(folder)
        if naming is None:
            continue
        check_id(folder.name, "case id", folder)
        if not any(m in files for m in MODALITIES["brats"]):
            raise DataError("has a segmentation but no image (t1, t1ce, t2 or flair)",
                            case_id=folder.name, path=str(folder))
        found.setdefault(naming, []).append((folder, files))
    if not found:
        raise DataError("no BraTS cases found (expected <case>/<case>_t1.nii.gz or <case>/<case>-t1n.nii.gz)",
                        path=str(root))
    if len(found) > 1:
        raise DataError(f"mixes BraTS 2021 names (case {found['brats2021'][0][0].name}) and 2023 names "
                        f"(case {found['brats2023'][0][0].name}): keep one release per data root", path=str(root))
    naming, folders = next(iter(found.items()))
    convention = f"brats{brats_labels}" if brats_labels is not None else naming
    if convention != naming:
        logger.warning("%s: file names follow %s but data.brats_labels reads the labels as %s "
                       "(enhancing tumour = %d)", root, naming, convention, BRATS_ET_LABEL[convention])
    cases = []
    for folder, files in folders:
        patient = folder.name
        if naming == "brats2023" and (m := re.fullmatch(r"(.+)-\d{3}", folder.name)):
            patient = m[1]  # BraTS-GLI-<id>-<timepoint>: one patient's time points share a fold
        images = {m: files.get(m) for m in MODALITIES["brats"]}
        cases.append(Case(folder.name, patient, images, files.get("seg"), label_convention=convention))
    return cases


# -- Prostate158 ------------------------------------------------------------------------------------
def _prostate158_case(folder: Path, case_id: str) -> tuple[dict[str, str | None], str | None]:
    images = {m: _find_file(folder, name, case_id) for m, name in PROSTATE158_FILES.items()}
    tumour = _find_file(folder, PROSTATE158_LABEL, case_id)
    empty = _find_file(folder, PROSTATE158_EMPTY, case_id)
    if tumour and empty:
        raise DataError(f"both {Path(tumour).name} and {Path(empty).name}: is there a lesion or not?",
                        case_id, str(folder))
    return images, tumour or empty


def discover_prostate158(root: str | Path) -> list[Case]:
    """Cases of Prostate158 as published: ``<root>/{train,valid,test}/<ID>/{t2,adc,dwi}.nii.gz``.

    ``train.csv``/``valid.csv``/``test.csv`` (when present) say which cases exist: their ``ID``
    column, and their ``t2``, ``adc``, ``dwi`` and ``adc_tumor_reader1`` columns give the files
    (relative to ``root``); a case folder no CSV lists is left out with a warning. Their other
    columns (e.g. ``t2_anatomy_reader1``) are kept as ``clinical``, with ``split`` (the CSV's name).
    Without CSVs, the case folders under ``train/``, ``valid/`` and ``test/`` are the cases.

    Modalities: ``t2`` -> ``t2w``, ``adc`` -> ``adc``, ``dwi`` -> ``hbv`` (Prostate158's DWI is
    the high-b image). The label is the tumour mask ``adc_tumor_reader1`` (or the all-zero
    ``empty.nii.gz`` of a case without a lesion), delineated on the ADC grid: ``label_grid`` is
    ``adc``, so it is resampled (nearest) onto the T2W grid and binarised >= 1. The zone masks
    ``t2_anatomy_reader*`` are never the label.

    Example:
        >>> cases = discover_prostate158("/data/prostate158_train")  # doctest: +SKIP
    """
    root = _existing_dir(root)
    csvs = [root / f"{s}.csv" for s in PROSTATE158_SPLITS if (root / f"{s}.csv").is_file()]
    cases: dict[str, Case] = {}
    listed_in: dict[str, Path] = {}
    if csvs:
        for csv_path in csvs:
            for i, row in enumerate(_read_csv(csv_path)):
                if "ID" not in row:
                    raise DataError("has no ID column", path=str(csv_path))
                case_id = check_id((row["ID"] or "").strip(), f"row {i + 2}: ID", csv_path)
                if case_id in listed_in:
                    raise DataError(f"listed in {listed_in[case_id].name} and {csv_path.name}", case_id)
                listed_in[case_id] = csv_path
                cases[case_id] = _prostate158_listed(root, csv_path, case_id, row)
        on_disk = {f.resolve() for s in PROSTATE158_SPLITS if (root / s).is_dir()
                   for f in _visible(root / s, dirs=True)}
        used = {Path(p).parent.resolve() for c in cases.values() for p in c.images.values() if p}
        unlisted = sorted(f.name for f in on_disk - used)
        if unlisted:
            logger.warning("%s: %d case folders no CSV lists are left out (%s)", root, len(unlisted),
                           ", ".join(unlisted[:5]))
    else:
        for split in PROSTATE158_SPLITS:
            if not (root / split).is_dir():
                continue
            for folder in _visible(root / split, dirs=True):
                images, label = _prostate158_case(folder, folder.name)
                if not any(images.values()):
                    continue
                case_id = check_id(folder.name, "case id", folder)
                if case_id in cases:
                    raise DataError(f"two folders for one case, {cases[case_id].clinical['split']}/{case_id} and "
                                    f"{split}/{case_id}", case_id, str(root))
                cases[case_id] = Case(case_id, case_id, images, label, {"split": split},
                                      label_grid="adc" if label else None)
    if not cases:
        raise DataError("no Prostate158 cases found (expected train/<ID>/t2.nii.gz and train.csv)", path=str(root))
    return list(cases.values())


def _prostate158_listed(root: Path, csv_path: Path, case_id: str, row: dict[str, str]) -> Case:
    """One case of a Prostate158 CSV: the files its columns name, else those of its folder."""

    def listed(column: str) -> str | None:
        value = (row.get(column) or "").strip()
        if not value:
            return None
        path = Path(value) if Path(value).is_absolute() else root / value
        if not path.is_file():
            raise DataError(f"{csv_path.name} lists {value} but the file is missing", case_id, str(path))
        return str(path)

    split = csv_path.stem
    images = {m: listed(name) for m, name in PROSTATE158_FILES.items()}
    label = listed(PROSTATE158_LABEL)
    columns = {*PROSTATE158_FILES.values(), PROSTATE158_LABEL}
    if not columns <= set(row):  # an ID-only CSV: the files are in the case folder
        folders = [root / s / case_id for s in PROSTATE158_SPLITS if (root / s / case_id).is_dir()]
        if len(folders) != 1:
            raise DataError(f"listed in {csv_path.name}: expected one folder {{train,valid,test}}/{case_id}, "
                            f"found {len(folders)}", case_id, str(root))
        found, found_label = _prostate158_case(folders[0], case_id)
        images = {m: images[m] if PROSTATE158_FILES[m] in row else found[m] for m in images}
        label = label if PROSTATE158_LABEL in row else found_label
    clinical = {k: v for k, v in row.items() if k != "ID" and k not in columns}
    return Case(case_id, case_id, images, label, {**clinical, "split": split}, label_grid="adc" if label else None)


# -- nnU-Net v2 raw ---------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError("is not UTF-8 text: save it as UTF-8", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot parse JSON: {e}", path=str(path)) from None


def _channel_modalities(channel_names: Any, modalities: list[str] | None, path: Path, key: str) -> list[str]:
    """Modality names by channel index: ``channel_names`` lower-cased, or ``modalities`` in order."""
    if not isinstance(channel_names, dict) or not channel_names:
        raise DataError(f"{key} should be an object like {{\"0\": \"T2\", \"1\": \"ADC\"}}", path=str(path))
    if sorted(channel_names) != [str(i) for i in range(len(channel_names))]:
        raise DataError(f"{key} keys should be the channel indices 0..{len(channel_names) - 1}, "
                        f"got {sorted(channel_names)}", path=str(path))
    names = [str(channel_names[str(i)]).lower() for i in range(len(channel_names))]
    if modalities is not None:
        if len(modalities) != len(names):
            raise ConfigError(f"data.modalities {list(modalities)} should name each of the {len(names)} channels "
                              f"of {path} ({key}: {names}) in order")
        names = list(modalities)
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: channel names {names} repeat; set data.modalities to one name per channel")
    return names


def discover_nnunet(root: str | Path, modalities: list[str] | None = None) -> list[Case]:
    """Cases of an nnU-Net v2 raw folder: ``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``.

    Images are ``images{Tr,Ts}/<case>_<kkkk><file_ending>`` (channel ``k``), labels
    ``labelsTr/<case><file_ending>``; ``imagesTs`` cases are unlabelled. A case without one
    channel's file lacks that modality (normal data). nnU-Net has no patient ids: each case is its
    own patient (warned about).

    Args:
        root: the ``Dataset<NNN>_<name>`` folder.
        modalities: names of the channels in order; ``None``: ``channel_names`` lower-cased
            (``{"0": "T2", "1": "ADC"}`` -> ``t2``, ``adc``).

    Example:
        >>> cases = discover_nnunet("/data/nnUNet_raw/Dataset001_Prostate", ["t2w", "adc", "hbv"])  # doctest: +SKIP
    """
    root = _existing_dir(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError("no dataset.json (an nnU-Net raw folder holds dataset.json, imagesTr/ and labelsTr/)",
                        path=str(root))
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise DataError("should hold a JSON object", path=str(meta_path))
    key = "channel_names" if "channel_names" in meta else "modality"  # v1 called it modality
    names = _channel_modalities(meta.get(key), modalities, meta_path, key)
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f"file_ending should be a suffix like '.nii.gz', got {ending!r}", path=str(meta_path))
    files: dict[str, dict[str, str]] = {}
    split_of: dict[str, str] = {}
    pattern = re.compile(rf"(?P<case>.+)_(?P<k>\d{{4}}){re.escape(ending)}")
    for split in ("imagesTr", "imagesTs"):
        if not (root / split).is_dir():
            continue
        for f in _visible(root / split, dirs=False):
            match = pattern.fullmatch(f.name)
            if match is None:
                if f.name.endswith(ending) or _strip_image_suffix(f.name) is not None:
                    raise DataError(f"expected <case>_<4-digit channel>{ending} (file_ending of dataset.json)",
                                    path=str(f))
                continue
            case_id = check_id(match["case"], "case id", f)
            if int(match["k"]) >= len(names):
                raise DataError(f"channel {int(match['k'])} is not in dataset.json's {key} ({len(names)} channels)",
                                case_id, str(f))
            if split_of.setdefault(case_id, split) != split:
                raise DataError("in both imagesTr and imagesTs", case_id, str(f))
            files.setdefault(case_id, {})[names[int(match["k"])]] = str(f)
    labels = {}
    if (root / "labelsTr").is_dir():
        for f in _visible(root / "labelsTr", dirs=False):
            if f.name.endswith(ending):
                case_id = f.name[: -len(ending)]
                if split_of.get(case_id) != "imagesTr":
                    raise DataError("label without images in imagesTr", case_id, str(f))
                labels[case_id] = str(f)
    if not files:
        raise DataError(f"no nnU-Net cases found (expected imagesTr/<case>_0000{ending})", path=str(root))
    unlabelled = sorted(c for c, s in split_of.items() if s == "imagesTr" and c not in labels)
    if unlabelled:
        logger.warning("%s: %d imagesTr cases have no labelsTr file and are read as unlabelled (%s)", root,
                       len(unlabelled), ", ".join(unlabelled[:5]))
    _warn_without_patient(len(files), len(files), root)
    return [Case(c, c, {m: images.get(m) for m in names}, labels.get(c), {"split": split_of[c]})
            for c, images in sorted(files.items())]


# -- datalists --------------------------------------------------------------------------------------
_RESERVED = {"case_id", "id", "patient_id", "label", "image", "images"}
_DECATHLON_KEYS = ("training", "validation", "test")


def _datalist_rows(path: Path) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """``(where, entry)`` pairs of a datalist file, and the top-level metadata of a JSON one."""
    if path.suffix.lower() == ".csv":
        return [(f"row {i + 2}", row) for i, row in enumerate(_read_csv(path))], {}
    data = _read_json(path)
    if isinstance(data, list):
        return [(f"entry {i}", row) for i, row in enumerate(data)], {}
    if isinstance(data, dict) and isinstance(data.get("cases"), list):
        return [(f"entry {i}", row) for i, row in enumerate(data["cases"])], data
    if isinstance(data, dict) and any(k in data for k in _DECATHLON_KEYS):
        rows = []
        for key in _DECATHLON_KEYS:
            entries = data.get(key)
            if entries is None:
                continue
            if not isinstance(entries, list):
                raise DataError(f"{key!r} should be a list of entries", path=str(path))
            rows += [(f"{key}[{i}]", {"image": e} if isinstance(e, str) else e) for i, e in enumerate(entries)]
        return rows, data
    raise DataError('holds no cases: expected a list, {"cases": [...]} or {"training": [...]}', path=str(path))


def _decathlon_paths(path: Path, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``image``/``label`` paths of a decathlon datalist, resolved by MONAI (relative to the file)."""
    from monai.data import load_decathlon_datalist

    resolved = []
    for key in _DECATHLON_KEYS:
        if data.get(key):
            try:
                resolved += load_decathlon_datalist(path, is_segmentation=True, data_list_key=key)
            except (ValueError, TypeError) as e:
                raise DataError(f"cannot read the {key!r} list: {e}", path=str(path)) from None
    return resolved


def _path_value(value: Any, where: str, key: str, path: Path) -> str | None:
    """A datalist value that should be an image path: a string ending in an image suffix, or empty."""
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} should be a path, got {type(value).__name__} {value!r}"[:200],
                        path=str(path))
    if not _is_image_path(value.strip()):
        raise DataError(f"{where}: {key!r} = {value!r} is not an image path (expected a file ending in "
                        f"{', '.join(IMAGE_SUFFIXES)})", path=str(path))
    return value.strip()


def _id_value(row: dict[str, Any], key: str, where: str, path: Path) -> str | None:
    value = row.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
        raise DataError(f"{where}: {key!r} should be a string, got {type(value).__name__} {value!r}"[:200],
                        path=str(path))
    value = str(value).strip() if value is not None else ""
    return check_id(value, f"{where}: {key}", path) if value else None


def _row_case_id(row: dict[str, Any], where: str, path: Path) -> str | None:
    case_id, alias = _id_value(row, "case_id", where, path), _id_value(row, "id", where, path)
    if case_id and alias and case_id != alias:
        raise DataError(f"{where}: case_id {case_id!r} and id {alias!r} differ; keep one", path=str(path))
    return case_id or alias


def _datalist_modalities(rows: list[tuple[str, dict[str, Any]]], meta: dict[str, Any], path: Path) -> list[str]:
    """Modality names of a datalist: decathlon ``modality`` metadata, ``images`` keys, or the keys
    whose values look like image paths in any entry (clinical columns never become modalities)."""
    if any("image" in row for _, row in rows):
        if "modality" not in meta:
            raise ConfigError(f"{path}: cannot tell the modalities of 'image'; set data.modalities (in channel order)")
        return _channel_modalities(meta["modality"], None, path, "modality")
    names: dict[str, None] = {}
    for _, row in rows:
        images = row.get("images")
        if isinstance(images, dict):
            names.update(dict.fromkeys(images))
        for k, v in row.items():
            if k not in _RESERVED and isinstance(v, str) and _is_image_path(v.strip()):
                names[k] = None
    if not names:
        raise ConfigError(f"{path}: cannot tell the modalities (no column holds image paths); set data.modalities")
    return list(names)


def discover_datalist(path: str | Path, modalities: list[str] | None = None) -> list[Case]:
    """Cases listed in a JSON or CSV file, for anyone else's data.

    JSON, one of:
      - a list of objects, or ``{"cases": [...]}``, each with ``case_id`` (or ``id``), optional
        ``patient_id``, one key per modality (or ``images``: {modality: path}), an optional
        ``label`` and any clinical keys;
      - MONAI's / the Medical Segmentation Decathlon's ``{"modality": {"0": "T2", ...},
        "training": [{"image": ..., "label": ...}], "validation": [...], "test": [...]}``, read
        with ``monai.data.load_decathlon_datalist``. ``image`` is a path or a list of paths in
        modality order; a single path with several modalities is a 4-D multi-channel file, recorded
        as ``Case.channels`` ({modality: channel index}). An entry without ``case_id`` is named
        after its (first) image file, without suffix.

    CSV (UTF-8; a byte-order mark is fine): columns ``case_id``, ``patient_id``, one per modality,
    ``label`` and clinical columns; an empty cell is an absent modality.

    Modalities are ``modalities`` when given (for ``image`` lists: the names of the channels in
    order), else the decathlon ``modality`` metadata, else the keys whose values are image paths in
    any entry; the other keys are ``clinical``. Relative paths are relative to the file. A case
    without ``patient_id`` is its own patient (warned about once).

    Example:
        >>> cases = discover_datalist("dataset.json", ["t2w", "adc", "hbv"])  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("datalist file does not exist", path=str(path))
    rows, meta = _datalist_rows(path)
    if not rows:
        raise DataError("datalist holds no cases", path=str(path))
    for where, row in rows:  # unsafe ids first: one must never reach a file name
        if not isinstance(row, dict):
            raise DataError(f"{where} should be an object, got {type(row).__name__}", path=str(path))
        _row_case_id(row, where, path)
        _id_value(row, "patient_id", where, path)
    decathlon = any("image" in row for _, row in rows)
    if decathlon and not all("image" in row for _, row in rows):
        where = next(w for w, row in rows if "image" not in row)
        raise DataError(f"{where} has no 'image' though other entries have one", path=str(path))
    if modalities is None:
        modalities = _datalist_modalities(rows, meta, path)
    modalities = list(modalities)
    if not modalities:
        raise ConfigError(f"{path}: cannot tell the modalities; set data.modalities")
    monai_paths = _decathlon_paths(path, meta) if decathlon and any(k in meta for k in _DECATHLON_KEYS) else None
    base = path.parent

    def resolve(p: str | None) -> str | None:
        return None if p is None else os.path.normpath(p if Path(p).is_absolute() else base / p)

    cases = []
    without_patient = 0
    for i, (where, row) in enumerate(rows):
        case_id = _row_case_id(row, where, path)
        patient_id = _id_value(row, "patient_id", where, path)
        source = monai_paths[i] if monai_paths is not None else row
        label = resolve(_path_value(source.get("label"), where, "label", path))
        channels = None
        if decathlon:
            image = source["image"]
            if isinstance(image, list):
                if len(image) != len(modalities):
                    raise DataError(f"{where}: 'image' lists {len(image)} files for the {len(modalities)} "
                                    f"modalities {modalities}", path=str(path))
                images = {m: resolve(_path_value(p, where, f"image[{k}]", path))
                          for k, (m, p) in enumerate(zip(modalities, image))}
            else:
                one = resolve(_path_value(image, where, "image", path))
                images = dict.fromkeys(modalities, one)
                if len(modalities) > 1:  # one 4-D file, channel k = modality k
                    channels = {m: k for k, m in enumerate(modalities)}
            if case_id is None:
                first = next((p for p in images.values() if p), None)
                if first is None:
                    raise DataError(f"{where} has no case_id and no image", path=str(path))
                case_id = check_id(_strip_image_suffix(Path(first).name) or Path(first).name,
                                   f"{where}: case id from the image file name", path)
            clinical = {k: v for k, v in row.items() if k not in _RESERVED}
        else:
            if case_id is None:
                raise DataError(f"{where} has no case_id", path=str(path))
            mapping = row.get("images") if "images" in row else row
            if not isinstance(mapping, dict):
                raise DataError(f"{where}: 'images' should be an object {{modality: path}}, "
                                f"got {type(mapping).__name__}", path=str(path))
            images = {m: resolve(_path_value(mapping.get(m), where, m, path)) for m in modalities}
            clinical = {k: v for k, v in row.items() if k not in _RESERVED and k not in modalities}
        without_patient += patient_id is None
        cases.append(Case(case_id, patient_id or case_id, images, label, clinical, channels=channels))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        hint = "; entries without case_id are named after their image file: set case_id" if decathlon else ""
        raise DataError(f"duplicate case ids {dup[:5]}{hint}", path=str(path))
    _warn_without_patient(without_patient, len(cases), path)
    return cases


# -- any layout -------------------------------------------------------------------------------------
def discover(
    layout: str,
    root: str | Path,
    labels_root: str | Path | None = None,
    label_source: str = "human_expert+AI",
    modalities: list[str] | None = None,
    brats_labels: str | int | None = None,
) -> list[Case]:
    """Cases of ``root`` in ``layout``.

    Args:
        layout: ``picai``, ``brats``, ``prostate158``, ``nnunet`` or ``datalist``.
        root: the data folder (PI-CAI: holding ``images/``; nnU-Net: holding ``dataset.json``), or
            the datalist file.
        labels_root: PI-CAI's ``picai_labels`` folder (or a plain folder of ``<case_id>.nii.gz``).
        label_source: PI-CAI labels: ``human_expert+AI`` (default), ``human_expert`` or ``AI``.
        modalities: the modalities to keep, in order (PI-CAI, BraTS, Prostate158: a subset of the
            layout's); nnU-Net: the channels' names in order; datalist: the keys to read.
        brats_labels: BraTS label convention ``"2021"`` / ``"2023"``; ``None`` tells it from the names.

    Example:
        >>> cases = discover("brats", "/data/BraTS2021", modalities=["t1", "flair"])  # doctest: +SKIP
    """
    if brats_labels is not None and layout != "brats":
        raise ConfigError(f"data.brats_labels applies to layout brats, not {layout}; leave it unset")
    if layout == "picai":
        cases = discover_picai(root, labels_root, label_source)
    elif layout == "brats":
        cases = discover_brats(root, brats_labels)
    elif layout == "prostate158":
        cases = discover_prostate158(root)
    elif layout == "nnunet":
        cases = discover_nnunet(root, modalities)
    elif layout == "datalist":
        cases = discover_datalist(root, modalities)
    else:
        raise ConfigError(f"data.layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if modalities is not None and layout in MODALITIES:
        unknown = [m for m in modalities if m not in MODALITIES[layout]]
        if unknown:
            raise ConfigError(
                f"data.modalities {unknown} are not {layout} modalities; choose from {list(MODALITIES[layout])}"
            )
        for case in cases:
            case.images = {m: case.images[m] for m in modalities}
    return cases
