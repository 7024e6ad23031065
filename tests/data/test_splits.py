"""Patient-grouped, stratified folds and split files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medssl.data.datamodule import FinetuneDataModule
from medssl.data.splits import check_folds, load_or_make_folds, make_folds, read_split_file
from medssl.errors import ConfigError, DataError


def _toy(n_patients=20):
    ids, patients, positive = [], [], []
    for p in range(n_patients):
        for s in range(1 + (p % 3 == 0)):  # every third patient has two studies
            ids.append(f"{p}_{s}")
            patients.append(str(p))
            positive.append(p % 2 == 0)
    return ids, patients, positive


def test_two_studies_of_one_patient_share_a_fold():
    ids, patients, positive = _toy()
    folds = make_folds(ids, patients, positive, 5, seed=0)
    fold_of = {c: k for k, f in enumerate(folds) for c in f}
    assert sorted(fold_of) == sorted(ids)
    for p in set(patients):
        assert len({fold_of[c] for c, q in zip(ids, patients) if q == p}) == 1
    # stratified: every fold has positives and negatives
    pos = dict(zip(ids, positive))
    assert all(0 < sum(pos[c] for c in f) < len(f) for f in folds)


def test_split_file_reused_and_patient_leak_refused(tmp_path):
    ids, patients, positive = _toy()
    path = tmp_path / "splits.json"
    folds = load_or_make_folds(path, ids, patients, positive, 5, 0)
    assert json.loads(path.read_text())["folds"] == folds
    assert load_or_make_folds(path, ids, patients, positive, 5, seed=99) == folds  # reused, not redrawn
    bad = [list(f) for f in folds]
    two = [c for c, p in zip(ids, patients) if p == "0"]
    k = next(i for i, f in enumerate(bad) if two[0] in f)
    bad[k].remove(two[1])
    bad[(k + 1) % 5].append(two[1])
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="patient 0 is in folds"):
        load_or_make_folds(path, ids, patients, positive, 5, 0)


def test_user_split_forms(tmp_path):
    folds = [["a", "b"], ["c"]]
    forms = [folds, {"folds": [{"val": f} for f in folds]}, {str(k): {"subject_list": f} for k, f in enumerate(folds)}]
    for i, form in enumerate(forms):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps(form))
        assert read_split_file(path) == folds
    with pytest.raises(DataError, match="not in the data"):
        check_folds([["a", "zzz"]], {"a": "1"})


def test_finetune_datamodule_folds(picai_root, tmp_path):
    seen, val_patients = [], []
    for fold in range(5):
        dm = FinetuneDataModule(root=str(picai_root), fold=fold, cache_dir=str(tmp_path))
        dm.setup("fit")
        assert not {c.case_id for c in dm.val_cases} & {c.case_id for c in dm.train_cases}
        assert all(c.label is not None for c in dm.val_cases + dm.train_cases)
        seen += [c.case_id for c in dm.val_cases]
        val_patients.append({c.patient_id for c in dm.val_cases})
    labelled = [c.case_id for c in dm.cases if c.label is not None]
    assert sorted(seen) == sorted(labelled)  # every labelled case validated exactly once
    for i in range(5):
        for j in range(i + 1, 5):
            assert not val_patients[i] & val_patients[j]
    made = list(tmp_path.glob("splits_*.json"))
    assert [p.name for p in made] == [f"splits_{dm.dataset_key()}_seed0.json"]  # the seed is in the name
    made[0].write_text(json.dumps({**json.loads(made[0].read_text()), "seed": 7}))
    with pytest.raises(ConfigError, match="made with data.split_seed 7, not 0"):
        FinetuneDataModule(root=str(picai_root), cache_dir=str(tmp_path)).setup("fit")


def test_training_subsets_are_nested_by_patient_and_stratified():
    from medssl.data.splits import training_subset

    rng = np.random.default_rng(0)
    patients = [f"p{i:03d}" for i in range(60) for _ in range(1 + (i % 3 == 0))]  # some with two studies
    cases = [f"{p}_{k}" for k, p in enumerate(patients)]
    positive = [int(p[1:]) % 4 == 0 or bool(rng.random() < 0.1) for p in patients]
    subsets = {f: training_subset(cases, patients, positive, f, seed=5) for f in (0.1, 0.25, 0.5, 1.0)}
    assert subsets[1.0] == cases
    for small, large in ((0.1, 0.25), (0.25, 0.5), (0.5, 1.0)):
        assert set(subsets[small]) < set(subsets[large])
    by_patient = dict(zip(cases, patients))
    for f, chosen in subsets.items():
        taken = {by_patient[c] for c in chosen}
        assert {c for c in cases if by_patient[c] in taken} == set(chosen)  # all studies of a chosen patient
        pos_patients = {p for p, y in zip(patients, positive) if y}
        assert taken & pos_patients and taken - pos_patients  # both strata present
        assert abs(len(taken) / 60 - f) <= 0.05
    assert training_subset(cases, patients, positive, 0.25, seed=5) == subsets[0.25]  # fixed seed, fixed set
    with pytest.raises(Exception, match="in \\(0, 1\\]"):
        training_subset(cases, patients, positive, 0.0)
