"""Datalists: a JSON list, MONAI/MSD's decathlon JSON, or a CSV with one column per modality."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medssl.data.layouts.base import (
    IMAGE_SUFFIXES,
    Case,
    Layout,
    channel_modalities,
    check_id,
    is_image_path,
    read_csv,
    read_json_file,
    strip_image_suffix,
    warn_without_patient,
)
from medssl.errors import ConfigError, DataError

_RESERVED = {"case_id", "id", "patient_id", "label", "image", "images"}
_DECATHLON_KEYS = ("training", "validation", "test")


def _datalist_rows(path: Path) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """``(where, entry)`` pairs of a datalist file, and the top-level metadata of a JSON one."""
    if path.suffix.lower() == ".csv":
        return [(f"row {i + 2}", row) for i, row in enumerate(read_csv(path))], {}
    data = read_json_file(path)
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
    """A datalist value that should be an image: a path ending in an image suffix, a folder holding one DICOM series
    (as the README's DICOM input; relative paths are relative to the datalist), or empty."""
    if value is None or isinstance(value, str) and not value.strip():
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} should be a path, got {type(value).__name__} {value!r}"[:200],
                        path=str(path))
    value = value.strip()
    folder = Path(value) if Path(value).is_absolute() else path.parent / value
    if not is_image_path(value) and not folder.is_dir():
        raise DataError(f"{where}: {key!r} = {value!r} is not an image path (expected a file ending in "
                        f"{', '.join(IMAGE_SUFFIXES)}, or a folder holding one DICOM series)", path=str(path))
    return value


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
        return channel_modalities(meta["modality"], None, path, "modality")
    names: dict[str, None] = {}
    for _, row in rows:
        images = row.get("images")
        if isinstance(images, dict):
            names.update(dict.fromkeys(images))
        for k, v in row.items():
            if k not in _RESERVED and isinstance(v, str) and is_image_path(v.strip()):
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
                case_id = check_id(strip_image_suffix(Path(first).name) or Path(first).name,
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
    warn_without_patient(without_patient, len(cases), path)
    return cases


LAYOUT = Layout("datalist", discover_datalist, options=frozenset({"modalities"}))
