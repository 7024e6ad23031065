"""Reliability, round three: nothing overwritten, nothing read that is not what it claims, no traceback.

Each family of the round has a member here: an output over or inside an input, values a reader would turn into
something else, another model or preprocessing used silently, files read back without their checks, promises
that were not kept, and common mistakes that used to end in a traceback. Every refusal is one ``medssl: error:``
line with a non-zero exit, and the inputs are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from medssl import cli
from medssl.data.synth import synth_brats, synth_picai
from medssl.runs import resolve
from medssl.weights import CheckpointMeta
from tests.conftest import REPO

DETECT = REPO / "configs/finetune/cswin_picai_tiny.yaml"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    """Run a command in-process; it must fail with exactly one ``medssl: error:`` line and no traceback."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("medssl: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    root = tmp_path_factory.mktemp("picai3")
    synth_picai(root, cases=10, seed=21)
    return root


@pytest.fixture(scope="module")
def finetuned(picai, tmp_path_factory):
    """A finetuned detection checkpoint as the systems write it (the net, the medssl entry, the resolved config)."""
    config = resolve([DETECT], ["--data.root", str(picai)])
    from medssl.models.cswin_unet import CSwinUNet

    torch.manual_seed(0)
    net = CSwinUNet(**config["model"]["init_args"]["net"]["init_args"])
    data = config["data"]["init_args"]
    meta = CheckpointMeta(architecture="cswin_unet", net="CSwinUNet", kind="finetuned", task="detection",
                          layout="picai", modalities=["t2w", "adc", "hbv"], spacing=data["spacing"],
                          spatial_size=data["spatial_size"], clip_percentiles=data["clip_percentiles"],
                          voxel_aligned=False, config=yaml.safe_dump(config))
    path = tmp_path_factory.mktemp("ft") / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "medssl": meta.to_entry()}, path)
    return path


# ------------------------------------------------------------------------------------------------ data loss


@pytest.mark.parametrize("where", ["human_expert", "labels_root", "symlink", "images_patient"])
def test_infer_into_an_input_folder_is_refused_and_the_inputs_stay(picai, finetuned, tmp_path, capsys, where):
    labels = picai / "picai_labels"
    targets = {"human_expert": labels / "csPCa_lesion_delineations" / "human_expert" / "resampled",
               "labels_root": labels, "images_patient": next((picai / "images").iterdir())}
    if where == "symlink":
        (tmp_path / "link").symlink_to(targets["human_expert"])
        output = tmp_path / "link"
    else:
        output = targets[where]
    before = digest(picai)
    line = refused(["infer", "--checkpoint", str(finetuned), "--data.root", str(picai), "--output", str(output),
                    "--device", "cpu"], capsys)
    assert "--output" in line and ("input" in line)
    assert digest(picai) == before


def test_embed_evaluate_and_predict_outputs_inside_inputs_are_refused(picai, finetuned, tmp_path, capsys):
    before = digest(picai)
    line = refused(["embed", "--checkpoint", str(finetuned), "--data.layout", "picai", "--data.root", str(picai),
                    "--output", str(picai / "emb"), "--pool", "mean"], capsys)
    assert "lies inside the input folder" in line
    preds = tmp_path / "preds"
    preds.mkdir()
    line = refused(["evaluate", "--predictions", str(preds), "--layout", "picai", "--data.root", str(picai),
                    "--output", str(preds / "eval")], capsys)
    assert "lies inside the input folder" in line and str(preds) in line
    line = refused(["predict", "--config", str(DETECT), "--ckpt_path", str(finetuned), "--data.root", str(picai),
                    "--trainer.default_root_dir", str(picai / "images"), "--data.cache_dir", "null"], capsys)
    assert "--trainer.default_root_dir" in line
    assert digest(picai) == before


def test_quickstart_overwrite_into_a_foreign_folder_deletes_nothing(tmp_path, capsys):
    foreign = tmp_path / "mine"
    synth_picai(foreign / "archive", cases=2, seed=1)  # someone's own data where quickstart would write
    (foreign / "notes.txt").write_text("keep me")
    before = digest(foreign)
    line = refused(["quickstart", "--output", str(foreign), "--overwrite", "--cases", "12"], capsys)
    assert "not made by medssl quickstart" in line and "archive" in line
    assert digest(foreign) == before


# ------------------------------------------------------------------------------------------------ values that lie


def test_a_nan_voxel_in_a_nifti_label_is_refused_by_check_naming_the_case(tmp_path, capsys):
    root = tmp_path / "brats"
    synth_brats(root, cases=2, seed=3, size=(16, 16, 12))
    case = sorted(p for p in root.iterdir() if p.is_dir())[1]
    seg = case / f"{case.name}_seg.nii.gz"
    image = nib.load(seg)
    data = np.asarray(image.dataobj).astype(np.float32)
    data[3, 4, 5] = np.nan  # SimpleITK would read it as 0, a plausible label
    nib.save(nib.Nifti1Image(data, image.affine), seg)
    code = cli.main(["check", str(root), "--layout", "brats"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert any(case.name in ln and "NaN or Inf" in ln for ln in err.splitlines() if ln.startswith("medssl: error:"))


def test_non_finite_weights_predict_nothing(picai, finetuned, tmp_path, capsys):
    saved = torch.load(finetuned, weights_only=True)
    key = next(k for k in saved["state_dict"] if k.endswith("weight"))
    saved["state_dict"][key] = torch.full_like(saved["state_dict"][key], float("nan"))
    bad = tmp_path / "nan.ckpt"
    torch.save(saved, bad)
    line = refused(["infer", "--checkpoint", str(bad), "--data.root", str(picai), "--output", str(tmp_path / "o"),
                    "--device", "cpu"], capsys)
    assert "not finite" in line and not list((tmp_path / "o").glob("*.nii.gz"))


# ------------------------------------------------------------------------------------------------ another model


def test_validate_with_other_preprocessing_is_refused(picai, finetuned, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = refused(["validate", "--config", str(DETECT), "--ckpt_path", str(finetuned), "--data.root", str(picai),
                    "--data.spacing", "[3.0, 1.5, 1.5]", "--data.cache_dir", "null", "--data.n_folds", "2"], capsys)
    assert "data.spacing" in line and "trained with" in line


# ------------------------------------------------------------------------------------------------ reads without checks


def test_evaluate_refuses_a_truncated_map_and_a_probability_with_a_class_axis(picai, tmp_path, capsys):
    labels = sorted((picai / "picai_labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled").glob(
        "*.nii.gz"))[:2]
    preds = tmp_path / "preds"
    preds.mkdir()
    for label in labels:
        image = sitk.ReadImage(str(label))
        det = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(image).shape, np.float32))
        det.CopyInformation(image)
        sitk.WriteImage(det, str(preds / label.name))
    cut = preds / labels[0].name
    cut.write_bytes(cut.read_bytes()[:-40])  # a copy cut short: SimpleITK would zero-fill it
    args = ["evaluate", "--predictions", str(preds), "--labels", str(labels[0].parent), "--missing", "empty"]
    assert "truncated" in refused(args, capsys) or "incomplete" in refused(args, capsys)
    shutil.copy(labels[0], cut)  # restore a good map, then give the other case a softmax [2, D, H, W]
    image = sitk.ReadImage(str(labels[1]))
    two = np.stack([np.zeros(sitk.GetArrayFromImage(image).shape, np.float32)] * 2)
    nib.save(nib.Nifti1Image(np.moveaxis(two, 0, -1).T, np.eye(4)), preds / labels[1].name)
    assert "expected a 3-D image, got 4-D" in refused(args, capsys)


def test_an_input_edited_in_place_with_the_same_size_and_mtime_is_noticed(tmp_path):
    from medssl.data.layouts import discover

    root = tmp_path / "p"
    synth_picai(root, cases=1, seed=5)
    case = discover("picai", root)[0]
    before = case.to_item()["fingerprint"]
    adc = Path(case.images["adc"])
    stat = adc.stat()
    data = bytearray(adc.read_bytes())
    data[-1] ^= 0xFF  # the same size
    adc.write_bytes(bytes(data))
    os.utime(adc, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same modification time
    assert adc.stat().st_size == stat.st_size and adc.stat().st_mtime_ns == stat.st_mtime_ns
    assert discover("picai", root)[0].to_item()["fingerprint"] != before


# ------------------------------------------------------------------------------------------------ promises


def test_repeated_modalities_and_short_csv_rows_are_refused(tmp_path, capsys):
    line = refused(["fit", "--config", str(DETECT), "--data.root", str(tmp_path), "--data.modalities",
                    "[t2w, adc, t2w]"], capsys)
    assert "lists t2w more than once" in line
    datalist = tmp_path / "list.csv"
    datalist.write_text("case_id,patient_id,t2w,label\nc1,p1,a.mha,a_seg.nii.gz\nc2,p2,b.mha\n")
    line = refused(["check", str(datalist), "--layout", "datalist", "--modalities", "t2w"], capsys)
    assert "row 3 has fewer values" in line


def test_a_datalist_reaches_a_dicom_series_folder(tmp_path):
    from medssl.data.layouts import discover

    folder = tmp_path / "series"
    folder.mkdir()
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps([{"case_id": "c1", "patient_id": "p1", "t2w": "series"}]))
    assert discover("datalist", datalist, modalities=["t2w"])[0].images["t2w"] == str(folder)


# ------------------------------------------------------------------------------------------------ common mistakes


def test_common_mistakes_are_one_line(picai, tmp_path, capsys):
    assert "--seed_everything -1" in refused(["fit", "--config", str(DETECT), "--data.root", str(picai),
                                             "--seed_everything", "-1"], capsys)
    assert "--seed" in refused(["synth", "picai", str(tmp_path / "s"), "--seed", "-7"], capsys)
    report = tmp_path / "cv"
    report.mkdir()
    (report / "cv_report.json").write_text(json.dumps({"runs": {"pretrained": {"folds": [{"no": 1}]}},
                                                       "main_run": "pretrained"}))
    assert "lists no valid folds" in refused(["infer", "--cv", str(report), "--data.root", str(picai), "--output",
                                              str(tmp_path / "o")], capsys)
    assert "the net cannot take the training crop" in refused(
        ["fit", "--config", str(REPO / "configs/finetune/unet_picai_tiny.yaml"), "--data.root", str(picai),
         "--data.crop_size", "[2, 8, 8]", "--trainer.max_epochs", "1", "--data.cache_dir", str(tmp_path / "c"),
         "--trainer.default_root_dir", str(tmp_path / "run"), "--data.n_folds", "2"], capsys)
