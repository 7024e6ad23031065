"""Case embeddings from a pretrained encoder: one feature vector per case, for probes, clustering, retrieval.

``medssl embed`` (``medssl.commands.embed``) runs :func:`run_embed`::

    medssl embed --checkpoint bmmae.pth --data.layout brats --data.root /data/BraTS2021 --output emb/

Each case goes through the preprocessing its weights were trained with (spacing, crop and modalities
saved with them; the official BM-MAE file gets its reference pipeline: 1 mm, the centre crop on whole
voxels, z-score over non-zero voxels) and the encoder sees every modality the case has, every token
visible. Pooling:

- ``cls`` (BM-MAE, the default): the CLS token of the encoder's final normed output;
- ``mean``: the mean of the final normed patch tokens (BM-MAE), or of the CSwin UNet bottleneck over space.

Weights: the official ``bmmae.pth``, our pretraining checkpoints of either architecture, or finetuned
ones (their encoder). Outputs, each written atomically:

| path | what |
|---|---|
| ``OUT/<case_id>.npy`` | float32 ``(dim,)`` |
| ``OUT/embeddings.csv`` | ``case_id``, one 0/1 column per modality (present or not), ``f0 .. f{dim-1}`` |
| ``OUT/.medssl_embed.json`` | what made the folder: checkpoint sha256, pooling, preprocessing |

A rerun into the same folder skips the cases already written; another checkpoint or other settings
there are refused in one line (``overwrite`` starts the folder afresh).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Compose
from torch import nn

from medssl.checkpoint import WRAPPER_PREFIXES, load_checkpoint, load_weights, state_dict_of, strip_prefixes
from medssl.data.datamodule import MRIDataModule
from medssl.data.layouts import MODALITIES, Case
from medssl.data.preprocess import Preprocessing
from medssl.data.transforms import deterministic_transforms
from medssl.errors import CheckpointError, ConfigError, find_user_error
from medssl.io import safe_child, save_npy, write_text
from medssl.models import cswin_unet
from medssl.models.bmmae import BMMAE, find_config
from medssl.models.ssl_heads import CSwinSSLModel
from medssl.runs import Stamp, file_sha256, fingerprint, output_is_recorded, record_output

__all__ = ["Encoder", "case_transform", "load_encoder", "preprocess_case", "resolve_device", "run_embed"]

_logger = logging.getLogger(__name__)

POOLS = ("cls", "mean")
STAMP = ".medssl_embed.json"
_BMMAE_ARCHITECTURES = ("bmmae", "BMMAEUNETR", "BMMAEClassifier")
_CSWIN_ARCHITECTURES = ("cswin_unet", "CSwinUNet")


# --------------------------------------------------------------------------- one case


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda``; a missing GPU is a one-line ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def case_transform(prep: Preprocessing, voxel_aligned: bool = False) -> Compose:
    """The data layer's deterministic preprocessing of one case: read, resample, z-score over non-zero voxels.

    Args:
        prep: the preprocessing settings (``MRIDataModule.preprocessing(with_labels=False)``).
        voxel_aligned: start the centre crop on a whole voxel, as the official BM-MAE pipeline (MONAI's
            ``Spacingd`` + ``CenterSpatialCropd``) does on cases already at the target spacing; medssl's
            own runs crop at the exact centre.
    """
    return Compose(list(deterministic_transforms(replace(prep, voxel_aligned=voxel_aligned)).transforms))


def preprocess_case(transform: Compose, case: Case) -> dict[str, Any]:
    """``transform`` on one case; a data error inside MONAI's wrapper comes out as itself (one line)."""
    try:
        return transform(case.to_item())
    except RuntimeError as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        raise user_error from None


# --------------------------------------------------------------------------- encoders


@dataclass
class Encoder:
    """A pretrained encoder with the preprocessing its weights expect, ready to embed a case.

    Args:
        architecture: ``bmmae`` or ``cswin_unet``.
        model: the ``BMMAE`` (encoder) or the ``CSwinEncoder``.
        modalities: channel order of its input.
        spacing: ``[D, H, W]`` mm (None keeps each case's).
        spatial_size: ``[D, H, W]`` crop (None keeps the extent).
        voxel_aligned: crop on whole voxels (the official BM-MAE pipeline).
        dim: length of a case vector.
        extra: further settings that decide the vectors (``axis_order``), recorded with them.
    """

    architecture: str
    model: nn.Module
    modalities: tuple[str, ...]
    spacing: list[float] | None
    spatial_size: list[int] | None
    voxel_aligned: bool
    dim: int
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "modalities": list(self.modalities), "spacing": self.spacing,
                "spatial_size": self.spatial_size, "voxel_aligned": self.voxel_aligned, **self.extra}

    @torch.no_grad()
    def embed(self, image: torch.Tensor, present: Sequence[bool], pool: str) -> np.ndarray:
        """One case vector.

        Args:
            image: ``[C, D, H, W]`` preprocessed case, channels in ``modalities`` order, absent ones zeros.
            present: per channel, whether the case has that modality.
            pool: ``cls`` or ``mean``.

        Returns:
            float32 ``(dim,)``.
        """
        device = next(self.model.parameters()).device
        if self.architecture == "bmmae":
            volumes = {m: image[i][None, None].to(device) for i, m in enumerate(self.modalities) if present[i]}
            tokens = self.model.encode(volumes)  # [1, 1 + k * N, D], every token of every present modality
            vector = tokens[0, 0] if pool == "cls" else tokens[0, 1:].mean(0)  # [D]
        else:
            x = cswin_unet.pad_to_multiple(image[None].to(device), self.model.total_strides)  # [1, C, D', H', W']
            vector = self.model.forward_features(x).mean(dim=(2, 3, 4))[0]  # [C_last, d, h, w] -> [C_last]
        return vector.float().cpu().numpy()


def _architecture(checkpoint: dict[str, Any], path: Path) -> str:
    """``bmmae`` or ``cswin_unet``: from the ``medssl`` entry, else from the key names."""
    metadata = checkpoint.get("medssl") if isinstance(checkpoint.get("medssl"), dict) else {}
    name = metadata.get("architecture")
    if name in _BMMAE_ARCHITECTURES:
        return "bmmae"
    if name in _CSWIN_ARCHITECTURES:
        return "cswin_unet"
    if name is not None:
        raise CheckpointError(f"{path}: a {name} checkpoint; medssl embed needs BM-MAE or CSwin UNet weights")
    keys = {strip_prefixes(k, (*WRAPPER_PREFIXES, "encoder.")) for k in state_dict_of(checkpoint)}
    if "cls_token" in keys and any(k.startswith("tokenizers.") for k in keys):
        return "bmmae"
    if any(k.startswith("patch_embed.") for k in keys) and any(k.startswith("stages.") for k in keys):
        return "cswin_unet"
    raise CheckpointError(f"{path}: neither BM-MAE nor CSwin UNet weights (first keys: {sorted(keys)[:4]})")


def _bmmae_encoder(path: Path, config: str | None) -> Encoder:
    model, settings = BMMAE.from_checkpoint(path, config, with_decoder=False)
    return Encoder("bmmae", model, model.modalities, settings["spacing"], list(model.input_size),
                   settings["voxel_aligned"], model.embed_dim, {"axis_order": model.axis_order})


def _cswin_encoder(path: Path, checkpoint: dict[str, Any], config: str | None) -> Encoder:
    metadata = checkpoint.get("medssl") if isinstance(checkpoint.get("medssl"), dict) else {}
    where, cfg = find_config(path, config, metadata)
    if where is None:
        raise ConfigError(f"{path}: CSwin UNet sizes (depths, heads, strides) are not all in the weights and no "
                          "config was found; pass --config with the run's config or keep its config.yaml beside "
                          "checkpoints/")
    model_args = cfg.get("model", {}).get("init_args", {}) if isinstance(cfg.get("model"), dict) else {}
    net = model_args.get("net") if isinstance(model_args, dict) else None
    nets = {"CSwinSSLModel": CSwinSSLModel, "CSwinUNet": cswin_unet.CSwinUNet}
    name = str((net or {}).get("class_path", "")).rsplit(".", 1)[-1]
    if name not in nets:
        raise ConfigError(f"{where}: model.init_args.net is {(net or {}).get('class_path')!r}, not a CSwin UNet "
                          "net (CSwinSSLModel or CSwinUNet); pass --config with the checkpoint's config")
    try:
        encoder = nets[name](**dict(net.get("init_args") or {})).encoder  # the same encoder the run built
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: cannot build {name}: {e}") from None
    report = load_weights(encoder, checkpoint, cswin_unet.checkpoint_filter_fn)  # SSL heads / decoder: skipped
    if report["missing"] or report["mismatched"]:
        raise CheckpointError(f"{path}: the CSwin encoder of {where} does not match the weights "
                              f"({len(report['missing'])} tensors missing, e.g. {report['missing'][:2]}; "
                              f"{len(report['mismatched'])} of another shape)")
    data = cfg.get("data", {}).get("init_args", {}) if isinstance(cfg.get("data"), dict) else {}
    modalities = metadata.get("modalities") or data.get("modalities") or MODALITIES.get(data.get("layout") or "picai")
    if not modalities:
        raise ConfigError(f"{where}: cannot tell the modalities of {path}; set data.modalities in the config")
    spacing = metadata.get("spacing") or data.get("spacing")
    spatial_size = metadata.get("spatial_size") or data.get("spatial_size")
    in_channels = encoder.patch_embed.proj.in_channels
    if in_channels != len(modalities):
        raise CheckpointError(f"{path}: the encoder takes {in_channels} channels but the modalities saved with it "
                              f"are {list(modalities)}")
    return Encoder("cswin_unet", encoder, tuple(modalities), spacing and [float(s) for s in spacing],
                   spatial_size and [int(s) for s in spatial_size], False, int(encoder.dims[-1]))


def load_encoder(checkpoint: str | os.PathLike, config: str | None = None) -> Encoder:
    """The pretrained encoder in ``checkpoint`` (BM-MAE or CSwin UNet, pretraining or finetuned) and its preprocessing.

    Args:
        checkpoint: weights file (read with ``weights_only=True``).
        config: the run's config, if not saved in or found beside the checkpoint (CSwin needs one;
            BM-MAE needs one for our runs, not for the official file).
    """
    path = Path(checkpoint)
    saved = load_checkpoint(path)
    if _architecture(saved, path) == "bmmae":
        del saved  # BMMAE.from_checkpoint reads the file itself
        return _bmmae_encoder(path, config)
    return _cswin_encoder(path, saved, config)


# --------------------------------------------------------------------------- many cases


def _csv(rows: list[tuple[str, list[int], np.ndarray]], modalities: Sequence[str], dim: int) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", *modalities, *(f"f{i}" for i in range(dim))])
    for case_id, present, vector in rows:
        writer.writerow([case_id, *present, *(f"{v:.9g}" for v in vector.tolist())])  # 9 digits: float32 exactly
    return buffer.getvalue()


def _saved_vector(path: Path, dim: int) -> np.ndarray | None:
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return vector if vector.shape == (dim,) and vector.dtype == np.float32 else None


def run_embed(
    checkpoint: str | os.PathLike,
    layout: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    pool: str = "cls",
    labels_root: str | None = None,
    device: str = "auto",
    config: str | None = None,
    overwrite: bool = False,
    progress: Callable[[Iterable[Case]], Iterable[Case]] | None = None,
) -> dict[str, Any]:
    """One vector per case under ``root``, from every modality the case has.

    Args:
        checkpoint: the official ``bmmae.pth``, or our pretraining or finetuning checkpoint (BM-MAE, CSwin UNet).
        layout: ``brats``, ``picai`` or ``datalist``.
        root: data folder (datalist: the file).
        output: folder for the vectors (see the module docstring).
        pool: ``cls`` (BM-MAE only) or ``mean``.
        labels_root: PI-CAI ``picai_labels`` (discovery only; labels are never read).
        device: ``auto``, ``cpu`` or ``cuda``.
        config: the run's config, if not saved in or found beside the checkpoint.
        overwrite: start ``output`` afresh when another checkpoint or other settings wrote it.
        progress: an iterable wrapper (e.g. a progress bar) over the cases.

    Returns:
        ``output``, ``csv``, ``pool``, ``dim``, ``cases`` (ids in order), ``computed`` and ``reused`` counts.

    Example:
        >>> run_embed("bmmae.pth", "brats", "/data/BraTS2021", "emb")["dim"]  # doctest: +SKIP
        768
    """
    if pool not in POOLS:
        raise ConfigError(f"--pool {pool}: choose cls or mean")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    encoder = load_encoder(checkpoint, config)
    if pool == "cls" and encoder.architecture != "bmmae":
        raise ConfigError(f"--pool cls: {checkpoint} is a CSwin UNet, which has no CLS token; use --pool mean")
    run_on = resolve_device(device)
    encoder.model.to(run_on).eval()
    metadata = load_checkpoint(checkpoint).get("medssl") or {}
    clip = metadata.get("clip_percentiles") if isinstance(metadata, dict) else None  # as the weights were trained
    data = MRIDataModule(layout=layout, root=str(root), labels_root=labels_root, modalities=list(encoder.modalities),
                         spacing=encoder.spacing, spatial_size=encoder.spatial_size, cache_dir=None, augmentation=None,
                         clip_percentiles=clip)
    cases = data.discover()
    transform = case_transform(data.preprocessing(with_labels=False), encoder.voxel_aligned)

    identity = {"checkpoint_sha256": file_sha256(checkpoint), "pool": pool, "settings": encoder.settings(),
                "clip_percentiles": clip, "layout": layout, "root": str(Path(root).resolve())}
    Stamp(out, STAMP).claim(identity, "embeddings", overwrite=overwrite)
    owner = fingerprint(identity)
    rows, computed = [], 0
    for case in progress(cases) if progress else cases:
        target = safe_child(out, f"{case.case_id}.npy")
        record_path = safe_child(out / ".cases", f"{case.case_id}.json")
        inputs = case.to_item()["fingerprint"]
        present = [int(bool(case.images.get(m))) for m in encoder.modalities]
        recorded = output_is_recorded(target, record_path, inputs, owner)
        vector = _saved_vector(target, encoder.dim) if recorded else None
        if vector is None:
            item = preprocess_case(transform, case)
            image = torch.as_tensor(item["image"], dtype=torch.float32)  # [C, D, H, W], z-scored
            vector = encoder.embed(image, [bool(p) for p in present], pool).astype(np.float32)
            save_npy(vector, target)
            record_output(target, record_path, inputs, owner)
            computed += 1
            _logger.info("%s: embedded (%s)", case.case_id,
                         ", ".join(m for m, p in zip(encoder.modalities, present, strict=True) if p))
        rows.append((case.case_id, present, vector))
    table = out / "embeddings.csv"
    write_text(table, _csv(rows, encoder.modalities, encoder.dim))
    return {"output": str(out), "csv": str(table), "pool": pool, "dim": encoder.dim,
            "cases": [c.case_id for c in cases], "computed": computed, "reused": len(cases) - computed}
