"""``medssl check`` on datalists users already hold: an MSD/decathlon JSON with 4-D images, an nnU-Net raw folder."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from medssl.cli import main


def _nifti(path, array, zooms=(1.0, 1.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array, np.diag([*zooms, 1.0]))
    nib.save(image, str(path))


def _label(shape, lesion: bool) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    if lesion:
        label[4:8, 4:8, 2:4] = 1
    return label


def _check(capsys, root, layout, *extra) -> dict:
    code = main(["check", str(root), "--layout", layout, "--json", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_decathlon_json_with_four_d_images(tmp_path, capsys):
    rng = np.random.default_rng(0)
    shape = (16, 16, 6)
    training = []
    for k, lesion in enumerate((True, False, True)):
        image = rng.random((*shape, 2)).astype(np.float32) + 0.5  # two channels in one 4-D file
        _nifti(tmp_path / "imagesTr" / f"prostate_{k:02d}.nii.gz", image)
        _nifti(tmp_path / "labelsTr" / f"prostate_{k:02d}.nii.gz", _label(shape, lesion))
        training.append({"image": f"./imagesTr/prostate_{k:02d}.nii.gz",
                         "label": f"./labelsTr/prostate_{k:02d}.nii.gz"})
    _nifti(tmp_path / "imagesTs" / "prostate_09.nii.gz", rng.random((*shape, 2)).astype(np.float32))
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"}, "training": training,
                                                       "test": ["./imagesTs/prostate_09.nii.gz"]}))
    summary = _check(capsys, tmp_path / "dataset.json", "datalist")
    assert summary["cases"] == 4 and summary["labelled"] == 3 and summary["positive"] == 2
    assert summary["modalities"] == {"t2": 4, "adc": 4} and summary["errors"] == []


def test_nnunet_raw_folder(tmp_path, capsys):
    root = tmp_path / "Dataset001_Prostate"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC", "2": "HBV"},
                                                   "labels": {"background": 0, "lesion": 1}, "numTraining": 3,
                                                   "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(1)
    shape = (16, 16, 6)
    for case, channels, lesion in (("p_001", (0, 1, 2), True), ("p_002", (0, 2), False), ("p_003", (0, 1, 2), True)):
        for k in channels:
            _nifti(root / "imagesTr" / f"{case}_{k:04d}.nii.gz", rng.random(shape).astype(np.float32) + 0.5)
        _nifti(root / "labelsTr" / f"{case}.nii.gz", _label(shape, lesion))
    summary = _check(capsys, root, "nnunet")
    assert summary["cases"] == 3 and summary["labelled"] == 3 and summary["positive"] == 2
    assert summary["modalities"] == {"t2": 3, "adc": 2, "hbv": 3} and summary["errors"] == []


def test_picai_label_sources_expert_where_present_else_ai(picai_root, tmp_path, capsys):
    """Expert masks on some cases, AI-derived masks on all: every case labelled by default, with the right counts;
    only the expert-labelled ones with --data.label_source human_expert."""
    import shutil

    import SimpleITK as sitk

    root = tmp_path / "picai"
    shutil.copytree(picai_root / "images", root / "images")
    expert = root / "picai_labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled"
    ai = root / "picai_labels" / "csPCa_lesion_delineations" / "AI" / "Bosma22a"
    expert.mkdir(parents=True)
    ai.mkdir(parents=True)
    t2ws = sorted(root.glob("images/*/*_t2w.mha"))
    for k, t2w in enumerate(t2ws):
        case_id = t2w.name.removesuffix("_t2w.mha")
        image = sitk.ReadImage(str(t2w))
        label = sitk.Image(image.GetSize(), sitk.sitkUInt8)
        label.CopyInformation(image)
        sitk.WriteImage(label, str(ai / f"{case_id}.nii.gz"))
        if k % 2 == 0:  # expert masks for half of the cases
            sitk.WriteImage(label, str(expert / f"{case_id}.nii.gz"))
    n_expert = len(t2ws[::2])
    summary = _check(capsys, root, "picai")
    assert summary["cases"] == summary["labelled"] == len(t2ws)
    assert summary["label_sources"] == {"human_expert": n_expert, "AI": len(t2ws) - n_expert}
    summary = _check(capsys, root, "picai", "--data.label_source", "human_expert")
    assert summary["labelled"] == n_expert and summary["label_sources"] == {"human_expert": n_expert}
