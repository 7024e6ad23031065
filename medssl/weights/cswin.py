"""The CSwin UNet entry of the architecture registry: transfer of the encoder, embedding of the bottleneck.

Pretraining (``CSwinSSLModel``) and finetuning (``CSwinUNet``) nets share one ``CSwinEncoder`` at
``.encoder``; only the encoder transfers (the SSL heads and the inpainting decoder find no target in
a ``CSwinUNet``). Both nets are rebuilt from their run's config, which every checkpoint carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from medssl.checkpoint import WRAPPER_PREFIXES, load_weights, strip_prefixes
from medssl.models.cswin_unet import CSwinEncoder, CSwinUNet, checkpoint_filter_fn, pad_to_multiple
from medssl.models.ssl_heads import CSwinSSLModel
from medssl.weights.meta import CheckpointMeta

NETS = (CSwinSSLModel, CSwinUNet, CSwinEncoder)


def sniff(checkpoint: Mapping, state: Mapping[str, Tensor]) -> CheckpointMeta | None:
    """CSwin UNet weights without a ``medssl`` entry (a bare encoder or net state dict)."""
    keys = {strip_prefixes(k, (*WRAPPER_PREFIXES, "encoder.")) for k in state}
    if any(k.startswith("patch_embed.") for k in keys) and any(k.startswith("stages.") for k in keys):
        return CheckpointMeta(architecture="cswin_unet", kind="foreign")
    return None


def encoder_of(model: nn.Module) -> CSwinEncoder:
    return model if isinstance(model, CSwinEncoder) else model.encoder


def transfer(net: nn.Module, source: nn.Module | Mapping[str, Tensor], meta: CheckpointMeta,
             name: str) -> dict[str, list[str]]:
    """``init_from``: the CSwin encoder of ``source`` (a rebuilt net, or its tensors) into ``net``'s encoder."""
    state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
    return load_weights(net, state, checkpoint_filter_fn, name=name)


@torch.no_grad()
def embed(encoder: CSwinEncoder, image: Tensor, present: Sequence[bool], pool: str) -> Tensor:
    """One case vector: the bottleneck features averaged over space (``pool`` is ``mean``).

    Args:
        encoder: the CSwinEncoder.
        image: ``[C, D, H, W]``, absent channels zeros (the encoder takes every channel).
        present: unused (the CSwin encoder has no notion of a missing channel beyond its zeros).
        pool: ``mean``.
    """
    device = next(encoder.parameters()).device
    x = pad_to_multiple(image[None].to(device), encoder.total_strides)  # [1, C, D', H', W']
    return encoder.forward_features(x).mean(dim=(2, 3, 4))[0]  # [1, C_last, d, h, w] -> [C_last]
