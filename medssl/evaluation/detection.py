"""From a lesion-likelihood map on the preprocessing grid to a PI-CAI detection map on the case's own grid.

PI-CAI scores detection maps (each lesion candidate one connected component of constant
confidence) on the original T2W grid of each case. The network predicts on the preprocessing grid
(see ``medssl.data.preprocess``), so the probability map goes back to the T2W grid with one
linear physical resampling and candidates are extracted there: they are then connected
components of the grid the labels live on. Resampling a finished detection map instead needs
nearest-neighbour interpolation (to keep confidences constant) and can split or merge candidates.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from report_guided_annotation import extract_lesion_candidates
from scipy.ndimage import gaussian_filter

from medssl.data.preprocess import GRID_LEN, image_on_grid, resample_to_grid
from medssl.errors import DataError
from medssl.evaluation.files import atomic_target


def smooth(prob: np.ndarray, sigma: float | Sequence[float] = 1.5) -> np.ndarray:
    """Gaussian smoothing of a probability map before candidate extraction (as the PI-CAI baselines do).

    Args:
        prob: [D, H, W] probabilities.
        sigma: standard deviation in voxels, one value or one per axis ``[D, H, W]`` (thick slices
            want a smaller sigma along D).

    Returns:
        float32 [D, H, W], still in [0, 1] (the kernel is a weighted mean).

    Example:
        >>> smooth(np.random.rand(8, 32, 32), sigma=(0.5, 1.5, 1.5)).shape
        (8, 32, 32)
    """
    return gaussian_filter(np.asarray(prob, dtype=np.float32), sigma=sigma, mode="nearest")


def check_probabilities(prob: np.ndarray) -> None:
    """Refuse a map that is not a probability map: logits are the usual mistake."""
    if prob.ndim != 3:
        raise ValueError(f"expected a 3-D probability map [D, H, W], got shape {tuple(prob.shape)}")
    if not np.isfinite(prob).all():
        raise ValueError("probability map has NaN or Inf voxels")
    low, high = float(prob.min()), float(prob.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"probability map has values in [{low:.3g}, {high:.3g}], outside [0, 1]: these look like logits; "
            "apply softmax (or sigmoid) once before extracting lesion candidates"
        )


def detection_map(prob: np.ndarray, threshold: str | float = "dynamic", min_voxels: int = 10) -> np.ndarray:
    """PI-CAI detection map: lesion candidates as connected components of constant confidence.

    Args:
        prob: [D, H, W] lesion probabilities in [0, 1] (softmax of the lesion class, never logits).
        threshold: ``"dynamic"`` (the protocol for reported numbers), ``"dynamic-fast"`` (drops
            candidates whose peak is below 40% of the case maximum) or a static float threshold.
        min_voxels: candidates of this many voxels or fewer are dropped.

    Returns:
        float32 [D, H, W]: 0 outside candidates, each candidate filled with its confidence (its peak).

    Example:
        >>> det = detection_map(smooth(prob))  # then write_image_like(det, t2w_path, out_path)
    """
    prob = np.asarray(prob)
    check_probabilities(prob)
    det = extract_lesion_candidates(prob.astype(np.float32), threshold=threshold, min_voxels_detection=min_voxels)[0]
    return det.astype(np.float32)


def grid_of_file(path: str | os.PathLike, case_id: str | None = None) -> np.ndarray:
    """The grid (see ``medssl.data.preprocess.grid_of``) of an image file, read from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise DataError("cannot read image header (missing, corrupt or not an image?)", case_id, str(path)) from None
    if reader.GetDimension() != 3:
        raise DataError(f"expected a 3-D image, got {reader.GetDimension()}-D", case_id, str(path))
    return np.concatenate(
        [reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection(), reader.GetSize()]
    ).astype(np.float64)


def to_grid(array: np.ndarray, grid: np.ndarray, target: np.ndarray, nearest: bool = False) -> np.ndarray:
    """``array`` ([D, H, W] on ``grid``) resampled physically onto ``target``; outside ``grid`` is 0."""
    grid = np.asarray(grid, dtype=np.float64)
    if grid.shape != (GRID_LEN,):
        raise ValueError(f"grid should have {GRID_LEN} values (origin, spacing, direction, size), got {grid.shape}")
    expected = tuple(int(s) for s in grid[15:18][::-1])
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match the grid's size [D, H, W] {expected}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return resample_to_grid(image_on_grid(array, grid), target, nearest=nearest)


def probability_to_original(prob: np.ndarray, grid: np.ndarray, reference_path: str | os.PathLike) -> np.ndarray:
    """A probability map from the preprocessing grid onto the reference image's grid (linear).

    Args:
        prob: [D, H, W] probabilities on ``grid``.
        grid: the preprocessing grid of the case (``load_case(...)["grid"]``).
        reference_path: the case's original reference image (PI-CAI: its T2W ``.mha``).

    Returns:
        float32 [D, H, W] on the reference grid, 0 outside the preprocessing field of view; run
        ``detection_map`` on it so candidates are components of the grid the label lives on.
    """
    check_probabilities(np.asarray(prob))
    out = to_grid(np.asarray(prob, dtype=np.float32), grid, grid_of_file(reference_path))
    return np.clip(out, 0.0, 1.0)  # linear interpolation is convex; clip float rounding only


def write_image_like(array: np.ndarray, reference_path: str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Write ``array`` with the reference image's geometry, atomically (temporary name, then rename).

    Args:
        array: [D, H, W] on the reference grid (its size reversed, as SimpleITK orders arrays).
        reference_path: the image whose origin, spacing and direction are copied.
        out_path: ``.nii.gz`` (or any SimpleITK format), written compressed.
    """
    grid = grid_of_file(reference_path)
    expected = tuple(int(s) for s in grid[15:18][::-1])
    if array.shape != expected:
        raise ValueError(f"array shape {array.shape} does not match {reference_path}'s size [D, H, W] {expected}")
    image = image_on_grid(array.astype(np.uint8) if array.dtype == bool else array, grid)
    with atomic_target(out_path) as tmp:
        sitk.WriteImage(image, tmp, True)


def write_in_original_geometry(
    array: np.ndarray,
    grid: np.ndarray,
    reference_path: str | os.PathLike,
    out_path: str | os.PathLike,
    nearest: bool = False,
) -> np.ndarray:
    """Resample a map from the preprocessing grid onto the reference image's grid and write it atomically.

    For detection maps prefer ``detection_map(probability_to_original(...))`` then ``write_image_like``;
    if a detection map must be resampled, pass ``nearest=True`` so candidate confidences stay constant.

    Args:
        array: [D, H, W] on ``grid``.
        grid: the preprocessing grid of the case.
        reference_path: the case's original reference image.
        out_path: where to write (``.nii.gz``).
        nearest: nearest-neighbour instead of linear interpolation (labels, detection maps).

    Returns:
        The written array, [D, H, W] on the reference grid.
    """
    out = to_grid(np.asarray(array), grid, grid_of_file(reference_path), nearest=nearest)
    write_image_like(out, reference_path, out_path)
    return out
