"""Detection maps, and writing maps back onto the case's own (oblique, anisotropic) grid."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medssl.data.geometry import Grid, resample_array, write_like
from medssl.evaluation.detection import detection_map, probability_to_original, smooth
from tests.conftest import write_image
from tests.evaluation.conftest import make_cases


def write_in_original_geometry(array, grid, reference_path, out_path, nearest=False):
    out = resample_array(np.asarray(array), grid, Grid.from_file(reference_path), nearest=nearest)
    write_like(out, reference_path, out_path)
    return out


def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def test_detection_map_components_have_constant_confidence():
    for case in make_cases(4).values():
        det = detection_map(smooth(case["prob"], sigma=(0.5, 1.0, 1.0)))
        labelled, n = ndimage.label(det > 0, structure=np.ones((3, 3, 3)))
        assert n >= 1
        for k in range(1, n + 1):
            assert len(np.unique(det[labelled == k])) == 1, "a candidate must have one confidence"
        assert det.max() <= case["prob"].max() + 1e-6


@pytest.mark.parametrize("bad, match", [(3.0, "logits"), (-0.5, "logits"), (np.nan, "NaN")])
def test_detection_map_refuses_non_probabilities(bad, match):
    prob = np.zeros((4, 8, 8), np.float32)
    prob[1, 2, 2] = bad
    with pytest.raises(ValueError, match=match):
        detection_map(prob)


def test_smooth_stays_in_unit_range():
    prob = make_cases(1)["case00"]["prob"]
    out = smooth(prob)
    assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= prob.max() + 1e-6


@pytest.fixture()
def oblique_reference(tmp_path):
    """A T2W-like reference: odd spacing 0.37 x 0.51 x 3.3 mm, rotated 17 degrees about z, shifted origin."""
    spacing, size, direction = np.array([0.37, 0.51, 3.3]), np.array([96, 70, 11]), _rot_z(17)
    origin = -direction @ (spacing * (size - 1) / 2) + np.array([2.3, -1.1, 0.7])
    path = write_image(tmp_path / "t2w.mha", np.zeros(size[::-1], np.int16), tuple(spacing), tuple(origin), direction)
    return path, sitk.ReadImage(str(path))


def _world(image: sitk.Image) -> np.ndarray:
    """World coordinates [D, H, W, 3] of every voxel centre."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij")
    idx = np.stack([x, y, z], -1) * np.array(image.GetSpacing())
    return idx @ np.array(image.GetDirection()).reshape(3, 3).T + np.array(image.GetOrigin())


def test_round_trip_to_oblique_original_grid(oblique_reference, tmp_path):
    path, reference = oblique_reference
    grid = Grid.from_image(reference).centred_subgrid((3.0, 0.5, 0.5), (10, 48, 48))
    on_grid = grid.image(np.zeros(grid.shape_zyx, np.float32))
    centre = np.array([3.1, -2.4, 1.5])  # mm, world
    prob = np.exp(-(((_world(on_grid) - centre) / np.array([3.0, 3.0, 5.0])) ** 2).sum(-1) / 2).astype(np.float32)

    out_path = tmp_path / "out" / "prob.nii.gz"
    written = write_in_original_geometry(prob, grid, path, out_path)
    assert sorted(os.listdir(out_path.parent)) == ["prob.nii.gz"], "no temporary file left behind"
    back = sitk.ReadImage(str(out_path))
    assert back.GetSize() == reference.GetSize()
    assert np.allclose(back.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    assert np.allclose(back.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), reference.GetDirection(), atol=1e-5)
    assert nib.load(str(out_path)).shape == reference.GetSize()  # nibabel: x, y, z (RAS affine differs)
    array = sitk.GetArrayFromImage(back)
    assert np.allclose(array, written, atol=1e-6)
    # the blob's centre of mass in world space is where it was put
    weights = array / array.sum()
    landed = (weights[..., None] * _world(back)).sum((0, 1, 2))
    assert np.allclose(landed, centre, atol=0.6), landed

    # candidates extracted on the original grid: constant confidence, the strongest at the blob's peak
    det = detection_map(probability_to_original(prob, grid, path))
    labelled, n = ndimage.label(det > 0, structure=np.ones((3, 3, 3)))
    assert det.shape == array.shape and n >= 1
    assert all(len(np.unique(det[labelled == k])) == 1 for k in range(1, n + 1))
    peak = np.unravel_index(np.argmax(array), array.shape)
    assert det[peak] == det.max() == pytest.approx(array.max(), abs=1e-6)
    write_like(det, path, tmp_path / "det.nii.gz")

    # a detection map resampled nearest-neighbour keeps its confidences
    det_on_grid = (prob > 0.5) * np.float32(0.7)
    near = write_in_original_geometry(det_on_grid, grid, path, tmp_path / "near.nii.gz", nearest=True)
    assert set(np.unique(near).tolist()) <= {0.0, np.float32(0.7).item()}


def test_write_like_refuses_wrong_shape(oblique_reference, tmp_path):
    path, _ = oblique_reference
    with pytest.raises(ValueError, match="does not match"):
        write_like(np.zeros((4, 4, 4), np.float32), path, tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()
