"""Prostate158 discovery, as published: case folders, the split CSVs, the ADC-grid tumour label."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medssl.data.layouts import LAYOUTS, discover
from medssl.errors import DataError
from tests.data.helpers import tiny_image

COLUMNS = ["ID", "t2", "adc", "dwi", "t2_anatomy_reader1", "t2_tumor_reader1", "adc_tumor_reader1",
           "t2_anatomy_reader2", "adc_tumor_reader2"]


def case_folder(root: Path, split: str, case_id: str, tumour: bool) -> list[str]:
    """The files of one case and its CSV row (paths relative to ``root``, as Prostate158's CSVs give them)."""
    names = ["t2", "adc", "dwi", "t2_anatomy_reader1", "adc_tumor_reader1" if tumour else "empty"]
    for name in names:
        tiny_image(root / split / case_id / f"{name}.nii.gz")
    rel = f"{split}/{case_id}"
    tumour_file = f"{rel}/adc_tumor_reader1.nii.gz" if tumour else f"{rel}/empty.nii.gz"
    return [case_id, f"{rel}/t2.nii.gz", f"{rel}/adc.nii.gz", f"{rel}/dwi.nii.gz",
            f"{rel}/t2_anatomy_reader1.nii.gz", "", tumour_file, "", ""]


@pytest.fixture
def prostate158(tmp_path) -> Path:
    rows = {"train": [case_folder(tmp_path, "train", "020", True), case_folder(tmp_path, "train", "021", False)],
            "valid": [case_folder(tmp_path, "train", "022", True)],
            "test": [case_folder(tmp_path, "test", "140", True)]}
    for split, split_rows in rows.items():
        text = "\n".join(",".join(r) for r in [COLUMNS, *split_rows]) + "\n"
        (tmp_path / f"{split}.csv").write_text(text, encoding="utf-8-sig" if split == "train" else "utf-8")
    return tmp_path


def test_layout_constants():
    assert LAYOUTS["prostate158"].modalities == ("t2w", "adc", "hbv")
    assert LAYOUTS["prostate158"].reference_order == ("t2w",)
    assert max(LAYOUTS["prostate158"].label_values) >= 1


def test_cases_from_the_csvs(prostate158):
    cases = {c.case_id: c for c in discover("prostate158", prostate158)}
    assert list(cases) == ["020", "021", "022", "140"]
    first = cases["020"]
    assert {m: Path(p).name for m, p in first.images.items()} == {
        "t2w": "t2.nii.gz", "adc": "adc.nii.gz", "hbv": "dwi.nii.gz"}
    assert Path(first.label).name == "adc_tumor_reader1.nii.gz"  # the lesion, never the zones
    assert Path(cases["021"].label).name == "empty.nii.gz"  # labelled, without a lesion
    assert {c.label_grid for c in cases.values()} == {"adc"}
    assert first.to_item()["label_grid"] == "adc"
    assert {c.clinical["split"] for c in cases.values()} == {"train", "valid", "test"}
    assert first.clinical["t2_anatomy_reader1"] == "train/020/t2_anatomy_reader1.nii.gz"  # other columns kept
    assert "\ufeffID" not in first.clinical and "t2" not in first.clinical
    assert all(c.patient_id == c.case_id for c in cases.values())


def test_folder_no_csv_lists_is_left_out_with_a_warning(prostate158, caplog):
    case_folder(prostate158, "train", "099", True)
    with caplog.at_level(logging.WARNING, logger="medssl.data.layouts"):
        cases = discover("prostate158", prostate158)
    assert "099" not in {c.case_id for c in cases}
    assert "1 case folders no CSV lists are left out (099)" in caplog.text


def test_csv_naming_a_missing_file(prostate158):
    (prostate158 / "test" / "140" / "dwi.nii.gz").unlink()
    with pytest.raises(DataError, match="case 140: .*test.csv lists test/140/dwi.nii.gz but the file is missing"):
        discover("prostate158", prostate158)


def test_one_case_in_two_csvs(prostate158):
    with (prostate158 / "valid.csv").open("a") as f:
        f.write(",".join(case_folder(prostate158, "train", "020", True)) + "\n")
    with pytest.raises(DataError, match="case 020: listed in train.csv and valid.csv"):
        discover("prostate158", prostate158)


def test_unsafe_id_in_a_csv(prostate158):
    with (prostate158 / "test.csv").open("a") as f:
        f.write("../141,test/140/t2.nii.gz,,,,,,,\n")
    with pytest.raises(DataError, match=r"test.csv: row 3: ID '../141' holds a path separator"):
        discover("prostate158", prostate158)


def test_folders_without_csvs(tmp_path):
    case_folder(tmp_path, "train", "020", True)
    case_folder(tmp_path, "test", "140", False)
    tiny_image(tmp_path / "train" / "023" / "t2.nii.gz")  # only T2: adc and hbv absent, unlabelled
    cases = {c.case_id: c for c in discover("prostate158", tmp_path, modalities=["t2w", "hbv"])}
    assert list(cases) == ["020", "023", "140"]
    assert cases["023"].present == ["t2w"] and cases["023"].label is None and cases["023"].label_grid is None
    assert Path(cases["140"].label).name == "empty.nii.gz"
    tiny_image(tmp_path / "train" / "020" / "empty.nii.gz")
    with pytest.raises(DataError, match="case 020: .*both adc_tumor_reader1.nii.gz and empty.nii.gz"):
        discover("prostate158", tmp_path)


def test_nothing_found(tmp_path):
    with pytest.raises(DataError, match="no Prostate158 cases found"):
        discover("prostate158", tmp_path)
