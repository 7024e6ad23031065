"""``medssl quickstart`` (README's first command) end to end, at its smallest size."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_medssl

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it


def test_quickstart_smallest_writes_both_twins_without_leakage(tmp_path):
    out = tmp_path / "qs"
    result = run_medssl("quickstart", "--output", str(out), "--cases", "10", "--archive-cases", "4",
                        "--pretrain-epochs", "1", "--finetune-epochs", "1", "--folds", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quickstart finished" in result.stdout and "pretrained" in result.stdout
    report = json.loads((out / "cv" / "cv_report.json").read_text())
    assert set(report["runs"]) == {"pretrained", "scratch"}
    assert report["leakage"]["validated_cases_seen_in_pretraining"] == []
    assert (out / "cv" / "cv_report.md").is_file()
    assert (out / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    for run_dir in (out / "cv", out / "cv" / "scratch"):
        assert (run_dir / "fold_0" / "fold_result.json").is_file()
        assert not (run_dir / "fold_1").exists()  # --folds 0 ran one fold only


def test_quickstart_refuses_too_few_cases(tmp_path):
    result = run_medssl("quickstart", "--output", str(tmp_path / "qs"), "--cases", "4", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--cases 4" in result.stderr and not (tmp_path / "qs").exists()
