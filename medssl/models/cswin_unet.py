"""CSwin UNet: a 3-D cross-shaped window transformer encoder with a UNETR-style decoder.

Paper: Li et al., "Cross-Shaped Windows Transformer with Self-supervised Pretraining for Clinically
Significant Prostate Cancer Detection in Bi-parametric MRI" (arXiv 2305.00385, Medical Physics 2025),
built on Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped
Windows" (CVPR 2022, arXiv 2107.00652). The paper's code is not public; gaps are filled as in
``shared/specs/cswin_unet.md``.

3-D form for anisotropic MRI (input ``[B, C, D, H, W]``, D = slice axis):

* each stripe block splits heads and channels in half: branch A attends inside ``D x sw x W`` windows
  (stripes along H), branch B inside ``D x H x sw`` windows (stripes along W); both span the full depth.
  A stage with split size ``0`` / ``None`` attends globally with all heads.
* LePE is a depthwise **3x3x3** conv on V inside each window (zero padded at the window border), added
  to the attention output so that ``scaled_dot_product_attention`` computes the attention part. The
  depth taps matter: windows span all slices, so attention alone is blind to the slice position.
* A stripe wider than the feature map is clamped to the map (same result as padding). When H (or W) is
  not a multiple of the stripe width, q/k/v are zero padded *after* the qkv projection and the padded
  keys are masked out of the attention; zero V is exactly the LePE conv's own zero padding, so padded
  tokens never reach a real token.
* Tokens are kept channels-last (``[B, D, H, W, C]``) inside the encoder; a window partition is one
  ``view -> permute -> reshape`` and each branch is a single batched SDPA call.
* Not implemented: the optional third branch of depth stripes for isotropic data (brain MRI).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from medssl.checkpoint import load_weights, strip_prefixes

__all__ = [
    "CSwinBlock",
    "CSwinEncoder",
    "CSwinStage",
    "CSwinUNet",
    "CrossShapedAttention",
    "checkpoint_filter_fn",
    "load_pretrained",
    "pad_to_multiple",
]

logger = logging.getLogger(__name__)

Triple = tuple[int, int, int]

# Prefixes that training wrappers put in front of parameter names (Lightning systems, DDP,
# torch.compile, SSL wrappers). ``encoder.`` is stripped too and re-added for the target model.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.", "backbone.", "encoder.")


# --------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------
def _as_triple(value: int | Sequence[int], name: str) -> Triple:
    """Return ``value`` as three positive ints or raise ``ValueError`` naming ``name``."""
    triple = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(triple) != 3 or not all(isinstance(v, int) and v >= 1 for v in triple):
        raise ValueError(f"{name}={value!r} must be a positive int or three positive ints (D, H, W)")
    return triple  # type: ignore[return-value]


def stripe_partition(x: torch.Tensor, axis: int, split_size: int) -> torch.Tensor:
    """Cut a channels-last map into stripe windows spanning the full depth.

    Args:
        x: ``[B, D, H, W, *rest]`` with ``x.shape[axis]`` divisible by ``split_size``.
        axis: 2 for stripes along H (windows ``D x sw x W``), 3 for stripes along W (``D x H x sw``).
        split_size: stripe width ``sw``.

    Returns:
        ``[B * n, D, a, b, *rest]`` windows, ``n`` = number of stripes.
    """
    b, d, h, w, *rest = x.shape
    r = tuple(range(5, 5 + len(rest)))
    if axis == 2:
        x = x.view(b, d, h // split_size, split_size, w, *rest)  # [B, D, n, sw, W, *]
        return x.permute(0, 2, 1, 3, 4, *r).reshape(-1, d, split_size, w, *rest)  # [B*n, D, sw, W, *]
    x = x.view(b, d, h, w // split_size, split_size, *rest)  # [B, D, H, n, sw, *]
    return x.permute(0, 3, 1, 2, 4, *r).reshape(-1, d, h, split_size, *rest)  # [B*n, D, H, sw, *]


def stripe_reverse(windows: torch.Tensor, axis: int, batch: int) -> torch.Tensor:
    """Inverse of :func:`stripe_partition`: ``[B * n, D, a, b, C]`` -> ``[B, D, H, W, C]``."""
    bn, d, a, b, c = windows.shape
    n = bn // batch
    x = windows.view(batch, n, d, a, b, c)  # [B, n, D, a, b, C]
    if axis == 2:
        return x.permute(0, 2, 1, 3, 4, 5).reshape(batch, d, n * a, b, c)  # [B, D, H, W, C]
    return x.permute(0, 2, 3, 1, 4, 5).reshape(batch, d, a, n * b, c)  # [B, D, H, W, C]


def window_attention(
    qkv: torch.Tensor,
    num_heads: int,
    lepe: nn.Module,
    axis: int | None = None,
    split_size: int = 0,
) -> torch.Tensor:
    """Multi-head attention inside stripe windows (or globally) plus LePE on V.

    Args:
        qkv: ``[B, D, H, W, 3, C]`` projected queries, keys and values of one branch.
        num_heads: heads of this branch; ``C`` must be divisible by it.
        lepe: depthwise conv applied to V inside each window (channels-first ``[N, C, d, h, w]``).
        axis: 2 = stripes along H (windows ``D x sw x W``), 3 = stripes along W (``D x H x sw``),
            ``None`` = one global window.
        split_size: stripe width; clamped to the map, padded + masked when it does not divide it.

    Returns:
        ``[B, D, H, W, C]`` attention output (before the output projection).
    """
    if axis not in (None, 2, 3) or (axis is not None and split_size < 1):
        raise ValueError(f"axis={axis}, split_size={split_size}: stripes need axis 2 or 3, split_size >= 1")
    b, d, h, w, _, c = qkv.shape
    size = None if axis is None else qkv.shape[axis]
    sw = 0 if size is None else min(split_size, size)
    pad = 0 if size is None else -size % sw
    if pad:
        # zero q/k/v on padded rows (or columns); their keys are masked below
        pad_arg = (0, 0, 0, 0, 0, pad) if axis == 3 else (0, 0, 0, 0, 0, 0, 0, pad)
        qkv = F.pad(qkv, pad_arg)  # [B, D, H', W', 3, C]
    if size is None:
        windows = qkv.permute(4, 0, 1, 2, 3, 5)  # [3, B, D, H, W, C]
        win_shape = (d, h, w)
    else:
        windows = stripe_partition(qkv, axis, sw)  # [B*n, D, a, b, 3, C]
        windows = windows.permute(4, 0, 1, 2, 3, 5)  # [3, B*n, D, a, b, C]
        win_shape = tuple(windows.shape[2:5])
    bn, tokens = windows.shape[1], win_shape[0] * win_shape[1] * win_shape[2]
    q, k, v = windows.reshape(3, bn, tokens, c).unbind(0)  # 3 x [B*n, N, C]

    attn_mask = None
    if pad:
        valid = torch.arange(size + pad, device=qkv.device) < size  # [H'] True = real token
        valid = valid.view(-1, 1, sw, 1) if axis == 2 else valid.view(-1, 1, 1, sw)  # [n, 1, a|1, 1|b]
        valid = valid.expand(-1, *win_shape).reshape(1, -1, 1, 1, tokens)  # [1, n, 1, 1, N]
        attn_mask = valid.expand(b, -1, -1, -1, -1).reshape(bn, 1, 1, tokens)  # [B*n, 1, 1, N]

    hd = c // num_heads
    out = F.scaled_dot_product_attention(
        q.view(bn, tokens, num_heads, hd).transpose(1, 2),  # [B*n, h, N, hd]
        k.view(bn, tokens, num_heads, hd).transpose(1, 2),
        v.view(bn, tokens, num_heads, hd).transpose(1, 2),
        attn_mask=attn_mask,
    )
    out = out.transpose(1, 2).reshape(bn, *win_shape, c)  # [B*n, D, a, b, C]
    pos = lepe(v.view(bn, *win_shape, c).permute(0, 4, 1, 2, 3))  # [B*n, C, D, a, b]
    out = out + pos.permute(0, 2, 3, 4, 1)  # [B*n, D, a, b, C]
    if size is None:
        return out
    out = stripe_reverse(out, axis, b)  # [B, D, H', W', C]
    if pad:
        out = out[:, :, :h] if axis == 2 else out[:, :, :, :w]  # [B, D, H, W, C]
    return out


def _layer_norm_to_channels_first(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over C, then ``[B, D, H, W, C]`` -> ``[B, C, D, H, W]`` (view)."""
    return F.layer_norm(x, x.shape[-1:]).permute(0, 4, 1, 2, 3)  # [B, C, D, H, W]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def pad_to_multiple(x: torch.Tensor, multiple: Sequence[int]) -> torch.Tensor:
    """Zero pad the trailing end of D, H, W of ``[B, C, D, H, W]`` to multiples of ``multiple``."""
    pads = [-size % m for size, m in zip(x.shape[2:], multiple, strict=True)]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))  # [B, C, D', H', W']


# --------------------------------------------------------------------------------------------------
# blocks
# --------------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    """Transformer MLP: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CrossShapedAttention(nn.Module):
    """Cross-shaped window attention with LePE (3-D, in-plane stripes spanning the full depth).

    Args:
        dim: channels ``C``.
        num_heads: heads; split in half between the two stripe branches (must be even), all heads
            attend globally when ``split_size`` is 0 / None.
        split_size: stripe width ``sw``; 0 or None = global attention.
        lepe_kernel: kernel of the depthwise LePE conv on V.

    Example:
        >>> attn = CrossShapedAttention(dim=16, num_heads=2, split_size=2)
        >>> attn(torch.randn(1, 3, 8, 8, 16)).shape
        torch.Size([1, 3, 8, 8, 16])
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int | None = 1,
        lepe_kernel: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        split_size = split_size or 0
        if split_size < 0:
            raise ValueError(f"split_size={split_size} must be >= 0 (0 or None = global attention)")
        branches = 1 if split_size == 0 else 2
        if num_heads < branches or num_heads % branches:
            raise ValueError(
                f"num_heads={num_heads} must be even for a stripe stage (split_size={split_size}): "
                "heads are split between the two stripe directions"
            )
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        kernel = _as_triple(lepe_kernel, "lepe_kernel")
        if not all(k % 2 for k in kernel):
            raise ValueError(f"lepe_kernel={lepe_kernel!r} must be odd so the conv keeps the window size")
        self.split_size = split_size
        self.num_heads = num_heads
        self.branch_dim = dim // branches
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = nn.ModuleList(
            nn.Conv3d(
                self.branch_dim,
                self.branch_dim,
                kernel,
                padding=tuple(k // 2 for k in kernel),
                groups=self.branch_dim,
            )
            for _ in range(branches)
        )
        # V reaches the conv channels-last (a permuted view), so its weight gradient comes out
        # channels-last; a weight stored that way avoids DDP's stride-mismatch copy of that gradient.
        self.lepe.to(memory_format=torch.channels_last_3d)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, C]`` -> ``[B, D, H, W, C]``."""
        b, d, h, w, _ = x.shape
        branches = len(self.lepe)
        qkv = self.qkv(x).view(b, d, h, w, 3, branches, self.branch_dim)  # [B, D, H, W, 3, 2, C/2]
        heads = self.num_heads // branches
        if branches == 1:
            out = window_attention(qkv[..., 0, :], heads, self.lepe[0])  # [B, D, H, W, C]
        else:
            out = torch.cat(
                [
                    window_attention(qkv[..., 0, :], heads, self.lepe[0], axis=2, split_size=self.split_size),
                    window_attention(qkv[..., 1, :], heads, self.lepe[1], axis=3, split_size=self.split_size),
                ],
                dim=-1,
            )  # [B, D, H, W, C]
        return self.proj(out)


class CSwinBlock(nn.Module):
    """Pre-norm transformer block with cross-shaped window attention.

    Args:
        dim: channels.
        num_heads: attention heads (even for stripe blocks).
        split_size: stripe width, 0 / None = global attention.
        mlp_ratio: MLP hidden size / ``dim``.
        drop_path: stochastic depth probability.
        lepe_kernel: kernel of the depthwise LePE conv.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int | None = 1,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        lepe_kernel: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossShapedAttention(dim, num_heads, split_size, lepe_kernel)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, C]`` -> ``[B, D, H, W, C]``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided conv patch embedding + LayerNorm (``ceil`` output size for any input size).

    Args:
        in_channels: image channels.
        embed_dim: token channels.
        stride: stem stride; kernel ``2s - 1`` (3 where ``s = 1``), as CSWin's 7x7 / stride-4 stem.
    """

    def __init__(self, in_channels: int, embed_dim: int, stride: Triple) -> None:
        super().__init__()
        kernel = tuple(2 * s - 1 if s > 1 else 3 for s in stride)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel, stride, padding=tuple(k // 2 for k in kernel))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, D, H, W]`` -> ``[B, d, h, w, E]``."""
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))  # [B, d, h, w, E]


class ConvMerge(nn.Module):
    """Strided 3x3x3 conv that changes channels and resolution between stages, then LayerNorm."""

    def __init__(self, in_dim: int, out_dim: int, stride: Triple) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_dim, out_dim, 3, stride, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, C]`` -> ``[B, ceil(D/s), ceil(H/s), ceil(W/s), C_out]``."""
        x = self.conv(x.permute(0, 4, 1, 2, 3))  # [B, C_out, d, h, w]
        return self.norm(x.permute(0, 2, 3, 4, 1))  # [B, d, h, w, C_out]


# --------------------------------------------------------------------------------------------------
# stage
# --------------------------------------------------------------------------------------------------
class CSwinStage(nn.Module):
    """Optional conv merge followed by ``depth`` CSwin blocks.

    Args:
        in_dim: input channels.
        dim: stage channels.
        depth: number of blocks.
        num_heads: heads per block.
        split_size: stripe width, 0 / None = global attention.
        merge_stride: stride of the conv merge; None = no merge (first stage, after the stem).
        mlp_ratio: MLP hidden size / ``dim``.
        drop_path: per-block stochastic depth probabilities (length ``depth``).
        lepe_kernel: kernel of the depthwise LePE conv.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        split_size: int | None,
        merge_stride: Triple | None = None,
        mlp_ratio: float = 4.0,
        drop_path: Sequence[float] = (),
        lepe_kernel: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        self.downsample = nn.Identity() if merge_stride is None else ConvMerge(in_dim, dim, merge_stride)
        self.blocks = nn.ModuleList(
            CSwinBlock(dim, num_heads, split_size, mlp_ratio, drop_path[i], lepe_kernel) for i in range(depth)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W, C_in]`` -> ``[B, d, h, w, C]``."""
        x = self.downsample(x)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
class CSwinEncoder(nn.Module):
    """3-D cross-shaped window transformer encoder (4 stages by default).

    Args:
        in_channels: image channels (3 for t2w, adc, hbv).
        embed_dim: channels of the first stage; doubled at every merge.
        depths: blocks per stage.
        num_heads: heads per stage (even in stripe stages).
        split_sizes: stripe width per stage; 0 or None = global attention.
        patch_stride: stride of the stem conv (D, H, W).
        merge_strides: stride of each conv merge, one per stage after the first.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth, linearly increased to this value over all blocks.
        lepe_kernel: kernel of the depthwise LePE conv on V (3x3x3 by default).
        use_checkpoint: recompute blocks in backward (torch.utils.checkpoint) to save memory.

    Example:
        >>> enc = CSwinEncoder(3, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4))
        >>> [f.shape[1:] for f in enc.forward_intermediates(torch.randn(1, 3, 8, 32, 32))][-1]
        torch.Size([96, 2, 1, 1])
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
        lepe_kernel: int | Sequence[int] = 3,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            hint = "set model.init_args.net.init_args.in_channels to 3 for t2w, adc, hbv"
            raise ValueError(f"in_channels={in_channels} must be >= 1 ({hint})")
        if embed_dim < 1:
            raise ValueError(f"embed_dim={embed_dim} must be >= 1")
        num_stages = len(depths)
        if num_stages < 1 or len(num_heads) != num_stages or len(split_sizes) != num_stages:
            raise ValueError(
                f"depths={tuple(depths)}, num_heads={tuple(num_heads)} and split_sizes={tuple(split_sizes)} "
                "must have the same non-zero length (one entry per stage)"
            )
        if len(merge_strides) != num_stages - 1:
            raise ValueError(
                f"merge_strides={tuple(merge_strides)} must have len(depths) - 1 = {num_stages - 1} entries"
            )
        if any(dp < 1 for dp in depths):
            raise ValueError(f"depths={tuple(depths)} must all be >= 1")
        if any(s is not None and s < 0 for s in split_sizes):
            raise ValueError(f"split_sizes={tuple(split_sizes)} must be >= 0 (0 or None = global attention)")
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio} must be > 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
        self.patch_stride = _as_triple(patch_stride, "patch_stride")
        self.merge_strides = tuple(_as_triple(s, f"merge_strides[{i}]") for i, s in enumerate(merge_strides))
        self.dims = tuple(embed_dim * 2**i for i in range(num_stages))
        for i, (dim, heads, split) in enumerate(zip(self.dims, num_heads, split_sizes, strict=True)):
            if heads < 1 or dim % heads:
                raise ValueError(f"num_heads[{i}]={heads} must be >= 1 and divide the stage width {dim}")
            if split and heads % 2:
                raise ValueError(
                    f"num_heads[{i}]={heads} must be even in a stripe stage (split_sizes[{i}]={split}): "
                    "heads are split between the two stripe directions"
                )

        self.patch_embed = PatchEmbed(in_channels, embed_dim, self.patch_stride)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            self.stages.append(
                CSwinStage(
                    in_dim=self.dims[max(i - 1, 0)],
                    dim=self.dims[i],
                    depth=depths[i],
                    num_heads=num_heads[i],
                    split_size=split_sizes[i],
                    merge_stride=None if i == 0 else self.merge_strides[i - 1],
                    mlp_ratio=mlp_ratio,
                    drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    lepe_kernel=lepe_kernel,
                )
            )
        self.num_features = self.dims[-1]
        self.apply(_init_weights)
        self.set_grad_checkpointing(use_checkpoint)

    @property
    def total_strides(self) -> Triple:
        """Product of the stem and merge strides per axis (D, H, W)."""
        total = list(self.patch_stride)
        for stride in self.merge_strides:
            total = [t * s for t, s in zip(total, stride, strict=True)]
        return tuple(total)  # type: ignore[return-value]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in backward (memory for time)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """No position tables here (LePE is a conv); norms and biases follow the optimiser's 1-D rule."""
        return set()

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised output of every stage.

        Args:
            x: ``[B, C_in, D, H, W]``; any size (stem and merges round up).

        Returns:
            One ``[B, C_i, d_i, h_i, w_i]`` map per stage (parameter-free LayerNorm over channels, so
            every stage's output is usable by a decoder without unused parameters elsewhere).
        """
        x = self.patch_embed(x)  # [B, d, h, w, E]
        feats = []
        for stage in self.stages:
            x = stage(x)  # [B, d, h, w, C_i]
            feats.append(_layer_norm_to_channels_first(x))  # [B, C_i, d, h, w]
        return feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised bottleneck ``[B, C_last, d, h, w]``."""
        x = self.patch_embed(x)  # [B, d, h, w, E]
        for stage in self.stages:
            x = stage(x)
        return _layer_norm_to_channels_first(x)  # [B, C_last, d, h, w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class CSwinUNet(nn.Module):
    """CSwin encoder + UNETR / Swin UNETR style decoder for 3-D segmentation.

    Skips: residual conv blocks on the raw input, on a 1/2-resolution conv stem and on every stage's
    normalised tokens; transposed-conv up blocks whose kernel equals the stride of the matching merge;
    1x1x1 conv to ``out_channels``. Any input size works: the input is zero padded to a multiple of the
    total strides (4 x 32 x 32 by default) and the logits are cropped back. With ``norm_name="instance"``
    training needs a bottleneck of more than one voxel (e.g. at least 5 x 33 x 33 by default).

    Args:
        in_channels: image channels (3 for t2w, adc, hbv).
        out_channels: output channels (2 for background / csPCa; softmax of channel 1 = likelihood).
        embed_dim: encoder channels of the first stage (doubled at every merge).
        depths: encoder blocks per stage.
        num_heads: encoder heads per stage (even in stripe stages).
        split_sizes: stripe width per stage; 0 or None = global attention.
        patch_stride: stem stride (D, H, W).
        merge_strides: stride of each conv merge.
        mlp_ratio: MLP hidden size / channels.
        drop_path_rate: stochastic depth of the encoder.
        feature_size: decoder width at full resolution (doubles per stage); None = ``embed_dim``.
        norm_name: MONAI norm of the decoder blocks.
        use_checkpoint: gradient checkpointing of the encoder blocks.

    Example:
        >>> net = CSwinUNet(3, 2, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4))
        >>> net(torch.randn(1, 3, 5, 36, 28)).shape
        torch.Size([1, 2, 5, 36, 28])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_sizes: Sequence[int | None] = (1, 2, 8, 0),
        patch_stride: int | Sequence[int] = (1, 4, 4),
        merge_strides: Sequence[int | Sequence[int]] = ((1, 2, 2), (2, 2, 2), (2, 2, 2)),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        feature_size: int | None = None,
        norm_name: tuple | str = "instance",
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"out_channels={out_channels} must be >= 1 (2 for background / csPCa)")
        feature_size = embed_dim if feature_size is None else feature_size
        if feature_size < 1:
            raise ValueError(f"feature_size={feature_size} must be >= 1 (or None to use embed_dim)")
        if len(depths) != 4:
            raise ValueError(f"depths={tuple(depths)} must have 4 stages: the decoder has 4 stage skips")
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
        stem = self.encoder.patch_stride
        # the stem stride is split into a 1/2-res conv stem and the rest (e.g. (1, 4, 4) -> 2 x (1, 2, 2))
        half_stride = tuple(2 if s % 2 == 0 else 1 for s in stem)
        rest_stride = tuple(s // h for s, h in zip(stem, half_stride, strict=True))
        merges = self.encoder.merge_strides
        dims = self.encoder.dims
        f = feature_size

        def basic(cin: int, cout: int, stride: Sequence[int] | int = 1) -> UnetrBasicBlock:
            return UnetrBasicBlock(3, cin, cout, 3, stride, norm_name, res_block=True)

        def up(cin: int, cout: int, stride: Sequence[int]) -> UnetrUpBlock:
            return UnetrUpBlock(3, cin, cout, 3, stride, norm_name, res_block=True)

        self.skip0 = basic(in_channels, f)  # full resolution
        self.skip1 = basic(in_channels, f, half_stride)  # 1/2-res conv stem
        self.skip2 = basic(dims[0], f)  # stage 0
        self.skip3 = basic(dims[1], 2 * f)  # stage 1
        self.skip4 = basic(dims[2], 4 * f)  # stage 2
        self.bottleneck = basic(dims[3], 8 * f)  # stage 3
        self.decoder4 = up(8 * f, 4 * f, merges[2])
        self.decoder3 = up(4 * f, 2 * f, merges[1])
        self.decoder2 = up(2 * f, f, merges[0])
        self.decoder1 = up(f, f, rest_stride)
        self.decoder0 = up(f, f, half_stride)
        self.out = UnetOutBlock(3, f, out_channels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every encoder block in backward."""
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{name}" for name in self.encoder.no_weight_decay()}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised encoder bottleneck ``[B, C_last, d, h, w]``."""
        return self.encoder.forward_features(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Normalised encoder stage maps, each ``[B, C_i, d_i, h_i, w_i]``."""
        return self.encoder.forward_intermediates(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, D, H, W]`` (any size) -> logits ``[B, out_channels, D, H, W]``."""
        d, h, w = x.shape[2:]
        x = pad_to_multiple(x, self.encoder.total_strides)  # [B, C_in, D', H', W']
        feats = self.encoder.forward_intermediates(x)
        enc0 = self.skip0(x)
        enc1 = self.skip1(x)
        enc2 = self.skip2(feats[0])
        enc3 = self.skip3(feats[1])
        enc4 = self.skip4(feats[2])
        dec5 = self.bottleneck(feats[3])
        dec4 = self.decoder4(dec5, enc4)
        dec3 = self.decoder3(dec4, enc3)
        dec2 = self.decoder2(dec3, enc2)
        dec1 = self.decoder1(dec2, enc1)
        dec0 = self.decoder0(dec1, enc0)
        logits = self.out(dec0)
        return logits[:, :, :d, :h, :w]  # [B, out_channels, D, H, W]


# --------------------------------------------------------------------------------------------------
# checkpoint filter
# --------------------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a pretrained CSwin encoder's tensors onto ``model``'s names (only the encoder transfers).

    Pure (timm's shape): takes the tensors of a checkpoint (``medssl.checkpoint.state_dict_of``:
    Lightning ``state_dict``, plain or bare encoder state dicts) and returns them renamed for
    ``model``; ``medssl.checkpoint.load_weights`` matches shapes, loads and reports. Wrapper prefixes
    (``module.``, ``_orig_mod.``, ``model.``, ``net.``, ``network.``, ``backbone.``, ``encoder.``) are
    stripped and the encoder's own prefix put back; decoder and SSL-head tensors find no target.

    Args:
        state_dict: tensors of a checkpoint.
        model: target with a ``CSwinEncoder`` at ``model.encoder`` (``CSwinUNet``, ``CSwinSSLModel``)
            or a ``CSwinEncoder`` itself.

    Raises:
        ValueError: when the model has no CSwin encoder.
    """
    prefix = "" if isinstance(model, CSwinEncoder) else "encoder."
    if prefix and not isinstance(getattr(model, "encoder", None), CSwinEncoder):
        raise ValueError(f"{type(model).__name__} has no CSwinEncoder at .encoder; nothing to load into")
    return {prefix + strip_prefixes(key, _WRAPPER_PREFIXES): value for key, value in state_dict.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a pretrained CSwin encoder into ``model`` (decoder and heads keep their init).

    Only weights-only checkpoints are accepted (``torch.load(weights_only=True)``): a pickle that
    needs arbitrary code is refused in one line.

    Returns:
        The report of ``medssl.checkpoint.load_weights`` (also logged).
    """
    return load_weights(model, path, checkpoint_filter_fn)
