"""MONAI dictionary transforms: a deterministic part (cached on disk) and a random part.

Keys: ``image`` [C, D, H, W] float32, ``modality_mask`` bool [C], optional ``label``
[L, D, H, W] uint8, ``grid`` (the target grid), ``case_id``, ``patient_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    ClipIntensityPercentilesd,
    Compose,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    RandSpatialCropd,
    RandZoomd,
    Transform,
)

from medssl.data.layouts import Case
from medssl.data.preprocess import Preprocessing, load_case
from medssl.errors import DataError, find_user_error


@dataclass
class Augmentation:
    """Training augmentation; every probability 0 turns a step off.

    Args:
        flip_axes: array axes of ``[D, H, W]`` flipped at random (2 = left-right).
        flip_prob: probability of each flip.
        rotate_deg: in-plane rotation range (+-), applied with ``affine_prob``.
        zoom: scale range (+-), applied with ``affine_prob``.
        affine_prob: probability of the in-plane rotation/zoom.
        intensity_scale: +- relative intensity scale (after z-scoring): brightness.
        intensity_shift: +- intensity shift in standard deviations.
        noise_std: Gaussian noise standard deviation (0 = off), applied with ``noise_prob``.
        noise_prob: probability of the Gaussian noise.
        rotate_all_axes: rotate about all three axes by +- ``rotate_deg`` (nnU-Net), not only in-plane.
        scale_range: isotropic scaling ``[min, max]`` (nnU-Net: 0.7-1.4), applied with ``scale_prob``.
        scale_prob: probability of the scaling.
        blur_sigma: Gaussian blur sigma range ``[min, max]`` in voxels, applied with ``blur_prob``.
        blur_prob: probability of the blur.
        contrast_range: contrast factor range ``[min, max]`` around each channel's mean (``contrast_prob``).
        contrast_prob: probability of the contrast change.
        lowres_range: low-resolution simulation zoom ``[min, max]`` (``lowres_prob``).
        lowres_prob: probability of the low-resolution simulation.
        gamma_range: gamma range ``[min, max]`` (``gamma_prob``).
        gamma_prob: probability of the gamma change.

    Every option beyond the first eight is off by default; the PI-CAI recipes turn on the
    nnU-Net-style set (``configs/finetune/cswin_picai.yaml`` names its values and source).
    """

    flip_axes: tuple[int, ...] = (2,)
    flip_prob: float = 0.5
    rotate_deg: float = 0.0
    zoom: float = 0.0
    affine_prob: float = 0.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    noise_std: float = 0.0
    noise_prob: float = 0.5
    rotate_all_axes: bool = False
    scale_range: tuple[float, float] | None = None
    scale_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_prob: float = 0.0
    contrast_range: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.0
    lowres_range: tuple[float, float] = (0.5, 1.0)
    lowres_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gamma_prob: float = 0.0


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
    clip = ([ClipIntensityPercentilesd(keys="image", lower=prep.clip_percentiles[0], upper=prep.clip_percentiles[1],
                                       channel_wise=True)] if prep.clip_percentiles else [])
    return Compose([
        LoadCased(prep),
        *clip,  # the PI-CAI baseline clips each modality to its 0.5-99.5th percentile before the z-score
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, track_meta=False, allow_missing_keys=True),
        EnsureTyped(keys="grid", track_meta=False, dtype=torch.float64),
    ])


class CropFitsd(Transform):
    """Refuse a training crop larger than the case it is cut from (``data.spatial_size`` null keeps each case's own
    extent): MONAI would pad it silently, training on mostly padding at many times the cost."""

    def __init__(self, crop_size: tuple[int, ...]) -> None:
        self.crop_size = tuple(int(c) for c in crop_size)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        shape = tuple(int(s) for s in data["image"].shape[1:])
        if any(c > s for c, s in zip(self.crop_size, shape)):
            raise DataError(f"data.crop_size {list(self.crop_size)} exceeds the case's preprocessed size "
                            f"{list(shape)} [D, H, W]: set data.spatial_size (a common size) or a smaller crop",
                            data.get("case_id"))
        return data


def random_transforms(aug: Augmentation | None, patch_size: tuple[int, ...] | None, has_label: bool) -> Compose:
    """Training-time augmentation and random crop; image and label share each draw."""
    keys = ["image", "label"] if has_label else ["image"]
    modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
    steps: list[Any] = []
    if patch_size is not None:
        steps.append(CropFitsd(patch_size))
        steps.append(RandSpatialCropd(keys=keys, roi_size=patch_size, random_size=False, allow_missing_keys=True))
    if aug is not None:
        for axis in aug.flip_axes:
            steps.append(RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=axis, allow_missing_keys=True))
        if aug.affine_prob > 0:
            angle = np.deg2rad(aug.rotate_deg)
            steps.append(RandAffined(keys=keys, prob=aug.affine_prob,
                                     rotate_range=(angle, angle, angle) if aug.rotate_all_axes else (angle, 0, 0),
                                     scale_range=(0, aug.zoom, aug.zoom), mode=modes, padding_mode="zeros",
                                     allow_missing_keys=True))
        if aug.scale_range is not None and aug.scale_prob > 0:
            steps.append(RandZoomd(keys=keys, prob=aug.scale_prob, min_zoom=aug.scale_range[0],
                                   max_zoom=aug.scale_range[1], mode=["trilinear", "nearest"][: len(keys)],
                                   padding_mode="constant", keep_size=True, allow_missing_keys=True))
        if aug.intensity_scale > 0:
            steps.append(RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=1.0, channel_wise=True))
        if aug.intensity_shift > 0:
            steps.append(RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=1.0, channel_wise=True))
        if aug.noise_std > 0:
            steps.append(RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std))
        if aug.blur_prob > 0:
            steps.append(RandGaussianSmoothd(keys="image", sigma_x=aug.blur_sigma, sigma_y=aug.blur_sigma,
                                             sigma_z=aug.blur_sigma, prob=aug.blur_prob))
        if aug.contrast_prob > 0:
            low, high = aug.contrast_range
            steps.append(RandScaleIntensityFixedMeand(keys="image", factors=(low - 1, high - 1), preserve_range=True,
                                                      prob=aug.contrast_prob, channel_wise=True))
        if aug.lowres_prob > 0:
            steps.append(RandSimulateLowResolutiond(keys="image", prob=aug.lowres_prob, zoom_range=aug.lowres_range))
        if aug.gamma_prob > 0:
            steps.append(RandAdjustContrastd(keys="image", prob=aug.gamma_prob, gamma=aug.gamma_range,
                                             retain_stats=True))
        steps.append(ZeroMissingd(keys="image"))
    steps.append(EnsureTyped(keys=keys, track_meta=False, allow_missing_keys=True))
    return Compose(steps)


def case_transform(prep: Preprocessing, voxel_aligned: bool = False) -> Compose:
    """The deterministic preprocessing of one case outside a data loader (``embed``, ``reconstruct``): read,
    resample, clip and z-score over non-zero voxels.

    Args:
        prep: the preprocessing settings (``MRIDataModule.preprocessing(with_labels=False)``).
        voxel_aligned: start the centre crop on a whole voxel, as the official BM-MAE pipeline (MONAI's
            ``Spacingd`` + ``CenterSpatialCropd``) does on cases already at the target spacing; medssl's
            own runs crop at the exact centre.
    """
    return Compose(list(deterministic_transforms(replace(prep, voxel_aligned=voxel_aligned)).transforms))


def preprocess_case(transform: Compose, case: Case) -> dict[str, Any]:
    """``transform`` on one case; a data error inside MONAI's wrapper comes out as itself (one line)."""
    try:
        return transform(case.to_item())
    except RuntimeError as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        raise user_error from None
