"""The architecture registry: what medssl knows about each family of nets, in one entry per family.

As timm's ``pretrained_cfg`` + ``create_model``: an ``Architecture`` says how to recognise the family's
weights, rebuild a model from them, reach its encoder, move pretrained weights into a finetuning net
(``init_from``) and turn a case into a vector (``embed``). Adding a method is one module plus one entry::

    ARCHITECTURES["mine"] = Architecture("mine", nets=(MyPretrainNet, MyUNet), transfer=my_transfer, ...)

Nets no entry claims (MONAI's ``SwinUNETR``, ``DynUNet``, ...) are still rebuilt from their run's
config and take ``init_from`` weights by name and shape; they have no embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from medssl.weights import bmmae, cswin
from medssl.weights.meta import CheckpointMeta


def _attribute_encoder(model: nn.Module) -> nn.Module:
    return getattr(model, "encoder", model)


def _keep(model: nn.Module, meta: CheckpointMeta) -> CheckpointMeta:
    return meta


@dataclass(frozen=True)
class Architecture:
    """One family of nets.

    Args:
        name: the registry key, recorded as ``architecture`` in every checkpoint the family writes.
        nets: the family's net classes (pretraining model and finetuning nets); ``architecture_of`` matches
            a net against them.
        transfer: ``transfer(net, source, meta, name) -> report``: pretrained weights (the rebuilt source model,
            or its tensors when it cannot be rebuilt) into a finetuning ``net`` of the family (``init_from``).
        encoder: the encoder of any net of the family (what ``embed`` runs).
        rebuild: ``rebuild(state, meta, config, where, name, **options) -> model`` for weights a config alone does
            not describe (the official BM-MAE file: sizes from the tensor shapes); None: every checkpoint is
            rebuilt from its run's config (``model.init_args.net``).
        complete: ``complete(model, meta) -> meta``: what the weights expect that their checkpoint may not record.
        sniff: ``sniff(checkpoint, state) -> meta | None``: recognise the family's weights without a ``medssl`` entry.
        pools: the ``embed`` poolings (the first is the default); empty: no embedding.
        embed: ``embed(encoder, image, present, pool) -> [dim]`` tensor for one preprocessed case.
        embed_dim: the length of an ``embed`` vector.
    """

    name: str
    nets: tuple[type[nn.Module], ...]
    transfer: Callable[[nn.Module, Any, CheckpointMeta, str], dict[str, list[str]]]
    encoder: Callable[[nn.Module], nn.Module] = _attribute_encoder
    rebuild: Callable[..., nn.Module] | None = None
    complete: Callable[[nn.Module, CheckpointMeta], CheckpointMeta] = _keep
    sniff: Callable[[Mapping[str, Any], Mapping[str, Tensor]], CheckpointMeta | None] | None = None
    pools: tuple[str, ...] = ()
    embed: Callable[[nn.Module, Tensor, Sequence[bool], str], Tensor] | None = None
    embed_dim: Callable[[nn.Module], int] | None = None


ARCHITECTURES: dict[str, Architecture] = {
    "bmmae": Architecture(
        "bmmae", bmmae.NETS, bmmae.transfer, encoder=bmmae.encoder_of, rebuild=bmmae.rebuild,
        complete=bmmae.complete, sniff=bmmae.sniff, pools=("cls", "mean"), embed=bmmae.embed,
        embed_dim=lambda encoder: int(encoder.embed_dim)),
    "cswin_unet": Architecture(
        "cswin_unet", cswin.NETS, cswin.transfer, encoder=cswin.encoder_of, sniff=cswin.sniff, pools=("mean",),
        embed=cswin.embed, embed_dim=lambda encoder: int(encoder.dims[-1])),
}


def architecture_of(net: nn.Module) -> str | None:
    """The registry name of ``net``'s family, or None for a net no entry claims (a MONAI comparator)."""
    for name, entry in ARCHITECTURES.items():
        if isinstance(net, entry.nets):
            return name
    return None


def architecture_of_class(class_name: str) -> str | None:
    """The registry name of the family a net class (by its name) belongs to."""
    for name, entry in ARCHITECTURES.items():
        if any(cls.__name__ == class_name for cls in entry.nets):
            return name
    return None


def net_families() -> dict[str, str]:
    """Net class name -> registry name, for reading checkpoints that recorded the class name."""
    return {cls.__name__: name for name, entry in ARCHITECTURES.items() for cls in entry.nets}
