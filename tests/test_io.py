"""The one atomic writer: finished files are complete, checked and have the usual mode; failures leave nothing."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.io import WriteError, atomic_target, safe_child, save_npy, save_torch, write_image, write_json


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="killed"), atomic_target(tmp_path / "map.nii.gz") as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_does_not_read_back_is_not_renamed_into_place(tmp_path, monkeypatch):
    """sitk.WriteImage does not raise on a full disk: what it wrote is read back before the rename."""
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    real = sitk.WriteImage

    def full_disk(img, path, compress=False):  # writes a cut file and reports success, as on a full disk
        real(img, path, compress)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    with pytest.raises(WriteError, match="map.nii.gz"):
        write_image(image, tmp_path / "map.nii.gz")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(sitk, "WriteImage", real)
    write_image(image, tmp_path / "map.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "map.nii.gz"))),
                          sitk.GetArrayFromImage(image))


def test_empty_write_and_unwritable_folder_are_one_line(tmp_path):
    with pytest.raises(WriteError, match="empty"), atomic_target(tmp_path / "x.json"):
        pass
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match="cannot write here"):
        write_json(blocker / "sub" / "x.json", {})


def test_torch_and_npy_writes_are_verified(tmp_path):
    import torch

    save_torch({"w": torch.ones(2)}, tmp_path / "a.pt")
    assert torch.load(tmp_path / "a.pt", weights_only=True)["w"].sum() == 2
    save_npy(np.arange(3, dtype=np.float32), tmp_path / "a.npy")
    assert np.load(tmp_path / "a.npy").tolist() == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", ".hidden", "..", "", "a\nb"])
def test_case_ids_never_leave_the_output(tmp_path, name):
    with pytest.raises(Exception, match="plain file name"):
        safe_child(tmp_path, name)
    assert safe_child(tmp_path, "10000_1000000.nii.gz") == tmp_path / "10000_1000000.nii.gz"
