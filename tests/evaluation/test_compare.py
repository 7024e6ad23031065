"""Paired comparison of two runs on the same cases: same resamples for both, CI of the difference, p-value."""

from __future__ import annotations

import numpy as np
import picai_eval
import pytest
from picai_eval.metrics import Metrics

from medssl.errors import DataError
from medssl.evaluation.compare import compare_paired, compare_seeds
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


def test_seed_bootstrap_with_one_seed_is_the_paired_case_bootstrap():
    good, poor = _runs()
    paired = compare_paired(good, poor, n_bootstrap=300, seed=2)
    seeded = compare_seeds({0: good}, {0: poor}, n_bootstrap=300, seed=2)
    for m in ("auroc", "ap", "score"):
        assert seeded[m]["ci"] == pytest.approx(paired[m]["ci"])
        assert seeded[m]["difference"] == pytest.approx(paired[m]["difference"])
        assert seeded[m]["training_sd"] is None and seeded[m]["verdict"] == "helped"


def test_seed_bootstrap_widens_when_training_seeds_disagree():
    """A planted seed effect: with two seeds that agree (A better in both) the CI excludes 0; when the second
    seed's training went the other way (A worse), the spread between trainings shows in a wider interval that
    includes 0, although each seed alone is clear-cut on its cases."""
    good, poor = _runs(seed=0)
    good2, poor2 = _runs(seed=1)
    agree = compare_seeds({0: good, 1: good2}, {0: poor, 1: poor2}, n_bootstrap=400, seed=0)
    disagree = compare_seeds({0: good, 1: poor2}, {0: poor, 1: good2}, n_bootstrap=400, seed=0)
    for m in ("auroc", "score"):
        width = [out[m]["ci"][1] - out[m]["ci"][0] for out in (agree, disagree)]
        assert width[1] > 2 * width[0], (m, width)
        assert agree[m]["verdict"] == "helped" and disagree[m]["verdict"] == "no detectable difference"
        assert disagree[m]["training_sd"] > 3 * agree[m]["training_sd"]
        assert disagree[m]["per_seed"][0] > 0 > disagree[m]["per_seed"][1]
    with pytest.raises(ValueError, match="same training seeds"):
        compare_seeds({0: good}, {1: poor})


def test_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero():
    """Tie-consistent: on resampled differences with many exact ties at 0, p < 0.05 iff the 95% CI excludes 0."""
    from medssl.evaluation.compare import _tails

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        n = 1000
        diff = np.where(rng.random(n) < rng.uniform(0, 0.3), 0.0, rng.normal(rng.normal(0, 0.05), 0.02, n))
        low, high = np.percentile(diff, [2.5, 97.5])
        p = _tails(diff)
        if min(abs(low), abs(high)) < 1e-3 and not (low == 0 or high == 0):
            continue  # within the resolution of the resamples
        assert (p < 0.05) == (low > 0 or high < 0), (p, low, high)
        checked += 1
    assert checked > 300
