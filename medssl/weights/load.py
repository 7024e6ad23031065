"""One way from a checkpoint to a model: ``load_model``, and ``init_from`` built on it.

``load_model(checkpoint)`` rebuilds every checkpoint kind medssl meets: the official BM-MAE
``bmmae.pth``, medssl's BM-MAE and CSwin pretraining checkpoints, and finetuned detection or
segmentation nets of any architecture. The file is read with ``weights_only=True``; what it is comes
from its typed ``medssl`` entry (``CheckpointMeta``) or, for files without one, from the registry's
``sniff``; the net comes from the run's config (saved in the checkpoint, given with ``config``, or
logged beside it) or, for weights a config does not describe, from the architecture's ``rebuild``;
the weights load strictly. ``embed``, ``reconstruct``, ``infer``, ``predict`` and ``init_from`` all
come through here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from medssl.checkpoint import load_checkpoint, load_weights, state_dict_of
from medssl.data.layouts import LAYOUTS
from medssl.errors import CheckpointError, ConfigError, one_line
from medssl.folders import Run
from medssl.weights.meta import KEY, CheckpointMeta, MissingConfig, UnknownArchitecture
from medssl.weights.registry import ARCHITECTURES, architecture_of, architecture_of_class, net_families

logger = logging.getLogger(__name__)

# Where the classes a checkpoint's config names may come from: a config read from a weights file is untrusted,
# and building its net imports and calls the class it names.
TRUSTED_MODULES = ("medssl.", "monai.networks.")


@dataclass
class Weights:
    """A checkpoint read safely: its path, the file's contents, its tensors and its typed meta."""

    path: Path
    checkpoint: dict[str, Any]
    state: dict[str, Tensor]
    meta: CheckpointMeta


def read_weights(source: str | os.PathLike) -> Weights:
    """The checkpoint at ``source`` (``weights_only=True``) with its meta: its ``medssl`` entry, else what the
    registry's ``sniff`` recognises, else ``kind = "foreign"`` without an architecture."""
    path = Path(source)
    checkpoint = load_checkpoint(path)
    state = state_dict_of(checkpoint)
    if isinstance(checkpoint.get(KEY), Mapping):
        return Weights(path, checkpoint, state, CheckpointMeta.from_entry(checkpoint[KEY], net_families()))
    for entry in ARCHITECTURES.values():
        meta = entry.sniff(checkpoint, state) if entry.sniff else None
        if meta is not None:
            return Weights(path, checkpoint, state, meta)
    return Weights(path, checkpoint, state, CheckpointMeta())


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config ({one_line(e)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a config file (expected a mapping of options)")
    return config


def find_config(weights: Weights, config: str | os.PathLike | Mapping | None = None
                ) -> tuple[str | None, dict | None]:
    """The config the weights were trained with: ``config`` (a file or a mapping), the resolved one saved in the
    checkpoint, or the one Lightning logged for the run (``medssl.folders.Run.config_for``).

    Returns:
        ``(where, config)``: a description of its source and the parsed mapping; ``(None, None)`` when there is none.
    """
    if isinstance(config, Mapping):
        return "the given config", dict(config)
    if config is not None:
        if not Path(config).is_file():
            raise ConfigError(f"--config {config}: file not found")
        return str(config), read_config(config)
    saved = weights.meta.config_dict()
    if saved is not None:
        return f"{weights.path} (its saved config)", saved
    if weights.meta.kind == "official":
        return None, None
    run = Run.of_checkpoint(weights.path)
    if not run.logged_configs():
        return None, None
    found = run.config_for(weights.path)
    return str(found), read_config(found)


def _check_class_paths(value: Any, where: str) -> None:
    """Every ``class_path`` in ``value`` must name a class of medssl, MONAI's nets or a registered architecture."""
    if isinstance(value, Mapping):
        path = value.get("class_path")
        if isinstance(path, str):
            trusted = TRUSTED_MODULES + tuple(f"{cls.__module__}." for entry in ARCHITECTURES.values()
                                              for cls in entry.nets)
            if not path.startswith(trusted):
                raise CheckpointError(f"{where}: names the class {path}, which is not a medssl or MONAI net; "
                                      "refused (building it would run its code)")
        for item in value.values():
            _check_class_paths(item, where)
    elif isinstance(value, list):
        for item in value:
            _check_class_paths(item, where)


def net_from_config(config: Mapping[str, Any], where: str) -> nn.Module:
    """The net ``model.init_args.net`` of ``config`` names, built as the run built it (jsonargparse, with the
    same type coercions as the CLI), after the class check."""
    from jsonargparse import ArgumentParser

    model = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    spec = (model.get("init_args") or {}).get("net") if isinstance(model.get("init_args"), Mapping) else None
    if not isinstance(spec, Mapping) or "class_path" not in spec:
        raise ConfigError(f"{where}: no model.init_args.net (class_path and init_args) to build the net from")
    _check_class_paths(spec, where)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)
    try:
        return parser.instantiate_classes(parser.parse_object({"net": dict(spec)})).net
    except Exception as e:  # jsonargparse's and the net's own argument errors: one line naming the config
        raise ConfigError(f"{where}: cannot build {spec['class_path']}: {one_line(e)[-300:]}") from None


def _net_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A system's ``net.*`` tensors without the prefix (DDP's ``module.`` / compile's ``_orig_mod.`` in front
    stripped first); a bare net state dict as it is."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    if any(k.startswith("net.") for k in state):
        return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    return dict(state)


def _complete(meta: CheckpointMeta, config: Mapping | None) -> CheckpointMeta:
    """The data settings the checkpoint does not record, from the run's config (then the layout's modalities)."""
    data = (config or {}).get("data") if isinstance((config or {}).get("data"), Mapping) else {}
    data = data.get("init_args", data) if isinstance(data, Mapping) else {}
    for key in ("layout", "modalities", "spacing", "spatial_size", "clip_percentiles", "voxel_aligned"):
        recorded_none = key == "clip_percentiles" and key in meta.recorded  # recorded as none: trained unclipped
        if getattr(meta, key) is None and not recorded_none and data.get(key) is not None:
            setattr(meta, key, data[key])
    if meta.normalisation is None and data.get("normalize") is not None:
        meta.normalisation = str(data["normalize"])
    if meta.modalities is None and meta.layout in LAYOUTS and LAYOUTS[meta.layout].modalities:
        meta.modalities = list(LAYOUTS[meta.layout].modalities)
    if meta.net is not None and meta.architecture is None:
        meta.architecture = architecture_of_class(meta.net)
    return meta


def load_model(
    source: str | os.PathLike, config: str | os.PathLike | Mapping | None = None, **options: Any
) -> tuple[nn.Module, CheckpointMeta]:
    """The model a checkpoint holds, with its weights loaded strictly, and what the checkpoint says about it.

    Args:
        source: the official ``bmmae.pth``, a medssl pretraining checkpoint (BM-MAE, CSwin UNet) or a finetuned
            one (any net); read with ``weights_only=True``.
        config: the run's config (a file or a mapping), for a checkpoint that neither carries one nor has it
            logged beside it.
        **options: for the architecture's ``rebuild`` (BM-MAE: ``with_decoder``).

    Returns:
        ``(model, meta)``: the pretraining model (``BMMAE``, ``CSwinSSLModel``) or the finetuned net
        (``CSwinUNet``, ``BMMAEUNETR``, a MONAI net), in train mode as built; the meta completed with the data
        settings the weights expect (from the config where the checkpoint does not record them).

    Raises:
        UnknownArchitecture: weights of no known kind (no ``medssl`` entry, no registry entry recognises them).
        MissingConfig: a net that only its run's config describes, and no config was found.
        CheckpointError: the weights do not fit the net they describe.

    Example:
        >>> model, meta = load_model("bmmae.pth")  # doctest: +SKIP
        >>> meta.kind, meta.axis_order
        ('official', 'xyz')
    """
    weights = read_weights(source)
    meta, name = weights.meta, str(weights.path)
    if meta.architecture is None and meta.net is None and meta.kind in ("foreign", "pretraining"):
        raise UnknownArchitecture(f"{name}: cannot tell which architecture these weights are (no medssl entry, and "
                                  f"the key names match no registered architecture; first keys: "
                                  f"{list(weights.state)[:4]})")
    where, cfg = find_config(weights, config)
    entry = ARCHITECTURES.get(meta.architecture) if meta.architecture else None
    # Building a net draws its initial weights from the global generator; the loaded weights replace them, so the
    # draws are undone: loading a checkpoint leaves a seeded run's random stream where it was (init_from in fit).
    from_shapes = meta.kind != "finetuned" and entry is not None and entry.rebuild is not None
    if not from_shapes and cfg is None:
        raise MissingConfig(f"{name}: the net's sizes are not all in the weights and no config was found; pass "
                            "--config with the run's config or keep its config.yaml beside checkpoints/")
    with torch.random.fork_rng(devices=[]):
        model = entry.rebuild(weights.state, meta, cfg, where, name, **options) if from_shapes \
            else net_from_config(cfg, where)
    if not from_shapes:
        try:
            model.load_state_dict(_net_state(weights.state), strict=True)
        except RuntimeError as e:
            detail = one_line(e).split(":", 1)[-1].strip()[:300]
            raise CheckpointError(f"{name}: does not fit the {type(model).__name__} of {where} ({detail})") from None
    meta = _complete(meta, cfg)
    entry = ARCHITECTURES.get(meta.architecture or architecture_of(model) or "")
    if entry is not None:
        meta.architecture = entry.name
        meta = entry.complete(model, meta)
    meta.net = meta.net or type(model).__name__
    logger.info("%s: %s %s weights (%s)", name, meta.kind, type(model).__name__, where or "no config needed")
    return model, meta


def init_from(net: nn.Module, source: str | os.PathLike,
              parts: str = "encoder") -> tuple[dict[str, list[str]], CheckpointMeta]:
    """Pretrained weights into a finetuning ``net`` (``model.init_args.init_from``), through ``load_model``.

    The source is rebuilt first (so a checkpoint that does not fit its own description is refused before
    anything moves), then the net family's transfer rule moves what applies (the encoder) and reports it;
    ``parts="all"`` moves every tensor whose name and shape match instead (a whole finetuned net of the same
    kind). Weights no registry entry recognises, or that cannot be rebuilt for want of a config, are matched to
    the net by name and shape (through the family's filter), as MONAI's own pretrained files are.

    Returns:
        ``(report, meta)``: ``medssl.checkpoint.load_weights``'s report (loaded / skipped / unexpected /
        mismatched / missing keys) and the source's meta.
    """
    if parts not in ("encoder", "all"):
        raise ConfigError(f"model.init_args.init_parts {parts!r}: choose encoder or all")
    name = str(source)
    family = architecture_of(net)
    entry = ARCHITECTURES.get(family) if family else None
    try:
        model, meta = load_model(source)
    except (UnknownArchitecture, MissingConfig) as e:
        logger.info("%s; matching its tensors to %s by name and shape", one_line(e), type(net).__name__)
        weights = read_weights(source)
        if entry is None:
            return load_weights(net, weights.checkpoint, name=name), weights.meta
        return entry.transfer(net, weights.state, weights.meta, name), weights.meta
    if meta.architecture and family and meta.architecture != family:
        raise CheckpointError(f"{name} holds {meta.architecture} weights, which cannot initialise a "
                              f"{type(net).__name__} ({family}); give {family} pretraining weights")
    if entry is None:
        return load_weights(net, model.state_dict(), name=name), meta
    report = entry.transfer(net, model, meta, name)  # the family's checks (axis order, modalities) and its encoder
    if parts == "all":  # then every other tensor that fits by name and shape (decoder, skips, head)
        report = load_weights(net, model.state_dict(), name=name)
    return report, meta


def shuffled_checkpoint(source: str | os.PathLike, target: str | os.PathLike, seed: int = 0) -> Path:
    """A negative control of ``source``: every floating-point tensor's entries permuted (each tensor its own
    permutation), so the weights keep their values, scale and shapes but lose every learnt structure. The
    ``medssl`` entry is kept (the checkpoint still loads as the same architecture) and says how it was made.

    Returns:
        ``target``, written atomically (``medssl.io.save_torch``).
    """
    from medssl.io import save_torch
    from medssl.records import file_sha256

    weights = read_weights(source)
    generator = torch.Generator().manual_seed(seed)
    checkpoint = dict(weights.checkpoint)
    inner_key = next((k for k in ("state_dict", "model", "module") if isinstance(checkpoint.get(k), Mapping)), None)
    state = dict(checkpoint[inner_key]) if inner_key else {k: v for k, v in checkpoint.items() if torch.is_tensor(v)}
    for key, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and value.numel() > 1:
            flat = value.reshape(-1)
            state[key] = flat[torch.randperm(flat.numel(), generator=generator)].reshape(value.shape).clone()
    meta = weights.meta
    meta.derived = (f"every tensor's entries permuted (seed {seed}) from {weights.path} "
                    f"(sha256 {file_sha256(weights.path)[:16]}): a negative control")
    entry = meta.to_entry()
    if inner_key:
        checkpoint[inner_key] = state
        checkpoint[KEY] = entry
    else:
        checkpoint = {**state, KEY: entry}  # an official file's kind stays "official": its entry says so
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_torch(checkpoint, target)
    return target


def check_finite(model: nn.Module, name: str) -> None:
    """Refuse weights holding NaN or Inf before they predict anything (a diverged run predicts empty maps silently).

    Raises:
        CheckpointError: naming the weights and the first tensor that is not finite.
    """
    for key, value in model.state_dict().items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{name}: the weights are not finite ({key} holds NaN or Inf): the run diverged; "
                                  "retrain (a lower model.init_args.lr) rather than predict with them")
