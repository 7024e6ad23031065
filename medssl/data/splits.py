"""Patient-grouped, lesion-stratified folds, saved to and read from a split file.

``data.split_file`` names the validation cases of every fold. It may be

- a split we wrote: ``{"n_folds", "seed", "folds": [[val case ids], ...]}`` (by default
  ``<cache_dir>/splits_<dataset key>_seed<k>.json``, made when absent);
- a user's JSON: a list of lists of case ids, ``{"folds": [{"val": [...]}, ...]}``, the picai_baseline
  form ``{"0": {"subject_list": [...]}, ...}`` or nnU-Net's ``splits_final.json`` / ``splits.json``
  (``[{"train": [...], "val": [...]}, ...]``);
- picai_baseline's per-fold ``ds-config-valid-fold-<k>.json`` files: a folder holding them, or a list
  of them (one file is one fold);
- a name: ``picai_public`` (the public five folds of all 1,500 PI-CAI cases, as the picai_baseline
  package ships them) or ``picai_public_nnunet`` (the same folds restricted to the 1,295 cases with an
  expert delineation, the split of picai_baseline's nnU-Net and U-Net baselines).

Cases are ``<patient_id>_<study_id>`` for PI-CAI. A split never puts one patient in two folds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medssl.errors import ConfigError, DataError
from medssl.io import read_json, write_json
from medssl.records import package_version

logger = logging.getLogger(__name__)

# split name -> folder of picai_baseline/splits; its splits.json (nnU-Net form) has the same validation folds
# as its ds-config-valid-fold-<k>.json files, and picai_nnunet ships only that file
PICAI_SPLITS = {"picai_public": "picai", "picai_public_nnunet": "picai_nnunet"}
_DS_CONFIG = re.compile(r"ds-config-(?P<part>[a-z]+)-fold-(?P<fold>\d+)\.json")
_NNUNET_NAMES = ("splits_final.json", "splits.json")

SplitFile = str | Path | Sequence[str | Path]


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


def folds_sha256(folds: list[list[str]]) -> str:
    """Hash of the folds as canonical JSON (fold order kept, case order within a fold not)."""
    canonical = json.dumps([sorted(fold) for fold in folds], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def default_split_file(cache_dir: str | Path | None, dataset_key: str, seed: int) -> Path:
    """Where folds made with ``seed`` are kept: another seed never reuses them."""
    return Path(cache_dir or ".") / f"splits_{dataset_key}_seed{seed}.json"


def _picai_baseline_folder(name: str) -> Path:
    # find_spec locates the package without importing it (picai_baseline prints a banner on import)
    spec = importlib.util.find_spec("picai_baseline")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"data.split_file {name} reads the folds shipped by picai_baseline: pip install "
                          "picai_baseline")
    return Path(next(iter(spec.submodule_search_locations))) / "splits" / PICAI_SPLITS[name]


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read split file: {' '.join(str(e).split())}", path=str(path)) from None


def _case_ids(values: Any) -> list[str] | None:
    if isinstance(values, list) and all(isinstance(c, str) for c in values):
        return values
    return None


def _case_of_file(path: Any) -> str | None:
    """``<patient_id>_<study_id>`` from an image or label path (``.../10000_1000000_0000.nii.gz``)."""
    if isinstance(path, list) and path:
        path = path[0]  # image_paths holds one list of channel files per case
    if not isinstance(path, str):
        return None
    match = re.match(r"([^_./\\]+_[^_./\\]+)", Path(path).name)
    return match.group(1) if match else None


def _ds_config_cases(path: Path) -> list[str]:
    """Cases of one picai_baseline ds-config file: ``subject_list``, else the U-Net overview's
    ``pat_ids``/``study_ids``, else the case ids in the ``label_paths``/``image_paths`` file names."""
    data = _json(path)
    if isinstance(data, dict):
        if (cases := _case_ids(data.get("subject_list"))) is not None:
            return cases
        patients, studies = data.get("pat_ids"), data.get("study_ids")
        if isinstance(patients, list) and isinstance(studies, list) and len(patients) == len(studies):
            return [f"{p}_{s}" for p, s in zip(patients, studies)]
        for key in ("label_paths", "image_paths"):
            if isinstance(data.get(key), list):
                cases = [_case_of_file(p) for p in data[key]]
                if all(cases):
                    return cases
    raise DataError("a ds-config file needs 'subject_list' (or 'image_paths'/'label_paths' named "
                    "<patient_id>_<study_id>...)", path=str(path))


def _read_ds_configs(paths: Sequence[Path], source: str) -> list[list[str]]:
    """Validation folds from ``ds-config-valid-fold-<k>.json`` files (train files are their complement)."""
    valid: dict[int, Path] = {}
    for path in paths:
        match = _DS_CONFIG.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path.name} is not a ds-config-<train|valid>-fold-<k>.json file", path=source)
        if match["part"] in ("valid", "val"):
            if int(match["fold"]) in valid:
                raise DataError(f"two validation files for fold {match['fold']}", path=source)
            valid[int(match["fold"])] = path
    if not valid:
        raise DataError("no ds-config-valid-fold-<k>.json among the files: give the validation file of every "
                        "fold (or their folder)", path=source)
    if len(valid) == 1:
        raise DataError("a ds-config file holds one fold: give the ds-config-valid-fold-<k>.json file of every fold "
                        "(a list) or their folder", path=source)
    if sorted(valid) != list(range(len(valid))):
        raise DataError(f"validation files for folds {sorted(valid)}; give ds-config-valid-fold-0..{max(valid)}"
                        ".json (a ds-config file is one fold: give all of them or their folder)", path=source)
    return [_ds_config_cases(valid[k]) for k in range(len(valid))]


def _parse_folds(data: Any, source: str) -> list[list[str]]:
    """Folds from a split file's JSON: ours, a list of lists, nnU-Net's list of {train, val}, picai_baseline's
    ``{"0": {"subject_list": [...]}}``."""
    if isinstance(data, dict) and "folds" in data:
        data = data["folds"]
    if isinstance(data, dict):  # picai_baseline: {"0": {"subject_list": [...]}}
        try:
            data = [data[k] for k in sorted(data, key=int)]
        except ValueError:
            raise DataError("split file keys must be fold numbers", path=source) from None
    folds = []
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict):
            entry = entry.get("val", entry.get("subject_list"))
        if _case_ids(entry) is None:
            raise DataError("each fold must be a list of case ids (or {\"val\": [...]})", path=source)
        folds.append(entry)
    if not folds:
        raise DataError("split file holds no folds", path=source)
    return folds


def _load(split_file: SplitFile) -> tuple[list[list[str]], dict[str, Any]]:
    """The folds (each sorted) and where they come from: ``kind``, ``path``, ``seed``."""
    if isinstance(split_file, Sequence) and not isinstance(split_file, str):
        paths = [Path(p) for p in split_file]
        if len(paths) == 1 and not _DS_CONFIG.fullmatch(paths[0].name):
            return _load(paths[0])
        source = ", ".join(str(p) for p in paths)
        folds = _read_ds_configs(paths, source)
        info = {"kind": "user_file", "path": [str(p) for p in paths], "seed": None}
    elif str(split_file) in PICAI_SPLITS:
        name = str(split_file)
        path = _picai_baseline_folder(name) / "splits.json"
        folds = _parse_folds(_json(path), name)
        info = {"kind": "picai_public", "name": name, "path": str(path), "seed": None,
                "package": f"picai_baseline {package_version('picai_baseline')}"}
    else:
        path = Path(split_file)
        if path.is_dir():
            ds_configs = sorted(path.glob("ds-config-*-fold-*.json"))
            nnunet = [path / n for n in _NNUNET_NAMES if (path / n).is_file()]
            if ds_configs:
                folds = _read_ds_configs(ds_configs, str(path))
            elif nnunet:
                folds = _parse_folds(_json(nnunet[0]), str(nnunet[0]))
                path = nnunet[0]
            else:
                raise DataError("the folder holds no ds-config-valid-fold-<k>.json nor splits_final.json; give "
                                "one of them or a split file", path=str(path))
            return [sorted(f) for f in folds], {"kind": "user_file", "path": str(path), "seed": None}
        if _DS_CONFIG.fullmatch(path.name):
            raise DataError("a ds-config file holds one fold: give the folder holding ds-config-valid-fold-<k>.json "
                            "of every fold, or a list of those files", path=str(path))
        data = _json(path)
        folds = _parse_folds(data, str(path))
        ours = isinstance(data, dict) and isinstance(data.get("seed"), int)
        info = {"kind": "made" if ours else "user_file", "path": str(path), "seed": data["seed"] if ours else None}
    return [sorted(f) for f in folds], info


def read_split_file(split_file: SplitFile) -> list[list[str]]:
    """Validation case ids per fold (each sorted) from any accepted form (see the module docstring).

    Example:
        >>> folds = read_split_file("picai_public")  # 5 folds of about 300 PI-CAI cases
    """
    return _load(split_file)[0]


def split_source(split_file: SplitFile) -> dict[str, Any]:
    """Provenance of a split: ``{"kind": "picai_public" | "user_file" | "made", "path", "sha256", "seed"}``.

    ``seed`` is the recorded seed of folds we made (else ``None``); ``picai_public`` adds ``name`` and the
    picai_baseline ``package`` version; ``sha256`` is :func:`folds_sha256` of the folds.
    """
    folds, info = _load(split_file)
    return {**info, "sha256": folds_sha256(folds)}


def write_split_file(path: str | Path, folds: list[list[str]], seed: int) -> None:
    """Folds we made, with their seed, written atomically."""
    write_json(path, {"n_folds": len(folds), "seed": seed, "folds": folds})


def _some(cases: Sequence[str], n: int = 5) -> str:
    return ", ".join(cases[:n]) + (", ..." if len(cases) > n else "")


def load_or_make_folds(
    path: SplitFile,
    case_ids: Sequence[str],
    patient_ids: Sequence[str],
    positive: Sequence[bool],
    n_folds: int = 5,
    seed: int = 0,
    missing: Literal["error", "drop"] = "error",
    default_file: bool = False,
) -> list[list[str]]:
    """The folds of ``path`` when it exists (checked against the data), else new ones written there.

    Args:
        path: a split in any accepted form (see the module docstring); a ``.json`` path that does not exist
            receives new folds.
        case_ids: the labelled cases of the data.
        patient_ids: patient of each case.
        positive: lesion presence of each case (stratifies new folds).
        n_folds: number of folds the split must have.
        seed: seed of new folds.
        missing: cases the split names that the data lacks: ``error`` (refused, naming them) or ``drop``
            them from the folds (logged). A case of the data that no fold names is always refused.
        default_file: ``path`` is the default file made for ``seed``: a recorded seed that differs is refused
            (a user-given file is used as given).

    Example:
        >>> folds = load_or_make_folds("picai_public", ids, patients, positive, missing="drop")
    """
    if missing not in ("error", "drop"):
        raise ConfigError(f"data.split_missing must be error or drop, got {missing!r}")
    patient_of = dict(zip(case_ids, patient_ids, strict=True))
    is_path = isinstance(path, str | Path) and str(path) not in PICAI_SPLITS
    if is_path and not Path(path).exists():
        if Path(path).suffix != ".json":
            raise ConfigError(f"data.split_file {path} is not a file, a folder nor a known split "
                              f"({', '.join(PICAI_SPLITS)})")
        folds = make_folds(list(case_ids), list(patient_ids), list(positive), n_folds, seed)
        check_folds(folds, patient_of, str(path))
        write_split_file(path, folds, seed)
        return folds

    folds, info = _load(path)
    source = info.get("name") or str(info["path"])
    if default_file and info["seed"] is not None and info["seed"] != seed:
        raise ConfigError(f"{path} was made with data.split_seed {info['seed']}, not {seed}; delete it to make "
                          "new folds")
    if len(folds) != n_folds:
        raise ConfigError(f"{source} has {len(folds)} folds but data.n_folds is {n_folds}; set data.n_folds")
    absent = sorted({c for f in folds for c in f} - patient_of.keys())
    if absent and missing == "error":
        hint = ("; with expert labels only, picai_public_nnunet names the 1,295 expert-labelled cases"
                if info.get("name") == "picai_public" else "")
        raise DataError(f"the split names {len(absent)} case(s) that are not among the {len(patient_of)} labelled "
                        f"cases of the data ({_some(absent)}); set data.split_missing: drop to leave them out of "
                        f"the folds{hint}", path=source)
    if absent:
        logger.warning("%d case(s) of the split %s are not among the labelled cases of the data; left out of the "
                       "folds (data.split_missing: drop)", len(absent), source)
        folds = [[c for c in f if c in patient_of] for f in folds]
        if empty := [k for k, f in enumerate(folds) if not f]:
            raise DataError(f"fold(s) {empty} keep no case of the data once the missing cases are dropped",
                            path=source)
    check_folds(folds, patient_of, source)
    unnamed = sorted(patient_of.keys() - {c for f in folds for c in f})
    if unnamed:
        fix = ("delete the file to make new folds" if info["kind"] == "made"
               else "add them to a fold or leave them out of the data")
        raise DataError(f"{len(unnamed)} labelled case(s) of the data are in no fold and would never be validated "
                        f"({_some(unnamed)}); {fix}", path=source)
    return folds


def training_subset(case_ids: Sequence[str], patient_ids: Sequence[str], positive: Sequence[bool],
                    fraction: float, seed: int = 0) -> list[str]:
    """A fraction of a fold's training cases for a label-efficiency study: by patient, stratified, nested.

    Patients are ordered once by a seeded permutation within each stratum (patients with a lesion in any
    study, patients without); a fraction takes the first ``round(fraction * n)`` patients of each stratum
    (at least one where the stratum is not empty), with all their studies. The same seed gives the same
    order, so the 10 % set lies inside the 25 % set, which lies inside the 50 % set, and so on.

    Args:
        case_ids, patient_ids, positive: the fold's training cases, their patients and lesion presence.
        fraction: in (0, 1]; 1 returns every case.
        seed: the permutation's seed.

    Returns:
        The chosen case ids, in the order given.

    Example:
        >>> len(training_subset(["a_1", "b_1", "c_1", "d_1"], ["a", "b", "c", "d"], [True, False, True, False], 0.5))
        2
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"a training fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(case_ids)
    patients: dict[str, bool] = {}
    for patient, pos in zip(patient_ids, positive, strict=True):
        patients[patient] = patients.get(patient, False) or bool(pos)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for stratum in (True, False):
        members = sorted(p for p, pos in patients.items() if pos == stratum)
        if not members:
            continue
        order = [members[i] for i in rng.permutation(len(members))]
        chosen.update(order[: max(1, int(round(fraction * len(members))))])
    return [c for c, p in zip(case_ids, patient_ids) if p in chosen]


def prepare_cv_split(dm, split_file: Path, overwrite: bool = False) -> tuple[list[list[str]], dict[str, Any]]:
    """The folds a cross-validation validates, kept in ``split_file`` (``medssl cv``'s ``OUTPUT/splits.json``).

    A user's ``data.split_file`` (a file, a folder of picai_baseline ds-configs, nnU-Net's splits, or a
    name such as ``picai_public``) is used as given: copied to ``split_file`` with its provenance, never
    replaced. Otherwise folds are made with ``data.split_seed`` and kept there; a rerun with another seed
    into the same output is refused (``overwrite`` remakes them).

    Args:
        dm: the data module (its ``split_file`` is pointed at ``split_file`` and it is set up for ``fit``).
        split_file: where the cv keeps its folds.
        overwrite: replace folds other settings made.

    Returns:
        ``(folds, source)``: the case ids of each fold, and where they came from with their hash (``sha256_used``).
    """
    user = dm.split_file
    user_is_output = isinstance(user, str) and Path(user).resolve() == split_file.resolve()
    kept = read_json(split_file, "split file") if split_file.is_file() else None
    if user and not user_is_output:
        source = split_source(user)
        folds = read_split_file(user)
        if kept is not None and read_split_file(split_file) != folds and not overwrite:
            raise ConfigError(f"{split_file} holds other folds than data.split_file {user}; give a new --output "
                              "or pass --overwrite")
        if kept is None or read_split_file(split_file) != folds:
            write_json(split_file, {"n_folds": len(folds), "source": source, "folds": folds})
            kept = read_json(split_file, "split file")
    else:
        if overwrite and kept is not None and not (isinstance(kept, dict) and isinstance(kept.get("source"), dict)):
            split_file.unlink()  # folds made from the seed: remade from the data (the same folds for the same data)
            kept = None
        recorded = kept.get("source") if isinstance(kept, dict) else None
        source = recorded if isinstance(recorded, dict) else None
        seed = kept.get("seed") if isinstance(kept, dict) else None
        if source is None and seed is not None and seed != dm.split_seed and not overwrite:
            raise ConfigError(f"{split_file} holds folds made with data.split_seed {seed}, not {dm.split_seed}; "
                              "give a new --output or pass --overwrite")
        if source is None and seed is not None and seed != dm.split_seed:
            split_file.unlink()
    dm.split_file = str(split_file)
    dm.setup("fit")  # makes (or checks) the folds in split_file against the data
    if source is None:
        source = split_source(str(split_file))
    return dm.folds, {**source, "sha256_used": folds_sha256(dm.folds)}
