"""The official BM-MAE weights and pipeline: medssl's preprocessing and encoder equal the reference's.

The reference pipeline reads BraTS NIfTI with MONAI (``LoadImaged`` -> ``EnsureChannelFirstd`` ->
``Spacingd(1 mm)`` -> ``CenterSpatialCropd`` -> ``NormalizeIntensityd(nonzero, channel_wise)``), so its
arrays are ``[x, y, z]``; medssl reads with SimpleITK (``[z, y, x]``). Here both run on non-cubic,
BraTS-like NIfTI files (x and y axes negative, 1 mm) whose sizes differ from the crop by odd numbers,
at a tiny model size with an official-format state dict (official key names, random weights).
"""

from __future__ import annotations

import pytest
import torch

from medssl.models.bmmae import BMMAE
from tests.models.bmmae_reference import (
    CASE_SHAPES,
    MODS,
    OFFICIAL_TINY,
    medssl_inputs,
    official_inputs,
    official_state_dict,
    reference_encode,
    write_brats_case,
)

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
