"""``medssl.folders``: a run folder and a cv output as values, the one owner of their layouts."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from medssl.errors import ConfigError
from medssl.folders import CvOutput, Run


def _fold(base: Path, fold: int, run: str) -> Path:
    folder = base / f"fold_{fold}"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (folder / CvOutput.DONE).write_text(json.dumps({"run": run, "checkpoint": "/elsewhere/checkpoints/last.ckpt"}))
    return folder / "checkpoints" / "last.ckpt"


def _report(folder: Path, main: str, runs: dict[str, list[int]], **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    folds = {r: {"folds": [{"fold": k} for k in ks]} for r, ks in runs.items()}
    body = {"main_run": main, "runs": folds, **extra}
    (folder / CvOutput.REPORT).write_text(json.dumps(body))


def test_the_layout_of_a_plain_cv_a_study_and_seeds():
    plain, study = CvOutput(Path("/o")), CvOutput(Path("/o"), study=True)
    assert plain.job("pretrained", "pretrained", 2, "/p.ckpt").fold_dir == Path("/o/fold_2")
    twin = plain.job("scratch", "pretrained", 2, None)
    assert twin.fold_dir == Path("/o/scratch/fold_2") and twin.scratch
    alone = plain.job("scratch", "scratch", 0, None)  # a run without init_from is the main run, at the top
    assert alone.fold_dir == Path("/o/fold_0") and alone.scratch
    control = plain.job("supervised", "pretrained", 1, "/s.ckpt")
    assert control.fold_dir == Path("/o/supervised/fold_1") and not control.scratch
    job = study.job("scratch", "pretrained", 1, None, 0.25)
    assert job.fold_dir == Path("/o/fraction_0.25/scratch/fold_1") and job.fraction == 0.25
    assert job.record == job.fold_dir / "fold_result.json" and job.checkpoints == job.fold_dir / "checkpoints"
    assert plain.splits == Path("/o/splits.json") and study.fraction_dir(1.0) == Path("/o/fraction_1")
    seeded = CvOutput(Path("/o"), study=True, seeds=True).job("shuffled", "pretrained", 0, "/x.ckpt", 0.5, seed=2)
    assert seeded.fold_dir == Path("/o/fraction_0.5/seed_2/shuffled/fold_0") and seeded.seed == 2


def test_checkpoints_of_the_reported_folds_from_their_own_folders(tmp_path):
    expected = [_fold(tmp_path, 0, "pretrained"), _fold(tmp_path, 2, "pretrained")]
    _fold(tmp_path, 1, "pretrained")  # in the folder, not in the report: not taken
    scratch = [_fold(tmp_path / "scratch", 0, "scratch")]
    _report(tmp_path, "pretrained", {"pretrained": [0, 2], "scratch": [0]})
    out = CvOutput(tmp_path)
    assert out.checkpoints() == expected and out.checkpoints("scratch") == scratch
    with pytest.raises(ConfigError, match="--fraction 1: .* not a label-efficiency study"):
        out.checkpoints(fraction=1.0)


def test_a_study_needs_a_fraction_and_takes_that_fractions_folds(tmp_path):
    rows = [{"fraction": 0.5}, {"fraction": 1.0}]
    _report(tmp_path, "pretrained", {"pretrained": [0]}, fractions=rows)
    half = CvOutput(tmp_path, study=True).fraction_dir(0.5)
    expected = _fold(half / "scratch", 0, "scratch")
    _report(half, "pretrained", {"pretrained": [0], "scratch": [0]})
    out = CvOutput(tmp_path)
    with pytest.raises(ConfigError, match="label-efficiency study with fractions 0.5, 1; choose one with --fraction"):
        out.checkpoints()
    with pytest.raises(ConfigError, match="--fraction 0.25: .* has fractions 0.5, 1"):
        out.checkpoints(fraction=0.25)
    with pytest.raises(ConfigError, match="fraction_1/cv_report.json is missing"):
        out.checkpoints(fraction=1.0)
    assert out.checkpoints("scratch", fraction=0.5) == [expected]


def test_a_missing_report_or_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no cv_report.json"):
        CvOutput(tmp_path).checkpoints()
    _fold(tmp_path, 0, "pretrained").unlink()
    _report(tmp_path, "pretrained", {"pretrained": [0]})
    with pytest.raises(ConfigError, match="its checkpoint .* is missing"):
        CvOutput(tmp_path).checkpoints()


def test_run_config_for_a_checkpoint_is_the_newest_written_before_it(tmp_path):
    run = Run(tmp_path)
    first, second = (tmp_path / "lightning_logs" / f"version_{i}" / "config.yaml" for i in (0, 1))
    for path in (first, second):
        path.parent.mkdir(parents=True)
        path.write_text("model: {}\n")
    now = time.time()
    os.utime(first, (now - 100, now - 100))
    run.checkpoints.mkdir()
    run.last.write_bytes(b"x")
    os.utime(run.last, (now - 50, now - 50))
    os.utime(second, (now, now))  # a later validate run's config
    assert run.config_for(run.last) == first
    assert Run.of_checkpoint(run.last) == Run(tmp_path.resolve())
    with pytest.raises(ConfigError, match="no config.yaml found"):
        Run(tmp_path / "empty").config_for(run.last)


def test_a_run_of_several_seeds_needs_a_seed(tmp_path):
    _report(tmp_path, "pretrained", {"pretrained": [0]}, seeds=[0, 1])
    expected = _fold(tmp_path / "seed_1", 0, "pretrained")
    _report(tmp_path / "seed_1", "pretrained", {"pretrained": [0]})
    out = CvOutput(tmp_path)
    with pytest.raises(ConfigError, match="holds runs of seeds 0, 1; choose one with --seed"):
        out.checkpoints()
    with pytest.raises(ConfigError, match="--seed 5: .* has seeds 0, 1"):
        out.checkpoints(seed=5)
    with pytest.raises(ConfigError, match="seed_0/cv_report.json is missing"):
        out.checkpoints(seed=0)
    assert out.checkpoints(seed=1) == [expected]
    _report(tmp_path / "plain", "pretrained", {"pretrained": [0]})
    with pytest.raises(ConfigError, match="--seed 1: .* trained with one seed"):
        CvOutput(tmp_path / "plain").checkpoints(seed=1)
