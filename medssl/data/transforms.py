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
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandSpatialCropd,
    Transform,
    Zoomd,
)
from scipy.ndimage import gaussian_filter
from skimage.transform import resize

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
        intensity_scale: +- relative intensity scale (after z-scoring): multiplicative brightness, one factor per
            channel, applied with ``intensity_prob``.
        intensity_shift: +- intensity shift in standard deviations.
        noise_std: Gaussian noise standard deviation (0 = off), applied with ``noise_prob``.
        noise_prob: probability of the Gaussian noise.
        rotate_all_axes: rotate about all three axes by +- ``rotate_deg`` (nnU-Net), not only in-plane.
        scale_range: isotropic scaling ``[min, max]`` (nnU-Net: 0.7-1.4, drawn as nnU-Net draws it:
            ``RandIsotropicScaled``), applied with ``scale_prob``.
        scale_prob: probability of the scaling.
        blur_sigma: Gaussian blur sigma range ``[min, max]`` in voxels (one isotropic sigma per channel), applied
            with ``blur_prob`` per sample and ``blur_prob_per_channel`` per channel.
        blur_prob: probability of the blur.
        contrast_range: contrast factor range ``[min, max]`` around each channel's mean (``contrast_prob``).
        contrast_prob: probability of the contrast change.
        lowres_range: low-resolution simulation zoom ``[min, max]`` (one per channel; ``lowres_prob`` per sample,
            ``lowres_prob_per_channel`` per channel): nearest-neighbour down, cubic back up.
        lowres_prob: probability of the low-resolution simulation.
        gamma_range: gamma range ``[min, max]``: per channel, half the draws below 1 and half above (nnU-Net's),
            the channel's mean and standard deviation kept.
        gamma_prob: probability of the gamma change.
        intensity_prob: probability of the multiplicative brightness (1: every sample).
        blur_prob_per_channel: probability that a blurred sample's channel is blurred.
        lowres_prob_per_channel: likewise for the low-resolution simulation.
        inverted_gamma_prob: probability of the gamma change on the inverted image (``gamma_range``).

    The order is the PI-CAI baseline's (nnU-Net's): crop, rotation, scaling, noise, blur, brightness, shift,
    contrast, low resolution, inverted gamma, gamma, mirroring.

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
    intensity_prob: float = 1.0
    blur_prob_per_channel: float = 1.0
    lowres_prob_per_channel: float = 1.0
    inverted_gamma_prob: float = 0.0


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


def normalisation(prep: Preprocessing) -> Compose:
    """Per modality: clip to ``prep.clip_percentiles`` (percentiles over all voxels), then z-score over the non-zero
    voxels (``prep.normalize: nonzero``, zeros stay 0) or over all of them (``all``: picai_baseline's
    ``z_score_norm``, the population standard deviation, background included)."""
    clip = ([ClipIntensityPercentilesd(keys="image", lower=prep.clip_percentiles[0], upper=prep.clip_percentiles[1],
                                       channel_wise=True)] if prep.clip_percentiles else [])
    return Compose([*clip, NormalizeIntensityd(keys="image", nonzero=prep.normalize == "nonzero", channel_wise=True)])


def deterministic_transforms(prep: Preprocessing) -> Compose:
    """Read, resample, clip (optional) and z-score per modality (``normalisation``); cached on disk by the
    dataset."""
    keys = ["image", "label"] if prep.label_mode != "none" else ["image"]
    return Compose([
        LoadCased(prep),
        normalisation(prep),
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


class RandIsotropicScaled(RandomizableTransform, MapTransform):
    """nnU-Net's scaling (batchgenerators' ``augment_spatial``, ``independent_scale_for_each_axis`` off), as the PI-CAI
    baseline applies it: a factor ``sc`` drawn half the time in ``[low, 1)`` and half in ``[1, high]``, the image
    sampled at ``sc`` times the distance from the centre, so its content shrinks by ``sc`` (a zoom of ``1 / sc``,
    same size out). MONAI's ``RandZoomd`` draws the zoom itself uniformly, a different distribution; the zoom is
    MONAI's ``Zoomd``.

    Args:
        scale_range: ``[low, high]`` of ``sc``.
        prob: per sample.
        modes: interpolation per key.
    """

    def __init__(self, keys: Any, scale_range: tuple[float, float], prob: float, modes: list[str],
                 allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.scale_range, self.modes = tuple(float(v) for v in scale_range), list(modes)
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        low, high = self.scale_range
        if self.R.uniform() < 0.5 and low < 1:
            self.factor = float(self.R.uniform(low, 1))
        else:
            self.factor = float(self.R.uniform(max(low, 1), high))

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        self.randomize()
        if not self._do_transform:
            return dict(data)
        keys = [k for k in self.keys if k in data]
        modes = [m for k, m in zip(self.keys, self.modes) if k in data]
        return Zoomd(keys=keys, zoom=1.0 / self.factor, mode=modes, padding_mode="constant", keep_size=True)(data)


class PerChannelIntensityd(RandomizableTransform, MapTransform):
    """One of nnU-Net's per-channel intensity augmentations (batchgenerators' ``augment_gaussian_blur``,
    ``augment_linear_downsampling_scipy``, ``augment_gamma``), as the PI-CAI baseline applies them: with ``prob``
    per sample, then each channel with ``prob_per_channel`` and its own random parameter.

    Written here because MONAI's counterparts differ in what the baseline's recipe fixes: one parameter for all
    channels, no per-channel probability, blur sigmas drawn per axis, trilinear (not cubic) upsampling, gamma drawn
    uniformly over its range with the statistics of all channels together, and no inverted gamma.
    ``tests/data/test_augmentation_reference.py`` runs batchgenerators' own functions on the same arrays.

    Args:
        op: ``blur`` (sigma in voxels), ``lowres`` (zoom), ``gamma`` or ``inverted_gamma``.
        value_range: ``[min, max]`` of the op's parameter.
        prob: per sample.
        prob_per_channel: per channel of a sample the op is applied to.
    """

    OPS = ("blur", "lowres", "gamma", "inverted_gamma")

    def __init__(self, keys: Any, op: str, value_range: tuple[float, float], prob: float,
                 prob_per_channel: float = 1.0) -> None:
        if op not in self.OPS:
            raise ValueError(f"op {op!r}: one of {self.OPS}")
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.op, self.value_range, self.prob_per_channel = op, tuple(float(v) for v in value_range), prob_per_channel

    def _gamma(self) -> float:
        low, high = self.value_range  # nnU-Net: half the draws in [low, 1), half in [1, high]
        if self.R.uniform() < 0.5 and low < 1:
            return float(self.R.uniform(low, 1))
        return float(self.R.uniform(max(low, 1), high))

    def _channel(self, x: np.ndarray) -> np.ndarray:
        if self.op == "blur":
            return gaussian_filter(x, float(self.R.uniform(*self.value_range)), order=0)
        if self.op == "lowres":
            zoom = float(self.R.uniform(*self.value_range))
            small = resize(x.astype(np.float64), np.round(np.array(x.shape) * zoom).astype(int), order=0,
                           mode="edge", anti_aliasing=False)
            return resize(small, x.shape, order=3, mode="edge", anti_aliasing=False)
        sign = -1.0 if self.op == "inverted_gamma" else 1.0
        x = sign * x.astype(np.float64)
        mean, std = x.mean(), x.std()
        low, span = x.min(), x.max() - x.min()
        x = np.power((x - low) / (span + 1e-7), self._gamma()) * (span + 1e-7) + low
        x = (x - x.mean()) / (x.std() + 1e-8) * std + mean
        return sign * x

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            array = np.array(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
            for c in range(array.shape[0]):
                if self.R.uniform() < self.prob_per_channel:
                    array[c] = self._channel(array[c])
            d[key] = torch.as_tensor(array) if isinstance(image, torch.Tensor) else array
        return d


def random_transforms(aug: Augmentation | None, patch_size: tuple[int, ...] | None, has_label: bool) -> Compose:
    """Training-time augmentation and random crop; image and label share each draw."""
    keys = ["image", "label"] if has_label else ["image"]
    modes = ["bilinear", "nearest"] if has_label else ["bilinear"]
    steps: list[Any] = []
    if patch_size is not None:
        steps.append(CropFitsd(patch_size))
        steps.append(RandSpatialCropd(keys=keys, roi_size=patch_size, random_size=False, allow_missing_keys=True))
    if aug is not None:
        if aug.affine_prob > 0:
            angle = np.deg2rad(aug.rotate_deg)
            steps.append(RandAffined(keys=keys, prob=aug.affine_prob,
                                     rotate_range=(angle, angle, angle) if aug.rotate_all_axes else (angle, 0, 0),
                                     scale_range=(0, aug.zoom, aug.zoom), mode=modes, padding_mode="zeros",
                                     allow_missing_keys=True))
        if aug.scale_range is not None and aug.scale_prob > 0:
            steps.append(RandIsotropicScaled(keys=keys, scale_range=aug.scale_range, prob=aug.scale_prob,
                                             modes=["trilinear", "nearest"][: len(keys)], allow_missing_keys=True))
        if aug.noise_std > 0:
            steps.append(RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std))
        if aug.blur_prob > 0:
            steps.append(PerChannelIntensityd("image", "blur", aug.blur_sigma, aug.blur_prob,
                                              aug.blur_prob_per_channel))
        if aug.intensity_scale > 0:
            steps.append(RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=aug.intensity_prob,
                                             channel_wise=True))
        if aug.intensity_shift > 0:
            steps.append(RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=1.0, channel_wise=True))
        if aug.contrast_prob > 0:
            low, high = aug.contrast_range
            steps.append(RandScaleIntensityFixedMeand(keys="image", factors=(low - 1, high - 1), preserve_range=True,
                                                      prob=aug.contrast_prob, channel_wise=True))
        if aug.lowres_prob > 0:
            steps.append(PerChannelIntensityd("image", "lowres", aug.lowres_range, aug.lowres_prob,
                                              aug.lowres_prob_per_channel))
        if aug.inverted_gamma_prob > 0:
            steps.append(PerChannelIntensityd("image", "inverted_gamma", aug.gamma_range, aug.inverted_gamma_prob))
        if aug.gamma_prob > 0:
            steps.append(PerChannelIntensityd("image", "gamma", aug.gamma_range, aug.gamma_prob))
        for axis in aug.flip_axes:
            steps.append(RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=axis, allow_missing_keys=True))
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
