"""``medssl cv`` end to end: folds, maps in original geometry, report numbers, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from picai_eval import evaluate

from medssl.data.layouts import discover
from tests.conftest import REPO, run_medssl

CONFIG = str(REPO / "configs/finetune/cswin_picai_tiny.yaml")


def cv_args(root, output, cache, *extra):
    return ("cv", "--config", CONFIG, "--data.root", str(root), "--data.cache_dir", str(cache),
            "--data.n_folds", "3", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--output", str(output), *extra)


@pytest.fixture(scope="module")
def cv_run(picai_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("cv")
    result = run_medssl(*cv_args(picai_root, work / "out", work / "cache"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_every_labelled_case_validated_once_in_its_t2w_geometry(cv_run, picai_root):
    report = json.loads((cv_run / "out" / "cv_report.json").read_text())
    cases = {c.case_id: c for c in discover("picai", picai_root)}
    validated = [c for fold in report["folds"] for c in fold["cases"]]
    labelled = sorted(c for c, case in cases.items() if case.label)
    assert sorted(validated) == labelled  # each labelled case exactly once, unlabelled never
    fold_of_patient = {}
    for fold in report["folds"]:
        for c in fold["cases"]:
            assert fold_of_patient.setdefault(cases[c].patient_id, fold["fold"]) == fold["fold"]
    for fold in report["folds"]:
        for c in fold["cases"]:
            det = sitk.ReadImage(str(cv_run / "out" / f"fold_{fold['fold']}" / "predictions" / f"{c}.nii.gz"))
            t2w = sitk.ReadImage(cases[c].images["t2w"])
            assert det.GetSize() == t2w.GetSize()
            assert np.allclose(det.GetSpacing(), t2w.GetSpacing(), atol=1e-5)
            assert np.allclose(det.GetOrigin(), t2w.GetOrigin(), atol=1e-4)
            assert np.allclose(det.GetDirection(), t2w.GetDirection(), atol=1e-6)


def test_report_numbers_are_picai_eval_on_the_written_maps(cv_run, picai_root):
    report = json.loads((cv_run / "out" / "cv_report.json").read_text())
    labels = {c.case_id: c.label for c in discover("picai", picai_root)}
    for fold in report["folds"]:
        pred_dir = cv_run / "out" / f"fold_{fold['fold']}" / "predictions"
        y_det = [sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{c}.nii.gz"))) for c in fold["cases"]]
        y_true = [(sitk.GetArrayFromImage(sitk.ReadImage(labels[c])) >= 1).astype(int) for c in fold["cases"]]
        metrics = evaluate(y_det=y_det, y_true=y_true, subject_list=fold["cases"], num_parallel_calls=1)
        assert fold["ap"] == pytest.approx(metrics.AP, abs=1e-4)
        if fold["auroc"] is not None:
            assert fold["auroc"] == pytest.approx(metrics.auroc, abs=1e-4)
    for key in ("mean", "std", "pooled"):
        assert {"auroc", "ap", "score"} <= set(report[key])
    assert (cv_run / "out" / "cv_report.md").is_file()
    assert list((cv_run / "out").glob("roc_*.png")) and list((cv_run / "out").glob("froc_*.png"))


def test_resume_skips_finished_folds_and_continues_interrupted_one(cv_run, picai_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(cv_run / "out", out)
    finished = out / "fold_0" / "checkpoints" / "last.ckpt"
    before = finished.stat().st_mtime_ns
    steps_before = torch.load(out / "fold_1" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    # fold 1 "interrupted": its checkpoint exists but it never marked itself done
    (out / "fold_1" / "fold_result.json").unlink()
    shutil.rmtree(out / "fold_1" / "predictions")
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), "--trainer.max_epochs", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0: finished before, not run again" in result.stderr
    assert "fold 1: resuming from" in result.stderr
    assert finished.stat().st_mtime_ns == before
    resumed = torch.load(out / "fold_1" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * steps_before, result.stderr[-2000:]  # went on, did not restart
    report = json.loads((out / "cv_report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1, 2]


def test_workers_run_folds_side_by_side_with_the_same_splits(cv_run, picai_root, tmp_path):
    """--workers 2 (one fold per GPU on a GPU server; here two CPU processes) validates the same cases."""
    result = run_medssl(*cv_args(picai_root, tmp_path / "out", cv_run / "cache"), "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    serial = json.loads((cv_run / "out" / "cv_report.json").read_text())
    parallel = json.loads((tmp_path / "out" / "cv_report.json").read_text())
    assert [f["cases"] for f in parallel["folds"]] == [f["cases"] for f in serial["folds"]]
    for fold in parallel["folds"]:
        fold_dir = tmp_path / "out" / f"fold_{fold['fold']}"
        assert (fold_dir / "worker.log").is_file() and (fold_dir / "fold_result.json").is_file()
        assert len(list((fold_dir / "predictions").glob("*.nii.gz"))) == len(fold["cases"])


def test_cv_refuses_several_devices_per_fold(picai_root, tmp_path):
    result = run_medssl(*cv_args(picai_root, tmp_path / "out", tmp_path / "cache"), "--trainer.devices", "2",
                        "--trainer.accelerator", "cpu", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--workers" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "cv_report.json").exists()


def test_terminated_cv_stops_its_workers(picai_root, tmp_path):
    """A scheduler's SIGTERM to `cv --workers 2` ends the fold processes too, not only the parent."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    args = cv_args(picai_root, out, tmp_path / "cache", "--workers", "2", "--trainer.max_epochs", "50")
    proc = subprocess.Popen([sys.executable, "-m", "medssl", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def workers() -> list[str]:
        found = subprocess.run(["pgrep", "-f", "--", f"--worker-dir {out}"], capture_output=True, text=True)
        return found.stdout.split()

    try:
        deadline = time.time() + 300
        while len(workers()) < 2:
            assert proc.poll() is None and time.time() < deadline, "the workers never started"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        assert workers() == []
        assert not (out / "cv_report.json").exists()
    finally:
        proc.kill()
        for pid in workers():
            os.kill(int(pid), signal.SIGKILL)
