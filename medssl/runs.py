"""The run core: a run folder as a value, and the one place a model is rebuilt from a config or a checkpoint.

Every command that trains or rebuilds a model comes through here:

- ``build_cli(configs, overrides)``: the one place medssl builds a ``MedsslCLI`` internally;
- ``Run``: where a run keeps its config, checkpoints and logs, and which config made a checkpoint;
- ``load_finetuned(checkpoint)``: a finetuned system, its data module and trainer, from a checkpoint
  (weights only) and the config that trained it, checked against the settings saved in the weights;
- ``check_compatible(metadata, dm)``: the data settings must be the ones the weights were trained with;
- ``fingerprint`` / ``Stamp``: what made an output, so a rerun that does not match refuses instead of reusing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medssl.checkpoint import load_checkpoint, state_dict_of
from medssl.errors import CheckpointError, ConfigError, one_line

logger = logging.getLogger(__name__)

# Keys a saved fit config holds that only mean something to ``fit`` (or to the run that made it).
FIT_ONLY = ("ckpt_path", "weights_only", "optimizer", "lr_scheduler")
# Config keys that do not change what a run computes (where it writes, how it shows progress).
VOLATILE = {
    "trainer": ("default_root_dir", "enable_progress_bar", "enable_model_summary", "logger", "accelerator",
                "devices", "num_nodes", "strategy"),
    "data": ("cache_dir", "num_workers", "fold", "split_file", "cache_per_node"),
}


def config_args(configs: Iterable[str | os.PathLike]) -> list[str]:
    return [a for c in configs for a in ("--config", str(c))]


def build_cli(configs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()):
    """A ``MedsslCLI`` (not run) for stacked ``configs`` plus command-line ``overrides``: system, data, trainer."""
    from medssl.lightning_cli import MedsslCLI

    return MedsslCLI(args=[*config_args(configs), *overrides], run=False)


# --------------------------------------------------------------------------- fingerprints


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolved_config(cli) -> dict[str, Any]:
    """The resolved config of a built CLI as plain values (``class_path``/``init_args`` kept)."""
    text = cli.parser.dump(cli.config, skip_none=False, skip_validation=True)
    return yaml.safe_load(text)


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


@dataclass(frozen=True)
class Stamp:
    """A record of what made an output folder, kept in ``<folder>/<name>``.

    ``claim`` writes it the first time; later runs must carry the same ``identity`` or they are refused
    in one line (``overwrite`` replaces the record, for a caller that then recomputes everything).
    """

    folder: Path
    name: str = ".medssl_stamp.json"

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def read(self) -> dict[str, Any] | None:
        from medssl.io import read_json

        return read_json(self.path, "record of what made this folder") if self.path.is_file() else None

    def claim(self, identity: Mapping[str, Any], what: str, overwrite: bool = False) -> None:
        from medssl.io import write_json

        identity = json.loads(json.dumps(identity, default=str))
        theirs = self.read()
        if theirs is not None and theirs != identity and not overwrite:
            differing = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
            raise ConfigError(f"{self.folder} holds {what} made with other settings (differs in "
                              f"{', '.join(differing[:5])}; see {self.path}); give a new output folder or "
                              "pass --overwrite to redo it")
        if theirs != identity:
            write_json(self.path, identity)


# --------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class Run:
    """A run folder (``trainer.default_root_dir``): ``checkpoints/`` and ``lightning_logs/version_*/config.yaml``."""

    root: Path

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> Run:
        path = Path(checkpoint).resolve()
        return cls(path.parent.parent if path.parent.name == "checkpoints" else path.parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def logged_configs(self) -> list[Path]:
        found = [self.root / "config.yaml"] if (self.root / "config.yaml").is_file() else []
        return found + sorted(self.root.glob("lightning_logs/version_*/config.yaml"),
                              key=lambda p: int(p.parent.name.rsplit("_", 1)[-1]))

    def config_for(self, checkpoint: str | os.PathLike) -> Path:
        """The logged config of the fit that wrote ``checkpoint`` (for checkpoints that do not carry one).

        The rule, logged: the newest config written before the checkpoint (a fit writes its config when
        it starts, its checkpoints later; a later ``validate`` run writes a newer version).
        """
        found = self.logged_configs()
        if not found:
            raise ConfigError(f"no config.yaml found under {self.root} for {checkpoint}; give the run's config "
                              "with --config")
        if len(found) == 1:
            return found[0]
        written = Path(checkpoint).stat().st_mtime
        before = [p for p in found if p.stat().st_mtime <= written]
        chosen = max(before or found, key=lambda p: p.stat().st_mtime)
        logger.info("%s: %d configs in %s; using %s, the newest written before the checkpoint", checkpoint,
                    len(found), self.root, chosen)
        return chosen


def _inference_config(config: Mapping[str, Any], folder: Path, name: str) -> Path:
    """A copy of a saved config without the keys only ``fit`` accepts, and without ``init_from``
    (the checkpoint carries every weight; the pretraining file need not exist here)."""
    config = dict(config)
    for key in FIT_ONLY:
        config.pop(key, None)
    init_args = (config.get("model") or {}).get("init_args") if isinstance(config.get("model"), dict) else None
    if isinstance(init_args, dict) and "init_from" in init_args:
        init_args["init_from"] = None
    out = folder / f"{len(list(folder.iterdir()))}_{name}"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read the config ({one_line(e)})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: not a config file (expected a mapping of options)")
    return config


def check_compatible(metadata: Mapping[str, Any], dm, checkpoint: str | os.PathLike) -> None:
    """The data settings must be the ones the weights were trained with (saved in the checkpoint).

    A setting the checkpoint records must be given the same value: ``null`` (e.g. ``--data.spacing
    null``) where the checkpoint has a value is a mismatch, not a way around the check.
    """
    ours = {"modalities": dm.modalities, "spacing": dm.spacing, "spatial_size": dm.spatial_size,
            "clip_percentiles": getattr(dm, "clip_percentiles", None)}
    if "voxel_aligned" in metadata and bool(metadata["voxel_aligned"]) != bool(getattr(dm, "voxel_aligned", False)):
        raise ConfigError(f"data.voxel_aligned is {getattr(dm, 'voxel_aligned', False)} but {checkpoint} was trained "
                          f"with {metadata['voxel_aligned']}; set --data.voxel_aligned to match")
    for key, value in ours.items():
        saved = metadata.get(key)
        if saved is None:
            if key == "clip_percentiles" and "clip_percentiles" in metadata and value is not None:
                raise ConfigError(f"data.clip_percentiles is {list(value)} but {checkpoint} was trained without "
                                  "clipping; set --data.clip_percentiles null")
            continue
        kind = object if key == "modalities" else float
        if value is None or not np.array_equal(np.asarray(saved, dtype=kind), np.asarray(list(value), dtype=kind)):
            shown = None if value is None else list(value)
            raise ConfigError(f"data.{key} is {shown} but {checkpoint} was trained with {saved}; "
                              f"set --data.{key} to match")


@dataclass
class Loaded:
    """A finetuned system rebuilt from its checkpoint: the system, its data module and trainer."""

    system: Any
    datamodule: Any
    trainer: Any
    metadata: dict[str, Any]
    checkpoint: Path
    cases: list  # every case under data.root (medssl.data.layouts.Case)
    config: dict  # the resolved config the system was built from


def _config_sources(checkpoint: Path, saved: Mapping[str, Any], configs: Sequence[str] | None,
                    tmp: Path) -> list[Path]:
    if configs:
        return [_inference_config(read_config(c), tmp, Path(c).name) for c in configs]
    metadata = saved.get("medssl") if isinstance(saved.get("medssl"), dict) else {}
    if isinstance(metadata.get("config"), str):  # the resolved config the checkpoint was trained with
        return [_inference_config(yaml.safe_load(metadata["config"]), tmp, "config.yaml")]
    path = Run.of_checkpoint(checkpoint).config_for(checkpoint)
    return [_inference_config(read_config(path), tmp, path.name)]


def load_finetuned(checkpoint: str | os.PathLike, configs: Sequence[str] | None = None,
                   overrides: Sequence[str] = (), output: str | os.PathLike | None = None) -> Loaded:
    """A finetuned system from ``checkpoint`` (weights only), on one device, ready to predict.

    The config is ``configs`` when given, else the resolved config saved in the checkpoint, else the
    run's logged config (``Run.config_for``). Fit-only keys and ``init_from`` are dropped; labels are
    never read; nothing is cached or logged. ``overrides`` (``--data.root`` ...) apply last.
    """
    import torch

    from medssl.systems.common import check_in_channels
    from medssl.systems.finetune import DenseSystem

    checkpoint = Path(checkpoint)
    saved = load_checkpoint(checkpoint)  # refuses unsafe pickles in one line
    metadata = saved.get("medssl") if isinstance(saved.get("medssl"), dict) else {}
    with tempfile.TemporaryDirectory(prefix="medssl_run_") as tmp:
        sources = _config_sources(checkpoint, saved, configs, Path(tmp))
        # one device, whichever this machine has (a run trained on a GPU cluster is often applied on a
        # workstation); bf16 autocast pays only on a GPU
        args = ["--data.cache_dir", "null", "--data.labels_root", "null",
                "--trainer.accelerator", "auto", "--trainer.devices", "1", "--trainer.num_nodes", "1",
                "--trainer.strategy", "auto", "--trainer.logger", "false",
                *(["--trainer.default_root_dir", str(output)] if output else []),
                *([] if torch.cuda.is_available() else ["--trainer.precision", "32-true"]), *overrides]
        cli = build_cli(sources, args)
    system, dm, trainer = cli.model, cli.datamodule, cli.trainer
    if not isinstance(system, DenseSystem):
        raise ConfigError(f"{checkpoint}: a {type(system).__name__} checkpoint; this needs a finetuning run "
                          "(DetectionSystem or SegmentationSystem)")
    try:
        system.load_state_dict(state_dict_of(saved))
    except (RuntimeError, CheckpointError) as e:
        raise CheckpointError(f"{checkpoint}: does not fit the model of the config "
                              f"({one_line(e).split('(', 1)[-1].strip()[:300]}") from None
    cases = dm.discover()
    check_in_channels(system.net, dm.modalities)
    check_compatible(metadata, dm, checkpoint)
    if not system.hparams.roi_size and dm.crop_size:
        # the windows training validated with (the system reads them from the trainer's data module in fit)
        system.hparams.roi_size = list(dm.crop_size)
    system.to(trainer.strategy.root_device).eval()
    return Loaded(system, dm, trainer, metadata, checkpoint, cases, resolved_config(cli))


def output_is_recorded(out_path: Path, record_path: Path, inputs: str, owner: str) -> bool:
    """A rerun skips an output only when it is the file its record names (sha256), written by the same models and
    settings (``owner``: a fingerprint of the folder's stamp) from the same inputs (their size and mtime)."""
    if not (out_path.is_file() and record_path.is_file()):
        return False
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return False
    if record.get("owner") != owner:
        return False  # written by other models or settings (an --overwrite run): computed again
    if record.get("inputs") != inputs:
        logger.info("%s: its input images changed since it was written; computing it again", out_path.name)
        return False
    if record.get("sha256") != file_sha256(out_path):
        logger.warning("%s: the file on disk is not the one written (truncated or edited); computing it again",
                       out_path)
        return False
    return True


def record_output(out_path: Path, record_path: Path, inputs: str, owner: str) -> None:
    """The record ``output_is_recorded`` checks, written after ``out_path`` is complete."""
    from medssl.io import write_json

    write_json(record_path, {"inputs": inputs, "sha256": file_sha256(out_path), "owner": owner})
