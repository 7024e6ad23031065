"""The cross-validation report: JSON schema, markdown, plots, and values that are picai_eval's own."""

from __future__ import annotations

import json

import picai_eval
import pytest

from medssl.evaluation.picai import evaluate_maps
from medssl.evaluation.report import write_cv_report
from tests.evaluation.conftest import make_cases, write_cases


def _folds(det_paths, label_paths):
    names = list(det_paths)
    folds = []
    for k, part in enumerate((names[0::2], names[1::2])):  # both folds have positives and negatives
        metrics = evaluate_maps({c: det_paths[c] for c in part}, label_paths)
        folds.append({"fold": k, "cases": part, "metrics": metrics, "checkpoint": f"fold{k}/best.ckpt"})
    return folds


def test_write_cv_report(written, tmp_path):
    _, det_paths, label_paths = written
    scratch_paths, scratch_labels = write_cases(make_cases(seed=5, noise=0.3), tmp_path / "scratch")
    runs = {"scratch": _folds(scratch_paths, scratch_labels), "pretrained": _folds(det_paths, label_paths)}
    report = write_cv_report(tmp_path / "report", runs, extra={"leaked_cases": []}, n_bootstrap=200)

    on_disk = json.loads((tmp_path / "report" / "cv_report.json").read_text())
    assert on_disk == report and report["main_run"] == "pretrained" and report["leaked_cases"] == []
    for key in ("folds", "mean", "std", "pooled", "runs", "comparison"):
        assert key in report
    assert set(report["runs"]) == {"pretrained", "scratch"}
    assert report["folds"] == report["runs"]["pretrained"]["folds"]
    fold = report["folds"][1]
    assert fold["fold"] == 1 and fold["cases"] == list(det_paths)[1::2] and fold["checkpoint"] == "fold1/best.ckpt"
    assert {"auroc", "ap", "score", "ci", "froc"} <= set(fold)
    assert set(report["pooled"]) >= {"auroc", "ap", "score", "ci"} and report["pooled"]["num_cases"] == 10

    # per-fold values are picai_eval's, run independently on the written maps
    for name, paths, labels in (("pretrained", det_paths, label_paths), ("scratch", scratch_paths, scratch_labels)):
        for row in report["runs"][name]["folds"]:
            ref = picai_eval.evaluate(y_det=[paths[c] for c in row["cases"]], y_true=[labels[c] for c in row["cases"]],
                                      subject_list=row["cases"], y_true_postprocess_func=lambda y: (y >= 1) * 1,
                                      num_parallel_calls=1)
            assert row["auroc"] == pytest.approx(ref.auroc, abs=1e-4)
            assert row["ap"] == pytest.approx(ref.AP, abs=1e-4)
        summary = report["runs"][name]
        assert summary["mean"]["auroc"] == pytest.approx(sum(r["auroc"] for r in summary["folds"]) / 2)
        for metric in ("auroc", "ap", "score"):
            low, high = summary["pooled"]["ci"][metric]
            assert low <= summary["pooled"][metric] <= high
    diff = report["comparison"]["ap"]
    assert diff["difference"] == pytest.approx(diff["pretrained"] - diff["scratch"])

    md = (tmp_path / "report" / "cv_report.md").read_text()
    assert "pretrained AUROC" in md and "scratch AUROC" in md and "±" in md and "pooled (95% CI)" in md
    for run in ("pretrained", "scratch"):
        for plot in ("roc", "pr", "froc"):
            png = tmp_path / "report" / f"{plot}_{run}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]

    with pytest.raises(ValueError, match="overwrite report keys"):
        write_cv_report(tmp_path / "again", runs, extra={"pooled": 1})


def test_a_studys_positive_control_is_read_fraction_by_fraction():
    """Beat scratch at 0.1 only: the reading says where a null result of the pretrained run can be read and where
    it says nothing; no supervised arm at any fraction: no reading at all."""
    from medssl.evaluation.report import study_positive_control

    def row(fraction, ci):
        score = {"pooled_difference": sum(ci) / 2, "pooled_ci": ci}
        return {"fraction": fraction, "controls": {"supervised": {"score": score}, "shuffled": {"score": score}}}

    rows = [row(0.1, [0.03, 0.2]), row(0.25, [-0.02, 0.1]), row(1.0, [-0.2, -0.01])]
    read = study_positive_control(rows)
    assert read["verdict_by_fraction"] == {"0.1": "helped", "0.25": "no detectable difference", "1": "hurt"}
    assert read["beat_scratch"] and read["beat_scratch_at"] == ["0.1"]
    assert "at fraction(s) 0.1:" in read["reading"] and "at 0.25, 1 it did not" in read["reading"]
    none = study_positive_control([row(0.1, [-0.1, 0.1])])
    assert not none["beat_scratch"] and "at no fraction" in none["reading"]
    assert study_positive_control([{"fraction": 0.1, "controls": {"shuffled": {"score": {}}}}, {"fraction": 1.0}]) \
        is None
