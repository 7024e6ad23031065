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
from medssl.data.synth import synth_picai
from tests.conftest import REPO, cv_workers, plant_evil_checkpoint, run_medssl, wait_for_cv_workers

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it

CONFIG = str(REPO / "configs/finetune/cswin_picai_tiny.yaml")


def cv_args(root, output, cache, *extra):
    return ("cv", "--config", CONFIG, "--data.root", str(root), "--data.cache_dir", str(cache),
            "--data.n_folds", "3", "--trainer.max_epochs", "1", "--output", str(output), *extra)


@pytest.fixture(scope="module")
def cv_run(picai_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("cv")
    result = run_medssl(*cv_args(picai_root, work / "out", work / "cache"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    (work / "stderr.log").write_text(result.stderr)
    return work


def test_a_log_redirected_to_a_file_stays_short(cv_run):
    """`medssl cv ... 2>log` off a terminal, no progress options given: no progress bars, at most one status line
    per epoch, each warning once; three folds and the report in under 50 lines."""
    lines = (cv_run / "stderr.log").read_text().splitlines()
    assert 0 < len(lines) < 50, "\n".join(lines)
    assert not any("\r" in line or "it/s]" in line for line in lines)  # no progress bar redrawn into the file
    assert max(lines.count(x) for x in lines) <= 3  # at most once per fold, never once per step or per case


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
    interrupted = out / "fold_1" / "checkpoints" / "last.ckpt"
    interrupted_before = interrupted.stat().st_mtime_ns
    # fold 1 "interrupted": its checkpoint exists but it never marked itself done
    (out / "fold_1" / "fold_result.json").unlink()
    shutil.rmtree(out / "fold_1" / "predictions")
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fold 0: finished before with these settings, not run again" in result.stderr
    assert "fold 1: resuming from" in result.stderr
    assert finished.stat().st_mtime_ns == before
    # its training was complete: resumed, nothing retrained (a restart would rewrite last.ckpt)
    assert interrupted.stat().st_mtime_ns == interrupted_before
    assert len(list((out / "fold_1" / "predictions").glob("*.nii.gz"))) > 0
    report = json.loads((out / "cv_report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1, 2]


def test_finished_folds_of_other_settings_are_refused_or_redone(cv_run, picai_root, tmp_path):
    """Folds made by another config are never reported as this run's: refused in one line, or redone."""
    out = tmp_path / "out"
    shutil.copytree(cv_run / "out", out)
    report_before = (out / "cv_report.json").read_bytes()
    other_net = ("--model.init_args.net.init_args.embed_dim", "24", "--folds", "0")
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), *other_net, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "made with other settings" in result.stderr.strip().splitlines()[-1]
    assert (out / "cv_report.json").read_bytes() == report_before  # nothing rewritten
    # asked for the pretrained run where only from-scratch folds are: refused too
    pretrain = torch.load(out / "fold_0" / "checkpoints" / "last.ckpt", weights_only=True)
    init = tmp_path / "init.ckpt"
    torch.save({"state_dict": pretrain["state_dict"]}, init)
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), "--model.init_args.init_from", str(init),
                        "--folds", "0", cwd=tmp_path)
    assert result.returncode == 2 and "made with other settings" in result.stderr, result.stderr[-2000:]
    # --overwrite redoes the fold with the new settings
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), *other_net, "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    stamp = json.loads((out / "fold_0" / ".medssl_fold.json").read_text())
    record = json.loads((out / "fold_0" / "fold_result.json").read_text())
    assert record["identity"] == stamp
    assert json.loads((out / "cv_report.json").read_text())["provenance"]["config_sha256"]


def test_user_split_file_is_honoured_and_copied(cv_run, picai_root, tmp_path):
    """--data.split_file S.json: each fold validates exactly the cases S names; S is copied, never replaced."""
    cases = sorted(c.case_id for c in discover("picai", picai_root) if c.label)
    patients = {}
    for c in cases:
        patients.setdefault(c.split("_")[0], []).append(c)
    groups = sorted(patients.values())
    folds = [sum(groups[k::3], []) for k in range(3)]
    user = tmp_path / "mine.json"
    user.write_text(json.dumps(folds))
    text = user.read_text()
    result = run_medssl(*cv_args(picai_root, tmp_path / "out", cv_run / "cache"), "--data.split_file", str(user),
                        "--folds", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "cv_report.json").read_text())
    assert report["folds"][0]["cases"] == sorted(folds[1])
    assert user.read_text() == text  # the user's file is untouched
    copied = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert copied["folds"] == folds
    provenance = report["provenance"]
    assert provenance["selection"] == "last" and provenance["split_source"]["kind"] == "user_file"
    assert {"label_source", "init_from", "versions"} <= set(provenance)
    record = json.loads((tmp_path / "out" / "fold_1" / "fold_result.json").read_text())
    assert record["checkpoint"].endswith("last.ckpt") and record["selection"] == "last"


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

    out = tmp_path / "out"
    args = cv_args(picai_root, out, tmp_path / "cache", "--workers", "2", "--trainer.max_epochs", "50")
    proc = subprocess.Popen([sys.executable, "-m", "medssl", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def workers() -> list[str]:
        return cv_workers(out)

    try:
        wait_for_cv_workers(proc, out)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) != 0
        assert workers() == []
        assert not (out / "cv_report.json").exists()
    finally:
        proc.kill()
        for pid in workers():
            os.kill(int(pid), signal.SIGKILL)


def test_cv_refuses_a_planted_checkpoint_in_an_interrupted_fold(cv_run, picai_root, tmp_path):
    """cv resumes an interrupted fold from its last.ckpt: a code-carrying one is refused, its code never runs."""

    out = tmp_path / "out"
    shutil.copytree(cv_run / "out", out)
    (out / "fold_1" / "fold_result.json").unlink()
    marker = tmp_path / "pwned"
    plant_evil_checkpoint(out / "fold_1" / "checkpoints" / "last.ckpt", marker)
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), "--folds", "1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "refused" in result.stderr.strip().splitlines()[-1] and not marker.exists()


def test_label_fractions_are_nested_patient_grouped_and_validate_the_same_cases(cv_run, picai_root, tmp_path):
    """--train-fractions 0.5,1.0 --twin: nested subsets of the training patients, the same validation cases,
    and a paired difference with CI and p-value per fraction."""
    init = cv_run / "out" / "fold_0" / "checkpoints" / "last.ckpt"  # a CSwin UNet: its encoder transfers
    out = tmp_path / "out"
    result = run_medssl(*cv_args(picai_root, out, cv_run / "cache"), "--folds", "0", "--train-fractions", "0.5,1.0",
                        "--twin", "--model.init_args.init_from", str(init), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "cv_report.json").read_text())
    assert [row["fraction"] for row in report["fractions"]] == [0.5, 1.0]
    cases = {c.case_id: c for c in discover("picai", picai_root)}
    used, validated = {}, {}
    for fraction in (0.5, 1.0):
        for run in ("pretrained", "scratch"):
            base = out / f"fraction_{fraction:g}" / ("scratch" if run == "scratch" else "")
            record = json.loads((base / "fold_0" / "fold_result.json").read_text())
            used[fraction, run] = set(record["train_case_ids"])
            validated[fraction, run] = set(record["cases"])
    assert len({frozenset(v) for v in validated.values()}) == 1  # the same validation cases everywhere
    assert used[0.5, "pretrained"] == used[0.5, "scratch"] and used[1.0, "pretrained"] == used[1.0, "scratch"]
    half, full = used[0.5, "pretrained"], used[1.0, "pretrained"]
    assert half < full and 0.3 <= len(half) / len(full) <= 0.7
    patients_used = {cases[c].patient_id for c in half}
    assert not {c for c in full - half if cases[c].patient_id in patients_used}  # no patient split
    for row in report["fractions"]:
        score = row["difference"]["score"]
        assert score["pooled_ci"] is not None and score["p_value"] is not None
        assert score["cases"] == len(validated[row["fraction"], "pretrained"])
    assert (out / "label_efficiency.png").is_file()
    assert "## Label efficiency" in (out / "cv_report.md").read_text()

    # infer --cv on the study: a fraction's folds (either run), never a silent pick between fractions
    new = tmp_path / "new"
    synth_picai(new, cases=2, seed=32, first_patient=96000)
    refused = run_medssl("infer", "--cv", str(out), "--data.root", str(new), "--output", str(tmp_path / "p"),
                         cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "fractions 0.5, 1" in refused.stderr.strip().splitlines()[-1] and not (tmp_path / "p").exists()
    for fraction, run, base in ((1.0, None, out / "fraction_1"), (0.5, "scratch", out / "fraction_0.5" / "scratch")):
        pred = tmp_path / f"pred_{fraction:g}"
        result = run_medssl("infer", "--cv", str(out), "--fraction", f"{fraction:g}", *(["--run", run] if run else []),
                            "--data.root", str(new), "--output", str(pred), cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        models = [m["checkpoint"] for m in json.loads((pred / "predictions.json").read_text())["models"]]
        assert models == [str(base / "fold_0" / "checkpoints" / "last.ckpt")]


def test_infer_cv_uses_every_folds_reported_checkpoint(cv_run, picai_root, tmp_path):
    new = tmp_path / "new"
    synth_picai(new, cases=2, seed=31, first_patient=95000)
    result = run_medssl("infer", "--cv", str(cv_run / "out"), "--data.root", str(new), "--output",
                        str(tmp_path / "pred"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    folds = sorted((cv_run / "out").glob("fold_*/fold_result.json"))
    reported = [json.loads(p.read_text())["checkpoint"] for p in folds]
    assert [m["checkpoint"] for m in record["models"]] == reported and len(reported) == 3
    assert len(record["cases"]) == 2


def test_seeds_and_controls_with_a_fixed_step_budget(picai_root, tmp_path):
    """--seeds 0,1 --train-fractions 0.5,1.0 --twin --control supervised: a folder per (fraction, seed, arm, fold),
    every fold the same number of optimiser steps, a report over seeds with each arm against scratch, the positive
    control's reading, and the pretext metrics of the pretraining run in the provenance."""
    archive = tmp_path / "archive"
    synth_picai(archive, cases=12, seed=40, first_patient=40000)  # labelled: the supervised control trains on it
    pre = run_medssl("fit", "--config", str(REPO / "configs/pretrain/cswin_tiny.yaml"), "--data.root", str(archive),
                     "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
                     "--trainer.default_root_dir", str(tmp_path / "pre"), "--trainer.enable_progress_bar", "false",
                     cwd=tmp_path)
    assert pre.returncode == 0, pre.stderr[-3000:]
    init = tmp_path / "pre" / "checkpoints" / "last.ckpt"
    assert json.loads((init.parent / "pretext.json").read_text())["rotation_chance"] == 0.25
    out = tmp_path / "out"
    result = run_medssl("cv", "--config", CONFIG, "--data.root", str(picai_root), "--data.cache_dir",
                        str(tmp_path / "cache"), "--data.n_folds", "2", "--folds", "0", "--trainer.max_epochs", "1",
                        "--data.train_batches_per_epoch", "2", "--trainer.enable_progress_bar", "false",
                        "--model.init_args.init_from", str(init), "--seeds", "0,1", "--train-fractions", "0.5,1.0",
                        "--twin", "--control", "supervised", "--output", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    steps, train_cases = set(), {}
    for fraction in (0.5, 1.0):
        for seed in (0, 1):
            for arm, folder in (("pretrained", ""), ("scratch", "scratch"), ("supervised", "supervised")):
                record = json.loads((out / f"fraction_{fraction:g}" / f"seed_{seed}" / folder / "fold_0"
                                     / "fold_result.json").read_text())
                assert record["run"] == arm and record["seed"] == seed and record["train_batches_per_epoch"] == 2
                steps.add(record["steps"])
                train_cases.setdefault(fraction, set()).add(record["train_cases"])
                if arm != "scratch":
                    assert record["init_report"]["loaded"] > 0 and record["not_transferred"]
    assert steps == {2}  # the same optimiser steps at every fraction, seed and arm
    assert max(train_cases[0.5]) < min(train_cases[1.0])
    report = json.loads((out / "cv_report.json").read_text())
    assert report["seeds"] == [0, 1] and [row["fraction"] for row in report["fractions"]] == [0.5, 1.0]
    for row in report["fractions"]:
        for comparison in (row["difference"], row["controls"]["supervised"]):
            assert comparison["seeds"] == [0, 1] and comparison["score"]["ci"] is not None
            assert set(comparison["score"]["per_seed"]) == {"0", "1"}
    # read per fraction in the study's report; the largest fraction's own report holds its verdict only
    assert report["positive_control"]["verdict_by_fraction"] == {
        f"{row['fraction']:g}": row["controls"]["supervised"]["score"]["verdict"] for row in report["fractions"]}
    largest = json.loads((out / "fraction_1" / "cv_report.json").read_text())
    assert largest["positive_control"]["verdict"] == report["controls"]["supervised"]["score"]["verdict"]
    provenance = report["provenance"]
    assert provenance["init_from"]["pretext"]["held_out_cases"] == 4 and provenance["seeds"] == [0, 1]
    assert provenance["optimiser_steps_per_fold"] == [2] and provenance["controls"]["supervised"]["sha256"]
    assert report["leakage"]["validated_cases_seen_in_pretraining"] == []  # the archive is other patients
    markdown = (out / "cv_report.md").read_text()
    assert markdown.startswith("# Label-efficiency study: fractions 0.5, 1") and "Positive control" in markdown
    assert report["positive_control"]["reading"] in markdown
