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
from scipy.ndimage import gaussian_filter

from medssl.data.geometry import Grid, resample_array


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
    from report_guided_annotation import extract_lesion_candidates

    prob = np.asarray(prob)
    check_probabilities(prob)
    det = extract_lesion_candidates(prob.astype(np.float32), threshold=threshold, min_voxels_detection=min_voxels)[0]
    return det.astype(np.float32)


def probability_to_original(prob: np.ndarray, grid: Grid, reference_path: str | os.PathLike) -> np.ndarray:
    """A probability map from the preprocessing grid onto the reference image's grid (linear).

    Args:
        prob: [D, H, W] probabilities on ``grid``.
        grid: the preprocessing grid of the case (``Grid.from_array(load_case(...)["grid"])``).
        reference_path: the case's original reference image (PI-CAI: its T2W ``.mha``).

    Returns:
        float32 [D, H, W] on the reference grid, 0 outside the preprocessing field of view; run
        ``detection_map`` on it so candidates are components of the grid the label lives on.
    """
    check_probabilities(np.asarray(prob))
    out = resample_array(np.asarray(prob, dtype=np.float32), grid, Grid.from_file(reference_path))
    return np.clip(out, 0.0, 1.0)  # linear interpolation is convex; clip float rounding only
