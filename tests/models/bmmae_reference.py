"""The BM-MAE reference, re-implemented for tests: the official key table, an official-format state dict, the
official preprocessing pipeline, a functional reference encoder, and BraTS-like NIfTI cases written as BraTS
writes them. A helper module (no tests): the BM-MAE, embedding and reconstruction tests share it."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
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
from medssl.models.bmmae import BMMAE

MODS = ("t1", "t1ce", "t2", "flair")
OFFICIAL_TINY = {"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 4, "decoder_embed_dim": 24,
                 "decoder_depth": 1, "decoder_num_heads": 4, "decoder_mlp_dim": 48}
CASE_SHAPES = ((151, 141, 129), (153, 139, 131))  # [x, y, z]; each differs from a 32 / 40 / 24 crop by odd numbers


def official_shapes(
    img: int = 128,
    patch: int = 16,
    dim: int = 768,
    depth: int = 12,
    mlp: int = 1536,
    ddim: int = 384,
    ddepth: int = 3,
    dmlp: int = 1536,
) -> dict[str, tuple[int, ...]]:
    """The official ``bmmae.pth`` key table of the spec, at any size."""
    n = (img // patch) ** 3

    def block(prefix: str, d: int, hidden: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.norm1.weight": (d,),
            f"{prefix}.norm1.bias": (d,),
            f"{prefix}.attn.qkv.weight": (3 * d, d),
            f"{prefix}.attn.qkv.bias": (3 * d,),
            f"{prefix}.attn.out_proj.weight": (d, d),
            f"{prefix}.attn.out_proj.bias": (d,),
            f"{prefix}.norm2.weight": (d,),
            f"{prefix}.norm2.bias": (d,),
            f"{prefix}.mlp.linear1.weight": (hidden, d),
            f"{prefix}.mlp.linear1.bias": (hidden,),
            f"{prefix}.mlp.linear2.weight": (d, hidden),
            f"{prefix}.mlp.linear2.bias": (d,),
        }

    shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, 1, dim)}
    for m in MODS:
        pre = f"tokenizers.{m}.patch_embedding"
        shapes[f"{pre}.patch_embeddings.weight"] = (dim, 1, patch, patch, patch)
        shapes[f"{pre}.patch_embeddings.bias"] = (dim,)
        shapes[f"{pre}.position_embeddings"] = (1, n, dim)
    for i in range(depth):
        shapes.update(block(f"blocks.{i}", dim, mlp))
    shapes.update({"norm.weight": (dim,), "norm.bias": (dim,)})
    shapes["decoder.mask_tokens"] = (1, 1, ddim)
    shapes.update({"decoder.decoder_embed.weight": (ddim, dim), "decoder.decoder_embed.bias": (ddim,)})
    shapes["decoder.position_embeddings"] = (1, n, ddim)
    shapes.update({f"decoder.modality_embeddings.{m}": (1, 1, ddim) for m in MODS})
    for j in range(ddepth):
        shapes.update(block(f"decoder.decoder_blocks.{j}", ddim, dmlp))
    shapes.update({"decoder.decoder_norm.weight": (ddim,), "decoder.decoder_norm.bias": (ddim,)})
    shapes.update({"decoder.decoder_pred.weight": (patch**3, ddim), "decoder.decoder_pred.bias": (patch**3,)})
    return shapes


TINY_SHAPES = official_shapes(img=32, patch=8, dim=48, depth=3, mlp=96, ddim=24, ddepth=1, dmlp=48)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        value = 0.05 * torch.randn(shape, generator=g)
        sd[key] = value + 1.0 if ".norm" in key and key.endswith("weight") or key == "norm.weight" else value
    return sd


def reference_encode(sd: dict[str, torch.Tensor], volumes: dict[str, torch.Tensor], heads: int, patch: int):
    """Independent functional re-implementation of the reference encoder on raw state-dict tensors."""

    def layer(i: int, name: str) -> torch.Tensor:
        return sd[f"blocks.{i}.{name}"]

    tokens = []
    for m in MODS:
        if m in volumes:
            pre = f"tokenizers.{m}.patch_embedding."
            t = F.conv3d(
                volumes[m],
                sd[pre + "patch_embeddings.weight"],
                sd[pre + "patch_embeddings.bias"],
                stride=patch,
            )
            tokens.append(t.flatten(2).transpose(1, 2) + sd[pre + "position_embeddings"])  # [B, N, D]
    b = tokens[0].shape[0]
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), *tokens], dim=1)
    d = x.shape[-1]
    hd = d // heads
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        h = F.layer_norm(x, (d,), layer(i, "norm1.weight"), layer(i, "norm1.bias"), eps=1e-5)
        qkv = h @ layer(i, "attn.qkv.weight").T + layer(i, "attn.qkv.bias")
        q, k, v = (t.reshape(b, -1, heads, hd).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1) @ v  # [B, H, L, hd]
        x = x + a.transpose(1, 2).reshape(b, -1, d) @ layer(i, "attn.out_proj.weight").T
        x = x + layer(i, "attn.out_proj.bias")
        h = F.layer_norm(x, (d,), layer(i, "norm2.weight"), layer(i, "norm2.bias"), eps=1e-5)
        h = F.gelu(h @ layer(i, "mlp.linear1.weight").T + layer(i, "mlp.linear1.bias"), approximate="none")
        x = x + h @ layer(i, "mlp.linear2.weight").T + layer(i, "mlp.linear2.bias")
        i += 1
    return F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)


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
