"""Patient-grouped, lesion-stratified folds, saved to and read from a split file.

A split file is JSON. The one we write is ``{"n_folds", "seed", "folds": [[val case ids], ...]}``;
a user's file may also be a plain list of lists of case ids, ``{"folds": [{"val": [...]}, ...]}``
or the picai_baseline form ``{"0": {"subject_list": [...]}, ...}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medssl.errors import ConfigError, DataError


def make_folds(
    case_ids: Sequence[str], patient_ids: Sequence[str], positive: Sequence[bool], n_folds: int = 5, seed: int = 0
) -> list[list[str]]:
    """Validation case ids per fold: grouped by patient, stratified by lesion presence.

    Args:
        case_ids: the labelled cases (unlabelled cases are never validated).
        patient_ids: patient of each case; all studies of a patient share a fold.
        positive: whether each case has at least one lesion voxel.
        n_folds: number of folds.
        seed: shuffling seed.
    """
    n_patients = len(set(patient_ids))
    if n_patients < n_folds:
        raise ConfigError(
            f"{n_patients} labelled patients cannot fill {n_folds} folds; lower data.n_folds or add labelled cases"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for _, val in splitter.split(np.zeros(len(case_ids)), np.asarray(positive, int), np.asarray(patient_ids)):
        folds.append(sorted(case_ids[i] for i in val))
    return folds


def check_folds(folds: list[list[str]], patient_of: dict[str, str], source: str = "split") -> None:
    """Refuse unknown case ids, a case in two folds, and a patient in two folds."""
    seen_case: dict[str, int] = {}
    seen_patient: dict[str, int] = {}
    for k, fold in enumerate(folds):
        for case_id in fold:
            if case_id not in patient_of:
                raise DataError(f"fold {k} names case {case_id!r}, which is not in the data", path=source)
            if case_id in seen_case:
                raise DataError(f"case {case_id} is in folds {seen_case[case_id]} and {k}", path=source)
            seen_case[case_id] = k
            patient = patient_of[case_id]
            if seen_patient.setdefault(patient, k) != k:
                raise DataError(
                    f"patient {patient} is in folds {seen_patient[patient]} and {k} (case {case_id}); "
                    "all studies of a patient must share a fold", path=source)


def read_split_file(path: str | Path) -> list[list[str]]:
    """Validation case ids per fold from any of the accepted forms."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read split file: {e}", path=str(path)) from None
    if isinstance(data, dict) and "folds" in data:
        data = data["folds"]
    if isinstance(data, dict):  # picai_baseline: {"0": {"subject_list": [...]}}
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except ValueError:
            raise DataError("split file keys must be fold numbers", path=str(path)) from None
    folds = []
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict):
            entry = entry.get("val", entry.get("subject_list"))
        if not isinstance(entry, list) or not all(isinstance(c, str) for c in entry):
            raise DataError("each fold must be a list of case ids", path=str(path))
        folds.append(entry)
    if not folds:
        raise DataError("split file holds no folds", path=str(path))
    return folds


def write_split_file(path: str | Path, folds: list[list[str]], seed: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"n_folds": len(folds), "seed": seed, "folds": folds}, indent=1))
    os.replace(tmp, path)


def load_or_make_folds(
    path: str | Path,
    case_ids: Sequence[str],
    patient_ids: Sequence[str],
    positive: Sequence[bool],
    n_folds: int = 5,
    seed: int = 0,
) -> list[list[str]]:
    """The folds in ``path`` when it exists (checked against the data), else new ones written there."""
    path = Path(path)
    patient_of = dict(zip(case_ids, patient_ids, strict=True))
    if path.is_file():
        folds = read_split_file(path)
        check_folds(folds, patient_of, str(path))
        if len(folds) != n_folds:
            raise ConfigError(f"{path} has {len(folds)} folds but data.n_folds is {n_folds}; set data.n_folds")
        missing = sorted(set(case_ids) - {c for f in folds for c in f})
        if missing:
            raise DataError(
                f"{len(missing)} labelled cases are in no fold (e.g. {missing[:3]}); delete the file to make new "
                "folds or set data.split_file", path=str(path))
        return folds
    folds = make_folds(list(case_ids), list(patient_ids), list(positive), n_folds, seed)
    check_folds(folds, patient_of, str(path))
    write_split_file(path, folds, seed)
    return folds
