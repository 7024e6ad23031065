"""The command line as a user meets it: help, check, synth, config errors, a tiny fit."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import REPO, run_medssl


def test_help_lists_every_command():
    result = run_medssl("--help")
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "synth", "check"):
        assert f"\n  {command} " in result.stdout


def test_check_picai_counts(picai_root):
    result = run_medssl("check", str(picai_root), "--layout", "picai", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    t2w = sorted(picai_root.glob("images/*/*_t2w.mha"))
    labels = sorted(picai_root.glob("picai_labels/csPCa_lesion_delineations/human_expert/resampled/*.nii.gz"))
    positive = sum(bool((np.asarray(nib.load(p).dataobj) >= 1).any()) for p in labels)  # independent reader
    assert summary["cases"] == len(t2w) == 30
    assert summary["patients"] == len({p.parent.name for p in t2w}) < 30
    assert summary["labelled"] == len(labels)
    assert summary["positive"] == positive > 0
    assert summary["modalities"] == {"t2w": 30, "adc": 30, "hbv": 30}
    spacings = {tuple(round(s, 3) for s in sitk.ReadImage(str(p)).GetSpacing()) for p in t2w}
    assert len(spacings) >= 3  # varied T2W geometry


@pytest.mark.slow
def test_check_brats_counts_missing_sequences(brats_root):
    result = run_medssl("check", str(brats_root), "--layout", "brats", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    expected = {m: len(list(brats_root.glob(f"*/*_{m}.nii.gz"))) for m in ("t1", "t1ce", "t2", "flair")}
    assert summary["modalities"] == expected
    assert summary["cases"] == summary["patients"] == 8


def test_synth_cli_writes_layout(tmp_path):
    result = run_medssl("synth", "brats", str(tmp_path), "--cases", "2")
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("*/*_seg.nii.gz"))) == 2


@pytest.mark.slow
def test_print_config_resolves_stacked_configs(tmp_path):
    override = tmp_path / "more.yaml"
    override.write_text("data:\n  init_args:\n    batch_size: 5\n")
    result = run_medssl("fit", "--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--config", str(override),
                        "--data.root", "/somewhere", "--print_config")
    assert result.returncode == 0, result.stderr
    assert "batch_size: 5" in result.stdout and "root: /somewhere" in result.stdout


@pytest.mark.slow
def test_bmmae_tiny_fit_on_incomplete_brats_writes_checkpoint(brats_root, tmp_path):
    result = run_medssl("fit", "--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"),
                        "--data.layout", "brats", "--data.root", str(brats_root),
                        "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_epochs", "1",
                        "--trainer.default_root_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "run").rglob("*.ckpt"))
    assert list((tmp_path / "run").rglob("config.yaml"))
    assert list((tmp_path / "run").rglob("images/reconstruction_epoch0000.png"))
