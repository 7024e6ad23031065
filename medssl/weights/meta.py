"""``CheckpointMeta``: what a checkpoint says about its weights, read and written in this one place.

Every checkpoint medssl writes carries a ``medssl`` entry beside the tensors: which architecture and
net made them, whether they are pretraining or finetuned weights, the array order the encoder was
trained on, the data and preprocessing settings they expect, the training case ids (for the
leakage guard), the resolved config of the run and the software versions. The official BM-MAE
``bmmae.pth`` carries none; it is recognised by its key names (``kind = "official"``).

Entries written before this contract existed are read too: ``architecture`` then held the net's
class name for finetuned weights (``CSwinUNet``, ``BMMAEUNETR``), and a missing ``axis_order`` means
``zyx`` (medssl's own array order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import yaml

from medssl.errors import CheckpointError, ConfigError

Kind = Literal["official", "pretraining", "finetuned", "foreign"]
KEY = "medssl"  # the checkpoint entry this module owns


class UnknownArchitecture(CheckpointError):
    """Weights that carry no ``medssl`` entry and that no registry entry recognises."""


class MissingConfig(ConfigError):
    """Weights whose net cannot be rebuilt without the run's config, and no config was found."""


@dataclass
class CheckpointMeta:
    """The typed ``medssl`` entry of a checkpoint.

    Args:
        architecture: the ``medssl.weights.ARCHITECTURES`` name (``cswin_unet``, ``bmmae``), or None for a
            net no entry claims (a MONAI comparator) or unrecognised foreign weights.
        net: the net's class name (``CSwinSSLModel``, ``CSwinUNet``, ``BMMAE``, ``BMMAEUNETR``, ``DynUNet``).
        kind: ``pretraining``, ``finetuned``, ``official`` (the BM-MAE authors' file) or ``foreign``.
        task: ``detection`` or ``segmentation`` for finetuned weights.
        axis_order: the array order the encoder was trained on (BM-MAE: ``zyx`` or ``xyz``).
        layout, modalities, spacing, spatial_size, normalisation, clip_percentiles, voxel_aligned: the data
            settings the weights were trained with (``[D, H, W]`` order), checked when they are used.
        train_case_ids: the cases the weights were trained on (the leakage guard reads them).
        skipped_cases: cases the run left out as unusable, with the reason.
        init_from: the checkpoint a finetuned run started from; ``leaked_cases``: its validation cases that
            checkpoint was pretrained on.
        config: the resolved YAML config of the run that wrote the weights.
        medssl_version: the medssl that wrote them.
        derived: how the weights were made from other weights (a study's control arm), else None.
    """

    architecture: str | None = None
    net: str | None = None
    kind: Kind = "foreign"
    task: str | None = None
    axis_order: str | None = None
    layout: str | None = None
    modalities: list[str] | None = None
    spacing: list[float] | None = None
    spatial_size: list[int] | None = None
    normalisation: str | None = None
    clip_percentiles: list[float] | None = None
    voxel_aligned: bool | None = None
    train_case_ids: list[str] = field(default_factory=list)
    skipped_cases: dict[str, str] = field(default_factory=dict)
    init_from: str | None = None
    leaked_cases: list[str] = field(default_factory=list)
    config: str | None = None
    medssl_version: str | None = None
    derived: str | None = None
    recorded: frozenset[str] = field(default=frozenset(), repr=False, compare=False)  # keys the entry held

    # -- reading ------------------------------------------------------------------------------------------
    @classmethod
    def from_entry(cls, entry: Mapping[str, Any] | None, nets: Mapping[str, str] | None = None) -> CheckpointMeta:
        """The meta of a checkpoint's ``medssl`` entry (``None``: a checkpoint without one).

        Args:
            entry: ``checkpoint["medssl"]``.
            nets: net class name -> architecture name, to read entries that stored the class name as
                ``architecture`` (finetuned checkpoints before this contract).
        """
        if not isinstance(entry, Mapping):
            return cls()
        known = {f.name for f in fields(cls)} - {"recorded"}
        values = {k: v for k, v in entry.items() if k in known and v is not None}
        values["recorded"] = frozenset(k for k in entry if k in known)
        architecture = values.get("architecture")
        families = set((nets or {}).values())
        if architecture is not None and architecture not in families:
            # written before the contract: finetuned weights recorded their net's class name as architecture
            values["net"], values["architecture"] = architecture, (nets or {}).get(architecture)
            values.setdefault("kind", "finetuned")
        if "kind" not in values:  # written before the contract: finetuned entries have a task
            values["kind"] = "finetuned" if values.get("task") else "pretraining"
        if values.get("kind") != "official" and values.get("architecture") == "bmmae":
            values.setdefault("axis_order", "zyx")  # written before axis_order was saved: medssl's own order
        return cls(**values)

    def config_dict(self) -> dict[str, Any] | None:
        """The run's resolved config as a mapping, or None when the checkpoint does not carry one."""
        if not isinstance(self.config, str):
            return None
        loaded = yaml.safe_load(self.config)
        return loaded if isinstance(loaded, dict) else None

    @property
    def normalize(self) -> str:
        """The ``data.normalize`` the weights were trained with: ``nonzero`` or ``all`` (weights that do not say,
        and the descriptive text earlier versions wrote, are ``nonzero``: the only z-score medssl had then)."""
        return "all" if self.normalisation == "all" else "nonzero"

    # -- writing ------------------------------------------------------------------------------------------
    def to_entry(self) -> dict[str, Any]:
        """The ``medssl`` entry to store in a checkpoint (plain values only: it is read with weights_only)."""
        entry = asdict(self)
        del entry["recorded"]
        return entry

    # -- what the weights expect ---------------------------------------------------------------------------
    def check_data(self, data: Any, name: str) -> None:
        """The data settings must be the ones the weights were trained with: the one compatibility rule of
        every command that applies weights to data (``infer``, ``predict``, ``validate``, ``test``, ``embed``).

        A setting the checkpoint records must be given the same value: ``null`` (e.g. ``--data.spacing
        null``) where the checkpoint has a value is a mismatch, not a way around the check.

        Args:
            data: the data module (``modalities``, ``spacing``, ``spatial_size``, ``clip_percentiles``,
                ``voxel_aligned``).
            name: the checkpoint, as named in the message.

        Raises:
            ConfigError: naming the setting, both values and the option to change.
        """
        aligned = bool(getattr(data, "voxel_aligned", False))
        if "voxel_aligned" in self.recorded and bool(self.voxel_aligned) != aligned:
            raise ConfigError(f"data.voxel_aligned is {aligned} but {name} was trained with {self.voxel_aligned}; "
                              "set --data.voxel_aligned to match")
        clip = getattr(data, "clip_percentiles", None)
        if self.clip_percentiles is None and "clip_percentiles" in self.recorded and clip is not None:
            raise ConfigError(f"data.clip_percentiles is {list(clip)} but {name} was trained without clipping; set "
                              "--data.clip_percentiles null")
        normalize = str(getattr(data, "normalize", "nonzero"))
        if normalize != self.normalize:
            raise ConfigError(f"data.normalize is {normalize} but {name} was trained with {self.normalize}; set "
                              f"--data.normalize {self.normalize}")
        ours = {"modalities": data.modalities, "spacing": data.spacing, "spatial_size": data.spatial_size,
                "clip_percentiles": clip}
        for key, value in ours.items():
            saved = getattr(self, key)
            if saved is None:
                continue
            if value is None or not _same(key, saved, value):
                shown = None if value is None else list(value)
                raise ConfigError(f"data.{key} is {shown} but {name} was trained with {list(saved)}; "
                                  f"set --data.{key} to match")


def _same(key: str, saved: Any, value: Any) -> bool:
    if key == "modalities":
        return [str(m) for m in saved] == [str(m) for m in value]
    saved, value = [float(v) for v in saved], [float(v) for v in value]
    return len(saved) == len(value) and all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(saved, value))
