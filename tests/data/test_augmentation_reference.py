"""The PI-CAI recipes' augmentation against the PI-CAI baseline's own (picai_baseline's ``apply_augmentations``,
nnU-Net's transforms from batchgenerators), parameter by parameter and, op by op, in the statistics of its outputs on
the same array."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from medssl.data.transforms import PerChannelIntensityd, RandIsotropicScaled, random_transforms
from medssl.lightning_cli import MedsslCLI
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(importlib.util.find_spec("batchgenerators") is None
                                or importlib.util.find_spec("picai_baseline") is None,
                                reason="the baseline's augmentation code (picai_baseline, batchgenerators) is absent")

RECIPES = ["configs/finetune/cswin_picai.yaml", "configs/finetune/unet_picai.yaml",
           "configs/finetune/cswin_picai_tiny.yaml", "configs/finetune/unet_picai_tiny.yaml"]


@pytest.fixture(scope="module")
def baseline() -> dict[str, object]:
    """The baseline's training transforms, as its training script builds them, by class name (``GammaTransform``
    twice: ``InvertedGamma`` is the one with ``invert_image``)."""
    from picai_baseline.unet.training_setup.augmentations.nnUNet_DA import apply_augmentations

    augmenter = apply_augmentations(dataloader=[], patch_size=(20, 256, 256), use_multithreading=False)
    out = {}
    for t in augmenter.transform.transforms:
        name = type(t).__name__
        out["InvertedGamma" if name == "GammaTransform" and t.invert_image else name] = t
    return out


def augmentation(recipe: str):
    return MedsslCLI(args=["--config", str(REPO / recipe), "--data.root", "/x"], run=False).datamodule.augmentation


def table(aug, b) -> list[tuple[str, object, object]]:
    """(parameter, ours, the baseline's) for every parameter of the baseline's transforms."""
    spatial = b["SpatialTransform"]
    rows = [
        ("rotation range (deg), each axis", [aug.rotate_deg] * 3,
         [round(float(np.rad2deg(getattr(spatial, f"angle_{a}")[1])), 6) for a in "xyz"]),
        ("rotation range symmetric", True, all(getattr(spatial, f"angle_{a}")[0] == -getattr(spatial, f"angle_{a}")[1]
                                               for a in "xyz")),
        ("rotation about all axes", aug.rotate_all_axes, spatial.do_rotation and spatial.p_rot_per_axis == 1),
        ("rotation p per sample", aug.affine_prob, spatial.p_rot_per_sample),
        ("scaling range", list(aug.scale_range), list(spatial.scale)),
        ("scaling p per sample", aug.scale_prob, spatial.p_scale_per_sample),
        ("scaling isotropic", True, not spatial.independent_scale_for_each_axis),
        ("elastic deformation", False, spatial.do_elastic_deform),
        ("noise sigma max", aug.noise_std, b["GaussianNoiseTransform"].noise_variance[1]),
        ("noise p per sample", aug.noise_prob, b["GaussianNoiseTransform"].p_per_sample),
        ("noise one sigma for all channels", True, not b["GaussianNoiseTransform"].per_channel),
        ("blur sigma", list(aug.blur_sigma), list(b["GaussianBlurTransform"].blur_sigma)),
        ("blur p per sample", aug.blur_prob, b["GaussianBlurTransform"].p_per_sample),
        ("blur p per channel", aug.blur_prob_per_channel, b["GaussianBlurTransform"].p_per_channel),
        ("blur sigma per channel, isotropic", True, b["GaussianBlurTransform"].different_sigma_per_channel
         and not b["GaussianBlurTransform"].different_sigma_per_axis),
        ("brightness range", [1 - aug.intensity_scale, 1 + aug.intensity_scale],
         list(b["BrightnessMultiplicativeTransform"].multiplier_range)),
        ("brightness p per sample", aug.intensity_prob, b["BrightnessMultiplicativeTransform"].p_per_sample),
        ("brightness per channel", True, b["BrightnessMultiplicativeTransform"].per_channel),
        ("additive brightness off", aug.intensity_shift == 0, "BrightnessTransform" not in b),
        ("contrast range", list(aug.contrast_range), list(b["ContrastAugmentationTransform"].contrast_range)),
        ("contrast p per sample", aug.contrast_prob, b["ContrastAugmentationTransform"].p_per_sample),
        ("contrast preserves range", True, b["ContrastAugmentationTransform"].preserve_range),
        ("low-res zoom", list(aug.lowres_range), list(b["SimulateLowResolutionTransform"].zoom_range)),
        ("low-res p per channel", aug.lowres_prob_per_channel, b["SimulateLowResolutionTransform"].p_per_channel),
        ("low-res orders (down, up)", [0, 3], [b["SimulateLowResolutionTransform"].order_downsample,
                                              b["SimulateLowResolutionTransform"].order_upsample]),
        ("inverted gamma range", list(aug.gamma_range), list(b["InvertedGamma"].gamma_range)),
        ("inverted gamma p per sample", aug.inverted_gamma_prob, b["InvertedGamma"].p_per_sample),
        ("gamma range", list(aug.gamma_range), list(b["GammaTransform"].gamma_range)),
        ("gamma p per sample", aug.gamma_prob, b["GammaTransform"].p_per_sample),
        ("gamma per channel, statistics kept", True, b["GammaTransform"].per_channel
         and b["GammaTransform"].retain_stats and b["InvertedGamma"].retain_stats),
        ("mirror axes", list(aug.flip_axes), list(b["MirrorTransform"].axes)),
        ("mirror p per axis", aug.flip_prob, 0.5),  # MirrorTransform: np.random.uniform() < 0.5 per axis
    ]
    return rows


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_parameter_is_the_baselines(recipe, baseline):
    aug = augmentation(recipe)
    differ = [(name, ours, theirs) for name, ours, theirs in table(aug, baseline) if ours != theirs]
    if "tiny" in recipe:  # its one documented departure: an 8-slice crop has no depth to simulate low resolution in
        assert [d[0] for d in differ] == [] and aug.lowres_prob == 0
    else:
        assert differ == [] and aug.lowres_prob == baseline["SimulateLowResolutionTransform"].p_per_sample


def test_the_order_is_the_baselines(baseline):
    aug = augmentation(RECIPES[0])
    steps = random_transforms(aug, (8, 32, 32), has_label=True).transforms
    names = []
    for step in steps:
        name = type(step).__name__
        name = {"RandAffined": "rotation", "RandIsotropicScaled": "scaling", "RandGaussianNoised": "noise",
                "RandScaleIntensityd": "brightness", "RandScaleIntensityFixedMeand": "contrast",
                "RandFlipd": "mirror"}.get(name, name)
        if isinstance(step, PerChannelIntensityd):
            name = step.op
        if name not in ("CropFitsd", "RandSpatialCropd", "ZeroMissingd", "EnsureTyped") and name not in names:
            names.append(name)
    theirs = {"SpatialTransform": ["rotation", "scaling"], "GaussianNoiseTransform": ["noise"],
              "GaussianBlurTransform": ["blur"], "BrightnessMultiplicativeTransform": ["brightness"],
              "ContrastAugmentationTransform": ["contrast"], "SimulateLowResolutionTransform": ["lowres"],
              "InvertedGamma": ["inverted_gamma"], "GammaTransform": ["gamma"], "MirrorTransform": ["mirror"]}
    assert names == [n for key in baseline if key in theirs for n in theirs[key]]


def sample(seed: int = 0) -> np.ndarray:
    """A z-scored three-channel crop with structure (blur and low resolution must have edges to change)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (12, 24, 24)), indexing="ij")
    base = np.stack([np.sin(4 * x + c) + np.cos(3 * y) * z for c in range(3)])
    image = base + 0.3 * rng.standard_normal(base.shape)
    return ((image - image.mean()) / image.std()).astype(np.float32)


def outcome(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel: was it changed, and the mean absolute change, then the change of its 90th percentile."""
    change = np.abs(after - before).reshape(before.shape[0], -1).mean(1)
    q90 = np.percentile(after.reshape(before.shape[0], -1), 90, axis=1) - np.percentile(
        before.reshape(before.shape[0], -1), 90, axis=1)
    return change > 1e-6, np.stack([change, q90], 1)


def compare(ours, theirs, draws: int = 400) -> None:
    """``ours(array, seed)`` and ``theirs(array, seed)`` over ``draws`` seeds: the share of channels changed agrees
    (within 4 binomial standard errors) and so do the distributions of the changes (two-sample KS, p > 0.001)."""
    image = sample()
    results = {}
    for side, fn in (("ours", ours), ("theirs", theirs)):
        changed, sizes = [], []
        for seed in range(draws):
            c, s = outcome(image, fn(image.copy(), seed))
            changed.append(c)
            sizes.append(s[c])
        results[side] = (np.concatenate(changed), np.concatenate(sizes))
    (c_ours, s_ours), (c_theirs, s_theirs) = results["ours"], results["theirs"]
    share = c_theirs.mean()
    assert abs(c_ours.mean() - share) < 4 * np.sqrt(share * (1 - share) / len(c_theirs)) + 1e-9, (c_ours.mean(), share)
    for k in range(s_ours.shape[1]):
        assert ks_2samp(s_ours[:, k], s_theirs[:, k]).pvalue > 1e-3, (k, s_ours[:, k].mean(), s_theirs[:, k].mean())


def theirs_of(transform):
    def run(image: np.ndarray, seed: int) -> np.ndarray:
        np.random.seed(seed)  # batchgenerators draws from numpy's global generator
        return transform(data=image[None].astype(np.float64))["data"][0].astype(np.float32)
    return run


def ours_of(step):
    def run(image: np.ndarray, seed: int) -> np.ndarray:
        step.set_random_state(seed)
        return np.asarray(step({"image": torch.from_numpy(image)})["image"], dtype=np.float32)
    return run


def pick(aug, kind: str):
    """The step of ``random_transforms`` for one baseline transform, from the real-size recipe's augmentation."""
    for step in random_transforms(aug, None, has_label=False).transforms:
        if (isinstance(step, PerChannelIntensityd) and step.op == kind) or type(step).__name__ == kind:
            return step
    raise AssertionError(f"no {kind} step")


@pytest.mark.parametrize(("ours", "theirs"), [
    ("blur", "GaussianBlurTransform"), ("lowres", "SimulateLowResolutionTransform"),
    ("inverted_gamma", "InvertedGamma"), ("gamma", "GammaTransform"),
    ("RandScaleIntensityd", "BrightnessMultiplicativeTransform"),
    ("RandScaleIntensityFixedMeand", "ContrastAugmentationTransform"),
    ("RandGaussianNoised", "GaussianNoiseTransform")])
def test_each_intensity_op_changes_the_array_as_the_baselines_does(ours, theirs, baseline):
    aug = augmentation(RECIPES[0])
    compare(ours_of(pick(aug, ours)), theirs_of(baseline[theirs]))


def test_the_comparison_can_fail(baseline):
    """The check above tells a per-channel blur with p 0.5 from one applied to every channel."""
    aug = augmentation(RECIPES[0])
    every_channel = PerChannelIntensityd("image", "blur", aug.blur_sigma, aug.blur_prob, 1.0)
    with pytest.raises(AssertionError):
        compare(ours_of(every_channel), theirs_of(baseline["GaussianBlurTransform"]))


def test_scaling_shrinks_the_content_by_the_baselines_factor():
    """nnU-Net samples at ``sc`` times the distance from the centre: content shrinks for ``sc > 1``; half the draws
    are below 1."""
    step = RandIsotropicScaled(["image"], (0.7, 1.4), prob=1.0, modes=["nearest"])
    factors = []
    for seed in range(400):
        step.set_random_state(seed)
        step.randomize()
        factors.append(step.factor)
    factors = np.array(factors)
    assert 0.7 <= factors.min() and factors.max() <= 1.4
    assert abs((factors < 1).mean() - 0.5) < 0.08  # uniform over 0.7-1.4 would give 0.43
    image = np.zeros((1, 41, 41, 41), np.float32)
    image[0, 10:31, 10:31, 10:31] = 1  # a 21-voxel cube at the centre
    step.set_random_state(3)
    step.randomize()
    sc = step.factor
    step.set_random_state(3)
    out = np.asarray(step({"image": torch.from_numpy(image)})["image"])
    assert sc > 1.1 and abs(out.sum() - 21 ** 3 / sc ** 3) < 0.15 * 21 ** 3 / sc ** 3  # shrunk by sc
