"""Safe checkpoint reading: tensors and plain containers only, never code.

Every weight file a user hands us (our checkpoints, the official BM-MAE ``bmmae.pth``, anything
downloaded) goes through ``load_checkpoint``: ``torch.load(..., weights_only=True)`` refuses a
pickle that would import or call anything, and we turn that refusal into one clear line.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from medssl.errors import CheckpointError


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` as plain containers of tensors, or a CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused: the file is not a plain weights file (loading it would run code from "
            "inside it); only tensors, numbers, strings and containers of them are loaded"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file?): {first}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or a checkpoint dict, found {type(obj).__name__}")
    return dict(obj)


def state_dict_of(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (``state_dict``), a ``{"model": ...}`` wrapper or a bare state dict."""
    for key in ("state_dict", "model", "module"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(key: str, prefixes: tuple[str, ...]) -> str:
    """``key`` without any of the wrapper ``prefixes`` (Lightning's ``net.``, DDP's ``module.``, ...), repeatedly."""
    stripped = None
    while stripped != key:
        stripped = key
        for prefix in prefixes:
            key = key.removeprefix(prefix)
    return key


def match_state_dict(
    source: Mapping[str, Any],
    target: Mapping[str, torch.Tensor],
    rename: Callable[[str], str] | None = None,
    unknown_kind: Callable[[str], str] | None = None,
    mismatch_kind: Callable[[str], str] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """The tensors of ``source`` that ``target`` can take: same name (after ``rename``), same shape.

    Every checkpoint filter of medssl (CSwin, BM-MAE, MONAI comparators) reports the same way:
    ``loaded`` (target names), ``skipped`` / ``unexpected`` (source keys with no target name: the
    kind is ``unknown_kind(name)``, default ``skipped``), ``mismatched`` (``"key: shape vs shape"``,
    or the kind ``mismatch_kind(name)`` returns, e.g. ``skipped`` for a table the model rebuilds)
    and ``missing`` (target names left at their init, mismatched ones included; not the ones
    ``mismatch_kind`` set aside, which the model rebuilds). Non-tensor entries are ignored.
    """
    filtered: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {k: [] for k in ("loaded", "skipped", "unexpected", "mismatched", "missing")}
    rebuilt: set[str] = set()  # target names whose other-shaped source tensor was set aside on purpose
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = rename(key) if rename else key
        if name not in target or name in filtered:
            report[unknown_kind(name) if unknown_kind else "skipped"].append(key)
        elif target[name].shape != value.shape:
            kind = mismatch_kind(name) if mismatch_kind else "mismatched"
            if kind != "mismatched":
                rebuilt.add(name)
            report[kind].append(f"{key}: {tuple(value.shape)} vs {tuple(target[name].shape)}"
                                if kind == "mismatched" else key)
        else:
            filtered[name] = value
            report["loaded"].append(name)
    report["missing"] = [k for k in target if k not in filtered and k not in rebuilt]
    return filtered, report


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
