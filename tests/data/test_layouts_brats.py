"""BraTS discovery: the 2021 and 2023/2024 namings and their label conventions (tiny files written here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses

from medssl.data.layouts import discover
from medssl.data.layouts.brats import CONVENTIONS, discover_brats
from medssl.errors import ConfigError, DataError
from tests.data.helpers import tiny_image


def brats2023(root: Path, case: str, tails=("t1n", "t1c", "t2w", "t2f", "seg")) -> Path:
    for tail in tails:
        tiny_image(root / case / f"{case}-{tail}.nii.gz")
    return root


def brats2021(root: Path, case: str, tails=("t1", "t1ce", "t2", "flair", "seg")) -> Path:
    for tail in tails:
        tiny_image(root / case / f"{case}_{tail}.nii.gz")
    return root


def test_2023_naming_with_a_missing_sequence(tmp_path):
    brats2023(tmp_path, "BraTS-GLI-00000-000")
    brats2023(tmp_path, "BraTS-GLI-00000-001", ("t1n", "t2w", "t2f", "seg"))  # no t1c: normal data
    brats2023(tmp_path, "BraTS-GLI-00002-000", ("t1n", "t1c", "t2w", "t2f"))  # unlabelled
    (tmp_path / "README.txt").write_text("not a case")
    cases = discover("brats", tmp_path)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00000-000", "BraTS-GLI-00000-001", "BraTS-GLI-00002-000"]
    assert [c.present for c in cases] == [["t1", "t1ce", "t2", "flair"], ["t1", "t2", "flair"],
                                          ["t1", "t1ce", "t2", "flair"]]
    first = cases[0]
    assert {m: Path(p).name for m, p in first.images.items()} == {
        "t1": "BraTS-GLI-00000-000-t1n.nii.gz", "t1ce": "BraTS-GLI-00000-000-t1c.nii.gz",
        "t2": "BraTS-GLI-00000-000-t2w.nii.gz", "flair": "BraTS-GLI-00000-000-t2f.nii.gz"}
    assert Path(first.label).name == "BraTS-GLI-00000-000-seg.nii.gz" and cases[2].label is None
    assert {c.label_convention for c in cases} == {"brats2023"}
    assert first.to_item()["label_convention"] == "brats2023"
    # the time points of one patient are one patient for the folds
    assert [c.patient_id for c in cases] == ["BraTS-GLI-00000", "BraTS-GLI-00000", "BraTS-GLI-00002"]


def test_2021_naming_records_its_convention(tmp_path):
    brats2021(tmp_path, "BraTS2021_00000")
    brats2021(tmp_path, "BraTS2021_00001", ("t1", "t2", "seg"))
    cases = discover("brats", tmp_path, modalities=["t1", "flair"])
    assert [(c.case_id, c.patient_id, c.present) for c in cases] == [
        ("BraTS2021_00000", "BraTS2021_00000", ["t1", "flair"]), ("BraTS2021_00001", "BraTS2021_00001", ["t1"])]
    assert {c.label_convention for c in cases} == {"brats2021"}


def test_label_convention_override(tmp_path):
    brats2023(tmp_path, "BraTS-GLI-00000-000")
    assert discover_brats(tmp_path, brats_labels="2021")[0].label_convention == "brats2021"
    assert discover("brats", tmp_path, brats_labels=2023)[0].label_convention == "brats2023"
    with pytest.raises(ConfigError, match="data.brats_labels '2024': choose 2021"):
        discover("brats", tmp_path, brats_labels="2024")
    with pytest.raises(ConfigError, match="data.brats_labels applies to layout brats"):
        discover("picai", tmp_path, brats_labels="2023")


def test_mixed_namings_in_one_folder(tmp_path):
    case = tmp_path / "BraTS2021_00000"
    tiny_image(case / "BraTS2021_00000_t1.nii.gz")
    tiny_image(case / "BraTS2021_00000-t2f.nii.gz")
    with pytest.raises(DataError, match=r"BraTS2021_00000: mixes BraTS 2021 names \(BraTS2021_00000_t1.nii.gz\) "
                                        r"and 2023 names \(BraTS2021_00000-t2f.nii.gz\)"):
        discover("brats", tmp_path)


def test_mixed_namings_across_case_folders(tmp_path):
    brats2021(tmp_path, "BraTS2021_00000")
    brats2023(tmp_path, "BraTS-GLI-00000-000")
    with pytest.raises(DataError, match="mixes BraTS 2021 names .* and 2023 names .*keep one release"):
        discover("brats", tmp_path)


@pytest.mark.parametrize("name", ["BraTS2021_00001_t1.nii.gz", "BraTS2021_00000_T1.nii.gz",
                                  "BraTS2021_00000_t1n.nii.gz", "BraTS2021_00000-flair.nii.gz"])
def test_brats_looking_file_matching_neither_naming(tmp_path, name):
    brats2021(tmp_path, "BraTS2021_00000", ("t2",))
    tiny_image(tmp_path / "BraTS2021_00000" / name)
    with pytest.raises(DataError, match=f"{name}: {name} looks like a BraTS image but matches neither"):
        discover("brats", tmp_path)


def test_two_files_for_one_sequence(tmp_path):
    brats2021(tmp_path, "BraTS2021_00000")
    tiny_image(tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t1.nii")
    with pytest.raises(DataError, match="case BraTS2021_00000: .*two files for one image, BraTS2021_00000_t1.nii "
                                        "and BraTS2021_00000_t1.nii.gz: keep one"):
        discover("brats", tmp_path)


def test_unsafe_case_folder_refused(tmp_path):
    brats2021(tmp_path, "a..b")
    with pytest.raises(DataError, match=r"case id 'a\.\.b' holds '\.\.'"):
        discover("brats", tmp_path)


def test_monai_brats_regions_need_the_et_label():
    """What the label encoding must pass: MONAI's default et_label=4 drops a 2023 ET (label 3) from every region."""
    labels = np.array([0, 1, 2, 3, 4])
    default = ConvertToMultiChannelBasedOnBratsClasses()(labels)  # TC, WT, ET
    assert default[:, 3].tolist() == [False, False, False]
    regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=CONVENTIONS["brats2023"].et)(labels)
    assert regions.astype(int).tolist() == [[0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]]
