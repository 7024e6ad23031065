"""A small shipped set of BraTS 2023-convention (prediction, label) pairs for the lesion-wise metrics, made the same
way each time: every rule of the official code is exercised (empty truth, false positives only, a missed lesion, two
lesions merged by dilation, a lesion under the 50 mm3 threshold with a prediction touching it, anisotropic voxels).

``brats2023_official.json`` beside this file holds the official BraTS-2023-Metrics code's numbers on these cases;
``make_brats2023_reference.py`` recomputes them from a checkout of that repository.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (30, 40, 40)  # [z, y, x]


def _ball(centre, radius, shape=SHAPE, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), centre, scale))
    return d <= radius**2


def _tumour(centre, radius, scale=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Oedema (2) around a core: necrosis (1) inside an enhancing rim (3)."""
    out = np.zeros(SHAPE, np.uint8)
    out[_ball(centre, radius, scale=scale)] = 2
    out[_ball(centre, 0.6 * radius, scale=scale)] = 3
    out[_ball(centre, 0.3 * radius, scale=scale)] = 1
    return out


def cases() -> dict[str, tuple[np.ndarray, np.ndarray, tuple[float, float, float]]]:
    """case id -> (prediction, label, spacing (x, y, z) in mm)."""
    iso = (1.0, 1.0, 1.0)
    empty = np.zeros(SHAPE, np.uint8)
    out = {"empty_both": (empty, empty, iso)}
    blob = np.where(_ball((15, 20, 20), 5), 3, 0).astype(np.uint8)
    out["false_positive_only"] = (blob, empty, iso)
    truth = _tumour((15, 20, 20), 8)
    out["missed"] = (empty, truth, iso)
    pred = _tumour((15, 21, 19), 7)
    out["hit"] = (pred, truth, iso)
    two = np.maximum(_tumour((15, 12, 20), 5), _tumour((15, 26, 20), 5))  # 4 voxels apart: one lesion once dilated
    out["merged_by_dilation"] = (_tumour((15, 12, 20), 5), two, iso)
    small = _tumour((15, 20, 20), 8).copy()
    small[_ball((15, 20, 35), 1.5)] = 3  # about 27 voxels: under the threshold
    pred_small = _tumour((15, 20, 21), 8).copy()
    pred_small[_ball((15, 22, 35), 1.2)] = 3  # touches the small lesion: matched, not a false positive
    pred_small[_ball((5, 5, 5), 2)] = 2  # far away: a false positive in WT
    out["small_lesion_and_fp"] = (pred_small, small, iso)
    aniso = (1.0, 1.0, 2.0)
    scale = (2.0, 1.0, 1.0)  # [z, y, x] mm per voxel
    out["anisotropic"] = (_tumour((14, 20, 19), 7, scale) + 0, _tumour((15, 20, 20), 8, scale), aniso)
    return out


def write_cases(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Write every case as ``<id>_pred.nii.gz`` and ``<id>_label.nii.gz``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case, (pred, label, spacing) in cases().items():
        pair = []
        for name, array in (("pred", pred), ("label", label)):
            image = sitk.GetImageFromArray(array.astype(np.uint8))
            image.SetSpacing(spacing)
            path = folder / f"{case}_{name}.nii.gz"
            sitk.WriteImage(image, str(path))
            pair.append(path)
        paths[case] = (pair[0], pair[1])
    return paths
