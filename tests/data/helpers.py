"""Small files the data-layer tests build their layouts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def tiny_image(path: Path) -> Path:
    """A 2x3x3 zero image at ``path`` (folders made): enough for discovery, which reads no voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 3), np.uint8)), str(path))
    return path
