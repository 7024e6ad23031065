"""``--metrics brats2023``: the BraTS 2023+ lesion-wise Dice and HD95 equal the official BraTS-2023-Metrics code's on
the shipped cases (``brats2023_cases.py``; its numbers in ``brats2023_official.json``, made by
``make_brats2023_reference.py`` with the official code at the commit recorded there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medssl.evaluation.evaluate import evaluate_predictions
from medssl.evaluation.segmentation import METRICS, REGIONS, label_map_metrics, lesion_wise, robust_hd95
from tests.conftest import run_medssl
from tests.evaluation.brats2023_cases import cases, write_cases

OFFICIAL = json.loads((Path(__file__).with_name("brats2023_official.json")).read_text())


def test_the_reference_says_what_made_it_and_covers_every_rule():
    assert len(OFFICIAL["commit"]) == 40 and "get_LesionWiseResults" in OFFICIAL["source"]
    assert set(OFFICIAL["cases"]) == set(cases())
    rows = [r for case in OFFICIAL["cases"].values() for r in case.values()]
    assert any(r["Num_FP"] > 0 and r["Num_TP"] == 0 for r in rows)  # false positives only
    assert any(r["Num_FN"] > 0 and r["Num_TP"] == 0 for r in rows)  # missed
    assert any(r["Num_FN"] > 0 and r["Num_TP"] > 0 for r in rows)  # one of two lesions found
    assert any(r["LesionWise_Score_Dice"] == 1.0 and r["Num_TP"] == 0 for r in rows)  # empty in both


@pytest.mark.parametrize("case", sorted(cases()))
def test_lesion_wise_scores_equal_the_official_code(case):
    pred, label, spacing_xyz = cases()[case]
    out = label_map_metrics(pred, label, spacing=spacing_xyz[::-1], brats_labels="2023", metrics="brats2023")
    for region in REGIONS:
        official = OFFICIAL["cases"][case][region]
        assert out["dice"][region] == pytest.approx(official["LesionWise_Score_Dice"], abs=1e-9), region
        assert out["hd95"][region] == pytest.approx(official["LesionWise_Score_HD95"], abs=1e-6), region
        counts = out["lesions"][region]
        assert (counts["tp"], counts["fp"], counts["fn"]) == (official["Num_TP"], official["Num_FP"],
                                                              official["Num_FN"]), region


@pytest.mark.parametrize("case", sorted(cases()))
def test_the_surface_distance_equals_deepminds_as_the_official_code_uses_it(case):
    """The whole-region HD95 (the official ``Legacy_HD95``) tests ``robust_hd95`` on its own."""
    from medssl.evaluation.segmentation import brats_regions

    pred, label, spacing_xyz = cases()[case]
    for i, region in enumerate(REGIONS):
        p, t = brats_regions(pred, 3)[i], brats_regions(label, 3)[i]
        official = OFFICIAL["cases"][case][region]["Legacy_HD95"]
        if not p.any() and not t.any():
            assert official == 0.0
            continue
        ours = robust_hd95(t, p, spacing_xyz[::-1])
        assert (374.0 if not np.isfinite(ours) else ours) == pytest.approx(official, abs=1e-6), region


def test_a_change_of_rule_is_seen():
    """The check above can fail: without the merge by dilation, the two-lesion case scores otherwise."""
    pred, label, spacing = cases()["merged_by_dilation"]
    from medssl.evaluation.segmentation import LESION_WISE, brats_regions

    official = OFFICIAL["cases"]["merged_by_dilation"]["WT"]["LesionWise_Score_Dice"]
    saved = LESION_WISE["dilation"]
    try:
        LESION_WISE["dilation"] = 1
        changed = lesion_wise(brats_regions(label, 3)[1], brats_regions(pred, 3)[1], spacing[::-1])["dice"]
    finally:
        LESION_WISE["dilation"] = saved
    assert changed != pytest.approx(official, abs=1e-3)


def test_three_conventions_three_labelled_numbers(tmp_path):
    """On the shipped set, monai, legacy and brats2023 give three different means, each named with its rule."""
    paths = write_cases(tmp_path / "cases")
    preds, labels = tmp_path / "preds", {}
    preds.mkdir()
    for case, (pred, label) in paths.items():
        (preds / f"{case}.nii.gz").symlink_to(pred)
        labels[case] = str(label)
    means = {}
    for metrics in ("monai", "legacy", "brats2023"):
        result = evaluate_predictions(preds, labels, task="segmentation", brats_labels="2023", metrics=metrics)
        assert result["metrics"] == metrics and result["metrics_convention"] == METRICS[metrics]
        means[metrics] = round(result["dice"]["ET"], 6)
    assert len(set(means.values())) == 3, means
    expected = np.mean([OFFICIAL["cases"][c]["ET"]["LesionWise_Score_Dice"] for c in paths])
    assert means["brats2023"] == pytest.approx(expected, abs=1e-6)


def test_the_command_names_the_convention(tmp_path):
    paths = write_cases(tmp_path / "cases")
    preds, labels = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir()
    labels.mkdir()
    for case, (pred, label) in paths.items():
        (preds / f"{case}.nii.gz").symlink_to(pred)
        (labels / f"{case}.nii.gz").symlink_to(label)
    done = run_medssl("evaluate", "--predictions", str(preds), "--labels", str(labels), "--task", "segmentation",
                      "--metrics", "brats2023", "--brats-labels", "2023", "--output", str(tmp_path / "out"),
                      cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "metrics brats2023" in done.stdout and "lesion-wise" in done.stdout
    assert "lesion-wise" in (tmp_path / "out" / "evaluation.md").read_text()
