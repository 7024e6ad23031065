"""BM-MAE: multimodal masked autoencoder for 3-D brain MRI with missing modalities.

Robinet et al., "Multimodal Masked Autoencoder Pre-training for 3D MRI-Based Brain Tumor Analysis
with Missing Modalities", arXiv 2505.00568 (reference code: github.com/Lucas-rbnt/BM-MAE).

One Conv3d tokenizer per modality (no modality embedding in the encoder), a fixed 3-D sin-cos
position table shared by all modalities, a pre-norm ViT over ``[CLS, visible tokens]`` and a
light decoder that re-inserts mask tokens, adds a learned modality embedding and predicts the
voxels of every patch. Unlike the reference, pretraining also works on cases that lack
modalities: the visible budget, the decoder keys and the loss only cover what a case has.

Parameter and buffer names follow the official ``bmmae.pth`` exactly, so the file loads strictly::

    model = BMMAE.from_official("bmmae.pth")                 # strict: every key used, none left
    recon = model.eval().reconstruct({"t1": t1, "t2": t2}, missing=("flair",))
    model, meta = medssl.weights.load_model("runs/pre/checkpoints/last.ckpt")  # any checkpoint kind

**Axis order.** Volumes always arrive in medssl's array order ``[B, C, D, H, W] = [z, y, x]``
(SimpleITK's). The weights carry their own order, ``axis_order``: ``"zyx"`` for weights medssl
pretrained, ``"xyz"`` for the official file, whose reference pipeline reads NIfTI with nibabel
(arrays ``[x, y, z]``). The model turns its input into its own order before the tokenizers and
every spatial output (reconstructions, UNETR feature maps) back, so callers never see it; only
``img_size``, ``grid_size`` and the token order are in the model's own order (``input_size`` is
``img_size`` in ``[D, H, W]``). A 128^3 crop would hide a wrong order: nothing raises, the features
are just those of a transposed brain.

Moving pretrained weights (official file, our pretraining checkpoint, a finetuned net) into the
encoder of a downstream net goes through the same filter, and the report says what happened::

    net = BMMAEUNETR(in_channels=4, out_channels=3, axis_order="xyz")
    report = load_encoder_weights(net.encoder, load_checkpoint("bmmae.pth"), axis_order="xyz")
    # report["skipped"] lists the decoder.* keys an encoder-only model does not have

Missing modalities follow the project rule: zeros in the input plus ``modality_mask[b, m] = False``.
Their tokens stay in the sequence (so every parameter sees the graph, which DDP needs) but are
never attention keys, which makes the present tokens' outputs identical to a run without them.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from medssl.checkpoint import WRAPPER_PREFIXES, load_weights, strip_prefixes
from medssl.errors import CheckpointError, ConfigError
from medssl.models.host import to_device

__all__ = [
    "BMMAE",
    "BMMAEUNETR",
    "BMMAEClassifier",
    "check_axis_order",
    "checkpoint_filter_fn",
    "load_encoder_weights",
    "report_kinds",
    "sincos_pos_embed_3d",
]

_logger = logging.getLogger(__name__)

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
AxisOrder = Literal["zyx", "xyz"]
AXIS_ORDERS = ("zyx", "xyz")
# Wrappers around BMMAE keys: DDP, torch.compile, a system's ``net.``, ``{"model": ...}``, and the
# ``encoder.`` of our downstream nets.
_STRIP_PREFIXES = (*WRAPPER_PREFIXES, "encoder.")


# --------------------------------------------------------------------------- helpers


def _to_3tuple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    out = tuple(int(v) for v in value)
    if len(out) != 3:
        raise ValueError(f"{name}={value!r} must be an int or 3 ints; "
                         f"set model.init_args.net.init_args.{name} accordingly")
    return out  # type: ignore[return-value]


def _reorder(x: Tensor, axis_order: str) -> Tensor:
    """Between medssl's ``[B, C, z, y, x]`` and ``axis_order``; its own inverse, so it maps back too.

    ``"xyz"`` swaps the first and last spatial axes: ``[B, C, D, H, W] -> [B, C, W, H, D]``.
    """
    return x if axis_order == "zyx" else x.transpose(2, 4)


def sincos_pos_embed_3d(grid_size: Sequence[int], dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 3-D sin-cos table, identical to MONAI's ``build_sincos_position_embedding``.

    Channel layout ``[sin w, cos w, sin h, cos h, sin d, cos d]`` (``dim // 6`` each), grid
    flattened h-major (``ij`` meshgrid), i.e. in the Conv3d token order.

    Args:
        grid_size: tokens along (h, w, d), the three spatial axes of a ``[B, C, H, W, D]`` volume.
        dim: embedding width, a multiple of 6.
        temperature: frequency base.

    Returns:
        ``[1, h * w * d, dim]`` float32 table.
    """
    if dim % 6 != 0:
        raise ValueError(f"sin-cos width {dim} must be a multiple of 6")
    axes = [torch.arange(n, dtype=torch.float32) for n in grid_size]
    grid_h, grid_w, grid_d = torch.meshgrid(*axes, indexing="ij")
    omega = 1.0 / temperature ** (torch.arange(dim // 6, dtype=torch.float32) / (dim // 6))
    out_h, out_w, out_d = (torch.outer(g.flatten(), omega) for g in (grid_h, grid_w, grid_d))  # [L, dim/6]
    table = [out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos(), out_d.sin(), out_d.cos()]
    return torch.cat(table, dim=1)[None]  # [1, L, dim]


def _key_padding(valid: Tensor | None) -> Tensor | None:
    """Prepend an always-valid CLS column: ``[B, L] -> [B, 1 + L]`` (True = attend)."""
    return None if valid is None else F.pad(valid, (1, 0), value=True)


def _drop_modalities(present: Tensor, p: float) -> Tensor:
    """Drop each present modality with probability ``p``; every sample keeps at least one."""
    keep = present & (torch.rand(present.shape, device=present.device) >= p)  # [B, M]
    lost_all = ~keep.any(dim=1, keepdim=True)  # [B, 1]
    rescue = (torch.rand(present.shape, device=present.device) * present).argmax(dim=1)  # random present one
    return keep | (lost_all & F.one_hot(rescue, present.shape[1]).bool())


# --------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` output is ordered ``[q|k|v][head][head_dim]``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.drop_output = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """Attend over ``x``.

        Args:
            x: ``[B, L, D]`` tokens.
            key_valid: optional ``[B, L]`` bool, True = may be attended to (key padding mask).
        """
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, D // self.num_heads)  # [B, L, 3, H, hd]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, hd]
        mask = None if key_valid is None else key_valid[:, None, None, :]  # [B, 1, 1, L]
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(B, L, D)  # [B, L, D]
        return self.drop_output(self.out_proj(x))


class Mlp(nn.Module):
    """``linear1 -> exact GELU -> dropout -> linear2 -> dropout``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.linear2(self.drop1(self.act(self.linear1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-5, no drop-path, no layer-scale)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=True, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim, dropout)

    def forward(self, x: Tensor, key_valid: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_valid)
        return x + self.mlp(self.norm2(x))


class PatchEmbedding(nn.Module):
    """Conv3d patchifier plus the fixed sin-cos table (a persistent buffer: in the file, never trained)."""

    def __init__(self, img_size: tuple[int, int, int], patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embeddings = nn.Conv3d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        grid = tuple(s // patch_size for s in img_size)
        self.register_buffer("position_embeddings", sincos_pos_embed_3d(grid, embed_dim))
        w = self.patch_embeddings.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on the flattened patch

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"volume of spatial size {tuple(x.shape[2:])} does not match img_size={self.img_size}"
            )
        x = self.patch_embeddings(x).flatten(2).transpose(1, 2)  # [B, D, gh, gw, gd] -> [B, gh*gw*gd, D]
        return x + self.position_embeddings


class ModalityTokenizer(nn.Module):
    """One modality's tokenizer; this level mirrors the official ``tokenizers.{m}.patch_embedding``."""

    def __init__(self, img_size: tuple[int, int, int], patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_embedding = PatchEmbedding(img_size, patch_size, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_embedding(x)


class BMMAEDecoder(nn.Module):
    """Re-inserts mask tokens, adds modality + fixed position embeddings and predicts patch voxels."""

    def __init__(
        self,
        modalities: Sequence[str],
        grid_size: Sequence[int],
        patch_size: int,
        embed_dim: int,
        decoder_embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.mask_tokens = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.register_buffer("position_embeddings", sincos_pos_embed_3d(grid_size, decoder_embed_dim))
        self.modality_embeddings = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(1, 1, decoder_embed_dim)) for m in modalities}
        )
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_embed_dim, num_heads, mlp_dim, dropout) for _ in range(depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**3)
        nn.init.trunc_normal_(self.mask_tokens, std=0.02)
        for p in self.modality_embeddings.values():
            nn.init.trunc_normal_(p, std=0.02)

    def forward(
        self,
        latent: Tensor,
        ids_restore: Tensor,
        modalities: Sequence[str],
        visible_valid: Tensor | None = None,
        token_valid: Tensor | None = None,
    ) -> Tensor:
        """Decode the full canonical token sequence.

        Args:
            latent: ``[B, 1 + L, D]`` encoder output, CLS then visible tokens in shuffled order.
            ids_restore: ``[B, T]`` for each canonical token, its index in ``[visible..., mask tokens...]``.
            modalities: the ``k`` modality names of the canonical sequence, ``T = k * N``.
            visible_valid: ``[B, L]`` False where ``latent`` holds padding (replaced by mask tokens).
            token_valid: ``[B, T]`` False for tokens of modalities a sample lacks (never keys).

        Returns:
            ``[B, T, patch_size**3]`` predicted voxels.
        """
        x = self.decoder_embed(latent)  # [B, 1 + L, Dd]
        cls, vis = x[:, :1], x[:, 1:]
        mask_token = self.mask_tokens.to(vis.dtype)
        if visible_valid is not None:
            vis = torch.where(visible_valid[..., None], vis, mask_token)
        B, L, Dd = vis.shape
        x = torch.cat([vis, mask_token.expand(B, ids_restore.shape[1] - L, Dd)], dim=1)  # [B, T, Dd]
        x = torch.gather(x, 1, ids_restore[..., None].expand(-1, -1, Dd))  # [B, T, Dd] canonical order
        embed = torch.cat([self.modality_embeddings[m] + self.position_embeddings for m in modalities], dim=1)
        x = torch.cat([cls, x + embed], dim=1)  # [B, 1 + T, Dd]; CLS gets no embedding
        key_valid = _key_padding(token_valid)
        for blk in self.decoder_blocks:
            x = blk(x, key_valid)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # [B, T, p^3]


# --------------------------------------------------------------------------- model


@dataclass
class Masking:
    """How one pretraining batch was masked (``BMMAE.forward_encoder``).

    Attributes:
        ids_restore: ``[B, T]`` the token order from the shuffled one.
        visible_valid: ``[B, n_vis]`` True where a visible slot holds a token (False: padding).
        token_present: ``[B, T]`` True for the tokens of present modalities; None when every sample has all.
        mask: ``[B, T]`` bool, True = hidden from the encoder and scored (absent modalities are False).
        present: ``[B, k]`` the modalities each sample has, on the device; ``present_host`` the same on the host.
    """

    ids_restore: Tensor
    visible_valid: Tensor
    token_present: Tensor | None
    mask: Tensor
    present: Tensor
    present_host: Tensor


class BMMAE(nn.Module):
    """BM-MAE encoder (+ optional pretraining decoder).

    Token layout: ``[CLS, modality 0 tokens, modality 1 tokens, ...]`` with the modalities that
    are passed in canonical order and ``N = prod(img_size // patch_size)`` tokens each in Conv3d
    flattening order of the model's own axis order (``patchify`` uses the same order).

    Args:
        modalities: canonical modality order; the decoder's modality embeddings are keyed by name.
        img_size: input size per modality (int or 3 ints), in the model's own axis order
            (``input_size`` is the same in ``[D, H, W]``).
        patch_size: cubic patch edge; ``img_size`` must be divisible by it.
        embed_dim: encoder width, a multiple of 6 (sin-cos) and of ``num_heads``.
        depth: number of encoder blocks.
        num_heads: encoder attention heads.
        mlp_ratio: encoder MLP hidden width / ``embed_dim`` (2.0 in the reference).
        decoder_embed_dim: decoder width, a multiple of 6 and of ``decoder_num_heads``.
        decoder_depth: number of decoder blocks.
        decoder_num_heads: decoder attention heads.
        decoder_mlp_dim: decoder MLP hidden width.
        decoder_dropout: dropout inside decoder blocks (attention, projection, MLP).
        mask_ratio: fraction of each sample's available tokens hidden in pretraining.
        dirichlet_alpha: concentration of the per-sample modality split of the visible budget.
        with_decoder: False builds an encoder only (downstream nets: no unused parameters).
        norm_pix_loss: normalise each target patch to zero mean / unit variance (off in the reference).
        use_checkpoint: recompute the encoder blocks in backward (gradient checkpointing) to save memory.
        axis_order: the array order the weights were trained on: ``"zyx"`` (medssl's own, SimpleITK
            arrays) or ``"xyz"`` (the official weights: nibabel arrays). Inputs are always ``[z, y, x]``;
            the model turns them into this order and its spatial outputs back.

    Example:
        >>> model = BMMAE(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4,
        ...               decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=4, decoder_mlp_dim=48)
        >>> model({m: torch.randn(2, 1, 32, 32, 32) for m in model.modalities})["loss"].shape
        torch.Size([])
    """

    def __init__(
        self,
        modalities: Sequence[str] = BRATS_MODALITIES,
        img_size: int | Sequence[int] = 128,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        decoder_embed_dim: int = 384,
        decoder_depth: int = 3,
        decoder_num_heads: int = 12,
        decoder_mlp_dim: int = 1536,
        decoder_dropout: float = 0.1,
        mask_ratio: float = 0.75,
        dirichlet_alpha: float = 1.0,
        with_decoder: bool = True,
        norm_pix_loss: bool = False,
        use_checkpoint: bool = False,
        axis_order: AxisOrder = "zyx",
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        if (
            not modalities
            or len(set(modalities)) != len(modalities)
            or any("." in m or not m for m in modalities)
        ):
            raise ValueError(
                f"modalities={modalities!r} must be unique, non-empty names without '.'; "
                "set model.init_args.net.init_args.modalities, e.g. [t1, t1ce, t2, flair]"
            )
        if axis_order not in AXIS_ORDERS:
            raise ValueError(
                f"axis_order={axis_order!r} must be 'zyx' (medssl's pretraining) or 'xyz' (the official "
                "bmmae.pth); set model.init_args.net.init_args.axis_order"
            )
        img_size = _to_3tuple(img_size, "img_size")
        if any(s % patch_size for s in img_size):
            raise ValueError(
                f"img_size={img_size} is not divisible by patch_size={patch_size}; "
                "set model.init_args.net.init_args.img_size to a multiple of patch_size"
            )
        for key, dim, heads in (
            ("embed_dim", embed_dim, num_heads),
            ("decoder_embed_dim", decoder_embed_dim, decoder_num_heads),
        ):
            if dim % 6 or dim % heads:
                raise ValueError(
                    f"{key}={dim} must be a multiple of 6 (3-D sin-cos table) and of its heads ({heads}); "
                    f"set model.init_args.net.init_args.{key} to a multiple of {math.lcm(6, heads)}"
                )
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1; set model.init_args.net.init_args.depth")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(
                f"mask_ratio={mask_ratio} must be in [0, 1); set model.init_args.net.init_args.mask_ratio (0.75)"
            )
        if dirichlet_alpha <= 0:
            raise ValueError(
                f"dirichlet_alpha={dirichlet_alpha} must be > 0; set model.init_args.net.init_args.dirichlet_alpha"
            )

        self.modalities = modalities
        self.axis_order = axis_order
        self.img_size = img_size
        self.input_size = img_size if axis_order == "zyx" else img_size[::-1]  # [D, H, W]
        self.patch_size = patch_size
        self.grid_size = tuple(s // patch_size for s in img_size)
        self.num_patches = math.prod(self.grid_size)
        self.embed_dim = embed_dim
        self.depth = depth
        self.mask_ratio = mask_ratio
        self.dirichlet_alpha = dirichlet_alpha
        self.norm_pix_loss = norm_pix_loss
        self.grad_checkpointing = use_checkpoint

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.tokenizers = nn.ModuleDict(
            {m: ModalityTokenizer(img_size, patch_size, embed_dim) for m in modalities}
        )
        mlp_dim = int(embed_dim * mlp_ratio)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder = (
            BMMAEDecoder(
                modalities,
                self.grid_size,
                patch_size,
                embed_dim,
                decoder_embed_dim,
                decoder_depth,
                decoder_num_heads,
                decoder_mlp_dim,
                decoder_dropout,
            )
            if with_decoder
            else None
        )
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------ timm-style utilities

    @classmethod
    def from_official(cls, path: str | os.PathLike, **kwargs) -> BMMAE:
        """Build a model and load the official ``bmmae.pth`` (or one of our checkpoints) strictly.

        Args:
            path: plain tensor checkpoint; anything needing arbitrary unpickling is refused.
            **kwargs: constructor arguments (defaults match the official file, ``axis_order="xyz"``).
        """
        model = cls(**{"axis_order": "xyz", **kwargs})
        load_weights(model, path, checkpoint_filter_fn, strict=True, **report_kinds(model))
        return model

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        keys = {"cls_token"}
        if self.decoder is not None:
            keys |= {"decoder.mask_tokens"} | {f"decoder.modality_embeddings.{m}" for m in self.modalities}
        return keys

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def patchify(self, x: Tensor) -> Tensor:
        """``[B, C, D, H, W]`` (medssl's order) -> ``[B, N, p^3 * C]`` in the tokenizers' token and voxel order."""
        p = self.patch_size
        x = _reorder(x, self.axis_order)  # [B, C, *img_size]
        return rearrange(x, "b c (g0 p0) (g1 p1) (g2 p2) -> b (g0 g1 g2) (p0 p1 p2 c)", p0=p, p1=p, p2=p)

    def unpatchify(self, x: Tensor, channels: int = 1) -> Tensor:
        """``[B, N, p^3 * C] -> [B, C, D, H, W]`` (medssl's order), the inverse of :meth:`patchify`."""
        p, (g0, g1, g2) = self.patch_size, self.grid_size
        x = rearrange(
            x, "b (g0 g1 g2) (p0 p1 p2 c) -> b c (g0 p0) (g1 p1) (g2 p2)",
            g0=g0, g1=g1, g2=g2, p0=p, p1=p, p2=p, c=channels,
        )  # fmt: skip
        return _reorder(x, self.axis_order)  # [B, C, *img_size] -> [B, C, D, H, W]

    # ------------------------------------------------------------------ encoder

    def _gather_inputs(
        self, volumes: Mapping[str, Tensor], modality_mask: Tensor | None
    ) -> tuple[list[str], list[Tensor], Tensor | None, Tensor | None]:
        """Canonical-order names, ``[B, 1, D, H, W]`` volumes, ``[B, k]`` presence on the volumes'
        device and the same presence where ``modality_mask`` lives (None = all present).

        Every decision that depends on presence (the checks, whether any modality is absent, how
        many tokens stay visible) is read from ``modality_mask`` itself: passed on the CPU, as the
        systems do, the step never waits for the GPU.
        """
        unknown = set(volumes) - set(self.modalities)
        if unknown or not volumes:
            raise ValueError(
                f"volumes has keys {sorted(volumes)}; expected a non-empty subset of {self.modalities}"
            )
        names = [m for m in self.modalities if m in volumes]
        # [B, D, H, W] -> [B, 1, D, H, W]
        vols = [volumes[m] if volumes[m].ndim == 5 else volumes[m].unsqueeze(1) for m in names]
        for m, v in zip(names, vols, strict=True):
            if tuple(v.shape[2:]) != self.input_size:
                raise ValueError(
                    f"{m} volume of spatial size {tuple(v.shape[2:])} does not match the model's input size "
                    f"{self.input_size} ([D, H, W]; img_size={self.img_size} in {self.axis_order} order)"
                )
        if modality_mask is None:
            return names, vols, None, None
        if modality_mask.shape != (vols[0].shape[0], len(self.modalities)):
            raise ValueError(
                f"modality_mask of shape {tuple(modality_mask.shape)} must be [B, {len(self.modalities)}] "
                f"over {self.modalities}"
            )
        modality_mask = modality_mask.bool()
        cols = [self.modalities.index(m) for m in names]
        if len(cols) < len(self.modalities) and modality_mask.sum() != modality_mask[:, cols].sum():
            raise ValueError("modality_mask marks a modality present that is not in volumes")
        present = modality_mask[:, cols]  # [B, k]
        if not present.any(dim=1).all():
            raise ValueError("every sample needs at least one present modality in modality_mask")
        if present.all():
            return names, vols, None, None
        return names, vols, to_device(present, vols[0].device), present

    def _tokenize(self, names: Sequence[str], vols: Sequence[Tensor]) -> Tensor:
        return torch.cat(
            [self.tokenizers[m](_reorder(v, self.axis_order)) for m, v in zip(names, vols, strict=True)], dim=1
        )  # [B, k * N, D]

    def _forward_blocks(
        self, x: Tensor, key_valid: Tensor | None, return_layers: Sequence[int] = ()
    ) -> tuple[Tensor, list[Tensor]]:
        hidden = []
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, key_valid, use_reentrant=False)
            else:
                x = blk(x, key_valid)
            if i in return_layers:
                hidden.append(x)
        return x, hidden

    def encode(
        self,
        volumes: Mapping[str, Tensor],
        modality_mask: Tensor | None = None,
        return_layers: Sequence[int] = (),
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Encode every token of the given modalities (no masking).

        Args:
            volumes: modality name -> ``[B, 1, D, H, W]`` (or ``[B, D, H, W]``), any subset.
            modality_mask: optional ``[B, M]`` bool over all canonical modalities, True = present,
                to mix subsets in one batch: pass zeros for absent ones; their tokens are never
                attention keys, so present tokens come out as if the absent ones were not there
                (the absent positions of the output hold meaningless values).
            return_layers: block indices ``i`` (0-based) whose un-normed outputs are returned too,
                i.e. MONAI's ``hidden_states_out[i]``; UNETR uses ``(3, 6, 9)``.

        Returns:
            ``[B, 1 + k * N, embed_dim]`` final-normed tokens (CLS first, then each modality's tokens in
            the model's own axis order), plus the list of hidden states when ``return_layers`` is non-empty.
        """
        bad = [i for i in return_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"return_layers {bad} out of range for depth={self.depth} (0-based block indices)"
            )
        names, vols, present, _ = self._gather_inputs(volumes, modality_mask)
        x = self._tokenize(names, vols)  # [B, T, D]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # [B, 1 + T, D]
        token_valid = (
            None if present is None else present.repeat_interleave(self.num_patches, dim=1)
        )  # [B, T]
        x, hidden = self._forward_blocks(x, _key_padding(token_valid), tuple(return_layers))
        x = self.norm(x)
        return (x, hidden) if return_layers else x

    # ------------------------------------------------------------------ pretraining

    def random_masking(self, present: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample Dirichlet split of the visible budget over the modalities a sample has.

        Modality proportions ``w ~ Dirichlet(alpha)`` over the present modalities; the ``n_keep``
        tokens with the smallest key ``(rank + 0.5) / w_m`` stay visible (``rank``: a random order
        inside each modality). That is Webster/Sainte-Lague apportionment: each modality keeps
        ``round(w_m * n_keep)`` tokens (rounding fixed so exactly ``n_keep`` stay), capped at the
        ``N`` tokens it has, the excess going to the others (the reference resamples ``w`` instead).

        Args:
            present: ``[B, k]`` bool, the modalities each sample has.

        Returns:
            ``ids_shuffle`` ``[B, k * N]`` (visible tokens first, absent ones last) and ``n_keep`` ``[B]``.
        """
        B, k = present.shape
        n_keep = torch.floor(present.sum(1).double() * self.num_patches * (1 - self.mask_ratio)).long()  # [B]
        alpha = torch.full((B, k), self.dirichlet_alpha, device=present.device)
        # validate_args=False: checking the parameters would read them back from the GPU (a sync)
        w = torch.distributions.Gamma(alpha, torch.ones_like(alpha), validate_args=False).sample() * present  # [B, k]
        w = w / w.sum(dim=1, keepdim=True)  # Dirichlet over the present modalities
        rank = torch.rand(B, k, self.num_patches, device=present.device).argsort(-1).argsort(-1)  # [B, k, N]
        key = (rank + 0.5) / w.clamp_min(1e-12)[..., None]  # [B, k, N]
        key = key.masked_fill(~present[..., None], math.inf)
        return key.flatten(1).argsort(dim=1), n_keep  # [B, T], [B]

    def forward(self, volumes: Mapping[str, Tensor], modality_mask: Tensor | None = None) -> dict:
        """Pretraining step, in the three steps of MAE: mask and encode the visible tokens, decode every token,
        score the masked ones.

        Args:
            volumes: modality name -> ``[B, 1, D, H, W]`` z-normalised volumes (the targets too).
            modality_mask: optional ``[B, M]`` bool (True = present) to mix subsets in one batch;
                pass zeros for absent modalities. Under DDP pass every modality (with the mask), so
                all tokenizers and modality embeddings stay in the graph.

        Returns:
            dict with ``loss`` (scalar: per-modality MSE over its masked tokens, summed over the
            modalities a sample has, averaged over samples), ``loss_per_modality`` (name -> mean
            over the samples that have it; modalities no sample has are left out), ``pred``
            ``[B, k * N, p^3]``, ``mask`` ``[B, k * N]`` (1 = masked and scored, 0 = visible **or
            absent**), ``present`` ``[B, k]`` bool and ``modalities`` (the ``k`` names in token order).
        """
        if self.decoder is None:
            raise ValueError("this BMMAE was built with with_decoder=False; pretraining needs the decoder")
        names, vols, present, present_host = self._gather_inputs(volumes, modality_mask)
        latent, masking = self.forward_encoder(names, vols, present, present_host)  # [B, 1 + n_vis, D]
        pred = self.forward_decoder(latent, masking, names)  # [B, T, p^3]
        mask = masking.mask.to(pred.dtype)  # [B, T], 1 = masked and scored
        loss, loss_per_modality = self.forward_loss(vols, pred, mask, masking, names)
        return {
            "loss": loss,
            "loss_per_modality": loss_per_modality,
            "pred": pred,
            "mask": mask,
            "present": masking.present,
            "modalities": tuple(names),
        }

    def forward_encoder(
        self, names: Sequence[str], vols: Sequence[Tensor], present: Tensor | None, present_host: Tensor | None
    ) -> tuple[Tensor, Masking]:
        """Tokenize, keep each sample's visible budget (``random_masking``), encode ``[CLS, visible tokens]``.

        Args:
            names, vols, present, present_host: as ``_gather_inputs`` returns them (``present`` None: all present).

        Returns:
            The final-normed latent ``[B, 1 + n_vis, D]`` (samples keeping fewer than ``n_vis`` tokens are padded,
            the padding masked as attention keys) and the ``Masking`` that made it.
        """
        tokens = self._tokenize(names, vols)  # [B, T, D]
        B, T, D = tokens.shape
        all_present = present is None
        if all_present:
            present = torch.ones(B, len(names), dtype=torch.bool, device=tokens.device)
            present_host = torch.ones(B, len(names), dtype=torch.bool)
        token_present = present.repeat_interleave(self.num_patches, dim=1)  # [B, T]

        ids_shuffle, n_keep = self.random_masking(present)
        ids_restore = ids_shuffle.argsort(dim=1)  # [B, T]
        # Samples with different subsets keep different numbers of tokens. We pad the visible
        # sequence to the batch max and mask the padding as attention keys: one encoder pass per
        # batch, where grouping samples by subset would fragment the batch into tiny passes.
        # the batch max of n_keep, from the host copy of presence (no wait for the device)
        n_vis = math.floor(int(present_host.sum(1).max()) * self.num_patches * (1 - self.mask_ratio))
        visible_valid = torch.arange(n_vis, device=tokens.device) < n_keep[:, None]  # [B, n_vis]
        x = torch.gather(tokens, 1, ids_shuffle[:, :n_vis, None].expand(-1, -1, D))  # [B, n_vis, D]
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # [B, 1 + n_vis, D]
        x, _ = self._forward_blocks(x, None if all_present else _key_padding(visible_valid))
        # 1 = masked (hidden from the encoder, scored); 0 = visible or absent modality.
        hidden = torch.arange(T, device=x.device) >= n_keep[:, None]  # [B, T] in shuffled order
        mask = torch.gather(hidden, 1, ids_restore) & token_present  # [B, T] in token order
        masking = Masking(ids_restore, visible_valid, None if all_present else token_present, mask, present,
                          present_host)
        return self.norm(x), masking

    def forward_decoder(self, latent: Tensor, masking: Masking, names: Sequence[str]) -> Tensor:
        """Every token's voxels ``[B, T, p^3]`` from the latent: mask tokens re-inserted, modality embeddings added."""
        return self.decoder(latent, masking.ids_restore, names, masking.visible_valid, masking.token_present)

    def forward_loss(
        self, vols: Sequence[Tensor], pred: Tensor, mask: Tensor, masking: Masking, names: Sequence[str],
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-modality MSE over the masked patches of the modalities each sample has.

        Returns:
            The loss (summed over a sample's modalities, averaged over samples) and the per-modality means over
            the samples that have each modality.
        """
        present, present_host = masking.present, masking.present_host
        target = torch.cat([self.patchify(v) for v in vols], dim=1)  # [B, T, p^3]
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        B, k = present.shape
        err = (
            ((pred.float() - target.float()) ** 2).mean(-1).view(B, k, self.num_patches)
        )  # [B, k, N] per-patch MSE
        m = mask.view(B, k, self.num_patches)  # [B, k, N]
        per_modality = (err * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # [B, k]; 0 where nothing is masked
        loss = (per_modality * present).sum(1).mean()
        weights = present.to(per_modality.dtype)  # [B, k]
        counts = present_host.sum(0).tolist()  # host copy: no device sync
        loss_per_modality = {
            name: (per_modality[:, j] * weights[:, j]).sum() / counts[j]
            for j, name in enumerate(names)
            if counts[j]
        }
        return loss, loss_per_modality

    @torch.no_grad()
    def reconstruct(self, volumes: Mapping[str, Tensor], missing: Sequence[str]) -> dict[str, Tensor]:
        """Fill in missing modalities: every present token visible, every missing token masked.

        Args:
            volumes: the present modalities, name -> ``[B, 1, D, H, W]`` (entries named in
                ``missing`` are ignored).
            missing: modalities to synthesise.

        Returns:
            name -> ``[B, 1, D, H, W]`` reconstruction for each missing modality (medssl's order).
        """
        if self.decoder is None:
            raise ValueError("this BMMAE was built with with_decoder=False; reconstruction needs the decoder")
        unknown = set(missing) - set(self.modalities)
        if not missing or unknown:
            raise ValueError(f"missing={tuple(missing)} must name one or more of {self.modalities}")
        missing = [m for m in self.modalities if m in set(missing)]
        available = {m: v for m, v in volumes.items() if m not in missing}
        latent = self.encode(available)  # [B, 1 + kp * N, D]
        present = [m for m in self.modalities if m in available]
        targets = [m for m in self.modalities if m in available or m in missing]
        N = self.num_patches
        # canonical token -> index in [present tokens..., mask tokens...]
        starts = [
            present.index(m) * N if m in present else (len(present) + missing.index(m)) * N for m in targets
        ]
        ids_restore = torch.cat([torch.arange(s, s + N) for s in starts]).to(latent.device)  # [T]
        pred = self.decoder(latent, ids_restore.expand(latent.shape[0], -1), targets)  # [B, T, p^3]
        return {
            m: self.unpatchify(pred[:, j * N : (j + 1) * N]) for j, m in enumerate(targets) if m in missing
        }


# --------------------------------------------------------------------------- downstream nets


class _MultimodalNet(nn.Module):
    """Shared input handling: ``x [B, M, D, H, W]`` + ``modality_mask [B, M]`` -> encoder call."""

    encoder: BMMAE
    modality_dropout: float

    def _check_in_channels(self, in_channels: int, modalities: Sequence[str]) -> None:
        if in_channels != len(modalities):
            raise ValueError(
                f"in_channels={in_channels} does not match the modalities {tuple(modalities)}; "
                f"set model.init_args.net.init_args.in_channels to {len(modalities)}"
            )

    def _encode(
        self, x: Tensor, modality_mask: Tensor | None, return_layers: Sequence[int] = ()
    ) -> tuple[Tensor, Tensor | None, Tensor | tuple[Tensor, list[Tensor]]]:
        """Input with absent channels zeroed, ``[B, M]`` presence (None = all) and the encoding."""
        M = len(self.encoder.modalities)
        if x.ndim != 5 or x.shape[1] != M:
            raise ValueError(
                f"expected x of shape [B, {M}, D, H, W] for {self.encoder.modalities}, got {tuple(x.shape)}"
            )
        # Presence stays where modality_mask lives (the systems keep it on the CPU), so the encoder's
        # presence decisions need no device sync; the arithmetic gets a device copy.
        present = None if modality_mask is None else modality_mask.bool()
        if self.training and self.modality_dropout > 0:
            full = torch.ones(x.shape[0], M, dtype=torch.bool, device=present.device if present is not None else None)
            present = _drop_modalities(full if present is None else present, self.modality_dropout)
        on_device = None if present is None else to_device(present, x.device)
        if on_device is not None:
            x = x * on_device[:, :, None, None, None].to(x.dtype)  # absent channels are zeros
        volumes = {m: x[:, i: i + 1] for i, m in enumerate(self.encoder.modalities)}  # [B, 1, D, H, W] each
        return x, on_device, self.encoder.encode(volumes, present, return_layers)


class BMMAEUNETR(_MultimodalNet):
    """MONAI UNETR decoder over the BM-MAE encoder (reference segmentation head).

    Skips come from the un-normed outputs of ``blocks[i]`` for ``i`` in ``skip_layers`` (MONAI's
    ``hidden_states_out[3, 6, 9]``) and the final normed output. At each grid position the tokens
    are averaged over the modalities a sample has, so the head always sees one token grid, turned
    back into medssl's ``[z, y, x]`` order whatever the encoder's ``axis_order``: the convolutional
    decoder and the logits live in the input's order.

    Args:
        in_channels: input channels, one per modality (must equal ``len(modalities)``).
        out_channels: output channels (3 for BraTS TC/WT/ET).
        modalities: channel order of ``x``.
        img_size: input size (int or 3 ints), a multiple of 16, in ``axis_order``.
        patch_size: must be 16 (UNETR upsamples the token grid by 16).
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder heads.
        mlp_ratio: encoder MLP ratio.
        feature_size: UNETR feature size.
        modality_dropout: in training, drop each present modality of a sample with this
            probability (at least one is kept), so one model serves every subset.
        skip_layers: three 0-based block indices for the skips; None = ``(d//4, d//2, 3d//4)``,
            i.e. ``(3, 6, 9)`` at depth 12 and ``(0, 1, 2)`` at depth 3.
        norm_name: UNETR normalisation.
        axis_order: the encoder weights' array order (``"xyz"`` for the official ``bmmae.pth``); see :class:`BMMAE`.
        **kwargs: further :class:`BMMAE` arguments.

    Example:
        >>> net = BMMAEUNETR(in_channels=4, out_channels=3, img_size=32, embed_dim=48, depth=3, num_heads=4)
        >>> net(torch.randn(1, 4, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    def __init__(
        self,
        in_channels: int = 4,
        out_channels: int = 3,
        modalities: Sequence[str] = BRATS_MODALITIES,
        img_size: int | Sequence[int] = 128,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        feature_size: int = 16,
        modality_dropout: float = 0.0,
        skip_layers: Sequence[int] | None = None,
        norm_name: str | tuple = "instance",
        axis_order: AxisOrder = "zyx",
        **kwargs,
    ) -> None:
        super().__init__()
        self._check_in_channels(in_channels, modalities)
        if patch_size != 16:
            raise ValueError(
                f"patch_size={patch_size}: the UNETR decoder upsamples the token grid by 16; "
                "set model.init_args.net.init_args.patch_size to 16"
            )
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(
                f"modality_dropout={modality_dropout} must be in [0, 1); "
                "set model.init_args.net.init_args.modality_dropout"
            )
        skip_layers = (depth // 4, depth // 2, 3 * depth // 4) if skip_layers is None else tuple(skip_layers)
        if len(skip_layers) != 3 or any(not 0 <= i < depth for i in skip_layers):
            raise ValueError(
                f"skip_layers={skip_layers} must be three 0-based block indices below depth={depth}; "
                f"set model.init_args.net.init_args.skip_layers to e.g. {[depth // 4, depth // 2, 3 * depth // 4]}"
            )
        self.skip_layers = skip_layers
        self.modality_dropout = modality_dropout
        self.encoder = BMMAE(
            modalities=modalities,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            with_decoder=False,
            axis_order=axis_order,
            **kwargs,
        )
        common = {"spatial_dims": 3, "kernel_size": 3, "norm_name": norm_name, "res_block": True}
        fs = feature_size
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=fs, stride=1, **common)
        self.encoder2 = UnetrPrUpBlock(
            in_channels=embed_dim, out_channels=fs * 2, num_layer=2, stride=1, upsample_kernel_size=2,
            conv_block=True, **common,
        )  # fmt: skip
        self.encoder3 = UnetrPrUpBlock(
            in_channels=embed_dim, out_channels=fs * 4, num_layer=1, stride=1, upsample_kernel_size=2,
            conv_block=True, **common,
        )  # fmt: skip
        self.encoder4 = UnetrPrUpBlock(
            in_channels=embed_dim, out_channels=fs * 8, num_layer=0, stride=1, upsample_kernel_size=2,
            conv_block=True, **common,
        )  # fmt: skip
        self.decoder5 = UnetrUpBlock(
            in_channels=embed_dim, out_channels=fs * 8, upsample_kernel_size=2, **common
        )
        self.decoder4 = UnetrUpBlock(
            in_channels=fs * 8, out_channels=fs * 4, upsample_kernel_size=2, **common
        )
        self.decoder3 = UnetrUpBlock(
            in_channels=fs * 4, out_channels=fs * 2, upsample_kernel_size=2, **common
        )
        self.decoder2 = UnetrUpBlock(in_channels=fs * 2, out_channels=fs, upsample_kernel_size=2, **common)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=fs, out_channels=out_channels)

    def _to_grid(self, tokens: Tensor, present: Tensor | None) -> Tensor:
        """``[B, 1 + M*N, D]`` -> modality mean over present modalities -> ``[B, D, gz, gy, gx]`` (medssl's order)."""
        B, _, D = tokens.shape
        x = tokens[:, 1:].reshape(B, -1, self.encoder.num_patches, D)  # [B, M, N, D]
        if present is None:
            x = x.mean(1)  # [B, N, D]
        else:
            w = present.to(x.dtype)[:, :, None, None]  # [B, M, 1, 1]
            x = (x * w).sum(1) / w.sum(1)  # [B, N, D]
        g0, g1, g2 = self.encoder.grid_size
        x = rearrange(x, "b (g0 g1 g2) c -> b c g0 g1 g2", g0=g0, g1=g1, g2=g2)  # the encoder's order
        return _reorder(x, self.encoder.axis_order)  # [B, D, gz, gy, gx]

    def forward(self, x: Tensor, modality_mask: Tensor | None = None) -> Tensor:
        """Segment.

        Args:
            x: ``[B, M, D, H, W]``, channels in ``modalities`` order (absent ones may hold anything).
            modality_mask: ``[B, M]`` bool, True = present; None = all present.

        Returns:
            ``[B, out_channels, D, H, W]`` logits.
        """
        x, present, (tokens, hidden) = self._encode(x, modality_mask, self.skip_layers)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(self._to_grid(hidden[0], present))
        enc3 = self.encoder3(self._to_grid(hidden[1], present))
        enc4 = self.encoder4(self._to_grid(hidden[2], present))
        dec4 = self._to_grid(tokens, present)
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        out = self.decoder2(dec1, enc1)
        return self.out(out)


class BMMAEClassifier(_MultimodalNet):
    """Reference classification head: ``Linear(embed_dim, 256) - ReLU - Linear(256, num_classes)`` on CLS.

    Args:
        num_classes: number of logits.
        in_channels: input channels, one per modality (must equal ``len(modalities)``).
        modalities: channel order of ``x``.
        img_size: input size (int or 3 ints).
        patch_size: patch edge.
        embed_dim: encoder width.
        depth: encoder blocks.
        num_heads: encoder heads.
        mlp_ratio: encoder MLP ratio.
        hidden_dim: width of the head's hidden layer.
        modality_dropout: see :class:`BMMAEUNETR`.
        axis_order: the encoder weights' array order (``"xyz"`` for the official ``bmmae.pth``); see :class:`BMMAE`.
        **kwargs: further :class:`BMMAE` arguments.
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 4,
        modalities: Sequence[str] = BRATS_MODALITIES,
        img_size: int | Sequence[int] = 128,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 2.0,
        hidden_dim: int = 256,
        modality_dropout: float = 0.0,
        axis_order: AxisOrder = "zyx",
        **kwargs,
    ) -> None:
        super().__init__()
        self._check_in_channels(in_channels, modalities)
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(
                f"modality_dropout={modality_dropout} must be in [0, 1); "
                "set model.init_args.net.init_args.modality_dropout"
            )
        self.modality_dropout = modality_dropout
        self.encoder = BMMAE(
            modalities=modalities,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            with_decoder=False,
            axis_order=axis_order,
            **kwargs,
        )
        self.head = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_classes)
        )

    def forward(self, x: Tensor, modality_mask: Tensor | None = None) -> Tensor:
        """``x [B, M, D, H, W]``, ``modality_mask [B, M]`` -> ``[B, num_classes]`` logits."""
        _, _, tokens = self._encode(x, modality_mask)
        return self.head(tokens[:, 0])  # CLS


# --------------------------------------------------------------------------- checkpoints


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: BMMAE) -> dict[str, Tensor]:
    """Map a checkpoint's tensors onto :class:`BMMAE` key names (pure: nothing is loaded).

    The official ``bmmae.pth`` already uses our names; our checkpoints wrap them in ``net.``
    (systems), ``encoder.`` (downstream nets), ``module.`` (DDP) or ``_orig_mod.`` (torch.compile),
    which are stripped. Non-tensor entries are dropped.

    Args:
        state_dict: the unwrapped state dict (``medssl.checkpoint.state_dict_of``).
        model: target model.

    Example:
        >>> report = load_weights(model, "bmmae.pth", checkpoint_filter_fn, strict=True)  # doctest: +SKIP
    """
    return {strip_prefixes(k, _STRIP_PREFIXES): v for k, v in state_dict.items() if isinstance(v, Tensor)}


def report_kinds(model: BMMAE) -> dict[str, Any]:
    """How ``load_weights`` files BM-MAE keys: a decoder the model lacks and fixed sin-cos tables of
    another grid (which the model rebuilds) are ``skipped``, not errors."""
    return {
        "unknown_kind": lambda key: "skipped" if key.startswith("decoder.") and model.decoder is None else "unexpected",
        "mismatch_kind": lambda key: "skipped" if key.endswith("position_embeddings") else "mismatched",
    }


def load_encoder_weights(model: BMMAE, checkpoint: Mapping, axis_order: str, strict: bool = False,
                         name: str | None = None) -> dict[str, list[str]]:
    """Load official / pretraining / finetuned weights into a :class:`BMMAE` and report what happened.

    A thin call of ``medssl.checkpoint.load_weights`` with :func:`checkpoint_filter_fn`, after two
    checks: a top-level ``modalities`` entry, when present, must match ``model.modalities``, and the
    weights' axis order (:func:`check_axis_order`) must be the model's.

    Args:
        model: full BMMAE or the ``encoder`` of a downstream net.
        checkpoint: a state dict, or a checkpoint as ``medssl.checkpoint.load_checkpoint`` returns it.
        axis_order: the array order the weights were trained on (``medssl.weights.CheckpointMeta``).
        strict: fail on any missing, unexpected or shape-mismatched key.
        name: the weights, as named in messages.

    Returns:
        The report: ``loaded``, ``skipped`` (``decoder.*`` for a model without decoder, sin-cos tables
        of another size), ``unexpected``, ``missing``, ``mismatched``.
    """
    saved = checkpoint.get("modalities")
    if saved is not None and tuple(saved) != tuple(model.modalities):
        raise CheckpointError(
            f"checkpoint was trained on modalities {tuple(saved)} but the model has {model.modalities}; "
            "set model.init_args.net.init_args.modalities to match"
        )
    check_axis_order(model, axis_order, name or "checkpoint")
    return load_weights(model, checkpoint, checkpoint_filter_fn, strict, **report_kinds(model), name=name)


def check_axis_order(model: BMMAE, axis_order: str, name: str = "checkpoint") -> None:
    """Refuse weights of another axis order than ``model``'s (``init_from``): nothing would fail later,
    every feature would just be that of a transposed volume.

    Args:
        model: the BMMAE the weights go into.
        axis_order: the order the weights were trained on (``medssl.weights.CheckpointMeta.axis_order``).
        name: the weights, as named in the message.

    Raises:
        ConfigError: naming the option to set.
    """
    if axis_order != model.axis_order:
        raise ConfigError(
            f"{name} holds BM-MAE weights trained on {axis_order} arrays but the net reads them as "
            f"{model.axis_order}; set model.init_args.net.init_args.axis_order to {axis_order}"
        )
