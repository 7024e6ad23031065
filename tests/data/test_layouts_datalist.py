"""Datalists users already have: plain JSON, MONAI/MSD decathlon JSON and CSV (tiny files written here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl.data.layouts import discover
from medssl.errors import ConfigError, DataError


def tiny_image(path: Path, channels: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (3, 3, 2, channels) if channels else (3, 3, 2)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(path))
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# -- unsafe ids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, problem", [("../../x", "holds a path separator"), ("..", "holds '..'"),
                                          (".hidden", "starts with a dot"), ("C:x", "is an absolute path"),
                                          ("a\nb", "holds a control character"), ("a\\b", "holds a path separator")])
def test_unsafe_case_id_refused_before_anything_else(tmp_path, bad, problem):
    rows = [{"case_id": "ok", "t1": 5},  # a type error in an earlier entry: the unsafe id is still what is reported
            {"case_id": bad, "patient_id": "p", "t1": "a.nii.gz"}]
    with pytest.raises(DataError, match=f"entry 1: case_id {bad!r} {problem}".replace("\\", "\\\\")) as error:
        discover("datalist", write_json(tmp_path / "list.json", rows))
    assert "\n" not in str(error.value)


def test_unsafe_ids_in_csv_and_decathlon(tmp_path):
    (tmp_path / "list.csv").write_text("case_id,patient_id,t1\nc1,../p,a.nii.gz\n")
    with pytest.raises(DataError, match=r"list.csv: row 2: patient_id '../p' holds a path separator"):
        discover("datalist", tmp_path / "list.csv")
    data = {"modality": {"0": "T1"}, "training": [{"image": "imagesTr/.x.nii.gz", "label": "labelsTr/x.nii.gz"}]}
    with pytest.raises(DataError, match=r"training\[0\]: case id from the image file name '.x' starts with a dot"):
        discover("datalist", write_json(tmp_path / "dataset.json", data))


# -- MONAI / MSD decathlon ----------------------------------------------------------------------------
def test_decathlon_with_image_lists(tmp_path):
    data = {
        "name": "prostate", "modality": {"0": "T2", "1": "ADC"},
        "training": [{"image": ["imagesTr/p1_t2.nii.gz", "imagesTr/p1_adc.nii.gz"], "label": "labelsTr/p1.nii.gz",
                      "fold": 0, "patient_id": "A"},
                     {"case_id": "p2", "image": ["imagesTr/p2_t2.nii.gz", None], "label": "labelsTr/p2.nii.gz",
                      "fold": 1, "patient_id": "A"}],
        "test": [{"image": ["imagesTs/p3_t2.nii.gz", "imagesTs/p3_adc.nii.gz"], "patient_id": "B"}],
    }
    cases = discover("datalist", write_json(tmp_path / "dataset.json", data))
    assert [c.case_id for c in cases] == ["p1_t2", "p2", "p3_t2"]  # without case_id: the first image's name
    assert cases[0].images == {"t2": str(tmp_path / "imagesTr" / "p1_t2.nii.gz"),
                               "adc": str(tmp_path / "imagesTr" / "p1_adc.nii.gz")}
    assert cases[1].present == ["t2"] and cases[0].channels is None
    assert [c.label and Path(c.label).relative_to(tmp_path).as_posix() for c in cases] == [
        "labelsTr/p1.nii.gz", "labelsTr/p2.nii.gz", None]
    assert [c.patient_id for c in cases] == ["A", "A", "B"]
    assert cases[0].clinical == {"fold": 0}  # entry keys other than ids, image and label
    renamed = discover("datalist", tmp_path / "dataset.json", modalities=["t2w", "adc"])
    assert list(renamed[0].images) == ["t2w", "adc"]


def test_decathlon_4d_image_records_channels(tmp_path):
    tiny_image(tmp_path / "imagesTr" / "prostate_00.nii.gz", channels=2)
    tiny_image(tmp_path / "imagesTs" / "prostate_03.nii.gz", channels=2)
    data = {"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
            "training": [{"image": "./imagesTr/prostate_00.nii.gz", "label": "./labelsTr/prostate_00.nii.gz"}],
            "test": ["./imagesTs/prostate_03.nii.gz"]}
    cases = discover("datalist", write_json(tmp_path / "dataset.json", data))
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_03"]
    four_d = str(tmp_path / "imagesTr" / "prostate_00.nii.gz")
    assert cases[0].images == {"t2": four_d, "adc": four_d}
    assert cases[0].channels == {"t2": 0, "adc": 1} and cases[0].to_item()["channels"] == {"t2": 0, "adc": 1}
    assert nib.load(cases[0].images["adc"]).shape[3] > cases[0].channels["adc"]
    assert cases[1].label is None and cases[1].channels == {"t2": 0, "adc": 1}


def test_decathlon_mistakes(tmp_path):
    same_name = {"modality": {"0": "T1"}, "training": [{"image": "a/x.nii.gz"}, {"image": "b/x.nii.gz"}]}
    with pytest.raises(DataError, match=r"duplicate case ids \['x'\]; entries without case_id are named after"):
        discover("datalist", write_json(tmp_path / "d.json", same_name))
    classification = {"modality": {"0": "T1"}, "training": [{"image": "a/x.nii.gz", "label": 1}]}
    with pytest.raises(DataError, match=r"training\[0\]: 'label' should be a path, got int 1"):
        discover("datalist", write_json(tmp_path / "d.json", classification))
    short = {"modality": {"0": "T2", "1": "ADC"}, "training": [{"image": ["a/x.nii.gz"]}]}
    with pytest.raises(DataError, match=r"training\[0\]: 'image' lists 1 files for the 2 modalities"):
        discover("datalist", write_json(tmp_path / "d.json", short))
    unnamed = {"training": [{"image": "a/x.nii.gz"}]}
    with pytest.raises(ConfigError, match="cannot tell the modalities of 'image'; set data.modalities"):
        discover("datalist", write_json(tmp_path / "d.json", unnamed))
    assert discover("datalist", tmp_path / "d.json", modalities=["t1"])[0].images == {
        "t1": str(tmp_path / "a/x.nii.gz")}


# -- plain JSON ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("row, message", [
    ({"case_id": "c2", "t1": 5}, r"entry 1: 't1' should be a path, got int 5"),
    ({"case_id": "c2", "t1": ["b.nii.gz"]}, r"entry 1: 't1' should be a path, got list"),
    ({"case_id": "c2", "t1": "b.nii.gz", "label": {"x": 1}}, r"entry 1: 'label' should be a path, got dict"),
    ({"case_id": ["c2"], "t1": "b.nii.gz"}, r"entry 1: 'case_id' should be a string, got list"),
    ({"case_id": "c2", "images": "b.nii.gz"}, r"entry 1: 'images' should be an object"),
    ({"case_id": "c2", "t1": "N/A"}, r"entry 1: 't1' = 'N/A' is not an image path"),
    ({"case_id": "c2", "id": "c3", "t1": "b.nii.gz"}, r"entry 1: case_id 'c2' and id 'c3' differ"),
])
def test_json_value_of_the_wrong_type(tmp_path, row, message):
    rows = [{"case_id": "c1", "patient_id": "p", "t1": "a.nii.gz", "age": 61}, row]
    with pytest.raises(DataError, match=message):
        discover("datalist", write_json(tmp_path / "list.json", rows))


def test_json_modalities_from_every_row_and_patient_warning(tmp_path, caplog):
    rows = [{"case_id": "c1", "t1": "a.nii.gz", "site": "A", "age": 61},
            {"case_id": "c2", "t1": "", "flair": "sub/b.nii.gz", "site": "B"},
            {"case_id": "c3", "patient_id": "p3", "images": {"t1": "/abs/c.nii.gz"}}]
    with caplog.at_level(logging.WARNING, logger="medssl.data.layouts"):
        cases = discover("datalist", write_json(tmp_path / "list.json", rows))
    assert [list(c.images) for c in cases] == [["t1", "flair"]] * 3
    assert [c.present for c in cases] == [["t1"], ["flair"], ["t1"]]
    assert cases[1].images["flair"] == str(tmp_path / "sub" / "b.nii.gz") and cases[2].images["t1"] == "/abs/c.nii.gz"
    assert cases[0].clinical == {"site": "A", "age": 61}
    assert [c.patient_id for c in cases] == ["c1", "c2", "p3"]
    assert caplog.text.count("2 of 3 cases have no patient_id") == 1


# -- CSV ----------------------------------------------------------------------------------------------
def test_csv_with_bom_and_clinical_columns(tmp_path):
    text = ("case_id,patient_id,age,psa,t2w,adc,site,label\n"
            "c1,p1,61,4.2,c1/t2w.mha,,Berlin,c1/label.nii.gz\n"
            "c2,p1,62,5.0,c2/t2w.mha,c2/adc.MHA,Zürich,\n")
    (tmp_path / "list.csv").write_text(text, encoding="utf-8-sig")
    cases = discover("datalist", tmp_path / "list.csv")
    assert [c.case_id for c in cases] == ["c1", "c2"]  # the BOM did not rename case_id
    assert [list(c.images) for c in cases] == [["t2w", "adc"]] * 2  # adc found though empty in the first row
    assert cases[0].present == ["t2w"] and cases[1].images["adc"] == str(tmp_path / "c2" / "adc.MHA")
    assert cases[1].clinical == {"age": "62", "psa": "5.0", "site": "Zürich"}
    assert cases[0].label == str(tmp_path / "c1" / "label.nii.gz") and cases[1].label is None
    only_t2w = discover("datalist", tmp_path / "list.csv", modalities=["t2w"])
    assert list(only_t2w[1].images) == ["t2w"] and only_t2w[1].clinical["adc"] == "c2/adc.MHA"


def test_latin1_csv(tmp_path):
    (tmp_path / "list.csv").write_bytes("case_id,patient_id,t1,site\nc1,p1,a.nii.gz,Zürich\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"list.csv: is not UTF-8 text .*save it as UTF-8") as error:
        discover("datalist", tmp_path / "list.csv")
    assert "\n" not in str(error.value)


def test_csv_mistakes(tmp_path):
    (tmp_path / "list.csv").write_text("case_id,t1,t1\nc1,a.nii.gz,b.nii.gz\n")
    with pytest.raises(DataError, match="column 't1' appears twice"):
        discover("datalist", tmp_path / "list.csv")
    (tmp_path / "list.csv").write_text("case_id,t1\nc1,a.nii.gz,extra\n")
    with pytest.raises(DataError, match="row 2 has more values than the header"):
        discover("datalist", tmp_path / "list.csv")
    (tmp_path / "list.csv").write_text("case_id,age\nc1,61\n")
    with pytest.raises(ConfigError, match="no column holds image paths"):
        discover("datalist", tmp_path / "list.csv")
