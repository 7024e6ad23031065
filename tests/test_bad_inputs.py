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

pytestmark = pytest.mark.slow  # each test runs the medssl command: `pytest -m "not slow"` skips them


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
    ("truncated", "truncated"), ("nan", "NaN or Inf voxels"), ("label_range", "label values [9]"),
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
    (line,) = error_lines(run_medssl("cv", "--config", DETECT, "--data.root", str(picai_root), "--folds", "0,0",
                                     "--output", str(tmp_path / "cv"), cwd=tmp_path))
    assert "each fold once" in line
    (line,) = error_lines(run_medssl("cv", "--config", DETECT, "--data.root", str(picai_root), "--train-fractions",
                                     "0,1", "--output", str(tmp_path / "fractions"), cwd=tmp_path))
    assert "--train-fractions" in line and not (tmp_path / "fractions").exists()  # refused before any write
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


# -- issue 17's families: reads that lie, writing outside the output, reuse under other settings ----------
def _truncate_gz(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # SimpleITK zero-fills the rest and raises nothing


@pytest.mark.parametrize("what", ["image", "label"])
def test_truncated_nifti_makes_check_fail_naming_the_case(brats_root, tmp_path, what):
    root = tmp_path / "brats"
    shutil.copytree(brats_root, root)
    case = sorted(p for p in root.iterdir() if p.is_dir() and (p / f"{p.name}_seg.nii.gz").is_file())[0]
    target = case / f"{case.name}_{'t2' if what == 'image' else 'seg'}.nii.gz"
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(target))).size  # SimpleITK reads it before the cut ...
    _truncate_gz(target)
    sitk.ReadImage(str(target))  # ... and after it, without a word: the cut part reads as zeros
    result = run_medssl("check", str(root), "--layout", "brats", "--json", cwd=tmp_path)
    lines = error_lines(result)
    assert len(lines) == 1 and case.name in lines[0] and "truncated" in lines[0], lines


def test_two_files_for_one_modality_are_refused_naming_both(picai_root, tmp_path):
    root = tmp_path / "data"
    ids = small_copy(picai_root, root, n=2)
    pid = ids[0].split("_")[0]
    mha = root / "images" / pid / f"{ids[0]}_adc.mha"
    sitk.WriteImage(sitk.ReadImage(str(mha)), str(mha.with_name(f"{ids[0]}_adc.nii.gz")))
    (line,) = error_lines(run_medssl("check", str(root), "--layout", "picai", cwd=tmp_path))
    assert f"{ids[0]}_adc.mha" in line and f"{ids[0]}_adc.nii.gz" in line


def test_a_modality_off_the_reference_grid_is_refused(picai_root, tmp_path):
    root = tmp_path / "data"
    ids = small_copy(picai_root, root, n=2)
    adc = root / "images" / ids[1].split("_")[0] / f"{ids[1]}_adc.mha"
    image = sitk.ReadImage(str(adc))
    image.SetOrigin(tuple(o + 500.0 for o in image.GetOrigin()))  # half a metre away: all zeros if resampled
    sitk.WriteImage(image, str(adc))
    lines = error_lines(run_medssl("check", str(root), "--layout", "picai", cwd=tmp_path))
    assert any(ids[1] in ln and "adc" in ln for ln in lines), lines


def _datalist(picai_root: Path, tmp_path: Path, case_id: str) -> Path:
    case = next(p for p in sorted((picai_root / "images").glob("*/*_t2w.mha")))
    stem = case.name.removesuffix("_t2w.mha")
    rows = [{"case_id": case_id, "patient_id": "p1", **{m: str(case.with_name(f"{stem}_{m}.mha"))
                                                        for m in ("t2w", "adc", "hbv")}}]
    path = tmp_path / "list.json"
    path.write_text(__import__("json").dumps(rows))
    return path


@pytest.mark.parametrize("case_id", ["../../x", "a/b", "/abs/x", ".hidden"])
def test_case_ids_that_leave_the_output_are_refused_before_anything_is_written(picai_root, tmp_path, case_id):
    datalist = _datalist(picai_root, tmp_path, case_id)
    out = tmp_path / "deep" / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    (line,) = error_lines(run_medssl("check", str(datalist), "--layout", "datalist", cwd=tmp_path))
    assert repr(case_id)[1:-1] in line or case_id in line
    (line,) = error_lines(run_medssl("fit", "--config", DETECT, "--data.layout", "datalist", "--data.root",
                                     str(datalist), "--data.cache_dir", str(out / "cache"),
                                     "--trainer.default_root_dir", str(out), cwd=tmp_path))
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written, inside or outside


def test_synth_into_a_non_empty_folder_refuses_and_changes_nothing(tmp_path):
    target = tmp_path / "data"
    (target / "images" / "10000").mkdir(parents=True)
    real = target / "images" / "10000" / "10000_1000000_t2w.mha"
    real.write_bytes(b"a real scan")
    (line,) = error_lines(run_medssl("synth", "picai", str(target), "--cases", "3", cwd=tmp_path))
    assert str(target) in line and "not empty" in line
    assert real.read_bytes() == b"a real scan" and sorted(target.rglob("*")) == [target / "images",
                                                                              target / "images" / "10000", real]


def test_quickstart_rerun_with_other_options_is_refused(tmp_path):
    out = tmp_path / "qs"
    out.mkdir()
    (out / ".medssl_quickstart.json").write_text(__import__("json").dumps(
        {"cases": 30, "archive_cases": 24, "pretrain_epochs": 3, "finetune_epochs": 3, "seed": 0,
         "difficulty": "realistic"}))
    (line,) = error_lines(run_medssl("quickstart", "--output", str(out), "--seed", "1", cwd=tmp_path))
    assert "other settings" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == [".medssl_quickstart.json"]


# -- issue 17's remaining user mistakes: one line each ------------------------------------------------------
def test_yaml_error_names_the_file(picai_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args: [unclosed\n")
    (line,) = error_lines(run_medssl("fit", "--config", str(bad), "--data.root", str(picai_root), cwd=tmp_path))
    assert str(bad) in line and "not valid YAML" in line and "line" in line


def test_disabled_checkpointing_beside_a_recipe_callback_is_one_line(picai_root, tmp_path):
    (line,) = error_lines(run_medssl("fit", "--config", DETECT, "--data.root", str(picai_root),
                                     "--trainer.enable_checkpointing", "false", cwd=tmp_path))
    assert "trainer" in line and "checkpoint" in line.lower()


def test_output_that_is_a_file_is_one_line(picai_root, tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("x")
    (line,) = error_lines(run_medssl("cv", "--config", DETECT, "--data.root", str(picai_root),
                                     "--output", str(target), cwd=tmp_path))
    assert "is a file" in line and target.read_text() == "x"


def test_latin1_marksheet_is_one_line(picai_root, tmp_path):
    root = tmp_path / "data"
    small_copy(picai_root, root, n=2)
    sheet = root / "picai_labels" / "clinical_information" / "marksheet.csv"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_bytes("patient_id,study_id,comment\n10000,1000000,Prüfung\n".encode("latin-1"))
    (line,) = error_lines(run_medssl("check", str(root), "--layout", "picai", cwd=tmp_path))
    assert "marksheet.csv" in line and "UTF-8" in line


def test_grid_too_large_is_estimated_before_resampling(picai_root, tmp_path):
    root = tmp_path / "data"
    small_copy(picai_root, root, n=2)
    lines = error_lines(run_medssl("fit", "--config", DETECT, "--data.root", str(root), "--data.spacing",
                                   "[0.01, 0.01, 0.01]", "--data.spatial_size", "null", "--data.crop_size", "null",
                                   "--data.cache_dir", str(tmp_path / "c"), cwd=tmp_path))
    assert "GiB" in lines[-1] and "data.spacing" in lines[-1]


def test_ckpt_path_of_another_system_is_one_line(picai_root, tmp_path):
    other = tmp_path / "seg.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "medssl.systems.finetune.SegmentationSystem"}},
               other)
    (line,) = error_lines(run_medssl("test", "--config", DETECT, "--data.root", str(picai_root), "--ckpt_path",
                                     str(other), cwd=tmp_path))
    assert "seg.ckpt" in line and "SegmentationSystem" in line and "DetectionSystem" in line
