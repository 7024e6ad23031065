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
from typing import Any

import numpy as np
import SimpleITK as sitk

from medssl.data.layouts import LABEL_MAX, REFERENCE_ORDER
from medssl.errors import DataError

PREPROCESS_VERSION = 1
GRID_LEN = 18  # origin 3, spacing 3, direction 9, size 3 (all x, y, z as ITK orders them)


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
    """

    modalities: tuple[str, ...]
    reference_order: tuple[str, ...]
    require_reference: bool = True
    spacing: tuple[float, float, float] | None = None
    spatial_size: tuple[int, int, int] | None = None
    label_mode: str = "binary"
    label_values: tuple[int, ...] = (0, 1, 2, 3, 4, 5)

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": PREPROCESS_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def preprocessing_for(
    layout: str,
    modalities: list[str],
    with_labels: bool,
    task: str = "detection",
    spacing: tuple[float, float, float] | None = None,
    spatial_size: tuple[int, int, int] | None = None,
) -> Preprocessing:
    """The preprocessing settings of a layout: its reference grid, its label values and encoding."""
    if layout in REFERENCE_ORDER:
        reference_order = tuple(m for m in REFERENCE_ORDER[layout] if m in modalities) or tuple(modalities)
    else:
        reference_order = tuple(modalities)
    label_mode = ("brats_regions" if task == "segmentation" else "binary") if with_labels else "none"
    values = (0, 1, 2, 4) if layout == "brats" else tuple(range(LABEL_MAX.get(layout, 255) + 1))
    return Preprocessing(tuple(modalities), reference_order, layout == "picai", spacing, spatial_size, label_mode,
                         values)


def read_image(path: str, case_id: str | None = None) -> sitk.Image:
    """A 3-D scalar image with finite voxels, or a DataError naming the case and file."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = next((ln.strip() for ln in str(e).splitlines() if "ERROR" in ln or "rror" in ln), "")
        raise DataError(f"cannot read image (corrupt or truncated?) {first[:160]}".rstrip(),
                        case_id, path) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"expected a 3-D single-channel image, got {image.GetDimension()}-D with "
            f"{image.GetNumberOfComponentsPerPixel()} components", case_id, path)
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{bad} NaN or Inf voxels", case_id, path)
    return image


def grid_of(image: sitk.Image) -> np.ndarray:
    """The geometry of ``image`` as 18 floats: origin, spacing, direction, size (x, y, z)."""
    return np.concatenate([image.GetOrigin(), image.GetSpacing(), image.GetDirection(), image.GetSize()]).astype(
        np.float64
    )


def image_on_grid(array: np.ndarray, grid: np.ndarray) -> sitk.Image:
    """A SimpleITK image of ``array`` ([D, H, W]) placed on ``grid`` (see ``grid_of``)."""
    grid = np.asarray(grid, dtype=np.float64)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin(tuple(grid[0:3]))
    image.SetSpacing(tuple(grid[3:6]))
    image.SetDirection(tuple(grid[6:15]))
    return image


def same_grid(a: sitk.Image, b: sitk.Image, tol_mm: float = 1e-2) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-3, atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-3)
    )


def target_grid(reference: sitk.Image, spacing=None, spatial_size=None) -> np.ndarray:
    """The grid a case is resampled onto: the reference's orientation, centred on its centre."""
    ref_size = np.array(reference.GetSize(), dtype=np.float64)
    ref_spacing = np.array(reference.GetSpacing(), dtype=np.float64)
    direction = np.array(reference.GetDirection(), dtype=np.float64).reshape(3, 3)
    new_spacing = ref_spacing if spacing is None else np.array(spacing, dtype=np.float64)[::-1]  # [D,H,W] -> xyz
    if spatial_size is None:
        new_size = np.maximum(np.round(ref_size * ref_spacing / new_spacing), 1)
    else:
        new_size = np.array(spatial_size, dtype=np.float64)[::-1]
    centre = np.array(reference.GetOrigin()) + direction @ (ref_spacing * (ref_size - 1) / 2)
    origin = centre - direction @ (new_spacing * (new_size - 1) / 2)
    return np.concatenate([origin, new_spacing, direction.ravel(), new_size])


def resample_to_grid(image: sitk.Image, grid: np.ndarray, nearest: bool = False) -> np.ndarray:
    """``image`` resampled physically onto ``grid``; outside its field of view is 0. Returns [D, H, W]."""
    grid = np.asarray(grid, dtype=np.float64)
    out = sitk.Resample(
        image,
        [int(s) for s in grid[15:18]],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        tuple(grid[0:3]),
        tuple(grid[3:6]),
        tuple(grid[6:15]),
        0.0,
        sitk.sitkFloat32 if not nearest else image.GetPixelID(),
    )
    return sitk.GetArrayFromImage(out)


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


def check_label(label: sitk.Image, reference: sitk.Image, prep: Preprocessing, case_id: str, path: str) -> None:
    """Refuse a label whose grid is not the reference's or whose values are out of range."""
    if not same_grid(label, reference):
        raise DataError(
            f"label grid (size {label.GetSize()}, spacing {tuple(round(s, 3) for s in label.GetSpacing())}) "
            f"does not match the reference image's (size {reference.GetSize()}, "
            f"spacing {tuple(round(s, 3) for s in reference.GetSpacing())})", case_id, path)
    array = sitk.GetArrayViewFromImage(label)
    values = np.unique(array)
    bad = [v for v in values.tolist() if v not in prep.label_values]
    if bad:
        raise DataError(f"label values {bad[:5]} outside the allowed {list(prep.label_values)}", case_id, path)


def encode_label(label: np.ndarray, mode: str) -> np.ndarray:
    """[D, H, W] values -> [L, D, H, W] uint8: binary lesion mask or BraTS TC, WT, ET."""
    if mode == "binary":
        return (label >= 1)[None].astype(np.uint8)
    if mode == "brats_regions":
        tc = np.isin(label, (1, 4))
        wt = np.isin(label, (1, 2, 4))
        et = label == 4
        return np.stack([tc, wt, et]).astype(np.uint8)
    raise ValueError(f"label_mode {mode!r}: choose binary, brats_regions or none")


def load_case(item: dict[str, Any], prep: Preprocessing) -> dict[str, Any]:
    """Read and resample one case.

    Returns:
        ``image`` float32 [C, D, H, W] (zeros for absent modalities), ``modality_mask`` bool [C],
        ``label`` uint8 [L, D, H, W] when the case has one and labels are wanted, ``grid``
        (the target grid, see ``grid_of``), ``case_id`` and ``patient_id``.
    """
    case_id = item["case_id"]
    ref_name = reference_modality(item, prep)
    reference = read_image(item["images"][ref_name], case_id)
    grid = target_grid(reference, prep.spacing, prep.spatial_size)
    size = [int(s) for s in grid[15:18][::-1]]  # [D, H, W]
    channels, mask = [], []
    for m in prep.modalities:
        path = item["images"].get(m)
        if path is None:
            channels.append(np.zeros(size, np.float32))
            mask.append(False)
            continue
        image = reference if m == ref_name else read_image(path, case_id)
        channels.append(resample_to_grid(image, grid).astype(np.float32))
        mask.append(True)
    out = {
        "case_id": case_id,
        "patient_id": item.get("patient_id", case_id),
        "image": np.stack(channels),  # [C, D, H, W]
        "modality_mask": np.array(mask, dtype=bool),
        "grid": grid,
    }
    if prep.label_mode != "none" and item.get("label"):
        label_image = read_image(item["label"], case_id)
        check_label(label_image, reference, prep, case_id, item["label"])
        out["label"] = encode_label(resample_to_grid(label_image, grid, nearest=True), prep.label_mode)
    return out
