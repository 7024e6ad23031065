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

from medssl.checkpoint import load_checkpoint, match_state_dict, state_dict_of, strip_prefixes
from medssl.errors import CheckpointError
from medssl.models import bmmae, cswin_unet

logger = logging.getLogger(__name__)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


def _generic_filter(state_dict: dict, net: nn.Module) -> tuple[dict, dict[str, list[str]]]:
    """Same-name, same-shape tensors, after stripping wrapper prefixes (for the MONAI comparators)."""
    return match_state_dict(state_dict, net.state_dict(), rename=lambda key: strip_prefixes(key, _WRAPPER_PREFIXES))


def transfer_weights(net: nn.Module, path: str) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Load the pretrained part of ``path`` into ``net``.

    Args:
        net: the finetuning net (``CSwinUNet``, ``BMMAEUNETR``/``BMMAEClassifier`` or a MONAI net).
        path: checkpoint file.

    Returns:
        ``(report, metadata)``: the filter's report and the ``medssl`` metadata saved with the
        checkpoint (modalities, spacing, training case ids), empty for foreign files.
    """
    checkpoint = load_checkpoint(path)
    metadata = checkpoint.get("medssl", {}) if isinstance(checkpoint.get("medssl"), dict) else {}
    try:
        if isinstance(net, cswin_unet.CSwinUNet):
            filtered, report = cswin_unet.checkpoint_filter_fn(checkpoint, net)
            net.load_state_dict(filtered, strict=False)  # the report names what stays at its init
        elif isinstance(getattr(net, "encoder", None), bmmae.BMMAE):
            report = bmmae.load_encoder_weights(net.encoder, state_dict_of(checkpoint))
        else:
            filtered, report = _generic_filter(state_dict_of(checkpoint), net)
            if not filtered:
                raise CheckpointError("no tensor matches the net")
            net.load_state_dict(filtered, strict=False)
    except ValueError as e:
        raise CheckpointError(f"{path}: cannot initialise {type(net).__name__} from it: {e}") from None
    logger.info("init_from %s: %d tensors loaded, %d skipped, %d mismatched, %d left at their init", path,
                len(report.get("loaded", [])), len(report.get("skipped", [])), len(report.get("mismatched", [])),
                len(report.get("missing", [])))
    return report, metadata
