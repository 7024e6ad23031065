"""Split sources: picai_baseline's public folds, ds-config folders, nnU-Net splits, missing cases, seeds."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from medssl.data.datamodule import FinetuneDataModule
from medssl.data.splits import (
    default_split_file,
    folds_sha256,
    load_or_make_folds,
    make_folds,
    read_split_file,
    split_source,
)
from medssl.errors import ConfigError, DataError

needs_picai_baseline = pytest.mark.skipif(importlib.util.find_spec("picai_baseline") is None,
                                          reason="picai_baseline is not installed")

FOLDS = [["1_10", "2_20"], ["3_30", "3_31"], ["4_40", "5_50"]]  # patient 3 has two studies


def _data(folds):
    ids = sorted(c for f in folds for c in f)
    return ids, [c.split("_")[0] for c in ids], [i % 2 == 0 for i in range(len(ids))]


@needs_picai_baseline
def test_picai_public_five_patient_disjoint_folds():
    folds = read_split_file("picai_public")
    assert len(folds) == 5 and all(290 <= len(f) <= 310 for f in folds)
    cases = [c for f in folds for c in f]
    assert len(cases) == len(set(cases)) == 1500
    fold_of_patient = {}
    for k, fold in enumerate(folds):
        for case in fold:
            assert fold_of_patient.setdefault(case.split("_")[0], k) == k  # no patient in two folds
    # the expert-labelled variant: the same folds restricted to 1,295 cases
    expert = read_split_file("picai_public_nnunet")
    assert sum(map(len, expert)) == 1295
    assert all(set(e) <= set(f) for e, f in zip(expert, folds))
    source = split_source("picai_public")
    assert source["kind"] == "picai_public" and source["seed"] is None
    assert source["sha256"] == folds_sha256(folds) and source["package"].startswith("picai_baseline ")


@needs_picai_baseline
def test_split_missing_refused_or_dropped(caplog):
    folds = read_split_file("picai_public")
    lacking = sorted(c for f in folds for c in f[:2])[:7]  # cases from several folds
    ids, patients, positive = _data([[c for c in f if c not in lacking] for f in folds])
    refused = rf"names 7 case\(s\) .*\({lacking[0]}, .*split_missing: drop.*picai_public_nnunet"
    with pytest.raises(DataError, match=refused):
        load_or_make_folds("picai_public", ids, patients, positive)
    with caplog.at_level(logging.WARNING, logger="medssl.data.splits"):
        kept = load_or_make_folds("picai_public", ids, patients, positive, missing="drop")
    assert [r.getMessage() for r in caplog.records if "left out" in r.getMessage()][0].startswith("7 case(s)")
    assert sorted(c for f in kept for c in f) == ids  # every present case in exactly one fold
    assert all(set(k) <= set(f) for k, f in zip(kept, folds))
    # a case of the data that the split does not name stays an error, even with drop
    with pytest.raises(DataError, match=r"1 labelled case\(s\) of the data are in no fold .*\(99_99\)"):
        load_or_make_folds("picai_public", [*ids, "99_99"], [*patients, "99"], [*positive, False], missing="drop")


def test_picai_baseline_absent_is_one_line(monkeypatch):
    monkeypatch.setattr("medssl.data.splits.importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install picai_baseline"):
        read_split_file("picai_public")


def test_ds_config_folder_list_and_overview(tmp_path):
    everything = sorted(c for f in FOLDS for c in f)
    for k, fold in enumerate(FOLDS):
        train = [c for c in everything if c not in fold]
        (tmp_path / f"ds-config-train-fold-{k}.json").write_text(json.dumps({"subject_list": train}))
        (tmp_path / f"ds-config-valid-fold-{k}.json").write_text(json.dumps({"subject_list": fold}))
    assert read_split_file(tmp_path) == FOLDS
    valid = [tmp_path / f"ds-config-valid-fold-{k}.json" for k in (2, 0, 1)]
    assert read_split_file([str(p) for p in valid]) == FOLDS
    ids, patients, positive = _data(FOLDS)
    assert load_or_make_folds(str(tmp_path), ids, patients, positive, 3) == FOLDS
    with pytest.raises(DataError, match="a ds-config file holds one fold: give"):
        read_split_file(valid[0])
    with pytest.raises(DataError, match="no ds-config-valid-fold"):
        read_split_file([str(tmp_path / f"ds-config-train-fold-{k}.json") for k in range(3)])
    # the U-Net baseline's overview form: case ids from the image and label file names
    overview = tmp_path / "overview"
    overview.mkdir()
    for k, fold in enumerate(FOLDS):
        images = [[f"/x/imagesTr/{c}_000{m}.nii.gz" for m in range(3)] for c in fold]
        (overview / f"ds-config-valid-fold-{k}.json").write_text(json.dumps({"image_paths": images}))
    assert read_split_file(overview) == FOLDS
    (overview / "ds-config-valid-fold-1.json").write_text(json.dumps({"label_paths": [f"/l/{c}.nii.gz" for c in
                                                                                       FOLDS[1]]}))
    assert read_split_file(overview) == FOLDS


def test_nnunet_splits_file_and_folder(tmp_path):
    everything = sorted(c for f in FOLDS for c in f)
    splits = [{"train": [c for c in everything if c not in f], "val": f} for f in FOLDS]
    (tmp_path / "splits_final.json").write_text(json.dumps(splits))
    assert read_split_file(tmp_path / "splits_final.json") == FOLDS
    assert read_split_file(tmp_path) == FOLDS  # nnU-Net's preprocessed folder
    source = split_source(tmp_path / "splits_final.json")
    assert source["kind"] == "user_file" and source["seed"] is None


def test_seed_in_default_name_and_recorded(tmp_path):
    ids, patients, positive = _data(FOLDS)
    path = default_split_file(tmp_path, "abc", 3)
    assert path.name == "splits_abc_seed3.json"
    folds = load_or_make_folds(path, ids, patients, positive, 2, seed=3, default_file=True)
    assert json.loads(path.read_text())["seed"] == 3
    assert split_source(path) == {"kind": "made", "path": str(path), "seed": 3, "sha256": folds_sha256(folds)}
    with pytest.raises(ConfigError, match="made with data.split_seed 3, not 4"):
        load_or_make_folds(path, ids, patients, positive, 2, seed=4, default_file=True)
    assert load_or_make_folds(path, ids, patients, positive, 2, seed=4) == folds  # a user's file: as given


def test_unknown_split_name_and_hash():
    ids, patients, positive = _data(FOLDS)
    with pytest.raises(ConfigError, match="picai_publik is not a file, a folder nor a known split"):
        load_or_make_folds("picai_publik", ids, patients, positive)
    assert folds_sha256([["b", "a"], ["c"]]) == folds_sha256([["a", "b"], ["c"]])
    assert folds_sha256([["c"], ["a", "b"]]) != folds_sha256([["a", "b"], ["c"]])


def test_datamodule_split_missing_drop(picai_root, tmp_path):
    labelled = [c for c in FinetuneDataModule(root=str(picai_root)).discover() if c.label is not None]
    ids = [c.case_id for c in labelled]
    folds = make_folds(ids, [c.patient_id for c in labelled], [i % 2 == 0 for i in range(len(ids))], 5)
    folds[0].append("99998_9999998")
    folds[3].append("99999_9999999")
    split = tmp_path / "user_split.json"
    split.write_text(json.dumps(folds))
    with pytest.raises(DataError, match=r"names 2 case\(s\) .*\(99998_9999998, 99999_9999999\)"):
        FinetuneDataModule(root=str(picai_root), split_file=str(split), cache_dir=None).setup("fit")
    dm = FinetuneDataModule(root=str(picai_root), split_file=str(split), cache_dir=None, split_missing="drop", fold=3)
    dm.setup("fit")
    assert sorted(c for f in dm.folds for c in f) == sorted(ids)
    assert {c.case_id for c in dm.val_cases} == set(folds[3]) - {"99999_9999999"}
    with pytest.raises(ConfigError, match="split_missing must be error or drop"):
        load_or_make_folds(split, ids, ids, [False] * len(ids), missing="skip")
