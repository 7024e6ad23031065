"""Safe checkpoint reading: tensors and plain containers only, never code.

Every weight file a user hands us (our checkpoints, the official BM-MAE ``bmmae.pth``, anything
downloaded) goes through ``load_checkpoint``: ``torch.load(..., weights_only=True)`` refuses a
pickle that would import or call anything, and we turn that refusal into one clear line.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from medssl.errors import CheckpointError

logger = logging.getLogger(__name__)


def _data_types() -> list:
    """Plain data types that published checkpoints often hold (numpy scalars and arrays in hyperparameters,
    an ``argparse.Namespace`` of options). They carry values, not code, so they are allow-listed for
    ``weights_only`` loading; every other global stays refused."""
    import argparse

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    types = [argparse.Namespace, np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        types += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return types


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at ``path`` as plain containers of tensors, or a CheckpointError naming it.

    ``weights_only=True`` is always passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` (which only
    changes calls that leave it unset) cannot turn it off.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_data_types()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            logger.info("%s holds numpy or argparse values; loaded with those plain data types allowed", path)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"{path}: refused: the file is not a plain weights file: loading it would import and run{what} from "
            "inside it; only tensors, numbers, strings, containers of them, numpy values and argparse.Namespace "
            "are loaded. If you trust its source, re-save its state_dict with torch.save and load that"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file?): {first}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict or a checkpoint dict, found {type(obj).__name__}")
    return dict(obj)


def state_dict_of(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a Lightning checkpoint (``state_dict``), a ``{"model": ...}`` / ``{"module": ...}``
    wrapper (nested ones too) or a bare state dict; the one unwrap routine of medssl."""
    for key in ("state_dict", "model", "module"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner:
            return state_dict_of(inner)
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


WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
"""What wraps a net's keys in a checkpoint: DDP (``module.``), ``torch.compile`` (``_orig_mod.``), a
system's attribute (``net.``) or a plain ``{"model": ...}`` wrapper's names (``model.``)."""


def load_weights(
    model: torch.nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    filter_fn: Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]] | None = None,
    strict: bool = False,
    *,
    unknown_kind: Callable[[str], str] | None = None,
    mismatch_kind: Callable[[str], str] | None = None,
    name: str | None = None,
) -> dict[str, list[str]]:
    """Load weights into ``model`` the one way medssl does (timm's shape): unwrap, filter, match, report.

    Args:
        model: the target.
        source: a checkpoint file (read with ``weights_only=True``) or an already loaded checkpoint.
        filter_fn: the architecture's pure ``checkpoint_filter_fn(state_dict, model) -> state_dict``
            that maps foreign names onto the model's (default: strip ``WRAPPER_PREFIXES``).
        strict: fail when any model tensor stays at its init or any source tensor is unused or of
            another shape.
        unknown_kind, mismatch_kind: see ``match_state_dict``.
        name: how the source is named in messages (default: its path).

    Returns:
        The report (``loaded``, ``skipped``, ``unexpected``, ``mismatched``, ``missing``), also logged.

    Raises:
        CheckpointError: nothing loads, or ``strict`` and something does not match.
    """
    name = name or (str(source) if isinstance(source, str | os.PathLike) else "checkpoint")
    checkpoint = load_checkpoint(source) if isinstance(source, str | os.PathLike) else dict(source)
    state = state_dict_of(checkpoint)
    if filter_fn is not None:
        try:
            state = filter_fn(state, model)
        except ValueError as e:
            raise CheckpointError(f"{name}: {' '.join(str(e).split())}") from None
    else:
        state = {strip_prefixes(k, WRAPPER_PREFIXES): v for k, v in state.items()}
    loadable, report = match_state_dict(state, model.state_dict(), unknown_kind=unknown_kind,
                                        mismatch_kind=mismatch_kind)
    if not loadable:
        raise CheckpointError(f"{name}: no tensor matches {type(model).__name__} "
                              f"({len(report['mismatched'])} of other shape; first keys: {list(state)[:4]})")
    problems = {k: report[k] for k in ("missing", "unexpected", "mismatched") if report[k]}
    if strict and problems:
        detail = "; ".join(f"{kind} ({len(keys)}): {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                           for kind, keys in problems.items())
        raise CheckpointError(f"{name}: does not match {type(model).__name__}: {detail}")
    # strict=False is safe: names and shapes were matched above and the report says what stays at its init
    model.load_state_dict(loadable, strict=False)
    logger.info("%s into %s: %d tensors loaded, %d skipped, %d unexpected, %d mismatched, %d left at their init",
                name, type(model).__name__, *(len(report[k]) for k in
                                              ("loaded", "skipped", "unexpected", "mismatched", "missing")))
    for key in report["mismatched"]:
        logger.warning("shape mismatch, not loaded: %s", key)
    return report
