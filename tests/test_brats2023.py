"""BraTS 2023/2024 data: found under medssl's vocabulary, enhancing tumour read as label 3, never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.synth import synth_brats
from tests.conftest import REPO, run_medssl

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it

NAMES = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"}


def brats2023(tmp_path: Path) -> tuple[Path, int]:
    """A BraTS-2023-named copy of a synthetic 2021 set (ET relabelled 4 -> 3); returns it and the number of cases
    with a label-3 voxel."""
    old, new = tmp_path / "b21", tmp_path / "b23"
    synth_brats(old, cases=4, seed=2, size=(32, 32, 24))
    with_et = 0
    for k, case in enumerate(sorted(p for p in old.iterdir() if p.is_dir())):
        name = f"BraTS-GLI-{k:05d}-000"
        (new / name).mkdir(parents=True)
        for old_name, new_name in NAMES.items():
            src = case / f"{case.name}_{old_name}.nii.gz"
            if not src.is_file():
                continue  # a missing sequence stays missing
            image = sitk.ReadImage(str(src))
            if old_name == "seg":
                array = sitk.GetArrayFromImage(image)
                array[array == 4] = 3
                with_et += bool((array == 3).any())
                relabelled = sitk.GetImageFromArray(array)
                relabelled.CopyInformation(image)
                image = relabelled
            sitk.WriteImage(image, str(new / name / f"{name}-{new_name}.nii.gz"))
    return new, with_et


def test_check_and_fit_on_a_brats2023_set(tmp_path):
    root, with_et = brats2023(tmp_path)
    assert with_et > 0
    check = run_medssl("check", str(root), "--layout", "brats", "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    summary = json.loads(check.stdout)
    assert summary["cases"] == 4 and set(summary["modalities"]) == {"t1", "t1ce", "t2", "flair"}
    assert summary["modalities"]["flair"] < 4  # the synthetic set lacks some sequences
    assert summary["regions"]["ET"] == with_et and summary["label_convention"] == ["brats2023"]

    from medssl.lightning_cli import MedsslCLI

    cli = MedsslCLI(args=["--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root", str(root),
                          "--data.cache_dir", str(tmp_path / "cache"), "--data.n_folds", "2",
                          "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
                          "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert "val/dice_et" in cli.trainer.callback_metrics
    dm = cli.datamodule
    dataset = dm.make_dataset(dm.val_cases, with_labels=True, train=False)
    for i, case in enumerate(dm.val_cases):  # the ET channel the validation Dice uses is label 3
        seg = sitk.GetArrayFromImage(sitk.ReadImage(case.label))
        et = np.asarray(dataset[i]["label"][2])
        assert et.sum() > 0 if (seg == 3).any() else et.sum() == 0
