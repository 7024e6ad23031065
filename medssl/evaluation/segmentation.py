"""BraTS region metrics: Dice and HD95 for TC, WT and ET with MONAI's metrics, on tensors or label maps.

An empty region is ordinary in BraTS (ET is absent in some gliomas): MONAI then returns NaN
(empty target for Dice, an empty prediction or target for HD95) or Inf. Those cases are kept as
NaN and counted, never averaged in or raised.

Label maps come in three conventions: BraTS 2021 (0, 1 necrotic core, 2 oedema, 4 enhancing),
BraTS 2023 (enhancing is 3) and BraTS 2024 GLI (enhancing 3, and 4 the resection cavity, in no
region). Without ``brats_labels`` each map's convention is read from its values (a map with 4 is
2021, one with 3 is 2023), so a 2021-style prediction is scored against 2023 labels correctly; a
map with neither has no enhancing tumour under both, so the two can only be told apart where it
matters. 2024 GLI cannot be told from values (4 would read as enhancing): give ``brats_labels``
``2024-gli``, which fixes one convention for every map.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from medssl.data.layouts.brats import CONVENTIONS, OPTIONS, get_convention
from medssl.errors import ConfigError, DataError
from medssl.evaluation.report import segmentation_summary

REGIONS = ("TC", "WT", "ET")
# What each ``metrics`` convention does with an empty region; the report quotes it beside the numbers.
METRICS = {
    "monai": "MONAI's case-wise Dice and HD95: a region empty in the truth has no Dice (a false positive there is "
             "not scored) and an empty prediction or truth has no HD95; those cases are left out of the means and "
             "counted as undefined. Comparable with neither the BraTS legacy nor the 2023 lesion-wise numbers.",
    "legacy": "The BraTS legacy convention (challenges up to 2021): a region empty in both truth and prediction "
              "scores Dice 1 and HD95 0; empty in one of them, Dice 0 and HD95 373.13 mm (the diagonal of the "
              "240 x 240 x 155 BraTS volume); every case counts in every region.",
}
METRICS["brats2023"] = (
    "The BraTS 2023+ lesion-wise metrics (the official BraTS-2023-Metrics code, BraTS-GLI parameters): each "
    "region's connected components (26-connected), truth lesions merged where their 3-voxel dilations touch, a "
    "predicted component matched to every truth lesion whose dilation it meets; per truth lesion Dice and HD95 "
    "(surfel-area 95th percentile), truth lesions of 50 mm3 or less left out; every unmatched predicted component "
    "(false positive) and every missed lesion scores Dice 0 and HD95 374 mm; a region empty in both scores 1 / 0.")
LEGACY_HD95_PENALTY = 373.13  # mm: sqrt(240^2 + 240^2 + 155^2), the BraTS legacy penalty for an empty side
LESION_WISE = {"dilation": 3, "volume_mm3": 50.0, "penalty": 374.0}  # BraTS-GLI's, as the official code sets them


def enhancing_label(
    values: Sequence[int], brats_labels: str | None = None, case_id: str | None = None, path: str | None = None
) -> int:
    """The enhancing-tumour value (4 or 3) of a BraTS label map with these voxel values.

    Args:
        values: the distinct values of the map.
        brats_labels: ``"2021"`` (ET = 4), ``"2023"`` (ET = 3) or ``"2024-gli"`` (ET = 3, 4 the resection
            cavity): every map is in that convention and one with a value outside it is refused. None reads
            each map's own from its values: 4 is 2021, 3 is 2023, and a map with neither has no enhancing
            tumour in either convention.
        case_id: named in errors.
        path: named in errors.

    Example:
        >>> enhancing_label([0, 1, 2, 3])
        3
    """
    if brats_labels is not None and brats_labels not in OPTIONS:
        raise ConfigError(f"brats_labels {brats_labels!r}: choose "
                          + " or ".join(f"{c.option} (enhancing tumour {c.et})" for c in CONVENTIONS.values()))
    values = sorted({int(v) for v in values})
    allowed = get_convention(brats_labels).values if brats_labels else tuple(sorted({v for c in CONVENTIONS.values()
                                                                                     for v in c.values}))
    bad = [v for v in values if v not in allowed]
    if bad:
        what = f"BraTS {brats_labels} labels {list(allowed)}" if brats_labels else "BraTS labels 0, 1, 2, 3/4"
        raise DataError(f"values {bad[:5]} are not {what}: is this a label map (not probabilities)?", case_id, path)
    if brats_labels is not None:
        return get_convention(brats_labels).et
    if 3 in values and 4 in values:
        raise DataError("holds both 3 and 4: BraTS 2021 and 2023 maps never do; if 4 is BraTS 2024 GLI's resection "
                        "cavity, give --brats-labels 2024-gli", case_id, path)
    return 3 if 3 in values else 4


def brats_regions(label: np.ndarray, enhancing: int = 4) -> np.ndarray:
    """[D, H, W] BraTS label map -> [3, D, H, W] uint8 regions TC = {1, ET}, WT = {1, 2, ET}, ET (MONAI's).

    Example:
        >>> brats_regions(np.array([[[0, 1, 2, 3]]]), enhancing=3)[:, 0, 0].tolist()  # TC, WT, ET rows
        [[0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]
    """
    return ConvertToMultiChannelBasedOnBratsClasses(et_label=enhancing)(label).astype(np.uint8)  # [3, D, H, W]


def label_map_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] | None = None,
    brats_labels: str | None = None,
    case_id: str | None = None,
    paths: tuple[str | None, str | None] = (None, None),
    metrics: str = "monai",
) -> dict[str, Any]:
    """Dice and HD95 per region of one predicted BraTS label map against its label map.

    Args:
        pred: [D, H, W] predicted label map (values 0, 1, 2 and 4 or 3).
        label: [D, H, W] ground-truth label map on the same grid.
        spacing: voxel spacing ``[D, H, W]`` in mm for HD95.
        brats_labels: the label convention of both maps (see ``enhancing_label``); None reads each map's own.
        case_id: named in errors.
        paths: (prediction, label) files, named in errors.
        metrics: ``monai``, ``legacy`` or ``brats2023`` (lesion-wise): how a region is scored (``METRICS``).

    Returns:
        ``{"dice": {region: float}, "hd95": {region: float}, "enhancing_label": {"prediction": 4, "label": 3}}``
        (NaN where undefined).
    """
    if pred.shape != label.shape:
        raise DataError(f"prediction shape {pred.shape} differs from the label's {label.shape}", case_id, paths[0])
    et_pred = enhancing_label(np.unique(pred), brats_labels, case_id, paths[0])
    et_label = enhancing_label(np.unique(label), brats_labels, case_id, paths[1])
    if metrics not in METRICS:
        raise ConfigError(f"metrics {metrics!r}: choose {' or '.join(METRICS)}")
    pred_regions, label_regions = brats_regions(pred, et_pred), brats_regions(label, et_label)  # [3, D, H, W] each
    out = region_metrics(torch.from_numpy(pred_regions)[None], torch.from_numpy(label_regions)[None], spacing)
    dice = {r: v[0] for r, v in out["dice"].items()}
    hd95 = {r: v[0] for r, v in out["hd95"].items()}
    if metrics == "brats2023":
        zyx = [1.0, 1.0, 1.0] if spacing is None else [float(v) for v in spacing]
        counts = {}
        for i, r in enumerate(REGIONS):
            scored = lesion_wise(label_regions[i], pred_regions[i], zyx)
            dice[r], hd95[r] = scored["dice"], scored["hd95"]
            counts[r] = {k: scored[k] for k in ("tp", "fp", "fn")}
        return {"dice": dice, "hd95": hd95, "lesions": counts,
                "enhancing_label": {"prediction": et_pred, "label": et_label}}
    if metrics == "legacy":  # written out here: MONAI has no option for the BraTS empty-region rules
        for i, r in enumerate(REGIONS):
            empty_pred, empty_label = not pred_regions[i].any(), not label_regions[i].any()
            if empty_pred and empty_label:
                dice[r], hd95[r] = 1.0, 0.0
            elif empty_pred or empty_label:
                dice[r], hd95[r] = 0.0, LEGACY_HD95_PENALTY
    return {"dice": dice, "hd95": hd95, "enhancing_label": {"prediction": et_pred, "label": et_label}}


def robust_hd95(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    """The 95th-percentile Hausdorff distance as DeepMind's ``surface_distance`` computes it (the one the BraTS
    2023 metrics use): the distances of each surface's surfels to the other surface, each percentile weighted by
    surfel area, the larger of the two directions; ``inf`` when either mask is empty.

    MONAI's subvoxel edges give the surfels, their areas and exact Euclidean distances; the area-weighted percentile
    is written here because MONAI's HausdorffDistanceMetric takes an unweighted one over edge voxels (and the
    ``surface-distance`` package fails on NumPy 2).
    """
    from monai.metrics.utils import get_edge_surface_distance

    if not truth.any() or not pred.any():
        return float("inf")
    with warnings.catch_warnings():  # MONAI passes its own deprecated argument internally
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        (edges_pred, edges_truth), (pred_to_truth, truth_to_pred), (areas_pred, areas_truth) = \
            get_edge_surface_distance(torch.from_numpy(pred.astype(bool)), torch.from_numpy(truth.astype(bool)),
                                      spacing=[float(s) for s in spacing], use_subvoxels=True, symmetric=True,
                                      warn_empty=False)
    worst = 0.0
    for distances, areas in ((truth_to_pred, areas_truth[edges_truth]), (pred_to_truth, areas_pred[edges_pred])):
        distances, areas = np.asarray(distances, np.float64), np.asarray(areas, np.float64)
        order = np.argsort(distances, kind="stable")
        distances, areas = distances[order], areas[order]
        cumulative = np.cumsum(areas) / np.sum(areas)
        worst = max(worst, float(distances[min(int(np.searchsorted(cumulative, 0.95)), len(distances) - 1)]))
    return worst


def lesion_wise(truth: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """One region's BraTS 2023+ lesion-wise Dice and HD95 (``METRICS["brats2023"]``, ``LESION_WISE``).

    Written here because no installable package computes it: the official BraTS-2023-Metrics code is a
    repository, not a package; ``tests/evaluation/test_brats2023.py`` checks this against numbers it produced.

    Args:
        truth: [D, H, W] binary region of the label map.
        pred: [D, H, W] binary region of the prediction.
        spacing: ``[D, H, W]`` in mm (lesion volumes are in mm3).

    Returns:
        ``{"dice", "hd95", "tp", "fp", "fn"}``: the case's lesion-wise scores and the lesion counts (truth lesions
        over the volume threshold found and missed; unmatched predicted components).
    """
    from scipy import ndimage

    truth, pred = truth.astype(bool), pred.astype(bool)
    voxel = float(np.prod(spacing))
    every = np.ones((3, 3, 3), bool)  # 26-connected components
    grow = ndimage.generate_binary_structure(3, 2)  # the dilation's 18-connected step
    pred_cc, _ = ndimage.label(pred, structure=every)
    merged, n_truth = ndimage.label(ndimage.binary_dilation(truth, grow, LESION_WISE["dilation"]), structure=every)
    merged = merged * truth  # truth lesions whose dilations touch are one lesion
    matched: set[int] = set()
    scores, found, missed = [], 0, 0
    for lesion in range(1, n_truth + 1):
        one = merged == lesion
        if not one.any():
            continue
        near = np.unique(pred_cc[ndimage.binary_dilation(one, grow, LESION_WISE["dilation"])])
        near = near[near != 0]
        matched.update(int(c) for c in near)
        hit = np.isin(pred_cc, near)
        if float(one.sum()) * voxel <= LESION_WISE["volume_mm3"]:
            continue  # too small to score; a component matched to it is not a false positive either
        dice = 2.0 * float((hit & one).sum()) / float(hit.sum() + one.sum())
        hd = robust_hd95(one, hit, spacing)
        scores.append((dice, LESION_WISE["penalty"] if not np.isfinite(hd) else hd))
        found, missed = found + bool(near.size), missed + (not near.size)
    fp = len(set(np.unique(pred_cc[pred_cc > 0]).tolist()) - matched)
    total = len(scores) + fp
    if total == 0:  # nothing to score: both empty (or only lesions under the threshold, unmatched nothing)
        return {"dice": 1.0, "hd95": 0.0, "tp": found, "fp": fp, "fn": missed}
    return {"dice": sum(d for d, _ in scores) / total,
            "hd95": (sum(h for _, h in scores) + fp * LESION_WISE["penalty"]) / total,
            "tp": found, "fp": fp, "fn": missed}


def region_metrics(
    pred: torch.Tensor, target: torch.Tensor, spacing: Sequence[float] | None = None
) -> dict[str, Any]:
    """Per-case Dice and HD95 of the three BraTS regions.

    Args:
        pred: [B, 3, D, H, W] binary prediction, channels TC, WT, ET (as ``encode_label(..., "brats_regions")``).
        target: [B, 3, D, H, W] binary ground truth.
        spacing: voxel spacing ``[D, H, W]`` in mm for HD95 (None: in voxels; BraTS is 1 mm isotropic).

    Returns:
        ``{"dice": {region: [B floats]}, "hd95": {region: [B floats]}, "summary": segmentation_summary(...)}``;
        NaN marks an undefined value, counted in the summary's ``*_undefined``.

    Example:
        >>> region_metrics(logits.sigmoid() > 0.5, batch["label"])["summary"]["ET"]["dice_mean"]
    """
    if pred.shape != target.shape or pred.ndim != 5 or pred.shape[1] != len(REGIONS):
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} should both be [B, 3, D, H, W] "
            "(channels TC, WT, ET)"
        )
    pred, target = pred.float(), target.float()
    dice = DiceMetric(include_background=True, reduction="none")(pred, target)  # [B, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty region; they are counted instead
        hd95 = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            pred, target, spacing=None if spacing is None else list(spacing)
        )
    hd95 = torch.where(torch.isfinite(hd95), hd95, torch.full_like(hd95, float("nan")))
    out = {
        "dice": {r: dice[:, i].tolist() for i, r in enumerate(REGIONS)},
        "hd95": {r: hd95[:, i].tolist() for i, r in enumerate(REGIONS)},
    }
    out["summary"] = segmentation_summary(out["dice"], out["hd95"])
    return out
