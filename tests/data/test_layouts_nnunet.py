"""nnU-Net v2 raw folders: dataset.json, imagesTr/labelsTr/imagesTs (tiny files written here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from medssl.data.layouts import discover
from medssl.errors import ConfigError, DataError
from tests.data.helpers import tiny_image


@pytest.fixture
def nnunet(tmp_path) -> Path:
    root = tmp_path / "Dataset001_Prostate"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T2", "1": "ADC", "2": "HBV"}, "labels": {"background": 0, "lesion": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    for k in range(3):
        tiny_image(root / "imagesTr" / f"prost_001_{k:04d}.nii.gz")
        tiny_image(root / "imagesTs" / f"prost_100_{k:04d}.nii.gz")
    for k in (0, 2):  # prost_002 lacks ADC
        tiny_image(root / "imagesTr" / f"prost_002_{k:04d}.nii.gz")
    for case in ("prost_001", "prost_002"):
        tiny_image(root / "labelsTr" / f"{case}.nii.gz")
    return root


def test_raw_folder(nnunet, caplog):
    with caplog.at_level(logging.WARNING, logger="medssl.data.layouts"):
        cases = discover("nnunet", nnunet)
    assert [c.case_id for c in cases] == ["prost_001", "prost_002", "prost_100"]
    assert [c.present for c in cases] == [["t2", "adc", "hbv"], ["t2", "hbv"], ["t2", "adc", "hbv"]]
    assert Path(cases[0].images["adc"]).name == "prost_001_0001.nii.gz"
    assert [c.label and Path(c.label).name for c in cases] == ["prost_001.nii.gz", "prost_002.nii.gz", None]
    assert [c.clinical["split"] for c in cases] == ["imagesTr", "imagesTr", "imagesTs"]
    assert caplog.text.count("have no patient_id") == 1


def test_modalities_name_the_channels_in_order(nnunet):
    cases = discover("nnunet", nnunet, modalities=["t2w", "adc", "hbv"])
    assert list(cases[0].images) == ["t2w", "adc", "hbv"]
    assert Path(cases[1].images["hbv"]).name == "prost_002_0002.nii.gz"
    with pytest.raises(ConfigError, match=r"data.modalities \['t2w'\] should name each of the 3 channels"):
        discover("nnunet", nnunet, modalities=["t2w"])


def test_badly_named_files(nnunet):
    tiny_image(nnunet / "imagesTr" / "prost_003_0003.nii.gz")
    with pytest.raises(DataError, match="case prost_003: .*channel 3 is not in dataset.json's channel_names"):
        discover("nnunet", nnunet)
    (nnunet / "imagesTr" / "prost_003_0003.nii.gz").unlink()
    tiny_image(nnunet / "imagesTr" / "prost_003_t2.nii.gz")
    with pytest.raises(DataError, match=r"prost_003_t2.nii.gz: expected <case>_<4-digit channel>.nii.gz"):
        discover("nnunet", nnunet)


def test_label_without_images(nnunet):
    tiny_image(nnunet / "labelsTr" / "prost_009.nii.gz")
    with pytest.raises(DataError, match="case prost_009: .*label without images in imagesTr"):
        discover("nnunet", nnunet)


def test_case_in_train_and_test(nnunet):
    tiny_image(nnunet / "imagesTs" / "prost_001_0000.nii.gz")
    with pytest.raises(DataError, match="case prost_001: .*in both imagesTr and imagesTs"):
        discover("nnunet", nnunet)


def test_dataset_json_problems(nnunet, tmp_path):
    with pytest.raises(DataError, match="no dataset.json"):
        discover("nnunet", tmp_path)
    (nnunet / "dataset.json").write_text(json.dumps({"channel_names": {"1": "T2"}, "file_ending": ".nii.gz"}))
    with pytest.raises(DataError, match="channel_names keys should be the channel indices 0..0"):
        discover("nnunet", nnunet)
    (nnunet / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "t2"}}))
    with pytest.raises(ConfigError, match="channel names \\['t2', 't2'\\] repeat"):
        discover("nnunet", nnunet)
