"""``medssl.data.geometry``: the ``Grid`` value, physical resampling and writing back onto a reference grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.geometry import Grid, resample, resample_array, write_like

# an oblique grid: 30 degrees about z, anisotropic spacing, off-origin
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = Grid((20, 16, 8), (0.5, 0.7, 3.0), (10.0, -5.0, 2.0), (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0))


def test_array_round_trip_and_shape_order():
    assert Grid.from_array(OBLIQUE.to_array()) == OBLIQUE
    assert OBLIQUE.shape_zyx == (8, 16, 20)
    with pytest.raises(ValueError, match="18 values"):
        Grid.from_array(np.zeros(17))


def test_image_carries_the_grid_and_refuses_another_shape():
    array = np.arange(np.prod(OBLIQUE.shape_zyx), dtype=np.float32).reshape(OBLIQUE.shape_zyx)
    image = OBLIQUE.image(array)
    assert Grid.from_image(image).same_as(OBLIQUE, tol_mm=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), array)
    with pytest.raises(ValueError, match="does not match"):
        OBLIQUE.image(array[:, :, :-1])


def test_same_as_tolerates_float32_headers_but_not_a_shift():
    shifted = Grid(OBLIQUE.size, OBLIQUE.spacing, (10.05, -5.0, 2.0), OBLIQUE.direction)
    rounded = Grid(OBLIQUE.size, tuple(float(np.float32(s)) for s in OBLIQUE.spacing), OBLIQUE.origin,
                   tuple(float(np.float32(d)) for d in OBLIQUE.direction))
    assert OBLIQUE.same_as(rounded) and not OBLIQUE.same_as(shifted)
    assert not OBLIQUE.same_as(Grid((20, 16, 9), OBLIQUE.spacing, OBLIQUE.origin, OBLIQUE.direction))


def test_centred_subgrid_keeps_the_physical_centre_and_orientation():
    sub = OBLIQUE.centred_subgrid((1.5, 0.35, 0.25), (10, 32, 40))  # [D, H, W] spacing and size
    assert sub.size == (40, 32, 10) and sub.spacing == (0.25, 0.35, 1.5) and sub.direction == OBLIQUE.direction

    def centre(g: Grid) -> np.ndarray:
        return np.asarray(g.origin) + g.matrix @ (np.asarray(g.spacing) * (np.asarray(g.size) - 1) / 2)

    np.testing.assert_allclose(centre(sub), centre(OBLIQUE), atol=1e-9)


def test_voxel_aligned_crop_starts_on_a_whole_voxel_as_monai_does():
    grid = Grid((11, 10, 9), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    exact = grid.centred_subgrid(None, (4, 4, 4))
    aligned = grid.centred_subgrid(None, (4, 4, 4), voxel_aligned=True)
    assert exact.origin == (3.5, 3.0, 2.5)  # the exact centre falls between voxels where n - m is odd
    assert aligned.origin == (3.0, 3.0, 2.0)  # CenterSpatialCrop's start (n - m) // 2


def test_resampling_onto_the_same_grid_is_the_identity_and_outside_is_zero():
    array = np.random.default_rng(0).random(OBLIQUE.shape_zyx).astype(np.float32)
    np.testing.assert_allclose(resample_array(array, OBLIQUE, OBLIQUE), array, atol=1e-5)
    far = Grid(OBLIQUE.size, OBLIQUE.spacing, (1000.0, 1000.0, 1000.0), OBLIQUE.direction)
    assert not resample_array(array, OBLIQUE, far).any()


def test_resampling_is_physical_a_flipped_axis_maps_voxel_to_voxel():
    """The same voxels described with x pointing the other way (origin moved to the far end): resampling onto it
    mirrors the array along x, which resizing an array never would."""
    grid = Grid((6, 4, 3), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    flipped = Grid((6, 4, 3), (1.0, 1.0, 1.0), (5.0, 0.0, 0.0), (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.arange(72, dtype=np.float32).reshape(3, 4, 6)
    np.testing.assert_allclose(resample_array(array, grid, flipped), array[:, :, ::-1], atol=1e-5)
    labels = (array % 5).astype(np.uint8)
    out = resample(grid.image(labels), flipped, nearest=True)
    assert out.dtype == np.uint8 and np.array_equal(out, labels[:, :, ::-1])


def test_write_like_puts_the_array_on_the_reference_grid(tmp_path):
    reference = tmp_path / "ref.nii.gz"
    sitk.WriteImage(OBLIQUE.image(np.zeros(OBLIQUE.shape_zyx, np.float32)), str(reference))
    array = np.random.default_rng(1).random(OBLIQUE.shape_zyx).astype(np.float32)
    write_like(array, reference, tmp_path / "out.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert Grid.from_image(back).same_as(Grid.from_file(reference))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "ref.nii.gz"]  # no temporary left behind
