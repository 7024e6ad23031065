"""Deterministic preprocessing: read each modality, resample it physically onto one grid.

MONAI's readers need ITK for MetaImage (.mha) and know nothing of a case whose modalities live
on different grids, so reading and resampling go through SimpleITK, which resamples with each
image's origin, spacing and direction (never by resizing arrays). The target grid is the
reference modality's orientation, the configured spacing, and the configured size centred on
the reference image, so one physical resampling does the resample, the crop and the pad, and
a prediction on that grid goes back to the case's own geometry with one more resampling.

Array axes are SimpleITK's: ``[D, H, W] = [z, y, x]``; ``spacing`` and ``spatial_size`` are
given in that order too (PI-CAI's 0.5 x 0.5 x 3.0 mm is ``[3.0, 0.5, 0.5]``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medssl.data.geometry import Grid, resample
from medssl.data.integrity import MIN_OVERLAP, check_overlap
from medssl.data.layouts import get_layout
from medssl.data.layouts.brats import CONVENTIONS, get_convention
from medssl.errors import DataError, one_line

# 2: items carry their reference image's path; 3: incomplete files, impossible geometry and modalities off the
# target grid are refused (a cache built from a cut file must not be reused); 4: items carry their label convention
PREPROCESS_VERSION = 4
NORMALIZE = ("nonzero", "all")  # data.normalize: the z-score's voxels (Preprocessing.normalize)
MAX_CASE_BYTES = 16 * 2**30  # one preprocessed case larger than this is a spacing mistake, not data


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides a preprocessed case, and so keys the disk cache.

    Args:
        modalities: channel order.
        reference_order: candidates for the reference grid, first present wins.
        require_reference: error when the first of ``reference_order`` is absent (PI-CAI's t2w).
        spacing: target spacing in mm along ``[D, H, W]``; ``None`` keeps the reference's.
        spatial_size: target size ``[D, H, W]``; ``None`` keeps the reference's extent.
        label_mode: ``binary`` (label >= 1), ``brats_regions`` (TC, WT, ET) or ``none``.
        label_values: allowed label values.
        clip_percentiles: clip each modality to these percentiles before the z-score (PI-CAI baseline:
            ``(0.5, 99.5)``); ``None`` = no clipping.
        voxel_aligned: start the centre crop on a whole voxel as MONAI's ``CenterSpatialCrop`` does
            (``Grid.centred_subgrid``), where the spacing is the reference's: the official BM-MAE pipeline's
            crop. medssl's own runs crop at the exact centre (``False``).
        normalize: the z-score's voxels, per modality: ``nonzero`` (mean and std of the non-zero voxels, zeros
            stay 0: BM-MAE's reference pipeline, MONAI's ``nonzero=True``) or ``all`` (every voxel of the volume,
            background included: the PI-CAI baseline's ``z_score_norm``).
    """

    modalities: tuple[str, ...]
    reference_order: tuple[str, ...]
    require_reference: bool = True
    spacing: tuple[float, float, float] | None = None
    spatial_size: tuple[int, int, int] | None = None
    label_mode: str = "binary"
    label_values: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    clip_percentiles: tuple[float, float] | None = None
    voxel_aligned: bool = False
    normalize: str = "nonzero"

    def key(self) -> str:
        settings = asdict(self)
        if settings["normalize"] == "nonzero":  # the setting older caches were made with: their keys stay valid
            del settings["normalize"]
        blob = json.dumps({**settings, "version": PREPROCESS_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def preprocessing_for(
    layout: str,
    modalities: list[str],
    with_labels: bool,
    task: str = "detection",
    spacing: tuple[float, float, float] | None = None,
    spatial_size: tuple[int, int, int] | None = None,
    clip_percentiles: tuple[float, float] | None = None,
    voxel_aligned: bool = False,
    normalize: str = "nonzero",
) -> Preprocessing:
    """The preprocessing settings of a layout (``medssl.data.layouts.LAYOUTS``): its reference grid, its label
    values (BraTS: each case's own convention is checked in ``check_label``) and the label encoding."""
    entry = get_layout(layout)
    label_mode = ("brats_regions" if task == "segmentation" else "binary") if with_labels else "none"
    return Preprocessing(tuple(modalities), entry.reference_for(modalities), entry.reference_required, spacing,
                         spatial_size, label_mode, entry.label_values,
                         tuple(clip_percentiles) if clip_percentiles else None, voxel_aligned, normalize)


def _read_dicom_series(folder: str, case_id: str | None) -> sitk.Image:
    """A folder holding exactly one DICOM series, read with SimpleITK's series reader."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise DataError("is a folder with no DICOM series (expected an image file)", case_id, folder)
    if len(series) > 1:
        raise DataError(f"DICOM series found: {len(series)} series in one folder; give the folder of one series, "
                        "or convert the export to the PI-CAI layout with picai_prep (dcm2mha)", case_id, folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    try:
        return reader.Execute()
    except RuntimeError as e:
        raise DataError(f"DICOM series found but it cannot be read as one volume ({one_line(e)[:120]})",
                        case_id, folder) from None


def _is_dicom_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def read_image(path: str, case_id: str | None = None, channel: int | None = None) -> sitk.Image:
    """A complete 3-D scalar image with finite voxels and a sane geometry, or a DataError naming case and file.

    Args:
        path: an image file, or a folder holding one DICOM series.
        case_id: named in errors.
        channel: for a 4-D (multi-channel) file, the channel to take (decathlon datalists).
    """
    from medssl.data.integrity import check_complete, check_finite_stored, check_geometry

    if Path(path).is_dir():
        image = _read_dicom_series(path, case_id)
    else:
        if _is_dicom_file(path):
            raise DataError("DICOM series found (a single .dcm slice): give the folder holding the series, or "
                            "convert the export to the PI-CAI layout with picai_prep (dcm2mha)", case_id, path)
        check_complete(path, case_id)  # SimpleITK zero-fills a cut gzip stream and raises nothing
        check_finite_stored(path, case_id)  # ... and reads a NIfTI's NaN voxels as 0
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as e:
            first = next((ln.strip() for ln in str(e).splitlines() if "ERROR" in ln or "rror" in ln), "")
            raise DataError(f"cannot read image (corrupt or truncated?) {first[:160]}".rstrip(),
                            case_id, path) from None
    if channel is not None:
        image = _channel_of(image, channel, case_id, path)
    check_geometry(image, case_id, path)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"expected a 3-D single-channel image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components", case_id, path)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{bad} NaN or Inf voxels", case_id, path)
    return image


def _channel_of(image: sitk.Image, channel: int, case_id: str | None, path: str) -> sitk.Image:
    """Channel ``channel`` of a 4-D image (or of a 3-D vector image) as a 3-D image with its geometry."""
    if image.GetDimension() == 4:
        count = image.GetSize()[3]
        if not 0 <= channel < count:
            raise DataError(f"channel {channel} asked for, but the 4-D image has {count}", case_id, path)
        size = list(image.GetSize())
        size[3] = 0
        return sitk.Extract(image, size, [0, 0, 0, channel])
    if image.GetNumberOfComponentsPerPixel() > 1:
        count = image.GetNumberOfComponentsPerPixel()
        if not 0 <= channel < count:
            raise DataError(f"channel {channel} asked for, but the image has {count} components", case_id, path)
        return sitk.VectorIndexSelectionCast(image, channel)
    if channel != 0:
        raise DataError(f"channel {channel} asked for, but the image has one channel", case_id, path)
    return image


def reference_modality(item: dict[str, Any], prep: Preprocessing) -> str:
    case_id = item["case_id"]
    images = item["images"]
    if prep.require_reference and not images.get(prep.reference_order[0]):
        raise DataError(f"no {prep.reference_order[0]} image (the reference modality)", case_id)
    for m in prep.reference_order:
        if images.get(m):
            return m
    present = [m for m in prep.modalities if images.get(m)]
    if not present:
        raise DataError(f"no image of any modality {list(prep.modalities)}", case_id)
    return present[0]


def check_label(label: sitk.Image, reference: sitk.Image, prep: Preprocessing, case_id: str, path: str,
                convention: str | None = None) -> None:
    """Refuse a label whose grid is not the reference's or whose values are out of range (BraTS: of its
    convention, so a 2021 set's label 3 or a 2023 set's label 4 is an error, never a dropped region)."""
    if not Grid.from_image(label).same_as(Grid.from_image(reference)):
        raise DataError(
            f"label grid (size {label.GetSize()}, spacing {tuple(round(s, 3) for s in label.GetSpacing())}) "
            f"does not match the reference image's (size {reference.GetSize()}, "
            f"spacing {tuple(round(s, 3) for s in reference.GetSpacing())})", case_id, path)
    array = sitk.GetArrayViewFromImage(label)
    values = np.unique(array)
    allowed = CONVENTIONS[convention].values if convention in CONVENTIONS else prep.label_values
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        note = f" for {convention} labels (set data.brats_labels if the naming misleads)" if convention else ""
        if convention == "brats2023" and bad == [4]:
            note = (" for BraTS 2023 labels: if label 4 is BraTS 2024 GLI's resection cavity, set data.brats_labels "
                    "2024-gli (--brats-labels 2024-gli)")
        raise DataError(f"label values {bad[:5]} outside the allowed {list(allowed)}{note}", case_id, path)


def encode_label(label: np.ndarray, mode: str, convention: str | None = None) -> np.ndarray:
    """[D, H, W] values -> [L, D, H, W] uint8: binary lesion mask or BraTS TC, WT, ET.

    BraTS regions come from MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` with the case's
    enhancing-tumour label (4 for BraTS 2021, 3 for 2023+; its default 4 drops 2023's ET silently).
    """
    if mode == "binary":
        return (label >= 1)[None].astype(np.uint8)
    if mode == "brats_regions":
        from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

        et_label = get_convention(convention).et
        return np.asarray(ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)(label)).astype(np.uint8)
    raise ValueError(f"label_mode {mode!r}: choose binary, brats_regions or none")


def channel_of(item: dict[str, Any], modality: str) -> int | None:
    """The channel of ``modality`` in a 4-D file (decathlon datalists), or None for a 3-D file."""
    channels = item.get("channels") or {}
    return channels.get(modality)


def load_case(item: dict[str, Any], prep: Preprocessing) -> dict[str, Any]:
    """Read and resample one case.

    Returns:
        ``image`` float32 [C, D, H, W] (zeros for absent modalities), ``modality_mask`` bool [C],
        ``label`` uint8 [L, D, H, W] when the case has one and labels are wanted, ``grid``
        (the target grid as ``Grid.to_array``), ``case_id`` and ``patient_id``.
    """
    case_id = item["case_id"]
    ref_name = reference_modality(item, prep)
    reference = read_image(item["images"][ref_name], case_id, channel_of(item, ref_name))
    ref_grid = Grid.from_image(reference)
    grid = ref_grid.centred_subgrid(prep.spacing, prep.spatial_size, voxel_aligned=prep.voxel_aligned)
    needed = int(np.prod(grid.size, dtype=np.float64)) * 4 * (len(prep.modalities) + 1)
    if needed > MAX_CASE_BYTES:  # estimated before resampling: one line, not a MemoryError mid-way
        raise DataError(f"its target grid would be {grid.describe()} = {needed / 2**30:.1f} GiB of float32 channels; "
                        "check data.spacing (mm, [D, H, W]) and data.spatial_size", case_id)
    size = grid.shape_zyx
    channels, mask = [], []
    for m in prep.modalities:
        path = item["images"].get(m)
        if path is None:
            channels.append(np.zeros(size, np.float32))
            mask.append(False)
            continue
        image = reference if m == ref_name else read_image(path, case_id, channel_of(item, m))
        if m != ref_name:  # a modality placed elsewhere would resample to zeros marked present
            check_overlap(Grid.from_image(image), grid, MIN_OVERLAP, case_id, path, within=ref_grid)
        channels.append(resample(image, grid).astype(np.float32))
        mask.append(True)
    out = {
        "case_id": case_id,
        "patient_id": item.get("patient_id", case_id),
        "image": np.stack(channels),  # [C, D, H, W]
        "modality_mask": np.array(mask, dtype=bool),
        "reference": item["images"][ref_name],  # the file whose grid predictions go back to
        "label_convention": item.get("label_convention") or "",  # BraTS: the label values predictions are written in
        "grid": grid.to_array(),  # Grid.from_array(item["grid"]); arrays collate, dataclasses do not
    }
    if prep.label_mode != "none" and item.get("label"):
        label_image = read_image(item["label"], case_id)
        other = item.get("label_grid")
        if other and other != ref_name:
            # a label stored on another modality's grid (Prostate158: the ADC grid): nearest neighbour onto
            # the reference grid, physically, then checked there like any other label
            label_image = Grid.from_image(reference).image(resample(label_image, Grid.from_image(reference),
                                                                    nearest=True))
        convention = item.get("label_convention")
        check_label(label_image, reference, prep, case_id, item["label"], convention)
        out["label"] = encode_label(resample(label_image, grid, nearest=True), prep.label_mode, convention)
    return out
