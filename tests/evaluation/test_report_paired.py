"""The cv report's pretrained - scratch comparison is paired (compare_paired on the pooled cases)."""

from __future__ import annotations

import pytest

from medssl.evaluation.compare import compare_paired
from medssl.evaluation.picai import evaluate_maps, pool_metrics
from medssl.evaluation.report import write_cv_report
from tests.evaluation.conftest import make_cases, write_cases


def test_cv_twin_comparison_is_paired(written, tmp_path):
    _, det_paths, label_paths = written
    scratch_paths, _ = write_cases(make_cases(seed=5, noise=0.3), tmp_path / "scratch")
    names = list(det_paths)

    def folds(paths):
        return [{"fold": k, "cases": part, "metrics": evaluate_maps({c: paths[c] for c in part}, label_paths)}
                for k, part in enumerate((names[0::2], names[1::2]))]

    runs = {"pretrained": folds(det_paths), "scratch": folds(scratch_paths)}
    report = write_cv_report(tmp_path / "report", runs, n_bootstrap=200)
    paired = compare_paired(*(pool_metrics([f["metrics"] for f in runs[r]]) for r in ("pretrained", "scratch")),
                            n_bootstrap=200)
    for m in ("auroc", "ap", "score"):
        row = report["comparison"][m]
        assert row["pooled_ci"] == pytest.approx(paired[m]["ci"]) and row["p_value"] == paired[m]["p_value"]
        assert row["pooled_difference"] == pytest.approx(paired[m]["difference"])
    md = (tmp_path / "report" / "cv_report.md").read_text()
    assert "paired bootstrap" in md and "| auroc |" in md
