"""Multi-task self-supervised pretraining of the CSwin encoder (rotation, contrastive, inpainting).

Recipe of Li et al., "Cross-Shaped Windows Transformer with Self-supervised Pretraining for Clinically
Significant Prostate Cancer Detection in Bi-parametric MRI" (arXiv 2305.00385), which follows the Swin
UNETR pretraining of Tang et al., "Self-Supervised Pre-Training of Swin Transformers for 3D Medical
Image Analysis" (CVPR 2022), adapted to anisotropic MRI (``shared/specs/cswin_unet.md``):

* two views of each crop, each rotated by ``k x 90`` degrees in the axial (H-W) plane only and masked
  with random cuboids (up to 30 % of the voxels, each at most 25 % of every extent) filled with noise,
  the same cuboids on every channel;
* heads on the encoder bottleneck: rotation (4 classes, cross-entropy), contrastive (512-d, L2
  normalised, NT-Xent between the views, temperature 0.5), inpainting (light conv decoder, L1 against
  the rotated unmasked view);
* the pretext losses are combined by :class:`AutomaticWeightedLoss` (done by the Lightning system).

Only ``CSwinSSLModel.encoder`` transfers to finetuning (``cswin_unet.checkpoint_filter_fn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medssl.models.cswin_unet import CSwinEncoder, pad_to_multiple
from medssl.models.host import to_device

__all__ = [
    "AutomaticWeightedLoss",
    "CSwinSSLModel",
    "apply_mask_noise",
    "nt_xent",
    "random_cuboid_mask",
    "rotate_axial",
    "ssl_step",
]

NUM_ROTATIONS = 4


# --------------------------------------------------------------------------------------------------
# pure helpers: views
# --------------------------------------------------------------------------------------------------
def rotate_axial(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate every sample by ``k[b] x 90`` degrees in the axial (H-W) plane.

    Args:
        x: ``[B, C, D, H, W]``; H must equal W when any ``k`` is odd.
        k: integer tensor ``[B]`` (taken modulo 4).

    Example:
        >>> x = torch.randn(2, 1, 1, 4, 4)
        >>> torch.equal(rotate_axial(rotate_axial(x, torch.tensor([1, 2])), torch.tensor([3, 2])), x)
        True
    """
    if x.ndim != 5 or k.shape != (x.shape[0],):
        raise ValueError(f"x {tuple(x.shape)} must be [B, C, D, H, W] and k {tuple(k.shape)} must be [B]")
    # Which samples turn by how much is decided on the host (k on the CPU, as ssl_step passes it):
    # boolean indexing on the GPU would make the host wait for it.
    k = k.cpu() % NUM_ROTATIONS
    if x.shape[-2] != x.shape[-1] and bool((k % 2 == 1).any()):
        raise ValueError(f"odd rotations need a square axial plane, got H x W = {x.shape[-2]}x{x.shape[-1]}")
    out = x.clone()
    for r in range(1, NUM_ROTATIONS):
        idx = (k == r).nonzero().flatten()
        if len(idx):
            idx = to_device(idx, x.device)
            out.index_copy_(0, idx, torch.rot90(x.index_select(0, idx), r, dims=(-2, -1)))
    return out


def random_cuboid_mask(
    shape: Sequence[int],
    max_fraction: float = 0.3,
    max_extent: float = 0.25,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random cuboids per sample, shared by all channels.

    Each sample draws a target coverage uniformly in ``[max_fraction / 2, max_fraction]`` and adds
    cuboids (each side uniform in ``[1, max_extent x extent]``) until the target is reached; a cuboid
    that would push the coverage above ``max_fraction`` is rejected, so coverage never exceeds it.

    Args:
        shape: ``(B, C, D, H, W)`` of the images (C is ignored: the mask broadcasts over channels).
        max_fraction: upper bound of the masked fraction of voxels per sample.
        max_extent: upper bound of a cuboid side as a fraction of the axis length.
        generator: CPU generator for reproducible masks.
        device: device of the returned mask.

    Returns:
        Bool mask ``[B, 1, D, H, W]``, ``True`` = masked (replaced by noise).
    """
    if len(shape) != 5:
        raise ValueError(f"shape={tuple(shape)} must be (B, C, D, H, W)")
    if not 0.0 < max_fraction <= 1.0:
        raise ValueError(f"max_fraction={max_fraction} must be in (0, 1]")
    if not 0.0 < max_extent <= 1.0:
        raise ValueError(f"max_extent={max_extent} must be in (0, 1]")
    b, _, *spatial = shape
    total = spatial[0] * spatial[1] * spatial[2]
    max_sides = [max(1, int(max_extent * s)) for s in spatial]
    mask = torch.zeros(b, 1, *spatial, dtype=torch.bool)  # [B, 1, D, H, W] 1 = masked

    def randint(high: int) -> int:  # uniform in [0, high)
        return int(torch.randint(high, (1,), generator=generator))

    for i in range(b):
        target = max_fraction * (0.5 + 0.5 * float(torch.rand(1, generator=generator)))
        covered, rejected = 0, 0
        while covered < target * total and rejected < 10:
            sides = [1 + randint(m) for m in max_sides]
            start = [randint(s - side + 1) for s, side in zip(spatial, sides, strict=True)]
            box = tuple(slice(st, st + side) for st, side in zip(start, sides, strict=True))
            new = int((~mask[i, 0][box]).sum())
            if covered + new > max_fraction * total:
                rejected += 1
                continue
            mask[i, 0][box] = True
            covered += new
    return mask.to(device) if device is not None else mask


def apply_mask_noise(
    x: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace masked voxels with standard normal noise (the images are z-score normalised).

    Args:
        x: ``[B, C, D, H, W]``.
        mask: bool ``[B, 1, D, H, W]`` (``True`` = masked), broadcast over channels.
        generator: generator for reproducible noise (its device is used to draw, then moved).
    """
    if mask.dtype != torch.bool or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} {mask.dtype} must be bool [B, 1, D, H, W], x: {x.shape}")
    draw_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=draw_device, dtype=x.dtype).to(x.device)
    return torch.where(mask.to(x.device), noise, x)


# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent (SimCLR) loss between two batches of embeddings.

    Cross-entropy over the ``2B x 2B`` cosine similarity (self-similarity excluded); the positive of
    row ``i`` is the other view of the same sample.

    Args:
        z1: ``[B, E]`` embeddings of view 1.
        z2: ``[B, E]`` embeddings of view 2.
        temperature: softmax temperature.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be [B, E]")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # [2B, E]
    sim = z @ z.t() / temperature  # [2B, 2B]
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * b, device=z.device).roll(b)  # positive of i is i + B (mod 2B)
    return F.cross_entropy(sim, target)


class AutomaticWeightedLoss(nn.Module):
    """Uncertainty-style weighting ``L = sum_i 0.5 / s_i^2 * L_i + log(1 + s_i^2)``, ``s_i`` learned.

    Args:
        num_losses: number of losses ``n``; every ``s_i`` starts at 1.

    Example:
        >>> awl = AutomaticWeightedLoss(2)
        >>> awl(torch.tensor(1.0), torch.tensor(2.0)).item()  # 0.5 + 1.0 + 2 log 2
        2.886294364929199
    """

    def __init__(self, num_losses: int) -> None:
        super().__init__()
        if num_losses < 1:
            raise ValueError(f"num_losses={num_losses} must be >= 1")
        self.sigma = nn.Parameter(torch.ones(num_losses))

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        if len(losses) != self.sigma.numel():
            raise ValueError(f"got {len(losses)} losses, expected num_losses={self.sigma.numel()}")
        var = self.sigma**2
        stacked = torch.stack(list(losses))
        return (0.5 / var * stacked + torch.log1p(var)).sum()

    def weights(self) -> torch.Tensor:
        """Current weights ``0.5 / s_i^2`` (detached), e.g. for logging."""
        return (0.5 / self.sigma.detach() ** 2).clone()

    def no_weight_decay(self) -> set[str]:
        return {"sigma"}


# --------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------
class InpaintingDecoder(nn.Module):
    """Light decoder: one transposed conv (kernel = stride) per merge and for the stem, then 1x1x1.

    Args:
        in_dim: bottleneck channels.
        out_channels: image channels.
        strides: upsampling strides, deepest first (reversed merges, then the stem stride).
    """

    def __init__(self, in_dim: int, out_channels: int, strides: Sequence[Sequence[int]]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for stride in strides:
            out_dim = max(dim // 2, 16)
            layers += [
                nn.ConvTranspose3d(dim, out_dim, tuple(stride), tuple(stride)),
                nn.InstanceNorm3d(out_dim, affine=True),
                nn.LeakyReLU(0.01, inplace=True),
            ]
            dim = out_dim
        layers.append(nn.Conv3d(dim, out_channels, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CSwinSSLModel(nn.Module):
    """CSwin encoder with rotation, contrastive and inpainting heads on the bottleneck.

    The encoder is built from the same arguments as ``CSwinUNet``'s and lives at ``self.encoder``, so
    ``checkpoint_filter_fn`` transfers it into ``CSwinUNet``.

    Args:
        in_channels: image channels (3 for t2w, adc, hbv).
        embed_dim: encoder channels of the first stage.
        depths: encoder blocks per stage.
        num_heads: encoder heads per stage.
        split_sizes: stripe width per stage; 0 or None = global attention.
        patch_stride: stem stride (D, H, W).
        merge_strides: stride of each conv merge.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth of the encoder.
        use_checkpoint: gradient checkpointing of the encoder blocks.
        projection_dim: size of the contrastive embedding.

    Example:
        >>> m = CSwinSSLModel(3, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4))
        >>> {k: tuple(v.shape) for k, v in m(torch.randn(2, 3, 8, 32, 32)).items()}["reconstruction"]
        (2, 3, 8, 32, 32)
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_sizes: Sequence[int | None] = (1, 2, 8, 0),
        patch_stride: int | Sequence[int] = (1, 4, 4),
        merge_strides: Sequence[int | Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2)),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        use_checkpoint: bool = False,
        projection_dim: int = 512,
    ) -> None:
        super().__init__()
        if projection_dim < 1:
            raise ValueError(f"projection_dim={projection_dim} must be >= 1")
        self.encoder = CSwinEncoder(
            in_channels,
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            split_sizes=split_sizes,
            patch_stride=patch_stride,
            merge_strides=merge_strides,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
        )
        dim = self.encoder.num_features
        self.rotation_head = nn.Linear(dim, NUM_ROTATIONS)
        self.contrastive_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, projection_dim))
        strides = [*reversed(self.encoder.merge_strides), self.encoder.patch_stride]
        self.inpainting_head = InpaintingDecoder(dim, in_channels, strides)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.forward_intermediates(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[B, C, D, H, W]`` (any size) -> ``rot_logits [B, 4]``, ``embedding [B, P]`` (unit norm),
        ``reconstruction [B, C, D, H, W]``."""
        d, h, w = x.shape[2:]
        x = pad_to_multiple(x, self.encoder.total_strides)  # [B, C, D', H', W']
        feat = self.encoder.forward_features(x)  # [B, C_last, d, h, w]
        pooled = feat.mean(dim=(2, 3, 4))  # [B, C_last]
        return {
            "rot_logits": self.rotation_head(pooled),
            "embedding": F.normalize(self.contrastive_head(pooled), dim=1),
            "reconstruction": self.inpainting_head(feat)[:, :, :d, :h, :w],
        }


# --------------------------------------------------------------------------------------------------
# pretext metrics: did the pretext tasks learn anything?
# --------------------------------------------------------------------------------------------------
def contrastive_top1(z1: torch.Tensor, z2: torch.Tensor) -> float:
    """SimCLR's top-1: the share of the ``2B`` embeddings whose nearest other embedding (cosine) is their own
    other view. Chance: ``1 / (2B - 1)``.

    Example:
        >>> z = torch.eye(4)
        >>> contrastive_top1(z, z)
        1.0
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2B, E]
    sim = (z @ z.t()).masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.arange(2 * b, device=z.device).roll(b)
    return float((sim.argmax(dim=1) == target).float().mean())


def inpainting_errors(reconstruction: torch.Tensor, target: torch.Tensor, view: torch.Tensor,
                      mask: torch.Tensor) -> tuple[float, float, int]:
    """Mean absolute error of the reconstruction over the masked voxels, and of the mean-fill baseline (every
    masked voxel predicted as the mean of the sample's visible voxels of that channel), with the voxel count.

    Args:
        reconstruction, target, view: ``[B, C, D, H, W]``.
        mask: bool ``[B, 1, D, H, W]``, True = masked.

    Returns:
        ``(sum of |reconstruction - target|, sum of |mean fill - target|, masked voxels x channels)`` over the
        masked voxels: sums, so batches add up before dividing.
    """
    m = mask.expand_as(target).float()
    visible = 1 - m
    fill = (view * visible).sum(dim=(2, 3, 4), keepdim=True) / visible.sum(dim=(2, 3, 4), keepdim=True).clamp_min(1)
    model = ((reconstruction.float() - target.float()).abs() * m).sum()
    baseline = ((fill.float() - target.float()).abs() * m).sum()
    return float(model), float(baseline), int(m.sum())


# --------------------------------------------------------------------------------------------------
# one pretraining step
# --------------------------------------------------------------------------------------------------
def ssl_step(
    model: CSwinSSLModel,
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Build two rotated + cuboid-masked views of ``x`` and compute the three pretext losses.

    Both views go through the model in one batch. The caller combines the losses (e.g. with
    :class:`AutomaticWeightedLoss`).

    Args:
        model: the SSL model.
        x: ``[B, C, D, H, W]`` crops with a square axial plane.
        generator: CPU generator for rotations, masks and noise (reproducible steps).
        temperature: NT-Xent temperature.

    Returns:
        ``loss_rot``, ``loss_contrastive``, ``loss_inpaint`` (scalars with grad) and, detached for
        image logging and the pretext metrics, ``views`` (masked inputs ``[2B, C, D, H, W]``), ``targets``
        (rotated unmasked), ``reconstructions``, ``masks`` (``[2B, 1, D, H, W]``), ``rotations`` (``[2B]``),
        ``rot_logits`` (``[2B, 4]``) and ``embeddings`` (``[2B, P]``, view 1 then view 2).
    """
    b = x.shape[0]
    rotations = torch.randint(NUM_ROTATIONS, (2 * b,), generator=generator)  # [2B], on the host
    targets = rotate_axial(torch.cat([x, x]), rotations)  # [2B, C, D, H, W] view 1 then view 2
    masks = to_device(random_cuboid_mask(targets.shape, generator=generator), x.device)  # [2B, 1, D, H, W]
    rotations = to_device(rotations, x.device)
    views = apply_mask_noise(targets, masks, generator)
    out = model(views)
    return {
        "loss_rot": F.cross_entropy(out["rot_logits"], rotations),
        "loss_contrastive": nt_xent(out["embedding"][:b], out["embedding"][b:], temperature),
        "loss_inpaint": F.l1_loss(out["reconstruction"], targets),
        "views": views.detach(),
        "targets": targets.detach(),
        "reconstructions": out["reconstruction"].detach(),
        "masks": masks,
        "rotations": rotations,
        "rot_logits": out["rot_logits"].detach(),
        "embeddings": out["embedding"].detach(),
    }
