"""Checkpoints as a contract, and the one way from a checkpoint to a model.

- ``CheckpointMeta`` (``meta.py``): the typed ``medssl`` entry of every checkpoint, read and written only there;
- ``ARCHITECTURES`` (``registry.py``): one ``Architecture`` entry per family of nets (BM-MAE, CSwin UNet):
  recognise, rebuild, encoder, ``init_from`` transfer, embedding;
- ``load_model`` / ``init_from`` (``load.py``): every command that turns weights into a model comes here.

Layer: above ``medssl.models`` and ``medssl.data``, below ``medssl.systems``; it imports no Lightning.
"""

from medssl.weights.load import (
    Weights,
    check_finite,
    find_config,
    init_from,
    load_model,
    net_from_config,
    read_weights,
    shuffled_checkpoint,
)
from medssl.weights.meta import CheckpointMeta, MissingConfig, UnknownArchitecture
from medssl.weights.registry import ARCHITECTURES, Architecture, architecture_of

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "CheckpointMeta",
    "MissingConfig",
    "UnknownArchitecture",
    "Weights",
    "architecture_of",
    "check_finite",
    "find_config",
    "init_from",
    "load_model",
    "net_from_config",
    "read_weights",
    "shuffled_checkpoint",
]
