"""The PI-CAI protocol on written detection maps: picai_eval's Metrics, a JSON summary, bootstrap CIs, pooling.

Scoring is picai_eval's own (``picai_eval.evaluate`` reads the written files, so what is scored is
exactly what was saved). The bootstrap reproduces picai_eval's AUROC and AP formulas in array form
(1000 resamples of 1500 cases take about a second instead of minutes); the tests check it against
``Metrics.calc_auroc`` / ``Metrics.calc_AP`` on the same resamples. ``picai_score`` is the one
definition of the PI-CAI score; ``medssl.evaluation.compare`` pairs two runs on the same resamples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import picai_eval
import SimpleITK as sitk
from picai_eval.metrics import Metrics

from medssl.data.geometry import Grid, resample
from medssl.data.preprocess import read_image
from medssl.errors import DataError

MAX_CURVE_POINTS = 200


def _binarise(label: np.ndarray) -> np.ndarray:
    # PI-CAI labels hold ISUP grades 2..5 (1 for AI-derived masks): any of them is a lesion
    return (label >= 1).astype(np.int32)


def picai_score(auroc: float | None, ap: float | None) -> float | None:
    """The PI-CAI ranking score, (AUROC + AP) / 2; None unless both are defined (not None, finite).

    There is no fallback to AP alone: on cases without a negative (or without a positive) AUROC is
    undefined, and a score that quietly becomes AP there is not comparable with published scores.

    Example:
        >>> picai_score(0.8, 0.5)
        0.65
    """
    if auroc is None or ap is None or not (math.isfinite(auroc) and math.isfinite(ap)):
        return None
    return (float(auroc) + float(ap)) / 2


def read_label(
    path: str | os.PathLike, case: str | None = None, grid: Grid | None = None, what: str = "label"
) -> np.ndarray:
    """A label (or label-map prediction) file as [D, H, W]; with ``grid``, resampled onto it (nearest neighbour).

    Read through the data layer's integrity checks (``medssl.data.preprocess.read_image``: complete, finite, a
    sane geometry, 3-D), as training reads its labels: a truncated or NaN label is refused, never scored.
    """
    if not Path(path).is_file():
        raise DataError(f"the {what} file is missing", case, str(path))
    image = read_image(str(path), case)
    array = sitk.GetArrayFromImage(image)
    if (array < 0).any() or not np.array_equal(array, np.round(array)):
        raise DataError(f"{what} values must be non-negative integers (found {float(array.min()):g} to "
                        f"{float(array.max()):g}): is this a label map?", case, str(path))
    return array if grid is None else resample(image, grid, nearest=True)


def read_detection_map(path: str | os.PathLike, case: str | None = None) -> np.ndarray:
    """A detection map as [D, H, W] float32 in [0, 1], read through the integrity checks (``read_label``'s).

    Raises:
        DataError: a truncated or non-finite file, a 4-D one (a softmax with a class axis), or values outside
            [0, 1] (logits, a negative map): one line naming the case and the file.
    """
    if not Path(path).is_file():
        raise DataError("the detection map file is missing", case, str(path))
    array = sitk.GetArrayFromImage(read_image(str(path), case)).astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise DataError(f"detection map values must lie in [0, 1], found {low:g} to {high:g}: write lesion "
                        "likelihoods (a PI-CAI detection map), not logits or a probability with a class axis", case,
                        str(path))
    return array


def scoring_grids(
    det_paths: Mapping[str, str | os.PathLike | None],
    label_paths: Mapping[str, str | os.PathLike],
    label_reference: Mapping[str, str | os.PathLike] | None = None,
) -> dict[str, Grid]:
    """The grid each case is scored on (its label's, or its ``label_reference`` image's), from headers only.

    Refuses, in one line naming the case, a map that does not lie on that grid. Arguments as ``evaluate_maps``.
    """
    label_reference = label_reference or {}
    grids = {}
    for case, det_path in det_paths.items():
        resampled = case in label_reference
        grids[case] = Grid.from_file(label_reference[case] if resampled else label_paths[case], case)
        if det_path is None:
            continue
        det = Grid.from_file(det_path, case)
        if not det.same_as(grids[case]):
            onto = f"that of {label_reference[case]}, which its label is resampled onto" if resampled else "its label's"
            raise DataError(
                f"map grid ({_describe(det)}) differs from {onto} ({_describe(grids[case])}): write maps on the "
                "grid of the case's label (PI-CAI: the original T2W grid, probability_to_original then "
                "detection_map)", case, str(det_path))
    return grids


def evaluate_maps(
    det_paths: Mapping[str, str | os.PathLike | None],
    label_paths: Mapping[str, str | os.PathLike],
    num_parallel_calls: int = 1,
    label_reference: Mapping[str, str | os.PathLike] | None = None,
) -> Metrics:
    """Score written detection maps against their labels with ``picai_eval.evaluate``.

    Only headers are read here (to check that each map lies on its label's grid); picai_eval reads
    the voxels one case at a time, so memory stays that of one case per thread.

    Args:
        det_paths: case id -> detection map file (on the case's original T2W grid); ``None``: the case
            has no map and is scored as an empty one (no candidate, case score 0).
        label_paths: case id -> label file; labels are binarised as ``label >= 1``. Cases without a
            detection map are ignored (a fold scores its own cases).
        num_parallel_calls: threads picai_eval uses.
        label_reference: case id -> the image whose grid that case's label is resampled onto (nearest
            neighbour) before scoring, for labels stored on another grid (Prostate158's tumour labels
            lie on the ADC grid, the maps on the T2W grid); the map must lie on that image's grid.
            Other cases are scored on their label's own grid.

    Returns:
        picai_eval ``Metrics`` (``.auroc``, ``.AP``, ``.score``, ``.lesion_results``, ...).

    Example:
        >>> metrics = evaluate_maps({"10000_1000000": "det/10000_1000000.nii.gz"}, labels)
    """
    if not det_paths:
        raise ValueError("det_paths is empty: no detection maps to evaluate")
    label_reference = label_reference or {}
    cases = list(det_paths)
    missing = [c for c in cases if c not in label_paths]
    if missing:
        raise DataError(f"detection map has no label ({len(missing)} such cases: {missing[:5]})", missing[0],
                        str(det_paths[missing[0]]))
    grids = scoring_grids(det_paths, label_paths, label_reference)

    # Generators: with one thread picai_eval takes them lazily, one case at a time. Every file is read here, through
    # the integrity checks (picai_eval's own reader would score a truncated map's zeros or a NaN's zeros).
    def maps():
        for case in cases:
            path = det_paths[case]
            # an absent map is empty: a zero-stride view, which picai_eval copies (astype) per case
            yield read_detection_map(path, case) if path is not None \
                else np.broadcast_to(np.float32(0), grids[case].shape_zyx)

    def labels():
        for case in cases:
            yield read_label(label_paths[case], case, grids[case] if case in label_reference else None)

    return picai_eval.evaluate(
        y_det=maps(),
        y_true=labels(),
        subject_list=cases,
        y_true_postprocess_func=_binarise,
        num_parallel_calls=num_parallel_calls,
    )


def _describe(grid: Grid) -> str:
    return f"{grid.describe()}, origin {tuple(round(o, 3) for o in grid.origin)}"


def pool_metrics(folds: Sequence[Metrics]) -> Metrics:
    """One Metrics over the cases of several folds (cross-validation pooled over its validation sets).

    Args:
        folds: per-fold Metrics whose case ids are disjoint.

    Returns:
        picai_eval ``Metrics`` of all cases: the same as evaluating every case at once.
    """
    merged: dict[str, dict] = {k: {} for k in ("lesion_results", "case_target", "case_pred", "case_weight",
                                                "lesion_weight")}
    for metrics in folds:
        repeated = sorted(set(metrics.lesion_results) & set(merged["lesion_results"]), key=str)
        if repeated:
            raise ValueError(f"cases {repeated[:5]} are in more than one fold; pooled cases must be disjoint")
        for key, store in merged.items():
            store.update(getattr(metrics, key))
    return Metrics(**merged)


def _undefined(metrics: Metrics) -> tuple[str | None, str | None]:
    """Why AUROC / AP are undefined on these cases (None where they are defined)."""
    targets = [int(t) for t in metrics.case_target.values()]
    auroc_note = None
    if not targets:
        auroc_note = "no cases"
    elif all(targets):
        auroc_note = "AUROC undefined: every case is positive (no negatives)"
    elif not any(targets):
        auroc_note = "AUROC undefined: no positive case"
    ap_note = None if metrics.num_lesions > 0 else "AP undefined: no ground-truth lesion"
    return auroc_note, ap_note


def _subsample(*curves: np.ndarray, limit: int = MAX_CURVE_POINTS) -> list[list[float | None]]:
    """Curves (same length) thinned to at most ``limit`` points, keeping both ends; NaN/Inf as None."""
    n = len(curves[0])
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(int)) if n > limit else np.arange(n)
    return [[_number(v) for v in np.asarray(c, dtype=np.float64)[keep]] for c in curves]


def _number(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_summary(metrics: Metrics) -> dict[str, Any]:
    """A JSON-serialisable summary of picai_eval Metrics.

    Args:
        metrics: from ``evaluate_maps``, ``picai_eval.evaluate`` or ``pool_metrics``.

    Returns:
        ``auroc``, ``ap``, ``score`` (``picai_score``; None where undefined, with the reason in
        ``notes``), ``num_cases``, ``positives`` (cases with a lesion), ``num_lesions``, ``froc``
        {lesion_FPR (false positives per case), sensitivity}, ``roc`` {fpr, tpr}, ``pr`` {precision,
        recall} (each at most 200 points), ``case_pred`` {case: score}, ``case_target`` {case: 0/1},
        ``notes``.
    """
    auroc_note, ap_note = _undefined(metrics)
    notes = [n for n in (auroc_note, ap_note) if n]
    auroc = None if auroc_note else float(metrics.auroc)
    ap = None if ap_note else float(metrics.AP)
    out: dict[str, Any] = {
        "auroc": auroc,
        "ap": ap,
        "score": picai_score(auroc, ap),
        "num_cases": int(metrics.num_cases),
        "positives": int(sum(int(t) for t in metrics.case_target.values())),
        "num_lesions": int(metrics.num_lesions),
        "froc": None,
        "roc": None,
        "pr": None,
        "case_pred": {str(k): float(v) for k, v in metrics.case_pred.items()},
        "case_target": {str(k): int(v) for k, v in metrics.case_target.items()},
        "notes": notes,
    }
    if auroc is not None:
        roc = metrics.calculate_ROC()
        out["roc"] = dict(zip(("fpr", "tpr"), _subsample(roc["FPR"], roc["TPR"])))
    if ap is not None:
        pr = metrics.calculate_precision_recall()
        out["pr"] = dict(zip(("precision", "recall"), _subsample(pr["precision"], pr["recall"])))
        fpr, tpr = np.asarray(metrics.lesion_FPR), np.asarray(metrics.lesion_TPR)
        finite = np.isfinite(fpr)  # picai_eval extends the curve to infinitely many false positives
        out["froc"] = dict(zip(("lesion_FPR", "sensitivity"), _subsample(fpr[finite], tpr[finite])))
    return out


def _draw_counts(n_cases: int, n: int, seed: int) -> np.ndarray:
    """[n, n_cases] how often each case is drawn in each of ``n`` resamples with replacement."""
    draws = np.random.default_rng(seed).integers(0, n_cases, size=(n, n_cases))
    return counts_of(draws, n_cases)


def counts_of(draws: np.ndarray, n_cases: int) -> np.ndarray:
    """[n, n_cases] counts from [n, k] drawn case indices."""
    offsets = draws + n_cases * np.arange(len(draws))[:, None]
    return np.bincount(offsets.ravel(), minlength=len(draws) * n_cases).reshape(len(draws), n_cases).astype(float)


def _auroc_weighted(score: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC per row of ``weights`` [n, cases]: the Mann-Whitney form (ties count half) of roc_curve + auc."""
    order = np.argsort(score, kind="stable")
    score, target, weights = score[order], target[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(score) != 0])  # groups of tied scores
    pos = np.add.reduceat(weights * target, starts, axis=1)  # [n, groups]
    neg = np.add.reduceat(weights * (1 - target), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + neg / 2)).sum(1) / (pos.sum(1) * neg.sum(1))


def _ap_weighted(confidence: np.ndarray, is_lesion: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """picai_eval's AP per row of ``weights`` [n, lesion entries]: step integral of precision over recall.

    As ``Metrics.calculate_precision_recall``: precision_recall_curve over all entries (missed
    lesions at confidence 0), precision set to 0 at threshold 0, AP = sum of recall steps x precision.
    """
    order = np.argsort(-confidence, kind="stable")
    confidence, is_lesion, weights = confidence[order], is_lesion[order], weights[:, order]
    ends = np.r_[np.flatnonzero(np.diff(confidence) != 0), len(confidence) - 1]  # last entry of each threshold
    tps = np.cumsum(weights * is_lesion, axis=1)[:, ends]  # [n, thresholds], descending threshold
    fps = np.cumsum(weights * (1 - is_lesion), axis=1)[:, ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        recall = tps / tps[:, -1:]
    precision[:, confidence[ends] == 0] = 0
    steps = np.diff(recall, axis=1, prepend=0.0)
    return (steps * precision).sum(1)


def bootstrap_values(metrics: Metrics, counts: np.ndarray, chunk: int = 100) -> dict[str, np.ndarray]:
    """AUROC, AP and score of resampled case sets; NaN where a resample has no positive/negative/lesion.

    Args:
        metrics: picai_eval Metrics.
        counts: [n, cases] how often each case of ``metrics.subject_list`` is drawn (``counts_of``).
        chunk: resamples per vectorised block (bounds memory to chunk x lesion entries).
    """
    subjects = list(metrics.subject_list)
    case_score = np.array([metrics.case_pred[s] for s in subjects], dtype=np.float64)
    case_target = np.array([metrics.case_target[s] for s in subjects], dtype=np.float64)
    case_weight = np.array([metrics.case_weight[s] for s in subjects], dtype=np.float64)
    owner = np.array([i for i, s in enumerate(subjects) for _ in metrics.lesion_results[s]], dtype=np.int64)
    flat = [entry for s in subjects for entry in metrics.lesion_results[s]]
    is_lesion = np.array([e[0] for e in flat], dtype=np.float64)
    confidence = np.array([e[1] for e in flat], dtype=np.float64)
    lesion_weight = np.array([w for s in subjects for w in metrics.lesion_weight[s]], dtype=np.float64)
    auroc, ap = [], []
    for start in range(0, len(counts), chunk):
        block = counts[start:start + chunk]
        auroc.append(_auroc_weighted(case_score, case_target, block * case_weight))
        if len(flat):
            lesions = block[:, owner] * lesion_weight
            value = _ap_weighted(confidence, is_lesion, lesions)
            value[(lesions * is_lesion).sum(1) == 0] = np.nan  # no lesion drawn: AP undefined
        else:
            value = np.full(len(block), np.nan)
        ap.append(value)
    auroc_all, ap_all = np.concatenate(auroc), np.concatenate(ap)
    # picai_score per resample: NaN (undefined) where either is
    return {"auroc": auroc_all, "ap": ap_all, "score": (auroc_all + ap_all) / 2}


def bootstrap_ci(metrics: Metrics, n: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Percentile bootstrap confidence intervals of AUROC, AP and PI-CAI score, resampling cases.

    Args:
        metrics: picai_eval Metrics.
        n: number of resamples.
        seed: random seed (the same seed draws the same resamples).
        alpha: 1 - confidence level (0.05: 95% intervals).

    Returns:
        ``{"auroc": (low, high), "ap": ..., "score": ..., "n": n, "n_valid": {metric: count}, "level": 0.95}``;
        an interval is None where the metric is undefined on the cases themselves. Resamples where it
        is undefined (no positive, negative or lesion drawn) are left out and ``n_valid`` counts the rest.

    Example:
        >>> bootstrap_ci(evaluate_maps(det_paths, label_paths))["auroc"]
        (0.81, 0.93)
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha {alpha} should be in (0, 1)")
    if n < 1:
        raise ValueError(f"n {n} should be at least 1")
    auroc_note, ap_note = _undefined(metrics)
    values = bootstrap_values(metrics, _draw_counts(len(metrics.subject_list), n, seed))
    undefined = {"auroc": auroc_note, "ap": ap_note, "score": auroc_note or ap_note}
    out: dict[str, Any] = {"n": n, "level": 1 - alpha, "n_valid": {}}
    for name, draws in values.items():
        valid = draws[np.isfinite(draws)]
        out["n_valid"][name] = int(len(valid))
        if undefined[name] or not len(valid):
            out[name] = None
            continue
        low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = (float(low), float(high))
    return out
