"""PI-CAI: ``images/<patient_id>/<patient_id>_<study_id>_{t2w,adc,hbv}.mha`` and ``picai_labels``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from medssl.data.layouts.base import (
    Case,
    Layout,
    check_id,
    existing_dir,
    find_file,
    logger,
    read_csv,
    strip_image_suffix,
    visible_entries,
)
from medssl.errors import ConfigError, DataError

MODALITIES = ("t2w", "adc", "hbv")
LABEL_SOURCES = ("human_expert", "AI", "human_expert+AI")
LABEL_DIRS = {
    "human_expert": "csPCa_lesion_delineations/human_expert/resampled",
    "AI": "csPCa_lesion_delineations/AI/Bosma22a",
}


def picai_images_root(root: str | Path) -> Path:
    """``root`` may hold ``images/`` or be the ``images/`` folder itself."""
    root = existing_dir(root)
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
            rows = read_csv(path)
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
        dirs = [(s, labels / LABEL_DIRS[s]) for s in wanted]
        present = [(s, d) for s, d in dirs if d.is_dir()]
        if not present:
            raise DataError(f"no {label_source} label folder {LABEL_DIRS[wanted[0]]}", path=str(labels))
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
    if label_source not in LABEL_SOURCES:
        raise ConfigError(f"data.label_source {label_source!r}: choose one of {list(LABEL_SOURCES)}")
    images_root = picai_images_root(root)
    labels = picai_labels_root(root, labels_root)
    if labels is not None and labels.name == "csPCa_lesion_delineations":  # one level down: the tree is above
        labels = labels.parent
    label_dirs = picai_label_dirs(labels, label_source)
    marksheet = _read_marksheet(labels)
    pattern = re.compile(r"^(?P<pid>[^_]+)_(?P<sid>[^_]+)_(?P<mod>[a-z0-9]+)$")
    found: dict[str, dict[str, Any]] = {}
    for patient_dir in visible_entries(images_root, dirs=True):
        for f in visible_entries(patient_dir, dirs=False):
            stem = strip_image_suffix(f.name)
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
            if label := find_file(d, case_id, case_id):
                source = s
                break
        images = {m: entry["files"].get(m) for m in MODALITIES}
        cases.append(Case(case_id, entry["patient_id"], images, label, marksheet.get(case_id, {}),
                          label_source=source))
    if label_dirs and not any(c.label for c in cases):
        logger.warning("%s: no <case_id>.nii.gz label for any of the %d cases in %s", labels, len(cases),
                       ", ".join(str(d) for _, d in label_dirs))
    return cases


# PI-CAI labels are ISUP 2..5 (1 in AI-derived masks), delineated on the T2W grid.
def picai_roots(root: str | Path, labels_root: str | Path | None = None) -> list[Path]:
    """The data root, its ``images/`` and the ``picai_labels`` folder it reads (given, or found beside images/)."""
    roots = [Path(root)]
    try:
        roots.append(picai_images_root(root))
        labels = picai_labels_root(root, labels_root)
    except DataError:
        return roots + ([Path(labels_root)] if labels_root else [])
    return roots + ([labels] if labels is not None else [])


LAYOUT = Layout("picai", discover_picai, MODALITIES, reference_order=("t2w",), reference_required=True,
                label_values=tuple(range(6)), options=frozenset({"labels_root", "label_source"}), roots=picai_roots)
