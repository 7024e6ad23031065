"""picai_eval on written maps, the JSON summary, bootstrap CIs and pooling folds."""

from __future__ import annotations

import json

import numpy as np
import picai_eval
import pytest
from picai_eval.metrics import Metrics

from medssl.errors import DataError
from medssl.evaluation.picai import (
    bootstrap_ci,
    bootstrap_values,
    counts_of,
    evaluate_maps,
    metrics_summary,
    pool_metrics,
)
from tests.evaluation.conftest import make_cases, write_cases


def _in_memory(cases):
    return picai_eval.evaluate(
        y_det=[c["det"] for c in cases.values()],
        y_true=[(c["label"] >= 1).astype(np.int32) for c in cases.values()],
        subject_list=list(cases),
        num_parallel_calls=1,
    )


def test_evaluate_maps_equals_picai_eval_in_memory(written):
    cases, det_paths, label_paths = written
    from_files = evaluate_maps(det_paths, label_paths)
    reference = _in_memory(cases)
    assert from_files.num_lesions == reference.num_lesions > 0
    assert from_files.auroc == pytest.approx(reference.auroc, abs=1e-6)
    assert from_files.AP == pytest.approx(reference.AP, abs=1e-6)
    assert from_files.lesion_results == reference.lesion_results
    assert 0 < from_files.auroc < 1 and 0 < from_files.AP < 1


def test_evaluate_maps_refuses_map_off_the_label_grid(tmp_path):
    cases = make_cases(3)
    det_paths, label_paths = write_cases(cases, tmp_path, spacing=(0.6, 0.5, 3.0))
    with pytest.raises(DataError, match="case00.*differs from its label"):
        evaluate_maps(det_paths, label_paths)
    with pytest.raises(DataError, match="case01.*no label"):
        evaluate_maps(det_paths, {"case00": label_paths["case00"]})


def test_metrics_summary_schema(written):
    cases, *_ = written
    metrics = _in_memory(cases)
    summary = metrics_summary(metrics)
    json.dumps(summary, allow_nan=False)
    assert summary["auroc"] == metrics.auroc and summary["ap"] == metrics.AP
    assert summary["score"] == pytest.approx(metrics.score)
    assert summary["num_cases"] == 10 and summary["num_lesions"] == metrics.num_lesions
    assert set(summary["case_target"].values()) == {0, 1} and len(summary["case_pred"]) == 10
    curves = {"froc": ("lesion_FPR", "sensitivity"), "roc": ("fpr", "tpr"), "pr": ("precision", "recall")}
    for curve, keys in curves.items():
        a, b = (summary[curve][k] for k in keys)
        assert len(a) == len(b) and 2 <= len(a) <= 200
    assert summary["notes"] == []


def test_metrics_summary_undefined_auroc_is_none_with_note(written):
    cases, *_ = written
    positives = {k: c for k, c in cases.items() if c["label"].any()}
    summary = metrics_summary(_in_memory(positives))
    assert summary["auroc"] is None and summary["score"] is None and summary["ap"] is not None
    assert "no negatives" in summary["notes"][0]
    ci = bootstrap_ci(_in_memory(positives), n=50)
    assert ci["auroc"] is None and ci["ap"] is not None


def test_bootstrap_matches_picai_eval_on_the_same_resamples(written):
    cases, *_ = written
    metrics = _in_memory(cases)
    rng = np.random.default_rng(1)
    draws = rng.integers(0, 10, size=(20, 10))
    values = bootstrap_values(metrics, counts_of(draws, 10))
    for k, draw in enumerate(draws):
        subjects = [metrics.subject_list[i] for i in draw]
        targets = [metrics.case_target[s] for s in subjects]
        if 0 < sum(targets) < len(targets):
            assert values["auroc"][k] == pytest.approx(metrics.calc_auroc(subject_list=subjects), abs=1e-9)
        else:
            assert np.isnan(values["auroc"][k])
        assert values["ap"][k] == pytest.approx(metrics.calc_AP(subject_list=subjects), abs=1e-9)


def test_bootstrap_ci_contains_point_estimate(written):
    cases, *_ = written
    metrics = _in_memory(cases)
    ci = bootstrap_ci(metrics, n=1000, seed=0)
    for name, point in (("auroc", metrics.auroc), ("ap", metrics.AP), ("score", metrics.score)):
        low, high = ci[name]
        assert low <= point <= high, (name, low, point, high)
    assert ci == bootstrap_ci(metrics, n=1000, seed=0)  # seeded
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(metrics, alpha=1.5)


def test_pooled_folds_equal_evaluating_all_cases(written):
    cases, *_ = written
    names = list(cases)
    fold_a = _in_memory({k: cases[k] for k in names[:5]})
    fold_b = _in_memory({k: cases[k] for k in names[5:]})
    pooled, everything = pool_metrics([fold_a, fold_b]), _in_memory(cases)
    assert isinstance(pooled, Metrics) and pooled.num_cases == 10
    assert pooled.auroc == pytest.approx(everything.auroc) and pooled.AP == pytest.approx(everything.AP)
    assert pooled.lesion_results == everything.lesion_results
    with pytest.raises(ValueError, match="more than one fold"):
        pool_metrics([fold_a, fold_a])
