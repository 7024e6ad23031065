"""Physical resampling, missing modalities and the checks on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.layouts import discover
from medssl.data.preprocess import Preprocessing, load_case
from medssl.errors import DataError
from tests.conftest import write_image

PICAI = Preprocessing(("t2w", "adc", "hbv"), ("t2w",), True)


def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _cube_mask(size_xyz, spacing, origin, direction, lo, hi):
    """Voxels of a grid whose centre lies inside the world-space box [lo, hi]."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in size_xyz[::-1]), indexing="ij")
    world = (np.stack([x, y, z], -1) * spacing) @ np.asarray(direction).T + origin
    return np.all((world >= lo) & (world <= hi), axis=-1)


@pytest.fixture()
def oblique_case(tmp_path):
    """T2W oblique with odd spacing; ADC/HBV on a coarser, shifted, differently rotated grid.

    A box in world space is drawn bright in ADC/HBV on their own grid and as the label on the T2W grid.
    """
    lo, hi = np.array([-6.0, -4.0, -5.0]), np.array([5.0, 6.0, 4.0])
    t_sp, t_size, t_dir = np.array([0.45, 0.37, 2.9]), np.array([64, 70, 12]), _rot_z(17)
    t_org = -t_dir @ (t_sp * (t_size - 1) / 2) + np.array([1.3, -0.7, 0.4])
    d_sp, d_size, d_dir = np.array([1.9, 2.1, 3.3]), np.array([20, 18, 11]), _rot_z(-8)
    d_org = -d_dir @ (d_sp * (d_size - 1) / 2) + np.array([-2.1, 1.6, -1.0])
    pid, cid = "p1", "p1_s1"
    images = tmp_path / "images" / pid
    t2w = np.full(t_size[::-1], 100.0, np.float32)
    write_image(images / f"{cid}_t2w.mha", t2w, tuple(t_sp), tuple(t_org), t_dir)
    box = _cube_mask(d_size, d_sp, d_org, d_dir, lo, hi)
    for m, value in (("adc", 50.0), ("hbv", 900.0)):
        arr = np.where(box, value, 10.0).astype(np.float32)
        write_image(images / f"{cid}_{m}.mha", arr, tuple(d_sp), tuple(d_org), d_dir)
    label = _cube_mask(t_size, t_sp, t_org, t_dir, lo, hi).astype(np.uint8) * 3
    labels = tmp_path / "picai_labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled"
    write_image(labels / f"{cid}.nii.gz", label, tuple(t_sp), tuple(t_org), t_dir)
    return tmp_path


def test_dwi_lesion_lands_on_t2w_label(oblique_case):
    (case,) = discover("picai", oblique_case)
    out = load_case(case.to_item(), PICAI)
    label = out["label"][0].astype(bool)
    assert out["image"].shape[1:] == label.shape == (12, 70, 64)
    for channel, value in ((1, 50.0), (2, 900.0)):
        # "lesion" where the resampled DWI is nearer its lesion value than its background value
        resampled = out["image"][channel]
        lesion = np.abs(resampled - value) < np.abs(resampled - 10.0)
        inside = out["image"][0] > 0  # within the DWI field of view
        dice = 2 * (lesion & label & inside).sum() / ((lesion & inside).sum() + (label & inside).sum())
        assert dice > 0.8, f"channel {channel}: Dice {dice:.2f} between DWI lesion and T2W label"


def test_resampling_to_spacing_and_size_keeps_lesion_centre(oblique_case):
    (case,) = discover("picai", oblique_case)
    prep = Preprocessing(("t2w", "adc", "hbv"), ("t2w",), True, spacing=(3.0, 0.5, 0.5), spatial_size=(10, 48, 48))
    out = load_case(case.to_item(), prep)
    assert out["image"].shape == (3, 10, 48, 48) and out["label"].shape == (1, 10, 48, 48)
    grid = out["grid"]
    assert np.allclose(grid[3:6], [0.5, 0.5, 3.0]) and np.allclose(grid[15:18], [48, 48, 10])
    # the label's centre of mass in world space stays the box centre (-0.5, 1.0, -0.5)
    idx = np.argwhere(out["label"][0])[:, ::-1].mean(0)  # x, y, z
    world = np.asarray(grid[6:15]).reshape(3, 3) @ (idx * grid[3:6]) + grid[0:3]
    assert np.allclose(world, [-0.5, 1.0, -0.5], atol=1.2)


def test_missing_modality_is_zeros_and_false_mask(oblique_case):
    next(oblique_case.glob("images/*/*_hbv.mha")).unlink()
    (case,) = discover("picai", oblique_case)
    assert case.images["hbv"] is None
    out = load_case(case.to_item(), PICAI)
    assert out["image"].shape[0] == 3
    assert out["modality_mask"].tolist() == [True, True, False]
    assert not out["image"][2].any() and out["image"][1].any()


def test_brats_regions(brats_root):
    cases = discover("brats", brats_root)
    prep = Preprocessing(("t1", "t1ce", "t2", "flair"), ("t1", "t1ce", "t2", "flair"), False,
                         label_mode="brats_regions", label_values=(0, 1, 2, 4))
    out = load_case(cases[0].to_item(), prep)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(cases[0].label))
    tc, wt, et = out["label"].astype(bool)
    assert np.array_equal(tc, np.isin(seg, (1, 4))) and np.array_equal(wt, seg > 0) and np.array_equal(et, seg == 4)
    assert et.sum() < tc.sum() < wt.sum()


@pytest.mark.parametrize("problem", ["corrupt", "truncated", "nan", "label_range", "label_grid", "no_reference"])
def test_bad_input_names_case_and_file(oblique_case, problem):
    folder = oblique_case / "images" / "p1"
    label = next(oblique_case.glob("picai_labels/**/p1_s1.nii.gz"))
    target = folder / "p1_s1_adc.mha"
    if problem == "corrupt":
        target.write_bytes(b"this is not an image at all")
        expected = "cannot read image"
    elif problem == "truncated":
        target.write_bytes(target.read_bytes()[:-200])
        expected = "truncated"
    elif problem == "nan":
        image = sitk.ReadImage(str(target))
        arr = sitk.GetArrayFromImage(image)
        arr[0, 0, 0] = np.nan
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(image)
        sitk.WriteImage(new, str(target))
        expected = "NaN or Inf"
    elif problem == "label_range":
        image = sitk.ReadImage(str(label))
        arr = sitk.GetArrayFromImage(image)
        arr[0, 0, 0] = 7
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(image)
        sitk.WriteImage(new, str(label))
        target, expected = label, "label values [7]"
    elif problem == "label_grid":
        image = sitk.ReadImage(str(label))
        image.SetSpacing((0.5, 0.5, 3.0))
        sitk.WriteImage(image, str(label))
        target, expected = label, "does not match the reference"
    else:
        (folder / "p1_s1_t2w.mha").unlink()
        target, expected = None, "no t2w image"
    (case,) = discover("picai", oblique_case)
    with pytest.raises(DataError, match="case p1_s1") as info:
        load_case(case.to_item(), PICAI)
    assert expected in str(info.value)
    if target is not None:
        assert str(target) in str(info.value)
    assert "\n" not in str(info.value)
