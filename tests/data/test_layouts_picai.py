"""PI-CAI discovery: label sources, duplicate files, unsafe ids (tiny files written here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medssl.data.layouts import discover
from medssl.errors import ConfigError, DataError
from tests.data.helpers import tiny_image

EXPERT = "picai_labels/csPCa_lesion_delineations/human_expert/resampled"
AI = "picai_labels/csPCa_lesion_delineations/AI/Bosma22a"


@pytest.fixture
def picai(tmp_path) -> Path:
    """Four studies of three patients: 1_a expert-labelled (and AI), 1_b AI only, 2_a expert only, 3_a none."""
    for case in ("1_a", "1_b", "2_a", "3_a"):
        for m in ("t2w", "adc", "hbv"):
            tiny_image(tmp_path / "images" / case.split("_")[0] / f"{case}_{m}.mha")
    for case in ("1_a", "2_a"):
        tiny_image(tmp_path / EXPERT / f"{case}.nii.gz")
    for case in ("1_a", "1_b"):
        tiny_image(tmp_path / AI / f"{case}.nii.gz")
    return tmp_path


def sources(cases) -> dict[str, tuple[str | None, str | None]]:
    return {c.case_id: (c.label_source, c.label and Path(c.label).parent.name) for c in cases}


def test_expert_where_present_else_ai_by_default(picai):
    assert sources(discover("picai", picai)) == {
        "1_a": ("human_expert", "resampled"), "1_b": ("AI", "Bosma22a"), "2_a": ("human_expert", "resampled"),
        "3_a": (None, None)}
    assert sources(discover("picai", picai, label_source="human_expert")) == {
        "1_a": ("human_expert", "resampled"), "1_b": (None, None), "2_a": ("human_expert", "resampled"),
        "3_a": (None, None)}
    assert sources(discover("picai", picai, label_source="AI")) == {
        "1_a": ("AI", "Bosma22a"), "1_b": ("AI", "Bosma22a"), "2_a": (None, None), "3_a": (None, None)}
    with pytest.raises(ConfigError, match="data.label_source 'expert'"):
        discover("picai", picai, label_source="expert")


def test_plain_label_folders(picai, tmp_path_factory):
    plain = tmp_path_factory.mktemp("labels") / "my_labels"
    tiny_image(plain / "2_a.nii.gz")
    cases = discover("picai", picai, labels_root=plain)
    assert sources(cases)["2_a"] == ("user", "my_labels")
    assert sum(c.label is not None for c in cases) == 1
    # picai_labels' own folders given directly keep their source; a contradicting label_source is refused
    assert sources(discover("picai", picai, labels_root=picai / AI))["1_b"] == ("AI", "Bosma22a")
    assert sources(discover("picai", picai, labels_root=picai / EXPERT))["2_a"] == ("human_expert", "resampled")
    with pytest.raises(ConfigError, match="holds AI labels"):
        discover("picai", picai, labels_root=picai / AI, label_source="human_expert")
    # one level down (csPCa_lesion_delineations) is read as the tree
    lesions = picai / "picai_labels" / "csPCa_lesion_delineations"
    assert sources(discover("picai", picai, labels_root=lesions)) == sources(discover("picai", picai))


def test_stray_label_in_labels_root_is_not_mixed_in(picai):
    tiny_image(picai / "picai_labels" / "3_a.nii.gz")  # not in a delineations folder: ignored in a picai_labels tree
    assert sources(discover("picai", picai))["3_a"] == (None, None)


def test_missing_ai_folder(picai):
    shutil.rmtree(picai / AI)
    with pytest.raises(DataError, match="no AI label folder"):
        discover("picai", picai, label_source="AI")
    assert sources(discover("picai", picai))["1_b"] == (None, None)  # human_expert+AI: expert only, warned


def test_two_files_for_one_image_name_both(picai):
    tiny_image(picai / "images" / "1" / "1_a_t2w.nii.gz")
    with pytest.raises(DataError, match=r"case 1_a: two files for one image, .*1_a_t2w.mha and .*1_a_t2w.nii.gz"):
        discover("picai", picai)


def test_same_study_in_another_patients_folder(picai):
    tiny_image(picai / "images" / "2" / "1_a_adc.mha")
    with pytest.raises(DataError, match=r"two files for one image, .*/1/1_a_adc.mha and .*/2/1_a_adc.mha"):
        discover("picai", picai)


def test_two_label_files_for_one_case(picai):
    tiny_image(picai / EXPERT / "2_a.mha")
    with pytest.raises(DataError, match="case 2_a: .*two files for one image, 2_a.mha and 2_a.nii.gz"):
        discover("picai", picai)


@pytest.mark.parametrize("name", ["a..b_1_t2w.mha", "1_x\x07_t2w.mha", "1_x\\y_t2w.mha"])
def test_unsafe_ids_refused(picai, name):
    tiny_image(picai / "images" / "1" / name)
    with pytest.raises(DataError, match="id .* holds"):
        discover("picai", picai)


def test_hidden_files_are_skipped(picai):
    (picai / "images" / "1" / "._1_a_t2w.mha").write_bytes(b"AppleDouble")
    (picai / "images" / ".Trash").mkdir()
    assert [c.case_id for c in discover("picai", picai)] == ["1_a", "1_b", "2_a", "3_a"]


def test_to_item_carries_the_new_fields(picai):
    item = discover("picai", picai)[1].to_item()
    assert (item["label_source"], item["label_convention"], item["label_grid"], item["channels"]) == (
        "AI", None, None, None)
