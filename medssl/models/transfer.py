"""Pretrained weights into a finetuning net, through each architecture's checkpoint filter.

One entry point for ``model.init_from``: our pretraining checkpoints (CSwin multi-task SSL, BM-MAE),
the official BM-MAE ``bmmae.pth``, or any state dict whose names match a MONAI net. The file is
read with ``weights_only=True`` (see ``medssl.checkpoint``); a report of loaded / skipped /
mismatched keys is returned and logged, and a file of which nothing loads is an error.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from medssl.checkpoint import load_checkpoint, load_weights
from medssl.models import bmmae, cswin_unet

logger = logging.getLogger(__name__)


def transfer_weights(net: nn.Module, path: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Load the pretrained part of ``path`` into ``net`` through its architecture's checkpoint filter.

    Args:
        net: the finetuning net (``CSwinUNet``, ``BMMAEUNETR``/``BMMAEClassifier`` or a MONAI net).
        path: checkpoint file.

    Returns:
        ``(report, metadata)``: ``medssl.checkpoint.load_weights``'s report and the ``medssl``
        metadata saved with the checkpoint (modalities, spacing, training case ids), empty for
        foreign files.
    """
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.get("medssl", {}) if isinstance(checkpoint.get("medssl"), dict) else {}
    if isinstance(net, cswin_unet.CSwinUNet):
        report = load_weights(net, checkpoint, cswin_unet.checkpoint_filter_fn, name=str(path))
    elif isinstance(getattr(net, "encoder", None), bmmae.BMMAE):
        report = bmmae.load_encoder_weights(net.encoder, checkpoint)
    else:  # MONAI comparators: same names after the wrapper prefixes, same shapes
        report = load_weights(net, checkpoint, name=str(path))
    return report, metadata
