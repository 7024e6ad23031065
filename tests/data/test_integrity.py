"""Incomplete files, impossible geometry and a modality off the target grid are refused in one line."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.geometry import Grid
from medssl.data.integrity import check_complete, check_geometry, check_overlap, overlap_fraction
from medssl.errors import DataError

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _volume() -> np.ndarray:
    """A small int16 volume ``[D, H, W]`` that compresses like an MRI (smooth signal plus noise)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:12, :20, :24]
    return (500 + 300 * np.sin(x / 4) * np.cos(y / 5) + 20 * z + rng.normal(0, 30, x.shape)).astype(np.int16)


def _write(path: Path, compressed: bool = True) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(_volume()), str(path), compressed)
    return path


def _cut(path: Path, keep: float | int) -> Path:
    """Keep the first ``keep`` bytes (a fraction of the file, or a count) of ``path``, in place."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return path


@pytest.mark.parametrize("name", ["t1.nii.gz", "t1.nii", "t2w.mha", "adc_raw.mha", "hbv.mhd"])
def test_intact_files_pass(tmp_path, name):
    check_complete(_write(tmp_path / name, compressed=name != "adc_raw.mha"), "c1")


def test_intact_nibabel_nifti2_passes(tmp_path):
    path = tmp_path / "t1.nii.gz"
    nibabel.save(nibabel.Nifti2Image(_volume().T, np.eye(4)), path)
    check_complete(path)


def test_sitk_reads_a_cut_nii_gz_silently(tmp_path):
    """Why this module exists: SimpleITK zero-fills a cut gzip stream and raises nothing."""
    path = _cut(_write(tmp_path / "t1.nii.gz"), 0.5)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert array.shape == _volume().shape
    assert (array[-1] == 0).all()  # the missing half reads as zeros
    with pytest.raises(DataError, match=r"case c1: .*t1\.nii\.gz: truncated gzip stream"):
        check_complete(path, "c1")


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("keep", [0.5, 0.97, -4])  # -4: only the gzip trailer (CRC, length) is cut
def test_cut_nii_gz_is_refused(tmp_path, keep, full):
    path = _write(tmp_path / "t1.nii.gz")
    _cut(path, keep if keep > 0 else path.stat().st_size + keep)
    with pytest.raises(DataError, match=r"t1\.nii\.gz: truncated gzip stream: it ends before its end-of-stream "
                                        r"marker \(the header promises 11,872 bytes\)"):
        check_complete(path, "c1", full=full)


def test_nii_gz_cut_inside_its_header_is_refused(tmp_path):
    path = _cut(_write(tmp_path / "t1.nii.gz"), 120)
    with pytest.raises(DataError, match="truncated"):
        check_complete(path)


def test_complete_gzip_of_a_short_nii_is_refused(tmp_path):
    """A gzip stream that ends properly but holds a NIfTI cut before it was compressed."""
    nii = _cut(_write(tmp_path / "t1.nii", compressed=False), 0.6)
    path = tmp_path / "t1.nii.gz"
    path.write_bytes(gzip.compress(nii.read_bytes()))
    with pytest.raises(DataError, match=r"header promises 11,872 voxel bytes, found 7,\d{3}"):
        check_complete(path, "c1")


def test_corrupt_gzip_crc_is_refused_by_the_full_check(tmp_path):
    path = _write(tmp_path / "t1.nii.gz")
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the stored CRC; the data are intact
    path.write_bytes(bytes(data))
    check_complete(path)  # the quick check reads the trailer's length only
    with pytest.raises(DataError, match="corrupt gzip stream"):
        check_complete(path, full=True)


def test_cut_nii_is_refused(tmp_path):
    path = _cut(_write(tmp_path / "t1.nii", compressed=False), 0.7)
    with pytest.raises(DataError, match=r"case c1: .*t1\.nii: truncated or incomplete file: header promises "
                                        r"11,872 voxel bytes, found 8,\d{3}"):
        check_complete(path, "c1")


@pytest.mark.parametrize("name", ["t1.nii.gz", "t2w.mha"])
def test_empty_file_is_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"case c1: .*{name}: empty file \(0 bytes\)"):
        check_complete(path, "c1")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        check_complete(tmp_path / "absent.nii.gz", "c1")


@pytest.mark.parametrize("name", ["t1.nii", "t1.nii.gz", "t2w.mha"])
def test_not_an_image_is_left_to_simpleitk(tmp_path, name):
    """Not incomplete but no image at all: SimpleITK refuses it, and read_image says "cannot read image"."""
    path = tmp_path / name
    text = b"this is not an image at all" * 20
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    check_complete(path)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))


@pytest.mark.parametrize("compressed", [False, True])
def test_cut_mha_is_refused(tmp_path, compressed):
    path = _cut(_write(tmp_path / "t2w.mha", compressed), 0.8)
    what = r"[\d,]+ compressed" if compressed else "11,520 voxel"
    with pytest.raises(DataError, match=rf"case c1: .*t2w\.mha: truncated or incomplete file: header promises "
                                        rf"{what} bytes, found [\d,]+"):
        check_complete(path, "c1")
    with pytest.raises(DataError, match="truncated"):
        check_complete(path, "c1", full=True)
    with pytest.raises(RuntimeError):  # SimpleITK's MetaImage reader refuses it too, unlike its NIfTI reader
        sitk.ReadImage(str(path))


def test_full_check_inflates_a_compressed_mha(tmp_path):
    path = _write(tmp_path / "t2w.mha", compressed=True)
    check_complete(path, full=True)
    data = bytearray(path.read_bytes())
    data[-30:] = bytes(30)  # the zlib stream's end is lost, its length kept
    path.write_bytes(bytes(data))
    check_complete(path)  # the quick check trusts CompressedDataSize
    with pytest.raises(DataError, match="(truncated|corrupt) zlib stream"):
        check_complete(path, full=True)


def test_compressed_mha_without_its_size_field_is_inflated(tmp_path):
    """With no CompressedDataSize the data run to the end of the file: the zlib stream must end there."""
    path = _write(tmp_path / "t2w.mha", compressed=True)
    header, data = path.read_bytes().split(b"ElementDataFile = LOCAL\n")
    header = b"".join(ln for ln in header.splitlines(keepends=True) if not ln.startswith(b"CompressedDataSize"))
    path.write_bytes(header + b"ElementDataFile = LOCAL\n" + data)
    check_complete(path)
    path.write_bytes(header + b"ElementDataFile = LOCAL\n" + data[: len(data) // 2])
    wrong = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # SimpleITK reads it without an error
    assert not np.array_equal(wrong, _volume())
    with pytest.raises(DataError, match="truncated zlib stream: it ends before its end-of-stream marker"):
        check_complete(path)


def test_mha_cut_inside_its_header_is_refused(tmp_path):
    path = _cut(_write(tmp_path / "t2w.mha"), 100)
    with pytest.raises(DataError, match="header ends before its ElementDataFile"):
        check_complete(path)


def test_mhd_with_short_or_missing_data_file_is_refused(tmp_path):
    path = _write(tmp_path / "hbv.mhd", compressed=False)
    raw = tmp_path / "hbv.raw"
    _cut(raw, 0.5)
    with pytest.raises(DataError, match=r"hbv\.raw: truncated or incomplete file"):
        check_complete(path, "c1")
    raw.unlink()
    with pytest.raises(DataError, match=r"hbv\.mhd: its data file hbv\.raw \(ElementDataFile\) is missing"):
        check_complete(path, "c1")


def test_other_formats_pass_unchecked(tmp_path):
    check_complete(_cut(_write(tmp_path / "t1.nrrd"), 0.5))  # SimpleITK's NRRD reader refuses it itself


def _image(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=EYE) -> sitk.Image:
    image = sitk.Image(4, 4, 4, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def test_geometry_of_an_oblique_image_passes():
    a = np.deg2rad(17)
    rotation = (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, -1.0)
    check_geometry(_image((0.5, 0.5, 3.6), (-90.0, 80.0, 12.5), rotation))


def test_non_orthonormal_direction_is_refused(tmp_path):
    """A MetaImage TransformMatrix with a shear reaches us: SimpleITK reads it as the direction."""
    path = _write(tmp_path / "t2w.mha", compressed=False)
    path.write_bytes(path.read_bytes().replace(b"TransformMatrix = 1 0 0 0 1 0 0 0 1",
                                               b"TransformMatrix = 1 0.5 0 0 1 0 0 0 1"))
    image = sitk.ReadImage(str(path))
    with pytest.raises(DataError, match=r"case c1: .*t2w\.mha: direction matrix \(1\.0, 0\.0, 0\.0, 0\.5, .*\) is "
                                        r"not orthonormal"):
        check_geometry(image, "c1", path)
    with pytest.raises(DataError, match="not orthonormal"):
        check_geometry(_image(direction=(2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)))


def test_nan_sform_is_refused(tmp_path):
    """A NIfTI sform with NaN reaches us as a NaN direction (SimpleITK only warns)."""
    header = nibabel.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.int16)
    header["pixdim"][1:4] = 1.0
    header["vox_offset"] = 352
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]
    path = tmp_path / "t1.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + np.zeros(64, np.int16).tobytes())
    image = sitk.ReadImage(str(path))
    with pytest.raises(DataError, match=r"t1\.nii: direction matrix \(nan, .*\) is not finite"):
        check_geometry(image, "c1", path)


def test_negative_nifti_scale_is_read_as_a_flip(tmp_path):
    """SimpleITK turns a negative or zero NIfTI scale into a valid geometry: nothing to refuse there."""
    path = tmp_path / "t1.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nibabel.save(nibabel.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.diag([-2.0, 1.0, 1.0, 1.0])), path)
    image = sitk.ReadImage(str(path))
    assert image.GetSpacing() == (2.0, 1.0, 1.0)
    check_geometry(image)


def test_bad_spacing_is_refused():
    image = _image()
    image.SetSpacing((float("nan"), 1.0, 1.0))  # SimpleITK accepts NaN here, though not 0 or a negative
    with pytest.raises(DataError, match=r"spacing \(nan, 1\.0, 1\.0\) mm is not finite and positive"):
        check_geometry(image, "c1")


def _grid(origin=(0.0, 0.0, 0.0), size=(10, 10, 10), spacing=(1.0, 1.0, 1.0), direction=EYE) -> Grid:
    return Grid(size, spacing, origin, direction)


def test_overlap_of_identical_grids_is_one():
    assert check_overlap(_grid(), _grid()) == 1.0


def test_overlap_of_a_half_shifted_grid_is_a_half():
    assert check_overlap(_grid((5.0, 0.0, 0.0)), _grid(), min_fraction=0.25) == pytest.approx(0.5)
    # the same field of view on another spacing and orientation (x flipped, so the origin is the far corner)
    flipped = _grid((14.25, -0.25, 0.0), (20, 20, 10), (0.5, 0.5, 1.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert overlap_fraction(flipped, _grid()) == pytest.approx(0.5)


def test_disjoint_grids_are_refused():
    assert overlap_fraction(_grid((0.0, 0.0, 50.0)), _grid()) == 0.0
    with pytest.raises(DataError, match=r"case c1: adc\.mha: its field of view covers 0.0% of the case's target grid "
                                        r"\(at least 50% needed\)"):
        check_overlap(_grid((0.0, 0.0, 50.0)), _grid(), case_id="c1", path="adc.mha")


def test_overlap_counts_only_the_reference_part_of_a_padding_target():
    """A target grid twice the reference's depth: a modality covering the whole reference covers all that counts."""
    target, reference = _grid(size=(10, 10, 20), origin=(0.0, 0.0, -5.0)), _grid()
    assert overlap_fraction(reference, target) == pytest.approx(0.5)
    assert check_overlap(reference, target, within=reference) == pytest.approx(1.0)


def test_overlap_docstring_example():
    import doctest

    (example,) = doctest.DocTestFinder().find(check_overlap, globs={"Grid": Grid, "check_overlap": check_overlap})
    result = doctest.DocTestRunner().run(example)
    assert result.attempted == 4 and result.failed == 0
