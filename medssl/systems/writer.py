"""What a prediction run writes: each case's map in its own geometry and ``predictions.json``, one schema for
``medssl infer`` and ``medssl predict``.

``predictions.json``::

    {"models": [{"checkpoint": path, "sha256": hex}, ...], "checkpoint": the first model's path,
     "root", "layout", "modalities", "spacing", "spatial_size", "clip_percentiles", "voxel_aligned",
     "normalize", "roi_size", "tta_flip", "task",
     "cases": {case_id: {"path", "reference", "case_score" | "voxels" + "label_values"}},
     "skipped": {case_id: reason}}
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BasePredictionWriter

from medssl.data.geometry import write_like
from medssl.io import safe_child, write_json
from medssl.records import file_sha256

logger = logging.getLogger(__name__)


def prediction_settings(system, dm) -> dict[str, Any]:
    """The settings that decide a prediction: the data module's preprocessing and the system's windows."""
    return {"root": str(dm.root), "layout": dm.layout, "modalities": list(dm.modalities),
            "spacing": dm.spacing and list(dm.spacing), "spatial_size": dm.spatial_size and list(dm.spatial_size),
            "clip_percentiles": dm.clip_percentiles and list(dm.clip_percentiles), "voxel_aligned": dm.voxel_aligned,
            "normalize": getattr(dm, "normalize", "nonzero"), "roi_size": system.hparams.roi_size,
            "tta_flip": system.hparams.tta_flip, "task": system.task}


def prediction_record(checkpoints: list[str | Path], settings: dict[str, Any]) -> dict[str, Any]:
    """The ``predictions.json`` of a run before its cases: the models (path and sha256) and the settings."""
    models = [{"checkpoint": str(c), "sha256": file_sha256(c)} for c in checkpoints]
    return {"models": models, "checkpoint": models[0]["checkpoint"] if models else None, **settings,
            "cases": {}, "skipped": {}}


class MapWriter(BasePredictionWriter):
    """``medssl predict``'s writer: each case's map as ``medssl infer`` writes it (``<case_id>.nii.gz`` in the
    case's own geometry) and ``predictions.json`` in the same schema at the end.

    Args:
        output_dir: the folder for the maps and the record.
        checkpoints: the weights that made them (named with their sha256 in the record).
    """

    def __init__(self, output_dir: str | Path, checkpoints: list[str | Path]) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.checkpoints = list(checkpoints)
        self.record: dict[str, Any] | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self.record = prediction_record(self.checkpoints, prediction_settings(pl_module, trainer.datamodule))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        for entry in prediction:
            path = safe_child(self.output_dir, f"{entry['case_id']}.nii.gz")
            write_like(entry["map"], entry["reference"], path)
            self.record["cases"][entry["case_id"]] = {
                "path": str(path), "reference": str(entry["reference"]),
                **pl_module.case_summary(entry["map"], entry.get("label_convention"))}
            del entry["map"]  # written: Lightning keeps the returned predictions, the maps need not stay

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.output_dir / "predictions.json", self.record)
            logger.info("wrote %d map(s) to %s", len(self.record["cases"]), self.output_dir)
