"""What every data layout shares: the ``Case`` record, the ``Layout`` record, and the helpers discovery uses.

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
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from medssl.errors import ConfigError, DataError

logger = logging.getLogger("medssl.data.layouts")

IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".mhd", ".nrrd")


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
        """The dict a MONAI dataset carries, with a fingerprint so edited files invalidate the cache.

        The fingerprint is each file's size, modification time and status-change time. The last is what makes it
        safe: an edit in place that keeps the size and sets the modification time back (``touch -r``, a copy with
        ``cp -p`` over the file) still moves the status-change time, which no user or tool can set. A hash of the
        bytes would say the same at the cost of reading every image at every discovery (tens of GB for PI-CAI);
        a copied data set only costs its cache being filled again.
        """
        paths = [p for p in (*self.images.values(), self.label) if p is not None]
        stats = []
        for p in paths:
            try:
                st = Path(p).stat()
                stats.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}")
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


@dataclass(frozen=True)
class Layout:
    """A data layout users keep on disk: how to find its cases and how to read them.

    Args:
        name: the value of ``data.layout`` / ``--layout``.
        discover: ``discover(root, **options) -> list[Case]``; it takes the keyword ``options`` named below.
        modalities: the layout's modality names in their default channel order; ``()``: read from the data
            (nnU-Net's ``channel_names``, a datalist's keys).
        reference_order: candidates for the grid every modality is resampled onto, first present wins; ``()``:
            the first present modality.
        reference_required: the first of ``reference_order`` must be present (PI-CAI's t2w: the labels are
            delineated on it).
        label_values: the values a label file may hold.
        label_kind: ``lesion`` (binarised as label >= 1) or ``brats`` (BraTS tumour labels, read with the
            case's ``label_convention``).
        options: the keyword options ``discover`` takes, of ``labels_root``, ``label_source``, ``modalities``,
            ``brats_labels``.
        roots: ``roots(root, labels_root) -> [Path]``: the folders the layout reads beyond the case files (PI-CAI:
            the ``picai_labels`` found beside ``images/``); by default ``root`` and ``labels_root``. No command
            writes into, over or around them (``medssl.io.refuse_output_over_inputs``).

    Example:
        >>> Layout("mine", lambda root, **_: [], modalities=("t2w",)).reference_for(["t2w"])
        ('t2w',)
    """

    name: str
    discover: Callable[..., list[Case]]
    modalities: tuple[str, ...] = ()
    reference_order: tuple[str, ...] = ()
    reference_required: bool = False
    label_values: tuple[int, ...] = tuple(range(256))
    label_kind: Literal["lesion", "brats"] = "lesion"
    options: frozenset[str] = frozenset()
    roots: Callable[[str | Path, str | Path | None], list[Path]] | None = None

    def input_roots(self, root: str | Path, labels_root: str | Path | None = None) -> list[Path]:
        """The folders this layout reads for ``root`` (see ``roots``)."""
        if self.roots is not None:
            return self.roots(root, labels_root)
        return [Path(p) for p in (root, labels_root) if p]

    def reference_for(self, modalities: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """The reference candidates among ``modalities`` (all of them, in order, when none is listed)."""
        return tuple(m for m in self.reference_order if m in modalities) or tuple(modalities)


def strip_image_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def is_image_path(value: str) -> bool:
    return value.lower().endswith(IMAGE_SUFFIXES)


def existing_dir(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root does not exist or is not a folder", path=str(root))
    return root


def visible_entries(folder: Path, dirs: bool | None = None) -> list[Path]:
    """The entries of ``folder``, sorted, without hidden ones; only folders (True) or files (False)."""
    entries = (p for p in folder.iterdir() if not p.name.startswith("."))
    if dirs is not None:
        entries = (p for p in entries if p.is_dir() == dirs)
    return sorted(entries)


def find_file(folder: Path, stem: str, case_id: str | None = None) -> str | None:
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


def warn_without_patient(missing: int, total: int, where: str | Path) -> None:
    if missing:
        logger.warning("%s: %d of %d cases have no patient_id; each counts as its own patient, so folds "
                       "cannot keep one patient's studies together", where, missing, total)


def read_csv(path: Path) -> list[dict[str, str]]:
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
        if None in row.values():  # csv.DictReader fills a short row's missing cells with None: not data
            short = [k for k, v in row.items() if v is None]
            raise DataError(f"row {i + 2} has fewer values than the header has columns (no {short[0]!r}); an "
                            "empty cell is written as an empty value between commas", path=str(path))
    return rows


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise DataError("is not UTF-8 text: save it as UTF-8", path=str(path)) from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot parse JSON: {e}", path=str(path)) from None


def channel_modalities(channel_names: Any, modalities: list[str] | None, path: Path, key: str) -> list[str]:
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
