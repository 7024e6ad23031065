"""The run core: configs as dicts, and the one place a system, its data module and trainer are built.

- ``resolve(configs, args)``: the command boundary: stacked YAML files plus a user's ``--key value``
  options, parsed and validated by jsonargparse once, as one resolved config dict;
- ``build(config, overrides)``: a ``MedsslCLI`` (not run) from a resolved config dict and a dict of
  overrides (``LightningCLI(args=dict)``); inside the package configs travel as dicts, never as argv
  lists or temporary YAML files;
- ``parse_overrides(args)``: a user's ``--data.root DIR`` options (``infer``'s) as such a dict;
- ``load_finetuned(checkpoint)``: a finetuned system ready to predict: the net from
  ``medssl.weights.load_model``, the system, data module and trainer from the config saved with it,
  the data settings checked against the ones saved with the weights;
- ``computation_config``: a config without what does not change the numbers (for fingerprints).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medssl import weights
from medssl.errors import ConfigError
from medssl.records import file_sha256
from medssl.weights import find_config, read_weights
from medssl.weights.load import read_config

logger = logging.getLogger(__name__)

# Keys a saved fit config holds that only mean something to ``fit`` (or to the run that made it).
FIT_ONLY = ("ckpt_path", "weights_only", "optimizer", "lr_scheduler")
# Config keys that do not change what a run computes (where it writes, how it shows progress).
VOLATILE = {
    "trainer": ("default_root_dir", "enable_progress_bar", "enable_model_summary", "logger", "accelerator",
                "devices", "num_nodes", "strategy"),
    "data": ("cache_dir", "num_workers", "fold", "split_file", "cache_per_node"),
}
# Sections whose options sit under ``init_args`` (chosen by ``class_path``): ``--data.root`` is ``data.init_args.root``.
CLASS_SECTIONS = ("model", "data")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)")


@dataclass
class Built:
    """A system, its data module and trainer, and the resolved config they were built from."""

    system: Any
    datamodule: Any
    trainer: Any
    config: dict[str, Any]


def _cli(args, instantiate: bool = True):
    from medssl.lightning_cli import MedsslCLI

    with warnings.catch_warnings():  # a command drives LightningCLI with args of its own; that is intended here
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        return MedsslCLI(args=args, run=False, instantiate=instantiate)


def dump(cli) -> dict[str, Any]:
    """The resolved config of a parsed CLI as plain values (``class_path``/``init_args`` everywhere)."""
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_validation=True))


def resolve(configs: Sequence[str | os.PathLike] = (), args: Sequence[str] = ()) -> dict[str, Any]:
    """Stacked config files and a user's command-line options, parsed and validated, as one resolved config.

    The boundary between a command's argv and the package: everything after it takes this dict.

    Args:
        configs: YAML files, later ones win (``--config a.yaml --config b.yaml``).
        args: the user's ``--section.key value`` options.
    """
    return dump(_cli([*(a for c in configs for a in ("--config", str(c))), *args], instantiate=False))


def merge(config: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` with ``overrides`` laid over it, mapping into mapping (a list or a value replaces)."""
    out = copy.deepcopy(dict(config))
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build(config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Built:
    """The system, data module and trainer of a resolved ``config`` with ``overrides`` laid over it.

    Args:
        config: a resolved config (``resolve``, ``dump``, or the one saved in a checkpoint).
        overrides: in the resolved form, e.g. ``{"data": {"init_args": {"fold": 2}}}``.
    """
    merged = merge(config, overrides)
    cli = _cli(merged)
    return Built(cli.model, cli.datamodule, cli.trainer, dump(cli))


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """A user's ``--section.key value`` (or ``--section.key=value``) options as a resolved-form overrides dict.

    Values are read as YAML (``3``, ``[3.0, 1.0, 1.0]``, ``null``, ``true``); ``--data.root`` and
    ``--model.lr`` become ``data.init_args.root`` and ``model.init_args.lr``, as LightningCLI reads them.

    Example:
        >>> parse_overrides(["--data.root", "/d", "--trainer.max_epochs=2"])
        {'data': {'init_args': {'root': '/d'}}, 'trainer': {'max_epochs': 2}}
    """
    out: dict[str, Any] = {}
    items = list(args)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or item == "--":
            raise ConfigError(f"unexpected argument {item!r}: options are --section.key value")
        key, value = (item[2:].split("=", 1) + [None])[:2] if "=" in item else (item[2:], None)
        if value is None:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value (e.g. --{key} VALUE)")
            value = items[i + 1]
            i += 1
        i += 1
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--{key}: give a section and a key, e.g. --data.root DIR")
        if parts[0] in CLASS_SECTIONS and parts[1] not in ("class_path", "init_args"):
            parts.insert(1, "init_args")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str) and NUMBER.fullmatch(parsed):
            parsed = float(parsed)  # YAML 1.1 reads 1e-3 as text; the command line means the number
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--{key}: {part} was given a value already")
        node[parts[-1]] = parsed
    return out


def inference_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config without the keys only ``fit`` accepts, and without ``init_from`` (the checkpoint carries
    every weight; the pretraining file need not exist here)."""
    out = {k: v for k, v in copy.deepcopy(dict(config)).items() if k not in FIT_ONLY}
    init_args = (out.get("model") or {}).get("init_args") if isinstance(out.get("model"), dict) else None
    if isinstance(init_args, dict) and "init_from" in init_args:
        init_args["init_from"] = None
    return out


def computation_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without the keys that do not change what is computed (paths of outputs, progress bars,
    devices); ``init_from`` replaced by the hash of its file, so a moved file is the same run."""
    out = json.loads(json.dumps(config, default=str))
    for section, keys in VOLATILE.items():
        part = out.get(section)
        part = part.get("init_args", part) if isinstance(part, dict) else None
        for key in keys if isinstance(part, dict) else ():
            part.pop(key, None)
    for key in FIT_ONLY:
        out.pop(key, None)
    model = (out.get("model") or {}).get("init_args") or {}
    if model.get("init_from"):
        path = Path(model["init_from"])
        model["init_from"] = f"sha256:{file_sha256(path)}" if path.is_file() else str(path)
    return out


# --------------------------------------------------------------------------- finetuned runs


@dataclass
class Loaded:
    """A finetuned system rebuilt from its checkpoint: the system, its data module and trainer."""

    system: Any
    datamodule: Any
    trainer: Any
    meta: Any  # medssl.weights.CheckpointMeta
    checkpoint: Path
    cases: list  # every case under data.root (medssl.data.layouts.Case)
    config: dict  # the resolved config the system was built from


def _run_config(checkpoint: Path, configs: Sequence[str] | None) -> dict[str, Any]:
    """The config a finetuned checkpoint was trained with, resolved: ``configs``, the one saved in it, or its run's
    logged one."""
    if configs:
        return resolve(configs)
    where, config = find_config(read_weights(checkpoint))
    if config is None:
        raise ConfigError(f"{checkpoint}: no config saved in it or logged beside it; give the run's config with "
                          "--config")
    logger.info("%s: built from %s", checkpoint, where)
    return config


def load_finetuned(checkpoint: str | os.PathLike, configs: Sequence[str] | None = None,
                   overrides: Mapping[str, Any] | None = None, output: str | os.PathLike | None = None,
                   device: str = "auto") -> Loaded:
    """A finetuned system from ``checkpoint`` (weights only), on one device, ready to predict.

    The net and its weights come from ``medssl.weights.load_model``; the system, data module and trainer from
    ``configs`` when given, else the resolved config saved in the checkpoint, else the run's logged config.
    Fit-only keys and ``init_from`` are dropped; labels are never read; nothing is cached or logged.
    ``overrides`` (``{"data": {"init_args": {"root": ...}}}``) apply last. ``device``: ``auto`` (a GPU when this
    machine has one, with the run's precision), ``cpu`` (fp32) or ``cuda``.
    """
    import torch

    from medssl.systems.common import check_in_channels
    from medssl.systems.finetune import DenseSystem

    checkpoint = Path(checkpoint)
    config = _run_config(checkpoint, configs)
    net, meta = weights.load_model(checkpoint, config if configs else None)
    weights.check_finite(net, str(checkpoint))
    if meta.kind != "finetuned":
        raise ConfigError(f"{checkpoint}: {meta.kind} weights ({meta.net}); this needs a finetuning run "
                          "(DetectionSystem or SegmentationSystem)")
    config = inference_config(config)
    # one device, whichever this machine has (a run trained on a GPU cluster is often applied on a
    # workstation); bf16 autocast pays only on a GPU
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device}: choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    trainer = {"accelerator": "gpu" if on_gpu else "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
               "logger": False, **({"default_root_dir": str(output)} if output else {}),
               **({} if on_gpu else {"precision": "32-true"})}
    base = {"data": {"init_args": {"cache_dir": None, "labels_root": None}}, "trainer": trainer}
    built = build(config, merge(base, overrides))
    system, dm = built.system, built.datamodule
    if not isinstance(system, DenseSystem):
        raise ConfigError(f"{checkpoint}: a {type(system).__name__} checkpoint; this needs a finetuning run "
                          "(DetectionSystem or SegmentationSystem)")
    system.use_net(net)
    cases = dm.discover()
    check_in_channels(system.net, dm.modalities)
    meta.check_data(dm, checkpoint)
    if not system.hparams.roi_size and dm.crop_size:
        # the windows training validated with (the system reads them from the trainer's data module in fit)
        system.hparams.roi_size = list(dm.crop_size)
    system.to(built.trainer.strategy.root_device).eval()
    return Loaded(system, dm, built.trainer, meta, checkpoint, cases, built.config)


__all__ = ["Built", "Loaded", "build", "computation_config", "dump", "inference_config", "load_finetuned", "merge",
           "parse_overrides", "read_config", "resolve"]
