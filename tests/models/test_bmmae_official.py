"""The official BM-MAE weights and pipeline, and every checkpoint ``BMMAE.from_checkpoint`` rebuilds a model from.

The reference pipeline reads BraTS NIfTI with MONAI (``LoadImaged`` -> ``EnsureChannelFirstd`` ->
``Spacingd(1 mm)`` -> ``CenterSpatialCropd`` -> ``NormalizeIntensityd(nonzero, channel_wise)``), so its
arrays are ``[x, y, z]``; medssl reads with SimpleITK (``[z, y, x]``). Here both run on non-cubic,
BraTS-like NIfTI files (x and y axes negative, 1 mm) whose sizes differ from the crop by odd numbers,
at a tiny model size with an official-format state dict (official key names, random weights).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensity,
    NormalizeIntensityd,
    Spacingd,
)

from medssl.data.geometry import Grid, resample
from medssl.data.preprocess import read_image
from medssl.errors import CheckpointError, ConfigError
from medssl.models import bmmae
from medssl.models.bmmae import BMMAE, BMMAEUNETR, axis_order_of, load_encoder_weights
from tests.models.test_bmmae import random_state_dict, reference_encode

MODS = ("t1", "t1ce", "t2", "flair")
OFFICIAL_TINY = {"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 4, "decoder_embed_dim": 24,
                 "decoder_depth": 1, "decoder_num_heads": 4, "decoder_mlp_dim": 48}
CASE_SHAPES = ((151, 141, 129), (153, 139, 131))  # [x, y, z]; each differs from a 32 / 40 / 24 crop by odd numbers


# --------------------------------------------------------------------------- helpers (used by other test modules)


def official_state_dict(img_size_xyz=(32, 32, 32), seed: int = 0, **sizes) -> dict[str, torch.Tensor]:
    """An official-format ``bmmae.pth`` at a tiny size: official key names and shapes, random weights, and the
    fixed sin-cos tables MONAI builds for the token grid (in the file's own [x, y, z] order)."""
    sizes = {**OFFICIAL_TINY, **sizes}
    shapes = {k: tuple(v.shape) for k, v in BMMAE(**sizes, img_size=img_size_xyz).state_dict().items()}
    sd = random_state_dict(shapes, seed)
    grid = [s // sizes["patch_size"] for s in img_size_xyz]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key in sd:
            if key.endswith("position_embeddings"):
                sd[key] = build_sincos_position_embedding(grid, sd[key].shape[-1], spatial_dims=3).data.clone()
    return sd


@pytest.fixture
def tiny_reference(monkeypatch):
    """Make the tiny official-format file pass for the official one: its sizes and head counts are the reference's."""
    monkeypatch.setattr(bmmae, "_REFERENCE_SIZES", {k: OFFICIAL_TINY[k] for k in bmmae._REFERENCE_SIZES})
    monkeypatch.setattr(bmmae, "_REFERENCE_HEADS", {"num_heads": 4, "decoder_num_heads": 4})


def write_brats_case(root: Path, case_id: str, shape_xyz, modalities=MODS, seed: int = 0) -> Path:
    """``root/<case>/<case>_<m>.nii.gz`` written with nibabel, BraTS 2021's way: int16, 1 mm, x and y axes negative.

    Intensities vary along each axis differently per modality, with noise, inside an ellipsoid "brain";
    0 outside, as BraTS background is.
    """
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape_xyz), indexing="ij")
    brain = x**2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 < 0.85
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = [0.0, shape_xyz[1] - 1.0, 0.0]  # BraTS: [[-1, 0, 0, -0], [0, -1, 0, 239], [0, 0, 1, 0]]
    for k, m in enumerate(modalities):
        values = 500 + 250 * x - 120 * (k + 1) * y + 80 * z * (2 - k) + rng.normal(0, 40, shape_xyz)
        data = np.where(brain, np.clip(values, 1, None), 0).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{m}.nii.gz")
    return folder


def official_inputs(folder: Path, modalities, crop_xyz, normalize: bool = True) -> dict[str, torch.Tensor]:
    """The reference pipeline (the official ``get_val_transforms``) on one case: ``[1, 1, x, y, z]`` per modality."""
    keys = list(modalities)
    steps = [LoadImaged(keys=keys, reader="NibabelReader"), EnsureChannelFirstd(keys=keys), EnsureTyped(keys=keys),
             Spacingd(keys=keys, pixdim=(1.0, 1.0, 1.0), mode="bilinear"),
             CenterSpatialCropd(keys=keys, roi_size=list(crop_xyz))]
    if normalize:
        steps.append(NormalizeIntensityd(keys=keys, nonzero=True, channel_wise=True))
    out = Compose(steps)({m: str(folder / f"{folder.name}_{m}.nii.gz") for m in keys})
    return {m: torch.as_tensor(np.asarray(out[m]), dtype=torch.float32)[None] for m in keys}


def medssl_inputs(folder: Path, modalities, crop_zyx) -> dict[str, torch.Tensor]:
    """medssl's preprocessing built from its own pieces: SimpleITK resampling onto the voxel-aligned centred 1 mm
    grid of the reference modality, z-score over non-zero voxels per channel. ``[1, 1, z, y, x]`` per modality."""
    path = {m: str(folder / f"{folder.name}_{m}.nii.gz") for m in modalities}
    reference = read_image(path[modalities[0]])
    grid = Grid.from_image(reference).centred_subgrid((1.0, 1.0, 1.0), crop_zyx, voxel_aligned=True)
    image = np.stack([resample(read_image(path[m]), grid) for m in modalities])  # [C, z, y, x]
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    return {m: torch.as_tensor(np.asarray(image[i]), dtype=torch.float32)[None, None] for i, m in enumerate(modalities)}


# --------------------------------------------------------------------------- the official pipeline


@pytest.mark.parametrize("modalities", [MODS, ("t1", "t2", "flair")])
def test_medssl_preprocessing_and_encoder_equal_the_official_pipeline(tmp_path, modalities):
    crop_xyz = (40, 32, 24)  # non-cubic: a swapped axis cannot hide
    folder = write_brats_case(tmp_path, "BraTS2021_00007", CASE_SHAPES[0], modalities, seed=7)
    sd = official_state_dict(crop_xyz)
    torch.save(sd, tmp_path / "bmmae.pth")
    model = BMMAE.from_official(tmp_path / "bmmae.pth", **OFFICIAL_TINY, img_size=crop_xyz).eval()
    assert model.axis_order == "xyz" and model.input_size == (24, 32, 40)

    theirs = official_inputs(folder, modalities, crop_xyz)  # [1, 1, x, y, z]
    ours = medssl_inputs(folder, modalities, crop_xyz[::-1])  # [1, 1, z, y, x]
    for m in modalities:
        torch.testing.assert_close(ours[m], theirs[m].transpose(2, 4), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        tokens = model.encode(ours)
        reference = reference_encode(sd, theirs, heads=4, patch=8)
    assert tokens.shape == reference.shape == (1, 1 + len(modalities) * 5 * 4 * 3, 48)
    assert (tokens - reference).abs().max().item() < 1e-3  # every token, CLS included
    assert (tokens[:, 0] - reference[:, 0]).abs().max().item() < 1e-3


def test_axis_order_of_tells_the_official_file_from_ours():
    sd = official_state_dict()
    assert axis_order_of(sd) == "xyz"
    wrapped = {"state_dict": {f"net.{k}": v for k, v in sd.items()}}
    assert axis_order_of(wrapped) == "zyx"  # a Lightning checkpoint: ours
    assert axis_order_of({**wrapped, "medssl": {"architecture": "bmmae"}}) == "zyx"  # before axis_order was saved
    assert axis_order_of({**wrapped, "medssl": {"architecture": "bmmae", "axis_order": "xyz"}}) == "xyz"
    assert axis_order_of({**sd, "medssl": {"architecture": "bmmae"}}) == "zyx"


def test_init_from_official_weights_needs_an_xyz_net():
    sd = official_state_dict(patch_size=16)
    net_args = {"in_channels": 4, "out_channels": 3, "img_size": 32, "embed_dim": 48, "depth": 3, "num_heads": 4,
                "feature_size": 8}
    with pytest.raises(ConfigError, match=r"trained on xyz arrays .* set model\.init_args\.net\.init_args\.axis_order "
                                          r"to xyz"):
        load_encoder_weights(BMMAEUNETR(**net_args).encoder, sd)
    net = BMMAEUNETR(**net_args, axis_order="xyz")
    report = load_encoder_weights(net.encoder, sd)
    assert set(report["loaded"]) == set(net.encoder.state_dict())
    assert report["skipped"] and all(k.startswith("decoder.") for k in report["skipped"])
    ours = {"state_dict": {f"net.{k}": v for k, v in sd.items()}, "medssl": {"architecture": "bmmae"}}
    with pytest.raises(ConfigError, match="trained on zyx arrays .*its medssl entry"):
        load_encoder_weights(net.encoder, ours)


# --------------------------------------------------------------------------- from_checkpoint


def test_from_checkpoint_of_the_official_file(tmp_path, tiny_reference):
    sd = official_state_dict()
    torch.save(sd, tmp_path / "bmmae.pth")
    model, settings = BMMAE.from_checkpoint(tmp_path / "bmmae.pth")
    assert model.axis_order == "xyz" and model.img_size == (32, 32, 32) and model.decoder is not None
    assert settings == {"spacing": [1.0, 1.0, 1.0], "voxel_aligned": True, "official": True, "config": None}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    encoder, _ = BMMAE.from_checkpoint(tmp_path / "bmmae.pth", with_decoder=False)
    assert encoder.decoder is None and torch.equal(encoder.cls_token, sd["cls_token"])


def _config(tmp_path: Path, net: str, **init_args) -> Path:
    path = tmp_path / f"{net}.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": {"net": {"class_path": f"medssl.models.bmmae.{net}",
                                                                    "init_args": init_args}}}}))
    return path


def test_checkpoint_of_the_previous_code_loads_unchanged(tmp_path):
    """A pretraining checkpoint written before axis_order existed (no entry) is zyx and gives the same outputs."""
    torch.manual_seed(0)
    before = BMMAE(**{**OFFICIAL_TINY, "img_size": (32, 16, 24)}).eval()
    torch.save({"state_dict": {f"net.{k}": v for k, v in before.state_dict().items()},
                "medssl": {"architecture": "bmmae", "modalities": list(MODS), "spacing": [2.0, 2.0, 2.0],
                           "spatial_size": [32, 16, 24]}}, tmp_path / "last.ckpt")
    config = _config(tmp_path, "BMMAE", **OFFICIAL_TINY)  # img_size: from the metadata's spatial_size
    after, settings = BMMAE.from_checkpoint(tmp_path / "last.ckpt", config)
    after.eval()
    assert after.axis_order == "zyx" and after.img_size == after.input_size == (32, 16, 24)
    assert settings["voxel_aligned"] is False and settings["spacing"] == [2.0, 2.0, 2.0]
    x = {m: torch.randn(1, 1, 32, 16, 24) for m in MODS}
    with torch.no_grad():
        assert torch.equal(after.encode(x), before.encode(x))
        recon_after, recon_before = (m.reconstruct({"t1": x["t1"]}, ["t2"])["t2"] for m in (after, before))
    assert torch.equal(recon_after, recon_before)


def test_from_checkpoint_of_a_finetuned_net_gives_its_encoder(tmp_path):
    net = BMMAEUNETR(in_channels=4, out_channels=3, img_size=(48, 32, 16), embed_dim=48, depth=3, num_heads=4,
                     feature_size=8, axis_order="xyz")
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "medssl": {"architecture": "BMMAEUNETR", "modalities": list(MODS), "spacing": [1.0, 1.0, 1.0],
                           "spatial_size": [16, 32, 48]}}, tmp_path / "seg.ckpt")
    config = _config(tmp_path, "BMMAEUNETR", in_channels=4, out_channels=3, img_size=[48, 32, 16], embed_dim=48,
                     depth=3, num_heads=4, feature_size=8, axis_order="xyz")
    encoder, _ = BMMAE.from_checkpoint(tmp_path / "seg.ckpt", config)
    assert encoder.decoder is None and encoder.axis_order == "xyz" and encoder.input_size == (16, 32, 48)
    for key, value in net.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="no BM-MAE decoder"):
        BMMAE.from_checkpoint(tmp_path / "seg.ckpt", config, with_decoder=True)


def test_from_checkpoint_refuses_other_architectures(tmp_path):
    torch.save({"state_dict": {"net.encoder.patch_embed.proj.weight": torch.zeros(1)},
                "medssl": {"architecture": "cswin_unet"}}, tmp_path / "cswin.ckpt")
    with pytest.raises(CheckpointError, match="a cswin_unet checkpoint; this needs BM-MAE weights"):
        BMMAE.from_checkpoint(tmp_path / "cswin.ckpt")
