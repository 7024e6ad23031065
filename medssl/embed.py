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
ones (their encoder), rebuilt by ``medssl.weights.load_model``; the architecture's registry entry
gives the encoder, the poolings and the vector. Outputs, each written atomically:

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medssl import weights
from medssl.data.datamodule import MRIDataModule
from medssl.data.layouts import Case
from medssl.data.transforms import case_transform, preprocess_case
from medssl.errors import CheckpointError, ConfigError
from medssl.io import refuse_output_over_inputs, safe_child, save_npy, write_text
from medssl.models.host import resolve_device
from medssl.records import Stamp, file_sha256, fingerprint, output_is_recorded, record_output
from medssl.weights import ARCHITECTURES, Architecture, CheckpointMeta

__all__ = ["Encoder", "load_encoder", "run_embed"]

_logger = logging.getLogger(__name__)

STAMP = ".medssl_embed.json"


@dataclass
class Encoder:
    """A pretrained encoder with the preprocessing its weights expect, ready to embed a case.

    Args:
        architecture: the registry entry of its family.
        model: the encoder (``BMMAE``, ``CSwinEncoder``, ...).
        meta: what its checkpoint says (modalities, spacing, crop, clipping, crop alignment, axis order).
    """

    architecture: Architecture
    model: nn.Module
    meta: CheckpointMeta
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.meta.modalities or ())

    @property
    def dim(self) -> int:
        return self.architecture.embed_dim(self.model)

    def settings(self) -> dict[str, Any]:
        """What decides the vectors besides the weights (recorded with them)."""
        meta = self.meta
        return {"architecture": self.architecture.name, "modalities": list(self.modalities),
                "spacing": meta.spacing and [float(s) for s in meta.spacing],
                "spatial_size": meta.spatial_size and [int(s) for s in meta.spatial_size],
                "voxel_aligned": bool(meta.voxel_aligned),
                **({"axis_order": meta.axis_order} if meta.axis_order else {})}

    @torch.no_grad()
    def embed(self, image: torch.Tensor, present: Sequence[bool], pool: str) -> np.ndarray:
        """One case vector: float32 ``(dim,)`` from ``image`` ``[C, D, H, W]`` (channels in ``modalities`` order,
        absent ones zeros) with ``present`` flags per channel."""
        return self.architecture.embed(self.model, image, present, pool).float().cpu().numpy()


def load_encoder(checkpoint: str | os.PathLike, config: str | None = None) -> Encoder:
    """The pretrained encoder in ``checkpoint`` (any architecture with an embedding, pretraining or finetuned) and
    the preprocessing its weights expect.

    Args:
        checkpoint: weights file (read with ``weights_only=True``).
        config: the run's config, if not saved in or found beside the checkpoint.
    """
    model, meta = weights.load_model(checkpoint, config, with_decoder=False)
    entry = ARCHITECTURES.get(meta.architecture or "")
    if entry is None or entry.embed is None:
        raise CheckpointError(f"{checkpoint}: a {meta.net or meta.architecture} checkpoint; medssl embed needs the "
                              f"weights of {' or '.join(n for n, a in ARCHITECTURES.items() if a.embed)}")
    encoder = entry.encoder(model)
    if not meta.modalities:
        raise ConfigError(f"cannot tell the modalities of {checkpoint}; set data.modalities in its config")
    first = next((m for m in encoder.modules() if isinstance(m, nn.Conv3d)), None)
    tokenizers = getattr(encoder, "modalities", None)
    if tokenizers is None and first is not None and first.in_channels != len(meta.modalities):
        raise CheckpointError(f"{checkpoint}: the encoder takes {first.in_channels} channels but the modalities "
                              f"saved with it are {list(meta.modalities)}")
    if tokenizers is not None:
        meta.modalities = list(tokenizers)  # one tokenizer per modality: the encoder's own order
    return Encoder(entry, encoder, meta)


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
    pools = sorted({p for a in ARCHITECTURES.values() for p in a.pools})
    if pool not in pools:
        raise ConfigError(f"--pool {pool}: choose {' or '.join(pools)}")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    encoder = load_encoder(checkpoint, config)
    if pool not in encoder.architecture.pools:
        raise ConfigError(f"--pool {pool}: {checkpoint} is a {encoder.meta.net} ({encoder.architecture.name}), "
                          f"which pools {' or '.join(encoder.architecture.pools)}; use --pool "
                          f"{encoder.architecture.pools[0]}")
    run_on = resolve_device(device)
    encoder.model.to(run_on).eval()
    meta = encoder.meta
    clip = meta.clip_percentiles  # as the weights were trained
    data = MRIDataModule(layout=layout, root=str(root), labels_root=labels_root, modalities=list(encoder.modalities),
                         spacing=meta.spacing, spatial_size=meta.spatial_size, cache_dir=None, augmentation=None,
                         clip_percentiles=clip, normalize=meta.normalize)
    cases = data.discover()
    refuse_output_over_inputs(out, [*data.input_paths(cases), checkpoint])
    transform = case_transform(data.preprocessing(with_labels=False), bool(meta.voxel_aligned))

    identity = {"checkpoint_sha256": file_sha256(checkpoint), "pool": pool, "settings": encoder.settings(),
                "clip_percentiles": clip, "normalize": meta.normalize, "layout": layout,
                "root": str(Path(root).resolve())}
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
