"""Paired comparison of two runs on the same cases: same resamples for both, CI of the difference, p-value."""

from __future__ import annotations

import numpy as np
import picai_eval
import pytest
from picai_eval.metrics import Metrics

from medssl.errors import DataError
from medssl.evaluation.compare import compare_paired
from medssl.evaluation.picai import picai_score

SHAPE = (4, 16, 16)  # [D, H, W]


def _runs(n: int = 40, seed: int = 0) -> tuple[Metrics, Metrics]:
    """A good run (lesions found at high confidence, weak false positives) and a poor one (the reverse)."""
    rng = np.random.default_rng(seed)
    good, poor, labels = [], [], []
    for i in range(n):
        label = np.zeros(SHAPE, np.int32)
        lesion = (slice(1, 3), slice(4, 8), slice(4, 8))
        fp = (slice(1, 3), slice(10, 14), slice(10, 14))
        a, b = np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.float32)
        if i % 2:
            label[lesion] = 1
            a[lesion] = 0.6 + 0.3 * rng.random()
            b[lesion] = 0.05 + 0.3 * rng.random()
        a[fp] = 0.05 + 0.3 * rng.random()
        b[fp] = 0.5 + 0.4 * rng.random()
        good.append(a), poor.append(b), labels.append(label)
    ids = [f"c{i:02d}" for i in range(n)]
    evaluate = lambda det: picai_eval.evaluate(y_det=det, y_true=labels, subject_list=ids, num_parallel_calls=1)  # noqa: E731
    return evaluate(good), evaluate(poor)


def test_identical_runs_differ_by_zero_with_p_one():
    good, _ = _runs()
    again = Metrics(lesion_results=dict(good.lesion_results), subject_list=list(reversed(good.subject_list)))
    out = compare_paired(good, again, n_bootstrap=200)
    assert out["cases"] == 40
    for m in ("auroc", "ap", "score"):
        assert out[m]["difference"] == pytest.approx(0.0, abs=1e-12)
        assert out[m]["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
        assert out[m]["p_value"] == 1.0 and out[m]["n_valid"] == 200


def test_clearly_better_run_has_ci_excluding_zero():
    good, poor = _runs()
    out = compare_paired(good, poor, n_bootstrap=500, seed=1)
    assert out["auroc"]["a"] == pytest.approx(good.auroc) and out["ap"]["b"] == pytest.approx(poor.AP)
    assert out["score"]["a"] == pytest.approx(picai_score(good.auroc, good.AP))
    for m in ("auroc", "ap", "score"):
        low, high = out[m]["ci"]
        assert 0 < low <= out[m]["difference"] <= high, (m, out[m])
        assert out[m]["p_value"] < 0.01
    reverse = compare_paired(poor, good, n_bootstrap=500, seed=1)
    assert reverse["auroc"]["ci"] == pytest.approx([-out["auroc"]["ci"][1], -out["auroc"]["ci"][0]])
    assert reverse["ap"]["p_value"] == out["ap"]["p_value"]  # two-sided
    assert compare_paired(good, poor, n_bootstrap=500, seed=1) == out  # seeded


def test_pairs_cases_not_positions():
    """The same case gets the same resample count in both runs whatever their subject_list order."""
    good, poor = _runs()
    shuffled = Metrics(lesion_results=dict(poor.lesion_results),
                       subject_list=list(np.random.default_rng(3).permutation(poor.subject_list)))
    a, b = compare_paired(good, poor, n_bootstrap=300), compare_paired(good, shuffled, n_bootstrap=300)
    for m in ("auroc", "ap", "score"):
        assert b[m]["ci"] == pytest.approx(a[m]["ci"], abs=1e-9) and b[m]["p_value"] == a[m]["p_value"]


def test_refuses_different_cases_or_labels():
    good, poor = _runs()
    subset = Metrics(lesion_results={k: v for k, v in poor.lesion_results.items() if k != "c03"})
    with pytest.raises(DataError, match=r"different cases \(0 only in the first.*1 only in the second, e.g. \['c03'\]"):
        compare_paired(subset, good)
    relabelled = dict(poor.lesion_results)
    relabelled["c00"] = [(1, 0.0, 0.0)]  # c00 has no lesion in the labels of `good`
    with pytest.raises(DataError, match=r"different labels.*c00"):
        compare_paired(good, Metrics(lesion_results=relabelled))
