"""Finetuned models on cases: one model or a fold ensemble, maps written in each case's own geometry.

- Every model comes from ``medssl.runs.load_finetuned`` (the net from ``medssl.weights.load_model``, the
  system from the config saved with its weights, the data settings checked against the ones saved in
  them). The models of an ensemble must share modalities, spacing and crop (they then share one
  preprocessing); their probability maps are averaged on the preprocessing grid, each after its own
  flip TTA, before lesion extraction (detection) or thresholding (segmentation).
- Detection (PI-CAI) writes the PI-CAI detection map ``OUT/<case_id>.nii.gz`` on the case's T2W
  grid; segmentation (BraTS) a label map on the reference grid with the input data set's label
  values (1 necrotic core, 2 oedema, 4 enhancing tumour; 3 for BraTS 2023+). Both come back from
  the preprocessing grid by one physical resampling.
- The systems own the prediction of a case (``case_probability``, ``to_output``, ``case_summary``); this module
  only loops over cases, averages an ensemble, writes and records.
- An output folder belongs to one set of weights and settings (``.medssl_infer.json``); each written
  map has a record (``.cases/<case_id>.json``: the inputs' fingerprint and the map's sha256), so a
  rerun skips a case only when its map is the one recorded and its inputs did not change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from medssl.data.geometry import Grid, write_like
from medssl.errors import ConfigError, DataError, find_user_error, one_line
from medssl.io import refuse_output_over_inputs, safe_child, write_json
from medssl.records import Stamp, fingerprint, output_is_recorded, record_output
from medssl.runs import computation_config, load_finetuned
from medssl.systems.writer import prediction_record, prediction_settings

logger = logging.getLogger(__name__)

# Settings the models of an ensemble must share: they then share one preprocessing.
SHARED = ("modalities", "spacing", "spatial_size", "clip_percentiles", "voxel_aligned", "normalize", "task")


def ensemble_probability(systems: Sequence[Any], item: dict[str, Any]) -> np.ndarray:
    """The mean of the systems' ``case_probability`` for one preprocessed case, on its preprocessing grid (each
    system on its own device under the caller's precision context)."""
    total = None
    for system in systems:
        prob = system.case_probability(item).astype(np.float64)
        total = prob if total is None else total + prob
    return (total / len(systems)).astype(np.float32)


def _check_same(loaded: list) -> None:
    first = prediction_settings(loaded[0].system, loaded[0].datamodule)
    for other in loaded[1:]:
        theirs = prediction_settings(other.system, other.datamodule)
        for key in SHARED:
            if theirs[key] != first[key]:
                raise ConfigError(f"the models disagree on {key}: {loaded[0].checkpoint} has {first[key]}, "
                                  f"{other.checkpoint} has {theirs[key]}; an ensemble needs one preprocessing")


def present_channels(modalities: Sequence[str], present: Sequence[str] | None) -> list[bool] | None:
    """Which channels of ``modalities`` a model is shown (``run_infer``'s ``present``); None: all of them."""
    if present is None:
        return None
    unknown = [m for m in present if m not in modalities]
    if unknown or not present or len(set(present)) != len(present):
        raise ConfigError(f"modalities {list(present)}: give a non-empty subset of the models' modalities "
                          f"{list(modalities)}, each once")
    return [m in present for m in modalities]


def shown(item: dict[str, Any], keep: list[bool] | None) -> dict[str, Any]:
    """A preprocessed case with the channels not kept zeroed and masked out: what a case without them is."""
    if keep is None:
        return item
    image = torch.as_tensor(item["image"]).clone()
    mask = torch.as_tensor(item["modality_mask"], dtype=torch.bool).clone()
    for c, kept in enumerate(keep):
        if not kept:
            image[c] = 0
            mask[c] = False
    return {**item, "image": image, "modality_mask": mask}


def run_infer(checkpoints: Sequence[str | Path], output: str | Path, configs: list[str] | None = None,
              overrides: dict[str, Any] | None = None, overwrite: bool = False, progress=None,
              device: str = "auto", present: Sequence[str] | None = None,
              case_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Predict every case under ``data.root`` with one model or the mean of several; returns ``predictions.json``.

    Args:
        checkpoints: finetuned checkpoints (several: a fold ensemble).
        output: the output folder.
        configs: the runs' config (default: the config saved in each checkpoint, else its run's).
        overrides: options over the saved config, in resolved form (``medssl.runs.parse_overrides``).
        overwrite: redo a folder another model or other settings wrote.
        progress: an iterable wrapper (e.g. a progress bar) over the cases.
        device: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.
        present: the modalities the models are shown (the others as if the case lacked them: zero channels,
            masked out), for the missing-modality table (``medssl.subsets``); None: every modality a case has.
            The maps stay on each case's own grid.
        case_ids: predict only these cases of the data (None: every case).
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; give a folder")
    if not checkpoints:
        raise ConfigError("give at least one --checkpoint (or --cv)")
    loaded = [load_finetuned(c, configs, overrides, output, device) for c in checkpoints]
    _check_same(loaded)
    main = loaded[0]
    systems, dm, trainer, cases = [m.system for m in loaded], main.datamodule, main.trainer, main.cases
    if case_ids is not None:
        unknown = sorted(set(case_ids) - {c.case_id for c in cases})
        if unknown:
            raise ConfigError(f"case(s) {', '.join(unknown[:5])} are not in {dm.root}")
        cases = [c for c in cases if c.case_id in set(case_ids)]
    keep = present_channels(dm.modalities, present)
    record = prediction_record([m.checkpoint for m in loaded], {**prediction_settings(main.system, dm),
                                                                **({"present": list(present)} if present else {})})
    settings = {k: v for k, v in record.items() if k not in ("models", "checkpoint", "cases", "skipped")}
    refuse_output_over_inputs(output, [*dm.input_paths(cases), *(m.checkpoint for m in loaded)])
    output.mkdir(parents=True, exist_ok=True)
    # what makes a map: the weights, every setting of each model's resolved config that changes what is computed
    # (smoothing, windows, overlap, clipping, label convention ...), and the precision it runs in
    identity = {"models": [m["sha256"] for m in record["models"]], "settings": settings,
                "configs": [fingerprint(computation_config(m.config)) for m in loaded],
                "precision": str(trainer.precision)}
    owner = fingerprint(identity)
    Stamp(output, ".medssl_infer.json").claim(identity, "predictions", overwrite)

    dataset = dm.make_dataset(cases, with_labels=False, train=False)
    reference = dm.preprocessing(False).reference_order
    indices = range(len(cases))
    for i in progress(indices) if progress else indices:
        case = cases[i]
        out_path = safe_child(output, f"{case.case_id}.nii.gz")
        record_path = safe_child(output / ".cases", f"{case.case_id}.json")
        ref_path = next((case.images[m] for m in reference if case.images.get(m)), None)
        inputs = case.to_item()["fingerprint"]
        convention = getattr(case, "label_convention", None)
        entry: dict[str, Any] = {"path": str(out_path), "reference": str(ref_path)}
        if output_is_recorded(out_path, record_path, inputs, owner):
            logger.info("%s: written before with these models and inputs, not predicted again", case.case_id)
            written = sitk.GetArrayFromImage(sitk.ReadImage(str(out_path)))
        else:
            try:
                if ref_path is None:
                    raise DataError(f"none of the reference modalities {list(reference)}", case.case_id)
                item = shown(dataset[i], keep)
            except Exception as e:  # MONAI wraps the reader's error; keep ours, re-raise anything else
                user_error = find_user_error(e)
                if user_error is None:
                    raise
                if dm.on_bad_case == "stop":
                    raise DataError(f"{one_line(user_error)} (set data.on_bad_case skip to leave it out)") from None
                logger.warning("skipping unusable case: %s", one_line(user_error))
                record["skipped"][case.case_id] = one_line(user_error)
                continue
            with trainer.precision_plugin.forward_context():
                prob = ensemble_probability(systems, item)
            written = main.system.to_output(prob, Grid.from_array(np.asarray(item["grid"])), ref_path, convention)
            write_like(written, ref_path, out_path)
            record_output(out_path, record_path, inputs, owner)
            logger.info("%s: wrote %s", case.case_id, out_path)
        record["cases"][case.case_id] = {**entry, **main.system.case_summary(written, convention)}
    write_json(output / "predictions.json", record)
    return record
