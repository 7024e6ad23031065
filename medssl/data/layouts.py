"""Case discovery for the layouts users keep on disk: PI-CAI, BraTS and a plain datalist.

A ``Case`` is what every later step needs to know about one study: its id, the patient it
belongs to (folds are grouped by patient), the path of each modality or ``None`` when the
modality is absent (normal data, not an error), the label path or ``None``, and any clinical
columns found beside it.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssl.errors import ConfigError, DataError

MODALITIES = {
    "picai": ("t2w", "adc", "hbv"),
    "brats": ("t1", "t1ce", "t2", "flair"),
}
# The grid every modality is resampled onto: PI-CAI's labels live in T2W space; BraTS volumes are
# co-registered, so the first present of this order serves.
REFERENCE_ORDER = {"picai": ("t2w",), "brats": ("t1", "t1ce", "t2", "flair")}
LABEL_MAX = {"picai": 5, "brats": 4}
IMAGE_SUFFIXES = (".mha", ".nii.gz", ".nii", ".mhd", ".nrrd")
PICAI_LABEL_DIRS = {
    "human_expert": ("csPCa_lesion_delineations/human_expert/resampled",),
    "AI": ("csPCa_lesion_delineations/AI/Bosma22a",),
    "human_expert+AI": (
        "csPCa_lesion_delineations/human_expert/resampled",
        "csPCa_lesion_delineations/AI/Bosma22a",
    ),
}


@dataclass
class Case:
    """One study.

    Args:
        case_id: ``<patient_id>_<study_id>`` for PI-CAI, the folder name for BraTS.
        patient_id: what folds are grouped by.
        images: modality -> path, ``None`` where the case lacks the modality.
        label: label path, ``None`` for an unlabelled case.
        clinical: marksheet or datalist columns, as read.
    """

    case_id: str
    patient_id: str
    images: dict[str, str | None]
    label: str | None = None
    clinical: dict[str, Any] = field(default_factory=dict)

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
            "fingerprint": "|".join(stats),
        }


def _strip_image_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _find_file(folder: Path, stem: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return str(path)
    return None


def picai_images_root(root: str | Path) -> Path:
    """``root`` may hold ``images/`` or be the ``images/`` folder itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root does not exist or is not a folder", path=str(root))
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
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and not {"patient_id", "study_id"} <= set(rows[0]):
                raise DataError("marksheet lacks patient_id/study_id columns", path=str(path))
            return {f"{r['patient_id']}_{r['study_id']}": r for r in rows}
    return {}


def discover_picai(
    root: str | Path, labels_root: str | Path | None = None, label_source: str = "human_expert"
) -> list[Case]:
    """Cases of a PI-CAI folder: ``images/<pid>/<pid>_<sid>_<modality>.mha`` plus ``picai_labels``.

    Args:
        root: the folder holding ``images/``, or ``images/`` itself.
        labels_root: the ``picai_labels`` folder (or any folder of ``<case_id>.nii.gz``);
            looked for beside ``images/`` when not given.
        label_source: ``human_expert`` (default), ``AI`` (Bosma22a) or ``human_expert+AI``
            (expert where present, AI otherwise).
    """
    if label_source not in PICAI_LABEL_DIRS:
        raise ConfigError(f"data.label_source {label_source!r}: choose one of {sorted(PICAI_LABEL_DIRS)}")
    images_root = picai_images_root(root)
    labels = picai_labels_root(root, labels_root)
    label_dirs = [labels / d for d in PICAI_LABEL_DIRS[label_source]] + [labels] if labels else []
    marksheet = _read_marksheet(labels)
    pattern = re.compile(r"^(?P<pid>[^_]+)_(?P<sid>[^_]+)_(?P<mod>[a-z0-9]+)$")
    found: dict[str, dict[str, Any]] = {}
    for patient_dir in sorted(p for p in images_root.iterdir() if p.is_dir()):
        for f in sorted(patient_dir.iterdir()):
            stem = _strip_image_suffix(f.name)
            match = pattern.match(stem) if stem else None
            if match is None:
                continue
            case_id = f"{match['pid']}_{match['sid']}"
            entry = found.setdefault(case_id, {"patient_id": match["pid"], "files": {}})
            entry["files"][match["mod"]] = str(f)
    if not found:
        raise DataError(
            "no PI-CAI cases found (expected images/<patient_id>/<patient_id>_<study_id>_t2w.mha)",
            path=str(images_root),
        )
    cases = []
    for case_id, entry in sorted(found.items()):
        label = next((p for d in label_dirs if (p := _find_file(d, case_id))), None)
        images = {m: entry["files"].get(m) for m in MODALITIES["picai"]}
        cases.append(Case(case_id, entry["patient_id"], images, label, marksheet.get(case_id, {})))
    return cases


def discover_brats(root: str | Path) -> list[Case]:
    """Cases of a BraTS folder: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root does not exist or is not a folder", path=str(root))
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = {m: _find_file(folder, f"{folder.name}_{m}") for m in MODALITIES["brats"]}
        label = _find_file(folder, f"{folder.name}_seg")
        if not any(images.values()):
            if label is not None:
                raise DataError("has a segmentation but no image (t1, t1ce, t2 or flair)",
                                case_id=folder.name, path=str(folder))
            continue
        cases.append(Case(folder.name, folder.name, images, label))
    if not cases:
        raise DataError("no BraTS cases found (expected <case>/<case>_t1.nii.gz)", path=str(root))
    return cases


_RESERVED = {"case_id", "id", "patient_id", "label", "image", "images"}


def discover_datalist(path: str | Path, modalities: list[str] | None = None) -> list[Case]:
    """Cases listed in a JSON or CSV file, for anyone else's data.

    JSON: a list of objects (or ``{"cases": [...]}`` / MONAI's ``{"training": [...]}``), each with
    ``case_id``, optional ``patient_id``, one key per modality (or ``images``: {modality: path})
    and an optional ``label``. CSV: columns ``case_id``, ``patient_id``, one per modality,
    ``label``; an empty cell is an absent modality. Relative paths are relative to the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("datalist file does not exist", path=str(path))
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            data = json.loads(path.read_text())
            rows = data.get("cases", data.get("training")) if isinstance(data, dict) else data
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"cannot parse datalist: {e}", path=str(path)) from None
    if not isinstance(rows, list) or not rows:
        raise DataError("datalist holds no cases", path=str(path))
    base = path.parent

    def resolve(p: Any) -> str | None:
        if p is None or (isinstance(p, str) and not p.strip()):
            return None
        return str(p if Path(p).is_absolute() else base / p)

    if modalities is None:
        keys = list(rows[0].get("images", {}) or {}) or [k for k in rows[0] if k not in _RESERVED]
        modalities = keys
    if not modalities:
        raise ConfigError(f"{path}: cannot tell the modalities; set data.modalities")
    cases = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"entry {i} is not an object", path=str(path))
        case_id = str(row.get("case_id", row.get("id", "")) or "").strip()
        if not case_id:
            raise DataError(f"entry {i} has no case_id", path=str(path))
        source = row.get("images") or row
        images = {m: resolve(source.get(m)) for m in modalities}
        clinical = {k: v for k, v in row.items() if k not in _RESERVED and k not in modalities}
        cases.append(Case(case_id, str(row.get("patient_id") or case_id), images,
                          resolve(row.get("label")), clinical))
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataError(f"duplicate case ids {dup[:5]}", path=str(path))
    return cases


def discover(
    layout: str,
    root: str | Path,
    labels_root: str | Path | None = None,
    label_source: str = "human_expert",
    modalities: list[str] | None = None,
) -> list[Case]:
    """Cases of ``root`` in ``layout`` (picai, brats or datalist)."""
    if layout == "picai":
        cases = discover_picai(root, labels_root, label_source)
    elif layout == "brats":
        cases = discover_brats(root)
    elif layout == "datalist":
        cases = discover_datalist(root, modalities)
    else:
        raise ConfigError(f"data.layout {layout!r}: choose picai, brats or datalist")
    if modalities is not None and layout != "datalist":
        unknown = [m for m in modalities if m not in MODALITIES[layout]]
        if unknown:
            raise ConfigError(
                f"data.modalities {unknown} are not {layout} modalities; choose from {list(MODALITIES[layout])}"
            )
        for case in cases:
            case.images = {m: case.images[m] for m in modalities}
    return cases
