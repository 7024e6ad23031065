"""``data.normalize``: ``all`` is picai_baseline's own ``z_score_norm`` (run here on the same arrays), ``nonzero``
keeps the background at 0 as BM-MAE's reference pipeline does; the setting keys the cache and travels with the
weights."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from medssl.data.datamodule import MRIDataModule
from medssl.data.preprocess import PREPROCESS_VERSION, preprocessing_for
from medssl.data.transforms import normalisation
from medssl.errors import ConfigError
from medssl.weights.meta import CheckpointMeta


def adc_like_crop(seed: int) -> np.ndarray:
    """Three modalities of a 12 x 40 x 40 crop; the ADC one with a zero background on about 16 % of its voxels
    (outside the acquired field of view), and a few bright outliers the clip must cut."""
    rng = np.random.default_rng(seed)
    image = rng.gamma(4.0, 120.0, size=(3, 12, 40, 40)).astype(np.float32)
    image[1, :, :, :6] = 0.0  # 15 % of the ADC crop
    image[1, :2, :, 6:8] = 0.0  # about 1 % more
    image[2].flat[rng.choice(image[2].size, 20, replace=False)] *= 40.0
    return image


@pytest.mark.skipif(importlib.util.find_spec("picai_baseline") is None, reason="picai_baseline is not installed")
@pytest.mark.parametrize("seed", [0, 1])
def test_all_is_the_picai_baselines_z_score_norm(seed):
    from picai_baseline.unet.training_setup.preprocess_utils import z_score_norm  # the baseline's own code

    image = adc_like_crop(seed)
    assert 0.14 < float((image[1] == 0).mean()) < 0.18
    prep = preprocessing_for("picai", ["t2w", "adc", "hbv"], True, clip_percentiles=(0.5, 99.5), normalize="all")
    ours = np.asarray(normalisation(prep)({"image": torch.from_numpy(image.copy())})["image"])
    # image_reader.py: z_score_norm(scan, 99.5) per modality
    theirs = np.stack([z_score_norm(image[c], 99.5) for c in range(3)])
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert float(ours[1][image[1] == 0].max()) < -1.0  # the background is below the mean, as in the baseline


def test_nonzero_keeps_the_background_at_zero_and_differs_from_all():
    image = adc_like_crop(0)
    results = {}
    for normalize in ("nonzero", "all"):
        prep = preprocessing_for("picai", ["t2w", "adc", "hbv"], True, clip_percentiles=(0.5, 99.5),
                                 normalize=normalize)
        results[normalize] = np.asarray(normalisation(prep)({"image": torch.from_numpy(image.copy())})["image"])
    background = image[1] == 0
    assert np.all(results["nonzero"][1][background] == 0)
    foreground = results["nonzero"][1][~background]
    assert abs(float(foreground.mean())) < 1e-4 and abs(float(foreground.std()) - 1) < 1e-3
    assert abs(float(results["all"][1].mean())) < 1e-4
    assert not np.allclose(results["nonzero"][1], results["all"][1], atol=0.1)


def test_the_setting_keys_the_cache_and_leaves_older_keys_alone():
    base = preprocessing_for("picai", ["t2w", "adc", "hbv"], True)
    assert base.normalize == "nonzero"
    # the key medssl computed before the setting existed: caches made then are still found
    settings = {k: v for k, v in asdict(base).items() if k != "normalize"}
    before = hashlib.sha1(json.dumps({**settings, "version": PREPROCESS_VERSION}, sort_keys=True).encode())
    assert base.key() == before.hexdigest()[:12]
    assert preprocessing_for("picai", ["t2w", "adc", "hbv"], True, normalize="all").key() != base.key()


def test_a_wrong_value_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data.normalize 'zscore': choose nonzero or all"):
        MRIDataModule(root=str(tmp_path), normalize="zscore")


def test_weights_refuse_data_normalised_otherwise():
    class Data:
        modalities, spacing, spatial_size, clip_percentiles, voxel_aligned = ["t2w"], None, None, None, False
        normalize = "nonzero"

    trained_all = CheckpointMeta(normalisation="all", recorded=frozenset({"normalisation"}))
    with pytest.raises(ConfigError, match="data.normalize is nonzero but C was trained with all; set "
                                          "--data.normalize all"):
        trained_all.check_data(Data(), "C")
    Data.normalize = "all"
    trained_all.check_data(Data(), "C")
    # the text earlier versions recorded, and weights that do not say, mean nonzero
    legacy = CheckpointMeta(normalisation="z-score over non-zero voxels, per modality")
    assert legacy.normalize == "nonzero" and CheckpointMeta().normalize == "nonzero"
    with pytest.raises(ConfigError, match="trained with nonzero"):
        legacy.check_data(Data(), "C")


def test_finetuning_from_weights_pretrained_on_other_intensities_says_so(tmp_path, caplog):
    """A transfer across normalisations is allowed (it may be meant) but never silent."""
    import logging
    from types import SimpleNamespace

    from medssl.lightning_cli import MedsslCLI
    from tests.conftest import REPO

    pre = MedsslCLI(args=["--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--data.root", "/x"],
                    run=False).model
    cli = MedsslCLI(args=["--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root", "/x"],
                    run=False)
    dm = cli.datamodule
    for pretrained_with, warned in (("all", True), ("nonzero", False)):
        path = tmp_path / f"{pretrained_with}.ckpt"
        torch.save({"state_dict": pre.state_dict(), "medssl": {"architecture": "bmmae", "kind": "pretraining",
                                                               "normalisation": pretrained_with,
                                                               "modalities": list(dm.modalities)}}, path)
        system = MedsslCLI(args=["--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root",
                                 "/x", "--model.init_args.init_from", str(path)], run=False).model
        system.check_crop = lambda *a: None  # no data to size a crop on: the init path is what is tested
        system._trainer = SimpleNamespace(datamodule=SimpleNamespace(
            modalities=dm.modalities, crop_size=None, spatial_size=dm.spatial_size, normalize=dm.normalize,
            val_cases=[], fold=0))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            system.setup("fit")
        said = [r.getMessage() for r in caplog.records if "pretrained on data.normalize" in r.getMessage()]
        assert bool(said) == warned, said
        assert system.init_report["loaded"] > 0
