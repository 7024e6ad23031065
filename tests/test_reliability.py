"""Interruption, determinism and multi-process training, as users meet them on shared servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, cv_workers, plant_evil_checkpoint, run_medssl, wait_for_cv_workers

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it

PRETRAIN = str(REPO / "configs/pretrain/cswin_tiny.yaml")
DETECT = str(REPO / "configs/finetune/cswin_picai_tiny.yaml")


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "medssl", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 900) -> None:
    """SIGKILL ``proc`` as soon as ``ready()``; never leaves it running."""
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "timed out waiting to kill the run"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_fit_killed_resumes_with_ckpt_path_last(picai_root, tmp_path):
    run = tmp_path / "run"
    args = ["fit", "--config", PRETRAIN, "--data.root", str(picai_root), "--data.cache_dir", str(tmp_path / "c"),
            "--trainer.default_root_dir", str(run), "--trainer.enable_progress_bar", "false"]
    last = run / "checkpoints" / "last.ckpt"
    kill_when(start([*args, "--trainer.max_epochs", "100"], tmp_path), last.is_file)
    killed = torch.load(last, weights_only=True)  # complete, not truncated
    result = run_medssl(*args, "--trainer.max_epochs", str(killed["epoch"] + 2), "--ckpt_path", "last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states" in result.stderr
    assert torch.load(last, weights_only=True)["global_step"] > killed["global_step"]


def test_cv_killed_in_fold_1_resumes_without_retraining_fold_0(picai_root, tmp_path):
    out = tmp_path / "cv"
    args = ["cv", "--config", DETECT, "--data.root", str(picai_root), "--data.cache_dir", str(tmp_path / "c"),
            "--folds", "0,1", "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--output", str(out)]
    kill_when(start(args, tmp_path), lambda: (out / "fold_0" / "fold_result.json").is_file()
              and (out / "fold_1").is_dir())
    assert not (out / "cv_report.json").exists()
    fold0 = (out / "fold_0" / "fold_result.json").stat().st_mtime_ns
    result = run_medssl(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0: finished before with these settings, not run again" in result.stderr
    assert (out / "fold_0" / "fold_result.json").stat().st_mtime_ns == fold0
    report = json.loads((out / "cv_report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1]


def test_same_seed_same_result(picai_root, tmp_path):
    states = []
    for i in range(2):
        run = tmp_path / f"run{i}"
        result = run_medssl("fit", "--config", DETECT, "--data.root", str(picai_root), "--data.n_folds", "3",
                            "--data.cache_dir", str(tmp_path / f"c{i}"), "--trainer.max_epochs", "1",
                            "--seed_everything", "7", "--trainer.default_root_dir", str(run),
                            "--trainer.enable_progress_bar", "false", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        states.append(ckpt)
    for key, value in states[0]["state_dict"].items():
        assert torch.equal(value, states[1]["state_dict"][key]), key
    scores = [[float(cb["best_model_score"]) for cb in s["callbacks"].values()
               if cb.get("best_model_score") is not None] for s in states]
    assert scores[0] and scores[0] == scores[1]  # the same validation PI-CAI score


def test_ddp_two_cpu_processes_see_different_cases(brats_root, tmp_path):
    """Two gloo ranks split the cases between them, and the disk cache holds each case once."""
    probe, cache = tmp_path / "probe", tmp_path / "cache"
    args = [
        "fit", "--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--data.layout", "brats",
        "--data.root", str(brats_root), "--data.cache_dir", str(cache), "--data.batch_size", "1",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=tests.ddp_probe.RecordCases", f"--trainer.callbacks.out_dir={probe}",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # its own process group, so a hung collective cannot leave rank 1 behind after the timeout
    proc = subprocess.Popen([sys.executable, "-m", "medssl", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left (nothing, normally)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, output[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted(probe.glob("rank_*_of_2.json"))]
    assert len(ranks) == 2 and ranks[0]["pid"] != ranks[1]["pid"]
    seen = [set(r["cases"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    n_cases = len([p for p in brats_root.iterdir() if p.is_dir()])
    held_out = yaml.safe_load((REPO / "configs/pretrain/bmmae_tiny.yaml").read_text())["data"]["init_args"]["val_cases"]
    assert held_out > 0  # the recipe holds cases out for its pretext metrics: the ranks share the rest
    assert len(seen[0] | seen[1]) == n_cases - held_out
    assert len(list(cache.rglob("*.pt"))) == n_cases  # the held-out cases too, read for validation
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_planted_last_ckpt_is_refused_even_when_torch_is_told_to_unpickle(picai_root, tmp_path):
    """`--ckpt_path last` hands the file to Lightning; medssl's safe loader opens it first, whatever the env says."""
    run, marker = tmp_path / "run", tmp_path / "pwned"
    plant_evil_checkpoint(run / "checkpoints" / "last.ckpt", marker)
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "medssl", "fit", "--config", PRETRAIN, "--data.root",
                             str(picai_root), "--data.cache_dir", str(tmp_path / "c"), "--trainer.default_root_dir",
                             str(run), "--trainer.max_epochs", "1", "--ckpt_path", "last",
                             "--trainer.enable_progress_bar", "false"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "last.ckpt" in last and "refused" in last and "exec" in last.split("run", 1)[1]
    assert not marker.exists()


def test_published_checkpoint_with_numpy_and_namespace_values_loads(tmp_path):
    import argparse

    import numpy as np

    from medssl.checkpoint import load_checkpoint

    path = tmp_path / "published.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1), "best": np.float64(0.7),
                "dims": np.arange(3)}, path)
    loaded = load_checkpoint(path)
    assert loaded["args"].lr == 0.1 and float(loaded["best"]) == 0.7 and loaded["dims"].tolist() == [0, 1, 2]


def test_killed_cv_parent_takes_its_workers_with_it(picai_root, tmp_path):
    """SIGKILL runs no cleanup in the parent; the workers still end (the kernel's parent-death signal)."""
    out = tmp_path / "out"
    args = ["cv", "--config", DETECT, "--data.root", str(picai_root), "--data.cache_dir", str(tmp_path / "c"),
            "--data.n_folds", "3", "--workers", "2", "--trainer.max_epochs", "50", "--output", str(out),
            "--trainer.enable_progress_bar", "false"]
    proc = start(args, tmp_path)

    def workers() -> list[str]:
        return cv_workers(out)

    try:
        wait_for_cv_workers(proc, out)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 60
        while workers() and time.time() < deadline:
            time.sleep(0.5)
        assert workers() == []
    finally:
        for pid in workers():
            os.kill(int(pid), signal.SIGKILL)
