"""Image geometry as a value: the grid an image lives on, and physical resampling between grids.

A ``Grid`` is what SimpleITK calls an image's information: size, spacing, origin and direction,
all in ITK's ``(x, y, z)`` order. Arrays are SimpleITK's ``[D, H, W] = [z, y, x]`` (``shape_zyx``).
Every modality is resampled onto one grid with its own origin, spacing and direction (never by
resizing arrays), and predictions go back to each case's grid the same way.

Dataset items carry a grid as 18 floats (``to_array``), since a DataLoader collates arrays, not
dataclasses; everything else passes ``Grid`` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from medssl.errors import DataError

GRID_LEN = 18  # origin 3, spacing 3, direction 9, size 3 (the layout of ``Grid.to_array``)


@dataclass(frozen=True)
class Grid:
    """Size, spacing (mm), origin (mm) and direction (row-major 3x3) of a 3-D image, ITK's (x, y, z) order.

    Example:
        >>> g = Grid.from_file("case_t2w.mha")
        >>> g.shape_zyx  # the shape of its SimpleITK array
        (20, 256, 256)
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    @classmethod
    def from_file(cls, path: str | os.PathLike, case_id: str | None = None) -> Grid:
        """The grid of an image file, read from its header only."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise DataError("cannot read image header (missing, corrupt or not an image?)", case_id,
                            str(path)) from None
        if reader.GetDimension() != 3:
            raise DataError(f"expected a 3-D image, got {reader.GetDimension()}-D", case_id, str(path))
        return cls(tuple(int(s) for s in reader.GetSize()), tuple(float(s) for s in reader.GetSpacing()),
                   tuple(float(o) for o in reader.GetOrigin()), tuple(float(d) for d in reader.GetDirection()))

    @classmethod
    def from_array(cls, values) -> Grid:
        """The grid ``to_array`` wrote (a dataset item's ``grid``)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.shape != (GRID_LEN,):
            raise ValueError(f"a grid array has {GRID_LEN} values (origin, spacing, direction, size), got {v.shape}")
        return cls(tuple(int(round(s)) for s in v[15:18]), tuple(v[3:6].tolist()), tuple(v[0:3].tolist()),
                   tuple(v[6:15].tolist()))

    def to_array(self) -> np.ndarray:
        return np.concatenate([self.origin, self.spacing, self.direction, self.size]).astype(np.float64)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The shape of this grid's SimpleITK array, ``[D, H, W]``."""
        return tuple(reversed(self.size))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def same_as(self, other: Grid, tol_mm: float = 1e-2) -> bool:
        """Same size, spacing, origin (within ``tol_mm``) and direction."""
        return (self.size == other.size
                and np.allclose(self.spacing, other.spacing, rtol=1e-3, atol=1e-4)
                and np.allclose(self.origin, other.origin, atol=tol_mm)
                and np.allclose(self.direction, other.direction, atol=1e-3))

    def describe(self) -> str:
        return f"size {self.size}, spacing {tuple(round(s, 3) for s in self.spacing)}"

    def image(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (``[D, H, W]``, this grid's shape) placed on this grid."""
        array = np.asarray(array)
        if array.shape != self.shape_zyx:
            raise ValueError(f"array shape {array.shape} does not match the grid's [D, H, W] {self.shape_zyx}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8) if array.dtype == bool else array))
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection(self.direction)
        return image

    def centred_subgrid(self, spacing_zyx=None, size_zyx=None, voxel_aligned: bool = False) -> Grid:
        """The grid a case is resampled onto: this grid's orientation, ``spacing_zyx`` and ``size_zyx``
        (``[D, H, W]``; ``None`` keeps this grid's spacing / physical extent), centred on this grid's centre.

        ``voxel_aligned``: where the spacing is this grid's, start the crop on a whole voxel as MONAI's
        ``CenterSpatialCrop`` does (start ``(n - m) // 2``), instead of the exact centre, which falls
        between voxels when ``n - m`` is odd and would interpolate.
        """
        size = np.array(self.size, dtype=np.float64)
        spacing = np.array(self.spacing, dtype=np.float64)
        new_spacing = spacing if spacing_zyx is None else np.array(spacing_zyx, dtype=np.float64)[::-1]
        if size_zyx is None:
            new_size = np.maximum(np.round(size * spacing / new_spacing), 1)
        else:
            new_size = np.array(size_zyx, dtype=np.float64)[::-1]
        direction = self.matrix
        if voxel_aligned and np.allclose(new_spacing, spacing, rtol=1e-6):
            start = np.floor((size - new_size) / 2)  # CenterSpatialCrop's start (negative: padding)
            origin = np.asarray(self.origin) + direction @ (spacing * start)
        else:
            centre = np.asarray(self.origin) + direction @ (spacing * (size - 1) / 2)
            origin = centre - direction @ (new_spacing * (new_size - 1) / 2)
        return Grid(tuple(int(s) for s in new_size), tuple(new_spacing.tolist()), tuple(origin.tolist()),
                    self.direction)


def resample(image: sitk.Image, grid: Grid, nearest: bool = False) -> np.ndarray:
    """``image`` resampled physically onto ``grid``; outside its field of view is 0. Returns ``[D, H, W]``."""
    out = sitk.Resample(image, list(grid.size), sitk.Transform(),
                        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
                        grid.origin, grid.spacing, grid.direction, 0.0,
                        image.GetPixelID() if nearest else sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def resample_array(array: np.ndarray, source: Grid, target: Grid, nearest: bool = False) -> np.ndarray:
    """``array`` (``[D, H, W]`` on ``source``) resampled physically onto ``target``; outside ``source`` is 0."""
    return resample(source.image(np.asarray(array)), target, nearest=nearest)


def write_like(array: np.ndarray, reference: Grid | str | os.PathLike, out_path: str | os.PathLike) -> None:
    """Write ``array`` on the reference grid (a ``Grid`` or an image file's), compressed, atomically and verified.

    Args:
        array: ``[D, H, W]`` on the reference grid.
        reference: the grid, or the image whose origin, spacing and direction are copied.
        out_path: ``.nii.gz`` (or any SimpleITK format).
    """
    from medssl.io import write_image

    grid = reference if isinstance(reference, Grid) else Grid.from_file(reference)
    write_image(grid.image(np.asarray(array)), out_path)
