"""BraTS region Dice / HD95, including empty regions."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.evaluation.segmentation import region_metrics


def test_region_metrics_perfect_and_empty():
    target = torch.zeros(3, 3, 8, 16, 16)
    target[:, :, 2:6, 4:10, 4:10] = 1
    target[2, 2] = 0  # case 2 has no enhancing tumour
    pred = target.clone()
    pred[1, 2] = 0  # case 1: ET missed entirely
    out = region_metrics(pred, target, spacing=(1.0, 1.0, 1.0))
    assert out["dice"]["WT"] == pytest.approx([1.0, 1.0, 1.0]) and out["hd95"]["TC"] == pytest.approx([0.0] * 3)
    assert out["dice"]["ET"][1] == 0.0 and math.isnan(out["dice"]["ET"][2])
    assert math.isnan(out["hd95"]["ET"][1]) and math.isnan(out["hd95"]["ET"][2])
    et = out["summary"]["ET"]
    assert et["n"] == 3 and et["dice_undefined"] == 1 and et["hd95_undefined"] == 2
    assert et["dice_mean"] == pytest.approx(0.5) and et["hd95_mean"] == pytest.approx(0.0)


def test_region_metrics_refuses_wrong_shape():
    with pytest.raises(ValueError, match=r"\[B, 3, D, H, W\]"):
        region_metrics(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4))
