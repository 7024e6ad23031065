"""Finetuned models on cases: one model or a fold ensemble, maps written in each case's own geometry.

- Every model comes from ``medssl.runs.load_finetuned`` (the config saved with its weights, checked
  against the settings saved in them). The models of an ensemble must share modalities, spacing and
  crop (they then share one preprocessing); their probability maps are averaged on the
  preprocessing grid, each after its own flip TTA, before lesion extraction (detection) or
  thresholding (segmentation).
- Detection (PI-CAI) writes the PI-CAI detection map ``OUT/<case_id>.nii.gz`` on the case's T2W
  grid; segmentation (BraTS) a label map on the reference grid with the input data set's label
  values (1 necrotic core, 2 oedema, 4 enhancing tumour; 3 for BraTS 2023+). Both come back from
  the preprocessing grid by one physical resampling.
- An output folder belongs to one set of weights and settings (``.medssl_infer.json``); each written
  map has a record (``.cases/<case_id>.json``: the inputs' fingerprint and the map's sha256), so a
  rerun skips a case only when its map is the one recorded and its inputs did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.data.geometry import Grid, resample_array, write_like
from medssl.errors import ConfigError, DataError, find_user_error, one_line
from medssl.io import read_json, safe_child, write_json

logger = logging.getLogger(__name__)

BRATS_LABELS = {"2021": {"ncr": 1, "ed": 2, "et": 4}, "2023": {"ncr": 1, "ed": 2, "et": 3}}


def brats_label_map(regions: np.ndarray, convention: str = "2021") -> np.ndarray:
    """``[3, D, H, W]`` bool TC, WT, ET -> ``[D, H, W]`` uint8 BraTS labels (nested: ET in TC in WT)."""
    values = BRATS_LABELS[convention]
    tc, wt, et = regions
    labels = np.zeros(tc.shape, np.uint8)
    labels[wt] = values["ed"]
    labels[tc | et] = values["ncr"]
    labels[et] = values["et"]
    return labels


def case_probability(systems: Sequence[Any], item: dict[str, Any]) -> np.ndarray:
    """The mean probability of ``systems`` for one preprocessed case, on its preprocessing grid.

    Detection: the smoothed lesion likelihood ``[D, H, W]``; segmentation: region probabilities
    ``[3, D, H, W]``. Each system runs on its own device under the caller's precision context; the
    modality mask stays on the host (see ``MedsslModule``).
    """
    from medssl.systems.finetune import DetectionSystem

    total = None
    for system in systems:
        image = torch.as_tensor(item["image"])[None].to(system.device)
        mask = torch.as_tensor(item["modality_mask"])[None]
        with torch.no_grad():
            if isinstance(system, DetectionSystem):
                prob = system.lesion_probability(image, mask)[0]
            else:
                prob = system.predict_probability(image, mask)[0].float().cpu().numpy()
        total = prob.astype(np.float64) if total is None else total + prob
    return (total / len(systems)).astype(np.float32)


def to_output(prob: np.ndarray, grid: Grid, reference: str, task: str, brats_labels: str = "2021") -> np.ndarray:
    """A preprocessing-grid probability back on the reference image's grid, as the written map."""
    from medssl.evaluation.detection import detection_map, probability_to_original

    if task == "detection":
        return detection_map(probability_to_original(prob, grid, reference))
    target = Grid.from_file(reference)
    regions = np.stack([resample_array(p.astype(np.float32), grid, target) > 0.5 for p in prob])
    return brats_label_map(regions, brats_labels)


def predict_case(system, item: dict[str, Any], reference_path: str, case_id: str,
                 brats_labels: str = "2021") -> np.ndarray:
    """One preprocessed case through one finetuned system, back on its reference image's grid."""
    from medssl.systems.finetune import DetectionSystem

    task = "detection" if isinstance(system, DetectionSystem) else "segmentation"
    grid = Grid.from_array(np.asarray(item["grid"]))
    return to_output(case_probability([system], item), grid, reference_path, task, brats_labels)


def cv_checkpoints(cv_dir: str | Path, run: str | None = None) -> list[Path]:
    """The reported checkpoint of every fold in a finished ``medssl cv`` output's report.

    Only the folds ``cv_report.json`` reports are taken (folds another config left in the folder are not), each
    checkpoint from its fold's own folder (so a moved or copied cv output uses its own weights).

    Args:
        cv_dir: the ``medssl cv --output`` folder.
        run: ``pretrained`` or ``scratch``; ``None``: the report's main run (the pretrained run when cv had
            ``init_from``, else the from-scratch one). A twin's scratch run is under ``scratch/``.
    """
    cv_dir = Path(cv_dir)
    report_path = cv_dir / "cv_report.json"
    if not report_path.is_file():
        raise ConfigError(f"--cv {cv_dir}: no cv_report.json (the cv has not finished, or this is not a cv output)")
    report = read_json(report_path, "cv report")
    main = report.get("main_run", "pretrained")
    run = run or main
    summary = report["runs"].get(run) if isinstance(report.get("runs"), dict) else None
    if summary is None:
        raise ConfigError(f"--cv {cv_dir}: its report has no {run} run (runs: {sorted(report.get('runs') or [])})")
    base = cv_dir if run == main else cv_dir / "scratch"
    out = []
    for fold in summary["folds"]:
        record_path = base / f"fold_{fold['fold']}" / "fold_result.json"
        record = read_json(record_path, "fold record")
        if record.get("run", run) != run:
            raise ConfigError(f"{record_path} is a {record.get('run')} fold, not {run}")
        checkpoint = record_path.parent / "checkpoints" / Path(record["checkpoint"]).name
        if not checkpoint.is_file():
            raise ConfigError(f"{record_path}: its checkpoint {checkpoint} is missing")
        out.append(checkpoint)
    logger.info("--cv %s: the %s run's %d fold checkpoints", cv_dir, run, len(out))
    return out


def _settings(loaded) -> dict[str, Any]:
    dm, system = loaded.datamodule, loaded.system
    return {"layout": dm.layout, "modalities": list(dm.modalities), "spacing": dm.spacing and list(dm.spacing),
            "spatial_size": dm.spatial_size and list(dm.spatial_size),
            "clip_percentiles": dm.clip_percentiles and list(dm.clip_percentiles), "voxel_aligned": dm.voxel_aligned,
            "roi_size": system.hparams.roi_size, "tta_flip": system.hparams.tta_flip, "task": system.task}


def _check_same(loaded: list) -> None:
    first = _settings(loaded[0])
    for other in loaded[1:]:
        theirs = _settings(other)
        for key in ("modalities", "spacing", "spatial_size", "clip_percentiles", "voxel_aligned", "task"):
            if theirs[key] != first[key]:
                raise ConfigError(f"the models disagree on {key}: {loaded[0].checkpoint} has {first[key]}, "
                                  f"{other.checkpoint} has {theirs[key]}; an ensemble needs one preprocessing")


def run_infer(checkpoints: Sequence[str | Path], output: str | Path, configs: list[str] | None = None,
              overrides: Sequence[str] = (), overwrite: bool = False, progress=None) -> dict[str, Any]:
    """Predict every case under ``data.root`` with one model or the mean of several; returns ``predictions.json``.

    Args:
        checkpoints: finetuned checkpoints (several: a fold ensemble).
        output: the output folder.
        configs: the runs' config (default: the config saved in each checkpoint, else its run's).
        overrides: ``--data.*`` options over the saved config (``--data.root`` ...).
        overwrite: redo a folder another model or other settings wrote.
        progress: an iterable wrapper (e.g. a progress bar) over the cases.
    """
    from medssl.runs import (
        Stamp,
        computation_config,
        file_sha256,
        fingerprint,
        load_finetuned,
        output_is_recorded,
        record_output,
    )

    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder")
    if not checkpoints:
        raise ConfigError("give at least one --checkpoint (or --cv)")
    loaded = [load_finetuned(c, configs, overrides, output) for c in checkpoints]
    _check_same(loaded)
    main = loaded[0]
    systems, dm, trainer, cases = [m.system for m in loaded], main.datamodule, main.trainer, main.cases
    settings = {"root": str(dm.root), **_settings(main)}
    task = settings["task"]
    output.mkdir(parents=True, exist_ok=True)
    models = [{"checkpoint": str(m.checkpoint), "sha256": file_sha256(m.checkpoint)} for m in loaded]
    # what makes a map: the weights, every setting of each model's resolved config that changes what is computed
    # (smoothing, windows, overlap, clipping, label convention ...), and the precision it runs in
    identity = {"models": [m["sha256"] for m in models], "settings": settings,
                "configs": [fingerprint(computation_config(m.config)) for m in loaded],
                "precision": str(trainer.precision)}
    owner = fingerprint(identity)
    Stamp(output, ".medssl_infer.json").claim(identity, "predictions", overwrite)

    dataset = dm.make_dataset(cases, with_labels=False, train=False)
    reference = dm.preprocessing(False).reference_order
    record: dict[str, Any] = {"models": models, "checkpoint": models[0]["checkpoint"], **settings,
                              "cases": {}, "skipped": {}}
    indices = range(len(cases))
    for i in progress(indices) if progress else indices:
        case = cases[i]
        out_path = safe_child(output, f"{case.case_id}.nii.gz")
        record_path = safe_child(output / ".cases", f"{case.case_id}.json")
        ref_path = next((case.images[m] for m in reference if case.images.get(m)), None)
        inputs = case.to_item()["fingerprint"]
        convention = "2023" if getattr(case, "label_convention", None) == "brats2023" else "2021"
        entry: dict[str, Any] = {"path": str(out_path), "reference": str(ref_path)}
        if output_is_recorded(out_path, record_path, inputs, owner):
            logger.info("%s: written before with these models and inputs, not predicted again", case.case_id)
            written = _read_array(out_path)
        else:
            try:
                if ref_path is None:
                    raise DataError(f"none of the reference modalities {list(reference)}", case.case_id)
                item = dataset[i]
            except Exception as e:  # MONAI wraps the reader's error; keep ours, re-raise anything else
                user_error = find_user_error(e)
                if user_error is None:
                    raise
                if dm.on_bad_case == "stop":
                    raise DataError(f"{one_line(user_error)} (set data.on_bad_case skip to leave it out)") from None
                logger.warning("skipping unusable case: %s", one_line(user_error))
                record["skipped"][case.case_id] = one_line(user_error)
                continue
            with ExitStack() as stack:
                stack.enter_context(trainer.precision_plugin.forward_context())
                prob = case_probability(systems, item)
            written = to_output(prob, Grid.from_array(np.asarray(item["grid"])), ref_path, task, convention)
            write_like(written, ref_path, out_path)
            record_output(out_path, record_path, inputs, owner)
            logger.info("%s: wrote %s", case.case_id, out_path)
        if task == "detection":
            entry["case_score"] = float(written.max())
        else:
            values = BRATS_LABELS[convention]
            entry["voxels"] = {name: int((written == value).sum()) for name, value in values.items()}
            entry["label_values"] = values
        record["cases"][case.case_id] = entry
    write_json(output / "predictions.json", record)
    return record


def _read_array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def map_writer(output_dir: str | Path):
    """A Lightning prediction writer for ``medssl predict``: each case's map as ``medssl infer`` writes it
    (``<case_id>.nii.gz`` in the case's own geometry) and ``predictions.json`` at the end."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    output_dir = Path(output_dir)

    class MapWriter(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.record: dict[str, Any] = {"cases": {}}
            self.output_dir = output_dir

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                               dataloader_idx=0) -> None:
            for entry in prediction:
                path = safe_child(output_dir, f"{entry['case_id']}.nii.gz")
                write_like(entry["map"], entry["reference"], path)
                info = {"path": str(path), "reference": str(entry["reference"])}
                if pl_module.task == "detection":
                    info["case_score"] = float(entry["map"].max())
                self.record["cases"][entry["case_id"]] = info
                del entry["map"]  # written: Lightning keeps the returned predictions, the maps need not stay

        def on_predict_epoch_end(self, trainer, pl_module) -> None:
            if trainer.is_global_zero:
                write_json(output_dir / "predictions.json", {"task": pl_module.task, **self.record})
                logger.info("wrote %d map(s) to %s", len(self.record["cases"]), output_dir)

    return MapWriter()
