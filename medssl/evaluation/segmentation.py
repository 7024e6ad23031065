"""BraTS region metrics: Dice and HD95 for TC, WT and ET with MONAI's metrics.

An empty region is ordinary in BraTS (ET is absent in some gliomas): MONAI then returns NaN
(empty target for Dice, an empty prediction or target for HD95) or Inf. Those cases are kept as
NaN and counted, never averaged in or raised.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric

from medssl.evaluation.report import segmentation_summary

REGIONS = ("TC", "WT", "ET")


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
