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


def _cases():
    """Four BraTS 2021 cases on a 1 mm grid, each a different empty-region situation for ET (label 4)."""
    import numpy as np

    base = np.zeros((8, 8, 8), np.uint8)
    base[2:6, 2:6, 2:6] = 2  # oedema everywhere: TC/WT always defined in the truth
    base[3:5, 3:5, 3:5] = 1
    with_et = base.copy()
    with_et[3, 3, 3:5] = 4
    return {
        "both_empty": (base, base),         # no ET in truth, none predicted
        "false_positive": (with_et, base),  # ET predicted where the truth has none
        "missed": (base, with_et),          # ET in the truth, none predicted
        "hit": (with_et, with_et),          # ET found exactly
    }


def test_monai_and_legacy_conventions_score_empty_regions_as_each_says():
    """monai leaves empty-truth Dice and empty-side HD95 undefined (NaN); legacy gives empty-empty 1 / 0 and one
    side empty 0 / 373.13 mm; both agree where both sides hold the region."""
    from medssl.evaluation.segmentation import LEGACY_HD95_PENALTY, METRICS, label_map_metrics

    assert set(METRICS) == {"monai", "legacy", "brats2023"}
    assert LEGACY_HD95_PENALTY == pytest.approx((240**2 + 240**2 + 155**2) ** 0.5, abs=0.01)
    expected_legacy = {"both_empty": (1.0, 0.0), "false_positive": (0.0, LEGACY_HD95_PENALTY),
                       "missed": (0.0, LEGACY_HD95_PENALTY), "hit": (1.0, 0.0)}
    for name, (pred, label) in _cases().items():
        monai = label_map_metrics(pred, label, spacing=(1, 1, 1), brats_labels="2021")
        legacy = label_map_metrics(pred, label, spacing=(1, 1, 1), brats_labels="2021", metrics="legacy")
        assert (legacy["dice"]["ET"], legacy["hd95"]["ET"]) == pytest.approx(expected_legacy[name]), name
        for region in ("TC", "WT"):  # present on both sides in every case: the conventions agree
            assert legacy["dice"][region] == pytest.approx(monai["dice"][region]), (name, region)
        if name in ("both_empty", "false_positive"):
            assert math.isnan(monai["dice"]["ET"])  # empty truth: MONAI has no Dice, the false positive unscored
        if name != "hit":
            assert math.isnan(monai["hd95"]["ET"])
        else:
            assert monai["dice"]["ET"] == 1.0 and monai["hd95"]["ET"] == 0.0


def test_evaluate_names_the_convention_and_the_two_give_different_labelled_numbers(tmp_path):
    import SimpleITK as sitk

    from medssl.errors import ConfigError
    from medssl.evaluation.evaluate import evaluate_predictions, format_result

    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir(), labels.mkdir()
    for name, (pred, label) in _cases().items():
        sitk.WriteImage(sitk.GetImageFromArray(pred), str(preds / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / f"{name}.nii.gz"))
    out = {m: evaluate_predictions(preds, labels, task="segmentation", brats_labels="2021", metrics=m)
           for m in ("monai", "legacy")}
    assert out["monai"]["metrics"] == "monai" and "not scored" in out["monai"]["metrics_convention"]
    assert out["legacy"]["metrics"] == "legacy" and "373.13" in out["legacy"]["metrics_convention"]
    assert out["monai"]["regions"]["ET"]["dice_undefined"] == 2
    assert out["legacy"]["regions"]["ET"]["dice_undefined"] == 0
    assert out["monai"]["dice"]["ET"] == pytest.approx(0.5)  # hit 1 and missed 0; the false positive unscored
    assert out["legacy"]["dice"]["ET"] == pytest.approx(0.5)  # (1 + 0 + 0 + 1) / 4
    assert out["legacy"]["hd95"]["ET"] == pytest.approx(2 * 373.13 / 4) and out["monai"]["hd95"]["ET"] == 0.0
    assert "metrics legacy" in format_result(out["legacy"])
    with pytest.raises(ConfigError, match="monai or legacy or brats2023"):
        evaluate_predictions(preds, labels, task="segmentation", metrics="brats2024")
