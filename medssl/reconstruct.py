"""BM-MAE reconstruction of the sequences a case lacks, written in the case's own geometry.

For every case and every modality it lacks, the BM-MAE decoder predicts the missing sequence from
the present ones (all present tokens visible, all missing tokens masked; see
``BMMAE.reconstruct``), and the prediction is written in the input's own naming (``output_name``:
``OUT/BraTS-GLI-..-000-t2f.nii.gz`` for BraTS 2023, ``OUT/<case_id>_<modality>.nii.gz`` otherwise) in
the case's own geometry: the grid (size, spacing, origin, direction) of its reference modality
file, the grid every present modality of a BraTS case shares. ``medssl reconstruct``
(``medssl.commands.reconstruct``) runs :func:`run_reconstruct`::

    medssl reconstruct --checkpoint runs/pre/lightning_logs/version_0/checkpoints/last.ckpt \\
        --data.layout brats --data.root /data/BraTS2021 --output recon/

Steps, each the one the rest of the project uses:

1. Weights: ``medssl.weights.load_model`` (our pretraining checkpoint or the official ``bmmae.pth``,
   tensors only; sizes from the shapes, head counts from the run's config or the reference, the
   axis order from the checkpoint's metadata or format).
2. Preprocessing: the data layer's own (``MRIDataModule.preprocessing`` + ``deterministic_transforms``),
   with the settings saved with the weights (spacing, clipping) and the model's ``input_size`` as the
   crop, so the model sees what it saw in pretraining: resampled, centre-cropped (on whole voxels for
   the official weights, as their MONAI pipeline crops), clipped where it was, z-scored over non-zero
   voxels.
3. Back to the case: the prediction lives on the preprocessing grid; one linear physical resampling
   puts it on the reference grid. Voxels outside the model's field of view are 0.
4. Intensities: the model predicts z-scores, and the missing sequence's own mean and standard
   deviation are unknowable. We undo the z-score of the case's reference modality instead,
   ``out = z * std_ref + mean_ref`` with the mean and std over its non-zero voxels as the model saw
   them (resampled onto the preprocessing grid), so values share the units and range of the case's
   other images, and an input passed straight through would come back unchanged. The result is
   clipped at 0 (MR magnitudes are non-negative) and set to 0 outside the union of the present
   modalities' non-zero voxels (the brain mask), as the background of BraTS images is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from medssl import weights
from medssl.data.datamodule import MRIDataModule
from medssl.data.geometry import Grid, resample, resample_array, write_like
from medssl.data.layouts import Case
from medssl.data.preprocess import Preprocessing, read_image, reference_modality
from medssl.data.transforms import case_transform, preprocess_case
from medssl.errors import CheckpointError, ConfigError
from medssl.io import refuse_output_over_inputs
from medssl.models.bmmae import BMMAE
from medssl.models.host import resolve_device

__all__ = ["reconstruct_case", "run_reconstruct", "to_case_intensities"]

_logger = logging.getLogger(__name__)


def to_case_intensities(z: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Map z-scores onto the reference modality's intensities: ``z * std + mean`` over its non-zero voxels.

    Args:
        z: [D, H, W] predicted z-scores on the reference grid.
        reference: the case's reference modality as the model saw it (on the preprocessing grid, not z-scored),
            whose non-zero voxels give the mean and std, as they gave them to its z-score.
        brain: [D, H, W] bool, where the output may be non-zero (brain mask and model field of view).

    Returns:
        float32 [D, H, W], clipped at 0, 0 outside ``brain``.

    Example:
        >>> to_case_intensities(np.zeros((2, 2, 2)), np.full((2, 2, 2), 5.0), np.ones((2, 2, 2), bool)).max()
        5.0
    """
    values = reference[reference != 0].astype(np.float64)
    mean, std = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
    out = np.clip(z * std + mean, 0.0, None)
    return np.where(brain, out, 0.0).astype(np.float32)


def _brain_mask(case: Case, present: list[str], reference: sitk.Image) -> np.ndarray:
    """Union of the present modalities' non-zero voxels, on the reference grid. Returns bool [D, H, W]."""
    target = Grid.from_image(reference)
    mask = np.zeros(target.shape_zyx, bool)
    for m in present:
        image = read_image(case.images[m], case.case_id)
        if Grid.from_image(image).same_as(target):
            mask |= sitk.GetArrayViewFromImage(image) != 0
        else:
            mask |= resample(image, target) != 0
    return mask


def output_name(case: Case, modality: str) -> str:
    """The file name of a written ``modality`` of ``case`` in its data set's own naming.

    Example:
        >>> output_name(Case("BraTS-GLI-00001-000", "p", {}, label_convention="brats2023"), "flair")
        'BraTS-GLI-00001-000-t2f.nii.gz'
    """
    if case.label_convention:  # BraTS: the release's names (t1c, t2f, ... from 2023)
        from medssl.data.layouts.brats import get_convention

        return get_convention(case.label_convention).file_name(case.case_id, modality)
    return f"{case.case_id}_{modality}.nii.gz"


def reconstruct_case(
    model: BMMAE, case: Case, prep: Preprocessing, transform, device: torch.device
) -> tuple[str, dict[str, np.ndarray]]:
    """Predict every modality ``case`` lacks, on the grid of its reference modality file.

    Args:
        model: BMMAE with decoder, in eval mode on ``device``.
        case: a case lacking at least one of ``model.modalities``.
        prep: the preprocessing (``MRIDataModule.preprocessing(with_labels=False)``).
        transform: its deterministic transforms for one case (``medssl.data.transforms.case_transform``).
        device: where the model runs.

    Returns:
        ``(reference path, {modality: float32 [D, H, W] in the reference file's geometry})``.
    """
    item = preprocess_case(transform, case)
    present = [m for m in model.modalities if case.images.get(m)]
    missing = [m for m in model.modalities if not case.images.get(m)]
    image = torch.as_tensor(item["image"], dtype=torch.float32)  # [C, D, H, W], z-scored
    volumes = {m: image[i][None, None].to(device) for i, m in enumerate(prep.modalities) if m in present}
    recon = model.reconstruct(volumes, missing)  # name -> [1, 1, D, H, W] on the preprocessing grid

    ref_path = case.images[reference_modality(case.to_item(), prep)]
    reference = read_image(ref_path, case.case_id)
    target = Grid.from_image(reference)
    grid = Grid.from_array(np.asarray(item["grid"], dtype=np.float64))
    field = resample_array(np.ones(grid.shape_zyx, np.uint8), grid, target, nearest=True) > 0  # field of view
    brain = _brain_mask(case, present, reference) & field
    ref_seen = resample(reference, grid)  # [D, H, W] the reference before its z-score
    out = {}
    for m, volume in recon.items():
        z = resample_array(volume[0, 0].float().cpu().numpy(), grid, target)  # [D, H, W] on the reference grid
        out[m] = to_case_intensities(z, ref_seen, brain)
    return ref_path, out


def run_reconstruct(
    checkpoint: str | os.PathLike,
    layout: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    labels_root: str | None = None,
    config: str | None = None,
    device: str = "auto",
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Write every sequence each case under ``root`` lacks, in the case's own geometry.

    Args:
        checkpoint: BM-MAE weights with their decoder (our pretraining checkpoint or the official file).
        layout: ``brats``, ``picai`` or ``datalist``.
        root: data folder (datalist: the file).
        output: folder for the written sequences, named as the input names them (``output_name``), each written
            atomically.
        labels_root: PI-CAI ``picai_labels`` (discovery only; labels are never read).
        config: the pretraining config, if not found beside the checkpoint.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with each case's entry as soon as it is done (the command prints it).

    Returns:
        ``{"output", "cases": [entry, ...]}``, an entry per case: ``case_id``, ``present``, ``written``
        (modality -> path; empty for a case that has every modality).
    """
    out_dir = Path(output)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--output {out_dir} is a file; give a folder")
    model, meta = weights.load_model(checkpoint, config, with_decoder=True)
    if not isinstance(model, BMMAE) or model.decoder is None:
        raise CheckpointError(f"{checkpoint}: {meta.kind} {meta.net} weights; reconstruction needs a BM-MAE with its "
                              "decoder: a BM-MAE pretraining checkpoint (medssl fit --config "
                              "configs/pretrain/bmmae_*.yaml) or the official bmmae.pth")
    run_on = resolve_device(device)
    model.to(run_on).eval()
    data = MRIDataModule(layout=layout, root=str(root), labels_root=labels_root, modalities=list(model.modalities),
                         spacing=meta.spacing, spatial_size=list(model.input_size), cache_dir=None,
                         augmentation=None, clip_percentiles=meta.clip_percentiles,
                         normalize=meta.normalize)
    cases = data.discover()
    refuse_output_over_inputs(out_dir, [*data.input_paths(cases), checkpoint])
    prep = data.preprocessing(with_labels=False)
    transform = case_transform(prep, voxel_aligned=bool(meta.voxel_aligned))
    record: dict[str, Any] = {"output": str(out_dir), "cases": []}
    for case in cases:
        present = [m for m in model.modalities if case.images.get(m)]
        entry: dict[str, Any] = {"case_id": case.case_id, "present": present, "written": {}}
        if len(present) < len(model.modalities):
            ref_path, volumes = reconstruct_case(model, case, prep, transform, run_on)
            for m, array in volumes.items():
                target = out_dir / output_name(case, m)
                write_like(array, ref_path, target)
                entry["written"][m] = str(target)
            _logger.info("%s: wrote %s", case.case_id, ", ".join(entry["written"]))
        record["cases"].append(entry)
        if on_case is not None:
            on_case(entry)
    return record
