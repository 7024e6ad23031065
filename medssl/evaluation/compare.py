"""Paired comparison of two prediction sets on the same cases (run A vs run B, pretrained vs scratch).

Both runs are scored on the same bootstrap resamples of the cases (one draw of case indices per
resample, used for both runs), so the interval is that of the difference itself: the case-to-case
variation the two runs share cancels, which two separate intervals would not show.

Why not picai_eval's own statistics: ``picai_eval.stat_util.pvalue_stat`` is a paired bootstrap,
but its score function sees per-case arrays (``y_true[idx], y_pred[idx]``), which fits case-level
AUROC and not lesion-level AP (a case brings a varying number of lesion entries); it seeds NumPy's
global random state; and its two-tailed p-value doubles one tail (a run A worse than B gets a p
near 2). ``statistical_helper.perform_permutation_test`` compares scores of several trained runs
(unpaired, no cases), and the reader-matching tests need binarised reader calls. So the resamples
here go through ``medssl.evaluation.picai.bootstrap_values``, the weighted form of picai_eval's AUROC
and AP that the tests check against ``Metrics.calc_auroc`` / ``calc_AP`` on the same resamples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from picai_eval.metrics import Metrics

from medssl.errors import DataError
from medssl.evaluation.picai import _draw_counts, _undefined, bootstrap_values, picai_score

# differences this small are float rounding of equal values (the same run summed in another order)
TIE = 1e-12


def _same_cases(metrics_a: Metrics, metrics_b: Metrics) -> list[str]:
    """The common case ids, sorted; refuses different case sets or different labels in one line."""
    a, b = set(metrics_a.subject_list), set(metrics_b.subject_list)
    if a != b:
        only_a, only_b = sorted(a - b, key=str), sorted(b - a, key=str)
        raise DataError(f"the two prediction sets cover different cases ({len(only_a)} only in the first, e.g. "
                        f"{only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]}): a paired comparison "
                        "needs both scored on the same cases")

    def lesions(metrics: Metrics, case: str) -> int:
        return sum(int(entry[0]) for entry in metrics.lesion_results[case])

    differ = [c for c in sorted(a, key=str) if int(metrics_a.case_target[c]) != int(metrics_b.case_target[c])
              or lesions(metrics_a, c) != lesions(metrics_b, c)]
    if differ:
        raise DataError(f"the two prediction sets were scored against different labels ({len(differ)} cases differ "
                        f"in their lesions, e.g. {differ[:3]}): score both against the same labels")
    return sorted(a, key=str)


def _point(metrics: Metrics) -> dict[str, float | None]:
    auroc_note, ap_note = _undefined(metrics)
    auroc = None if auroc_note else float(metrics.auroc)
    ap = None if ap_note else float(metrics.AP)
    return {"auroc": auroc, "ap": ap, "score": picai_score(auroc, ap)}


def compare_paired(
    metrics_a: Metrics, metrics_b: Metrics, n_bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, Any]:
    """A - B for AUROC, AP and PI-CAI score: paired bootstrap CI (percentile) and two-sided p-value.

    The p-value inverts the percentile interval: twice the smaller share of resampled differences on
    either side of 0 (at most 1), so it is below ``alpha`` exactly when the interval excludes 0
    (up to the resolution of ``n_bootstrap``). Resamples where a metric is undefined (no positive,
    negative or lesion drawn) are left out for that metric and counted in ``n_valid``.

    Args:
        metrics_a: picai_eval Metrics of run A (``evaluate_maps``, ``picai_eval.evaluate``, ``pool_metrics``).
        metrics_b: Metrics of run B on the same cases and labels.
        n_bootstrap: resamples of the cases.
        seed: random seed (the same seed draws the same resamples).
        alpha: 1 - confidence level of the interval.

    Returns:
        ``{"cases": n, "n_bootstrap", "seed", "level", "auroc": {"a", "b", "difference", "ci": [low, high],
        "p_value", "n_valid"}, "ap": {...}, "score": {...}}``; values are None where the metric is
        undefined on the cases themselves.

    Example:
        >>> compare_paired(evaluate_maps(pretrained_maps, labels), evaluate_maps(scratch_maps, labels))["ap"]["ci"]
        [0.02, 0.11]
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha} should be in (0, 1)")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap {n_bootstrap} should be at least 1")
    cases = _same_cases(metrics_a, metrics_b)
    column = {case: i for i, case in enumerate(cases)}
    counts = _draw_counts(len(cases), n_bootstrap, seed)  # [n, cases], columns in `cases` order
    # each run's columns follow its own subject_list: the same case gets the same count in both
    draws = [bootstrap_values(m, counts[:, [column[s] for s in m.subject_list]]) for m in (metrics_a, metrics_b)]
    points = [_point(metrics_a), _point(metrics_b)]
    out: dict[str, Any] = {"cases": len(cases), "n_bootstrap": n_bootstrap, "seed": seed, "level": 1 - alpha}
    for name in ("auroc", "ap", "score"):
        a, b = points[0][name], points[1][name]
        diff = draws[0][name] - draws[1][name]
        diff = diff[np.isfinite(diff)]
        diff[np.abs(diff) <= TIE] = 0.0
        row: dict[str, Any] = {"a": a, "b": b, "difference": None if a is None or b is None else a - b,
                               "ci": None, "p_value": None, "n_valid": int(len(diff))}
        if row["difference"] is not None and len(diff):
            low, high = np.percentile(diff, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            row["ci"] = [float(low), float(high)]
            row["p_value"] = _tails(diff)
        out[name] = row
    return out


def verdict(ci: list[float] | None) -> str:
    """What a CI of a difference says: ``helped`` (above 0), ``hurt`` (below 0) or ``no detectable difference``;
    ``undefined`` without a CI. The one rule every report's words follow."""
    if not ci or None in ci:
        return "undefined"
    if ci[0] > 0:
        return "helped"
    if ci[1] < 0:
        return "hurt"
    return "no detectable difference"


def _tails(diff: np.ndarray) -> float:
    """Two-sided bootstrap p: twice the smaller share of resampled differences on either side of 0, ties counted on
    both sides (at most 1). So p < alpha exactly when the percentile interval at 1 - alpha excludes 0 (up to the
    resolution of the resamples; ``tests/evaluation/test_compare.py`` checks it on draws with ties)."""
    return float(min(1.0, 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))))


def compare_seeds(
    metrics_a: dict[int, Metrics], metrics_b: dict[int, Metrics], n_bootstrap: int = 1000, seed: int = 0,
    alpha: float = 0.05, family: int = 1,
) -> dict[str, Any]:
    """A - B over training seeds and cases: a two-level bootstrap, so the interval holds the training-to-training
    spread as well as the case-to-case one.

    Each resample draws the seeds with replacement and, independently, the cases with replacement (one draw of
    cases shared by every seed and both arms: the arms stay paired on cases and, through the seed, on data order
    and augmentation); its difference is the mean over the drawn seeds of A(seed) - B(seed) on the drawn cases.
    With one seed it is the paired case bootstrap of ``compare_paired``. Why a bootstrap and not a mixed model:
    AUROC and AP are set-level metrics (no per-case term to model), and the resampling matches the one every other
    interval of the report uses. Seed draws are paired (a seed's A and B are drawn together).

    Args:
        metrics_a, metrics_b: per training seed, the pooled Metrics of the arm over every validation case.
        n_bootstrap: resamples.
        seed: bootstrap seed.
        alpha: 1 - confidence level.
        family: number of comparisons the report makes; ``ci_adjusted`` is the interval at 1 - alpha / family
            (Bonferroni), for reading any one of them as part of the family.

    Returns:
        ``{"seeds": [...], "cases", "n_bootstrap", "level", "family", metric: {"a", "b" (means over seeds),
        "difference", "per_seed" {seed: A - B}, "ci", "ci_adjusted", "p_value", "verdict", "training_sd" (sd over
        seeds of A - B), "case_sd" (mean over seeds of the case-bootstrap sd of A - B), "n_valid"}}``.
    """
    seeds = sorted(metrics_a)
    if sorted(metrics_b) != seeds or not seeds:
        raise ValueError(f"both arms need the same training seeds, got {sorted(metrics_a)} and {sorted(metrics_b)}")
    cases = _same_cases(metrics_a[seeds[0]], metrics_b[seeds[0]])
    for s in seeds:
        if _same_cases(metrics_a[s], metrics_b[s]) != cases:
            raise DataError(f"seed {s} was validated on other cases than seed {seeds[0]}: the seeds of a comparison "
                            "need the same validation cases")
    column = {case: i for i, case in enumerate(cases)}
    counts = _draw_counts(len(cases), n_bootstrap, seed)  # [n, cases]
    rng = np.random.default_rng(seed + 1)
    seed_draws = rng.integers(0, len(seeds), size=(n_bootstrap, len(seeds)))  # [n, S] seeds drawn per resample
    out: dict[str, Any] = {"seeds": seeds, "cases": len(cases), "n_bootstrap": n_bootstrap, "level": 1 - alpha,
                           "family": family}
    values = {}
    for arm, metrics in (("a", metrics_a), ("b", metrics_b)):
        values[arm] = {s: bootstrap_values(metrics[s], counts[:, [column[c] for c in metrics[s].subject_list]])
                       for s in seeds}
    points = {arm: {s: _point(m[s]) for s in seeds} for arm, m in (("a", metrics_a), ("b", metrics_b))}
    for name in ("auroc", "ap", "score"):
        per_seed = {s: None if points["a"][s][name] is None or points["b"][s][name] is None
                    else points["a"][s][name] - points["b"][s][name] for s in seeds}
        d = np.stack([values["a"][s][name] - values["b"][s][name] for s in seeds])  # [S, n]
        resampled = np.take_along_axis(d, seed_draws.T, axis=0).mean(0)  # [n] mean over the drawn seeds
        resampled = resampled[np.isfinite(resampled)]
        resampled[np.abs(resampled) <= TIE] = 0.0
        defined = [v for v in per_seed.values() if v is not None]
        row: dict[str, Any] = {
            "a": _mean([points["a"][s][name] for s in seeds]), "b": _mean([points["b"][s][name] for s in seeds]),
            "difference": float(np.mean(defined)) if len(defined) == len(seeds) else None,
            "per_seed": per_seed, "ci": None, "ci_adjusted": None, "p_value": None, "n_valid": int(len(resampled)),
            "training_sd": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
            "case_sd": _mean([float(np.nanstd(d[i])) for i in range(len(seeds))]),
        }
        if row["difference"] is not None and len(resampled):
            row["ci"] = [float(v) for v in np.percentile(resampled, [100 * alpha / 2, 100 * (1 - alpha / 2)])]
            adjusted = alpha / max(family, 1)
            row["ci_adjusted"] = [float(v) for v in np.percentile(resampled, [100 * adjusted / 2,
                                                                              100 * (1 - adjusted / 2)])]
            row["p_value"] = _tails(resampled)
        row["verdict"] = verdict(row["ci"])
        out[name] = row
    return out


def _mean(values) -> float | None:
    defined = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(defined)) if defined else None


def bootstrap_seeds(metrics: dict[int, Metrics], n_bootstrap: int = 1000, seed: int = 0,
                    alpha: float = 0.05) -> dict[str, list[float] | None]:
    """The interval of one arm's metric over training seeds and cases (the two-level resampling of
    ``compare_seeds``): per metric ``[low, high]``, None where undefined."""
    seeds = sorted(metrics)
    cases = sorted(metrics[seeds[0]].subject_list, key=str)
    column = {case: i for i, case in enumerate(cases)}
    counts = _draw_counts(len(cases), n_bootstrap, seed)
    seed_draws = np.random.default_rng(seed + 1).integers(0, len(seeds), size=(n_bootstrap, len(seeds)))
    values = [bootstrap_values(metrics[s], counts[:, [column[c] for c in metrics[s].subject_list]]) for s in seeds]
    out: dict[str, list[float] | None] = {}
    for name in ("auroc", "ap", "score"):
        v = np.stack([x[name] for x in values])  # [S, n]
        resampled = np.take_along_axis(v, seed_draws.T, axis=0).mean(0)
        resampled = resampled[np.isfinite(resampled)]
        out[name] = [float(x) for x in np.percentile(resampled, [100 * alpha / 2, 100 * (1 - alpha / 2)])] \
            if len(resampled) else None
    return out
