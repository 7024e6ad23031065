"""Contract tests for medssl.models.ssl_heads (tiny configs, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.models.ssl_heads import (
    AutomaticWeightedLoss,
    CSwinSSLModel,
    apply_mask_noise,
    nt_xent,
    random_cuboid_mask,
    rotate_axial,
    ssl_step,
)

TINY = {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (2, 2, 2, 4), "drop_path_rate": 0.0}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------------------------- views
def test_rotate_axial_identities() -> None:
    x = torch.randn(3, 2, 4, 6, 6)
    assert torch.equal(rotate_axial(x, torch.full((3,), 4)), x)
    assert torch.equal(rotate_axial(rotate_axial(x, torch.ones(3, dtype=torch.long)), torch.full((3,), 3)), x)
    k = torch.tensor([0, 1, 2])
    out = rotate_axial(x, k)
    for i in range(3):  # per sample, in the H-W plane only
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))


def test_rotate_axial_rejects_odd_turns_of_non_square_planes() -> None:
    x = torch.randn(2, 1, 2, 4, 6)
    out = rotate_axial(x, torch.tensor([2, 0]))  # half turns work on any plane
    assert torch.equal(out[0], torch.flip(x[0], (-2, -1))) and torch.equal(out[1], x[1])
    with pytest.raises(ValueError, match="odd rotations need a square axial plane"):
        rotate_axial(x, torch.tensor([1, 0]))


def test_cuboid_mask_fraction_and_channels() -> None:
    gen = torch.Generator().manual_seed(1)
    shape = (4, 3, 8, 32, 32)
    mask = random_cuboid_mask(shape, generator=gen)
    assert mask.shape == (4, 1, 8, 32, 32) and mask.dtype == torch.bool
    fractions = mask.float().mean(dim=(1, 2, 3, 4))
    assert (fractions <= 0.3).all() and (fractions > 0.1).all()
    # reproducible with the same seed
    assert torch.equal(mask, random_cuboid_mask(shape, generator=torch.Generator().manual_seed(1)))

    x = torch.randn(shape)
    noisy = apply_mask_noise(x, mask, torch.Generator().manual_seed(2))
    changed = noisy != x  # [B, C, D, H, W]
    assert torch.equal(changed, mask.expand_as(changed))  # same cuboids on every channel, rest untouched


def test_cuboid_mask_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"max_fraction=1.5 must be in \(0, 1\]"):
        random_cuboid_mask((1, 1, 4, 4, 4), max_fraction=1.5)
    with pytest.raises(ValueError, match=r"shape=\(4, 4\) must be"):
        random_cuboid_mask((4, 4))
    with pytest.raises(ValueError, match=r"mask .* must be bool"):
        apply_mask_noise(torch.randn(1, 2, 4, 4, 4), torch.ones(1, 1, 4, 4, 4))


# ---------------------------------------------------------------------------------------------- losses
def _nt_xent_naive(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        sims = [math.exp(float(z[i] @ z[j]) / t) for j in range(n) if j != i]
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / sum(sims))
    return torch.tensor(total / n)


@pytest.mark.parametrize("temperature", [0.5, 0.1])
def test_nt_xent_matches_naive_loop(temperature: float) -> None:
    z1, z2 = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.allclose(nt_xent(z1, z2, temperature), _nt_xent_naive(z1, z2, temperature), atol=1e-5)
    with pytest.raises(ValueError, match="temperature=0 must be > 0"):
        nt_xent(z1, z2, 0)


def test_automatic_weighted_loss_formula() -> None:
    awl = AutomaticWeightedLoss(3)
    with torch.no_grad():
        awl.sigma.copy_(torch.tensor([1.0, 2.0, 0.5]))
    losses = [torch.tensor(1.5), torch.tensor(0.2), torch.tensor(3.0)]
    sigmas = [1.0, 2.0, 0.5]
    expected = sum(0.5 / s**2 * float(loss) + math.log(1 + s**2) for s, loss in zip(sigmas, losses))
    total = awl(*losses)
    assert math.isclose(total.item(), expected, rel_tol=1e-6)
    assert torch.allclose(awl.weights(), torch.tensor([0.5, 0.125, 2.0]))
    total.backward()
    assert awl.sigma.grad is not None and awl.no_weight_decay() == {"sigma"}
    assert torch.equal(AutomaticWeightedLoss(2).sigma.detach(), torch.ones(2))
    with pytest.raises(ValueError, match="got 2 losses, expected num_losses=3"):
        awl(*losses[:2])
    with pytest.raises(ValueError, match="num_losses=0 must be >= 1"):
        AutomaticWeightedLoss(0)


# ----------------------------------------------------------------------------------------------- model
def test_ssl_model_outputs() -> None:
    model = CSwinSSLModel(in_channels=3, **TINY)
    out = model(torch.randn(2, 3, 7, 30, 30))  # padded inside, cropped back
    assert out["rot_logits"].shape == (2, 4)
    assert out["embedding"].shape == (2, 512)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(2))
    assert out["reconstruction"].shape == (2, 3, 7, 30, 30)
    with pytest.raises(ValueError, match="projection_dim=0 must be >= 1"):
        CSwinSSLModel(in_channels=3, projection_dim=0, **TINY)


def test_ssl_step_every_parameter_gets_gradient() -> None:
    model = CSwinSSLModel(in_channels=3, **TINY)
    out = ssl_step(model, torch.randn(2, 3, 8, 32, 32), torch.Generator().manual_seed(0))
    assert out["views"].shape == out["targets"].shape == out["reconstructions"].shape == (4, 3, 8, 32, 32)
    assert out["masks"].shape == (4, 1, 8, 32, 32) and out["rotations"].shape == (4,)
    (out["loss_rot"] + out["loss_contrastive"] + out["loss_inpaint"]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_pretext_losses_fall_on_short_overfit() -> None:
    model = CSwinSSLModel(in_channels=3, **TINY)
    awl = AutomaticWeightedLoss(3)
    opt = torch.optim.Adam([*model.parameters(), *awl.parameters()], lr=2e-3)
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    keys = ("loss_rot", "loss_contrastive", "loss_inpaint")
    history = []
    for _ in range(30):
        out = ssl_step(model, x, torch.Generator().manual_seed(0))  # same views every step: overfit
        loss = awl(*(out[k] for k in keys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append([out[k].item() for k in keys])
    for i, key in enumerate(keys):
        assert history[-1][i] < history[0][i], (key, history[0][i], history[-1][i])


def test_contrastive_top1_is_one_when_views_pair_and_at_chance_when_not() -> None:
    from medssl.models.ssl_heads import contrastive_top1

    z = F.normalize(torch.randn(32, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    assert contrastive_top1(z, z + 1e-3 * torch.randn(32, 16)) == 1.0
    shuffled = z[torch.randperm(32, generator=torch.Generator().manual_seed(1))]
    assert contrastive_top1(z, shuffled) < 0.2


def test_inpainting_errors_against_the_mean_fill_baseline() -> None:
    from medssl.models.ssl_heads import inpainting_errors

    target = torch.arange(2 * 1 * 2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 2, 4, 4)
    mask = torch.zeros(2, 1, 2, 4, 4, dtype=torch.bool)
    mask[:, :, 0, :2, :2] = True  # four voxels per sample
    view = torch.where(mask, torch.zeros_like(target), target)
    perfect = inpainting_errors(target, target, view, mask)
    assert perfect[0] == 0 and perfect[2] == 8
    fill = view.sum(dim=(2, 3, 4), keepdim=True) / (~mask).sum(dim=(2, 3, 4), keepdim=True)
    expected = float(((fill - target).abs() * mask).sum())
    assert perfect[1] == pytest.approx(expected)
    mean_fill = torch.where(mask, fill.expand_as(target), target)
    assert inpainting_errors(mean_fill, target, view, mask)[0] == pytest.approx(expected)  # the baseline scores itself
