"""Every bad input the project handles: one clear line, a non-zero exit, no traceback, no result written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from tests.conftest import REPO, run_medssl

DETECT = str(REPO / "configs/finetune/cswin_picai_tiny.yaml")


def error_lines(result) -> list[str]:
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return [ln for ln in result.stderr.splitlines() if ln.startswith("medssl: error:")]


def small_copy(picai_root: Path, dest: Path, n: int = 3) -> list[str]:
    """A PI-CAI folder of the first ``n`` expert-labelled cases of the session's data."""
    labels = sorted(picai_root.glob("picai_labels/**/human_expert/resampled/*.nii.gz"))[:n]
    for label in labels:
        case_id = label.name.removesuffix(".nii.gz")
        pid = case_id.split("_")[0]
        for f in (picai_root / "images" / pid).glob(f"{case_id}_*.mha"):
            (dest / "images" / pid).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest / "images" / pid / f.name)
        target = dest / label.relative_to(picai_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(label, target)
    return [label.name.removesuffix(".nii.gz") for label in labels]


def edit_voxel(path: Path, value) -> None:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    array[1, 2, 3] = value
    new = sitk.GetImageFromArray(array)
    new.CopyInformation(image)
    sitk.WriteImage(new, str(path))


def break_case(root: Path, case_id: str, problem: str) -> None:
    pid = case_id.split("_")[0]
    adc = root / "images" / pid / f"{case_id}_adc.mha"
    label = next(root.glob(f"picai_labels/**/{case_id}.nii.gz"))
    if problem == "truncated":
        adc.write_bytes(adc.read_bytes()[:300])
    elif problem == "nan":
        edit_voxel(adc, np.inf)
    elif problem == "label_range":
        edit_voxel(label, 9)
    elif problem == "label_grid":
        image = sitk.ReadImage(str(label))
        image.SetOrigin(tuple(o + 5.0 for o in image.GetOrigin()))
        sitk.WriteImage(image, str(label))
    elif problem == "no_reference":
        (root / "images" / pid / f"{case_id}_t2w.mha").unlink()
    elif problem == "empty":
        shutil.rmtree(root / "images")
        (root / "images").mkdir()


# -- medssl check ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("problem", "message"), [
    ("truncated", "cannot read image"), ("nan", "NaN or Inf voxels"), ("label_range", "label values [9]"),
    ("label_grid", "does not match the reference"), ("no_reference", "no t2w image"),
    ("empty", "no PI-CAI cases found"),
])
def test_check(picai_root, tmp_path, problem, message):
    ids = small_copy(picai_root, tmp_path)
    break_case(tmp_path, ids[1], problem)
    (line,) = error_lines(run_medssl("check", str(tmp_path), "--layout", "picai"))
    assert message in line
    if problem != "empty":
        assert ids[1] in line


# -- unsafe checkpoints ----------------------------------------------------------------------------
class _Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("route", ["init_from", "ckpt_path", "reconstruct"])
def test_pickle_with_code_is_refused_and_never_runs(picai_root, tmp_path, route):
    evil, pwned = tmp_path / "evil.ckpt", tmp_path / "PWNED"
    torch.save({"state_dict": {"x": _Payload(str(pwned))}}, evil)
    run = tmp_path / "run"
    if route == "reconstruct":
        args = ("reconstruct", "--checkpoint", str(evil), "--data.layout", "brats", "--data.root", str(picai_root),
                "--output", str(run))
    else:
        flag = "--model.init_from" if route == "init_from" else "--ckpt_path"
        args = ("fit", "--config", DETECT, "--data.root", str(picai_root), "--trainer.max_epochs", "1",
                "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(run), flag, str(evil))
    (line,) = error_lines(run_medssl(*args, cwd=tmp_path))
    assert "evil.ckpt" in line and "refused" in line
    assert not pwned.exists()
    assert not list(run.rglob("*.ckpt")) and not list(run.rglob("*.nii.gz"))


# -- bad config -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    (["--trainer.max_epoch", "1"], "max_epoch"),
    (["--data.batch_size", "abc"], "data.batch_size"),
    (["--data.root", ""], "data.root is not set"),
    (["--data.fold", "7"], "data.fold 7 is outside 0..4"),
    (["--model.net.in_channels", "4"], "in_channels to 3 for t2w, adc, hbv"),
    (["--model.init_args.loss", "hinge"], "model.loss"),
])
def test_bad_config_names_the_key(picai_root, tmp_path, override, message):
    run = tmp_path / "run"
    args = ["fit", "--config", DETECT, "--data.root", str(picai_root), "--data.cache_dir", str(tmp_path / "c"),
            "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(run), *override]
    (line,) = error_lines(run_medssl(*args, cwd=tmp_path))
    assert message in line
    assert not list(run.rglob("*.ckpt"))


def test_cv_bad_folds(picai_root, tmp_path):
    (line,) = error_lines(run_medssl("cv", "--config", DETECT, "--data.root", str(picai_root), "--folds", "0,9",
                                     "--output", str(tmp_path / "cv"), cwd=tmp_path))
    assert "--folds [9]" in line
    assert not (tmp_path / "cv" / "cv_report.json").exists()


# -- bad data during a run ------------------------------------------------------------------------
def test_bad_case_stops_training_or_is_skipped(picai_root, tmp_path):
    root = tmp_path / "data"
    ids = small_copy(picai_root, root, n=6)
    break_case(root, ids[2], "nan")
    common = ["fit", "--config", DETECT, "--data.root", str(root), "--data.n_folds", "2",
              "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"]
    stop = run_medssl(*common, "--data.cache_dir", str(tmp_path / "c1"), "--trainer.default_root_dir",
                      str(tmp_path / "stop"), cwd=tmp_path)
    (line,) = error_lines(stop)
    assert ids[2] in line and "NaN or Inf" in line and "data.on_bad_case skip" in line
    assert not list((tmp_path / "stop").rglob("*.ckpt"))

    skip = run_medssl(*common, "--data.cache_dir", str(tmp_path / "c2"), "--trainer.default_root_dir",
                      str(tmp_path / "skip"), "--data.on_bad_case", "skip", cwd=tmp_path)
    assert skip.returncode == 0, skip.stderr[-3000:]
    assert f"skipping unusable case: case {ids[2]}" in skip.stderr
    last = torch.load(tmp_path / "skip" / "checkpoints" / "last.ckpt", weights_only=True)
    assert list(last["medssl"]["skipped_cases"]) == [ids[2]]
