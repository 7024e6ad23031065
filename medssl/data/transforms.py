"""MONAI dictionary transforms: a deterministic part (cached on disk) and a random part.

Keys: ``image`` [C, D, H, W] float32, ``modality_mask`` bool [C], optional ``label``
[L, D, H, W] uint8, ``grid`` (the target grid), ``case_id``, ``patient_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Transform,
)

from medssl.data.preprocess import Preprocessing, load_case


@dataclass
class Augmentation:
    """Training augmentation; every probability 0 turns a step off.

    Args:
        flip_axes: array axes of ``[D, H, W]`` flipped at random (2 = left-right).
        flip_prob: probability of each flip.
        rotate_deg: in-plane rotation range (+-), applied with ``affine_prob``.
        zoom: scale range (+-), applied with ``affine_prob``.
        affine_prob: probability of the in-plane rotation/zoom.
        intensity_scale: +- relative intensity scale (after z-scoring).
        intensity_shift: +- intensity shift in standard deviations.
        noise_std: Gaussian noise standard deviation (0 = off).
    """

    flip_axes: tuple[int, ...] = (2,)
    flip_prob: float = 0.5
    rotate_deg: float = 0.0
    zoom: float = 0.0
    affine_prob: float = 0.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.0


class LoadCased(Transform):
    """Read one case and resample it physically onto its target grid (see ``load_case``)."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        return load_case(data, self.prep)


class ZeroMissingd(MapTransform):
    """Keep absent modalities exactly zero after intensity augmentation."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        mask = torch.as_tensor(d["modality_mask"], dtype=torch.bool)
        for key in self.key_iterator(d):
            d[key] = d[key] * mask.view(-1, *([1] * (d[key].ndim - 1))).to(d[key].dtype)
        return d


def deterministic_transforms(prep: Preprocessing) -> Compose:
    """Read, resample, z-score over non-zero voxels per modality; cached on disk by the dataset."""
    keys = ["image", "label"] if prep.label_mode != "none" else ["image"]
    return Compose([
        LoadCased(prep),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, track_meta=False, allow_missing_keys=True),
        EnsureTyped(keys="grid", track_meta=False, dtype=torch.float64),
    ])


def random_transforms(aug: Augmentation | None, patch_size: tuple[int, ...] | None, has_label: bool) -> Compose:
    """Training-time augmentation and random crop; image and label share each draw."""
    keys = ["image", "label"] if has_label else ["image"]
    modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
    steps: list[Any] = []
    if patch_size is not None:
        steps.append(RandSpatialCropd(keys=keys, roi_size=patch_size, random_size=False, allow_missing_keys=True))
    if aug is not None:
        for axis in aug.flip_axes:
            steps.append(RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=axis, allow_missing_keys=True))
        if aug.affine_prob > 0:
            angle = np.deg2rad(aug.rotate_deg)
            steps.append(RandAffined(keys=keys, prob=aug.affine_prob, rotate_range=(angle, 0, 0),
                                     scale_range=(0, aug.zoom, aug.zoom), mode=modes, padding_mode="zeros",
                                     allow_missing_keys=True))
        if aug.intensity_scale > 0:
            steps.append(RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=1.0, channel_wise=True))
        if aug.intensity_shift > 0:
            steps.append(RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=1.0, channel_wise=True))
        if aug.noise_std > 0:
            steps.append(RandGaussianNoised(keys="image", prob=0.5, std=aug.noise_std))
        steps.append(ZeroMissingd(keys="image"))
    steps.append(EnsureTyped(keys=keys, track_meta=False, allow_missing_keys=True))
    return Compose(steps)
