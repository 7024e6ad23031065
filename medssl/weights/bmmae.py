"""The BM-MAE entry of the architecture registry: the official file, rebuilding from shapes, transfer, embedding.

Users arrive with the authors' ``bmmae.pth``: a bare state dict in the model's own key names, no
metadata, trained on ``[x, y, z]`` arrays (nibabel's) at 1 mm with MONAI's voxel-aligned centre
crop. It is recognised by its keys (``sniff``). Its sizes, and those of medssl's own BM-MAE
pretraining checkpoints, are read from the tensor shapes (``infer_sizes``); the head counts, which no
shape reveals, come from the run's config or, for the official file, from the reference.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from medssl.checkpoint import WRAPPER_PREFIXES, load_weights, strip_prefixes
from medssl.errors import CheckpointError, ConfigError
from medssl.models.bmmae import (
    BMMAE,
    BMMAEUNETR,
    BMMAEClassifier,
    checkpoint_filter_fn,
    load_encoder_weights,
    report_kinds,
)
from medssl.weights.meta import CheckpointMeta, MissingConfig

_logger = logging.getLogger(__name__)

# The official bmmae.pth: its sizes, and the head counts no tensor shape reveals.
REFERENCE_SIZES = {"embed_dim": 768, "depth": 12, "patch_size": 16, "decoder_embed_dim": 384, "decoder_depth": 3}
REFERENCE_HEADS = {"num_heads": 12, "decoder_num_heads": 12}
REFERENCE_SPACING = [1.0, 1.0, 1.0]  # the reference pipeline's Spacingd (mm)
CONFIG_HINT = (
    "pass --config with the pretraining config (e.g. configs/pretrain/bmmae_tiny.yaml), or keep the run's "
    "config.yaml beside its checkpoints/ folder"
)
# BMMAE arguments a config may set that no tensor shape shows (the head counts are handled apart).
CONFIG_ONLY = ("decoder_dropout", "mask_ratio", "dirichlet_alpha", "norm_pix_loss")


def is_official(checkpoint: Mapping[str, Any]) -> bool:
    """The official ``bmmae.pth`` format: a bare state dict with BMMAE key names at the top, no ``medssl`` entry."""
    return ("medssl" not in checkpoint and isinstance(checkpoint.get("cls_token"), Tensor)
            and any(str(k).startswith("tokenizers.") for k in checkpoint))


def sniff(checkpoint: Mapping[str, Any], state: Mapping[str, Tensor]) -> CheckpointMeta | None:
    """The meta of BM-MAE weights that carry no ``medssl`` entry: the official file (``xyz``), or a bare BM-MAE
    state dict (medssl's own order, ``zyx``)."""
    if is_official(checkpoint):
        return CheckpointMeta(architecture="bmmae", net="BMMAE", kind="official", axis_order="xyz",
                              spacing=list(REFERENCE_SPACING), voxel_aligned=True,
                              normalisation="nonzero")  # the reference pipeline's NormalizeIntensityd(nonzero=True)
    keys = {strip_prefixes(k, (*WRAPPER_PREFIXES, "encoder.")) for k in state}
    if "cls_token" in keys and any(k.startswith("tokenizers.") for k in keys):
        return CheckpointMeta(architecture="bmmae", net="BMMAE", kind="pretraining", axis_order="zyx")
    return None


def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """Number of distinct indices ``i`` in keys matching ``pattern`` (a regex with one group)."""
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def infer_sizes(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """The :class:`BMMAE` arguments that tensor shapes determine (everything but the head counts and img_size).

    Args:
        state: BMMAE state dict, wrapper prefixes stripped.

    Returns:
        ``modalities`` (tokenizer order), ``patch_size``, ``embed_dim``, ``depth``, ``mlp_ratio``,
        ``num_patches`` (tokens per modality, None without a position table) and, when the weights
        have a decoder, ``decoder_embed_dim``, ``decoder_depth`` and ``decoder_mlp_dim``.

    Example:
        >>> infer_sizes(BMMAE(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4).state_dict())["depth"]
        2
    """
    suffix = ".patch_embedding.patch_embeddings.weight"
    modalities = [k.removeprefix("tokenizers.").removesuffix(suffix) for k in state
                  if k.startswith("tokenizers.") and k.endswith(suffix)]
    if "cls_token" not in state or not modalities or "blocks.0.mlp.linear1.weight" not in state:
        raise CheckpointError(f"not BM-MAE weights: no cls_token / tokenizers.* / blocks.* keys "
                              f"(first keys: {list(state)[:4]})")
    weight = state[f"tokenizers.{modalities[0]}{suffix}"]  # [D, 1, p, p, p]
    embed_dim, patch_size = int(state["cls_token"].shape[-1]), int(weight.shape[-1])
    pos = state.get(f"tokenizers.{modalities[0]}.patch_embedding.position_embeddings")  # [1, N, D]
    sizes: dict[str, Any] = {
        "modalities": modalities,
        "patch_size": patch_size,
        "embed_dim": embed_dim,
        "depth": _count(state, r"blocks\.(\d+)\."),
        "mlp_ratio": state["blocks.0.mlp.linear1.weight"].shape[0] / embed_dim,
    }
    if "decoder.decoder_pred.weight" in state:
        sizes["decoder_embed_dim"] = int(state["decoder.decoder_embed.weight"].shape[0])
        sizes["decoder_depth"] = _count(state, r"decoder\.decoder_blocks\.(\d+)\.")
        if "decoder.decoder_blocks.0.mlp.linear1.weight" in state:
            sizes["decoder_mlp_dim"] = int(state["decoder.decoder_blocks.0.mlp.linear1.weight"].shape[0])
    sizes["num_patches"] = int(pos.shape[1]) if pos is not None else None
    return sizes


def _net_arguments(config: Mapping | None, where: str | None) -> dict[str, Any]:
    """``model.init_args.net.init_args`` of a BM-MAE config; a pretraining config's omissions get BMMAE's defaults
    (not ``img_size`` and ``axis_order``: left unset, the checkpoint's metadata or format decides them)."""
    if config is None:
        return {}
    net = ((config.get("model") or {}).get("init_args") or {}).get("net") or {}
    name = str(net.get("class_path", "")).rsplit(".", 1)[-1]
    if not name.startswith("BMMAE"):
        raise ConfigError(f"{where}: model.init_args.net is {net.get('class_path')!r}, not a BM-MAE net; pass "
                          "--config with the BM-MAE config of the checkpoint")
    args = dict(net.get("init_args") or {})
    if name == "BMMAE":  # a downstream net's config leaves the decoder out: no defaults for it
        defaults = {k: p.default for k, p in inspect.signature(BMMAE).parameters.items()
                    if p.default is not inspect.Parameter.empty and k not in ("img_size", "axis_order")}
        args = {**defaults, **args}
    return args


def rebuild(state: Mapping[str, Tensor], meta: CheckpointMeta, config: Mapping | None, where: str | None,
            name: str, with_decoder: bool | None = None) -> BMMAE:
    """A :class:`BMMAE` from official or pretraining weights, loaded strictly.

    Sizes come from the tensor shapes; the head counts from the run's config or, for the official file,
    the reference; ``img_size`` from the config, the recorded crop or a cubic token grid; ``axis_order``
    from the meta (the official file is ``xyz``, medssl's own weights ``zyx``).

    Args:
        state: the checkpoint's tensors (unwrapped, prefixes not yet stripped).
        meta: the checkpoint's meta.
        config: the run's config, or None.
        where: where the config came from (named in messages).
        name: the checkpoint, as named in messages.
        with_decoder: build the pretraining decoder; None = when the weights have one.
    """
    state = {strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in state.items()}
    if "encoder.cls_token" in state:  # a net around an encoder (not expected here, but harmless): its encoder
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    try:
        sizes = infer_sizes(state)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    has_decoder = "decoder_embed_dim" in sizes
    if with_decoder and not has_decoder:
        raise CheckpointError(
            f"{name}: the weights have no BM-MAE decoder (decoder.* keys), which reconstruction needs: give a "
            "BM-MAE pretraining checkpoint (medssl fit --config configs/pretrain/bmmae_*.yaml) or the official "
            "bmmae.pth"
        )
    with_decoder = has_decoder if with_decoder is None else with_decoder
    if not with_decoder:
        sizes = {k: v for k, v in sizes.items() if not k.startswith("decoder_")}

    given = _net_arguments(config, where)
    num_patches = sizes.pop("num_patches")
    for key, value in sizes.items():
        if key in given and key != "modalities" and not math.isclose(float(given[key]), float(value)):
            raise ConfigError(f"{where}: model.init_args.net.init_args.{key} is {given[key]} but {name} has "
                              f"{value}; pass the config the checkpoint was trained with (--config)")
    modalities = given.get("modalities") or meta.modalities or sizes["modalities"]
    if sorted(modalities) != sorted(sizes["modalities"]):
        raise CheckpointError(f"{name}: has tokenizers for {sizes['modalities']} but the config/metadata name "
                              f"{list(modalities)}")

    needed = ("num_heads", "decoder_num_heads") if with_decoder else ("num_heads",)
    heads = {k: given[k] for k in needed if k in given}
    if len(heads) < len(needed):
        reference = all(sizes[k] == v for k, v in REFERENCE_SIZES.items() if k in sizes)
        if where is None and meta.kind == "official" and reference:
            heads = {k: REFERENCE_HEADS[k] for k in needed}
        else:
            lacking = [k for k in needed if k not in heads]
            found = f"{where} does not give them" if where else "no config found"
            error = ConfigError if where else MissingConfig
            raise error(f"{name}: {' and '.join(lacking)} cannot be read from the weights ({found}); " + CONFIG_HINT)

    axis_order = meta.axis_order or given.get("axis_order") or "zyx"
    img_size = given.get("img_size")
    if img_size is None and meta.spatial_size:
        crop = [int(s) for s in meta.spatial_size]  # [D, H, W]: the model's order is axis_order
        img_size = crop if axis_order == "zyx" else crop[::-1]
    if img_size is None and num_patches and round(num_patches ** (1 / 3)) ** 3 == num_patches:
        img_size = round(num_patches ** (1 / 3)) * sizes["patch_size"]  # cubic token grid (the reference's)
    if img_size is None:
        raise ConfigError(f"{name}: cannot tell the model's img_size; " + CONFIG_HINT)
    img = [int(img_size)] * 3 if isinstance(img_size, int | float) else [int(s) for s in img_size]
    if num_patches and math.prod(s // sizes["patch_size"] for s in img) != num_patches:
        raise ConfigError(f"{name}: img_size {img} with patch_size {sizes['patch_size']} does not give the "
                          f"{num_patches} tokens per modality of the weights; " + CONFIG_HINT)

    kwargs = {k: given[k] for k in CONFIG_ONLY if k in given}
    kwargs.update(sizes, **heads, modalities=list(modalities), img_size=img, with_decoder=with_decoder,
                  axis_order=axis_order)
    try:
        model = BMMAE(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{name}: cannot build BMMAE from its sizes: {e}") from None
    load_weights(model, state, checkpoint_filter_fn, strict=True, **report_kinds(model), name=name)
    return model


def complete(model: nn.Module, meta: CheckpointMeta) -> CheckpointMeta:
    """What BM-MAE weights expect that their checkpoint may not record: the model's modalities and crop, the
    reference 1 mm spacing (logged), MONAI's voxel-aligned crop for the official file."""
    encoder = encoder_of(model)
    if meta.modalities is None:
        meta.modalities = list(encoder.modalities)
    if meta.kind != "finetuned":
        meta.spatial_size = list(encoder.input_size)  # [D, H, W]: the crop the encoder takes
    if meta.spacing is None:
        meta.spacing = list(REFERENCE_SPACING)  # BM-MAE's reference preprocessing
        _logger.info("no spacing saved with the weights: using the reference 1 mm")
    if meta.voxel_aligned is None:
        meta.voxel_aligned = meta.kind == "official"
    return meta


def encoder_of(model: nn.Module) -> BMMAE:
    return model if isinstance(model, BMMAE) else model.encoder


def transfer(net: nn.Module, source: nn.Module | Mapping[str, Tensor], meta: CheckpointMeta,
             name: str) -> dict[str, list[str]]:
    """``init_from``: the BM-MAE encoder of ``source`` (a rebuilt model, or its tensors) into the encoder of a
    downstream ``net`` (the decoder and any head are not transferred), after the axis-order check."""
    state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    if isinstance(source, nn.Module) and not isinstance(source, BMMAE):  # a finetuned net: its encoder
        state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return load_encoder_weights(encoder_of(net), state, axis_order=meta.axis_order or "zyx", name=name)


@torch.no_grad()
def embed(encoder: BMMAE, image: Tensor, present: Sequence[bool], pool: str) -> Tensor:
    """One case vector: ``cls`` (the CLS token of the final normed output) or ``mean`` (of its patch tokens).

    Args:
        encoder: the BMMAE.
        image: ``[C, D, H, W]``, channels in ``encoder.modalities`` order, absent ones zeros.
        present: per channel, whether the case has that modality.
        pool: ``cls`` or ``mean``.
    """
    device = next(encoder.parameters()).device
    volumes = {m: image[i][None, None].to(device) for i, m in enumerate(encoder.modalities) if present[i]}
    tokens = encoder.encode(volumes)  # [1, 1 + k * N, D], every token of every present modality
    return tokens[0, 0] if pool == "cls" else tokens[0, 1:].mean(0)  # [D]


NETS = (BMMAE, BMMAEUNETR, BMMAEClassifier)
