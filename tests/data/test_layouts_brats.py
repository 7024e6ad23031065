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


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_synth_writes_each_release_naming_with_the_same_tumours(tmp_path):
    """2021, 2023 and 2024-gli from one seed: the release's file names and label values, the same tumours; 2024 GLI
    adds resection cavities (label 4) that 2023's names cannot announce, so discovery needs brats_labels."""
    from medssl.data.synth import synth_brats

    sets = {n: tmp_path / n for n in ("2021", "2023", "2024-gli")}
    ids = {n: synth_brats(root, cases=4, seed=3, size=(48, 48, 32), naming=n) for n, root in sets.items()}
    assert ids["2021"][0] == "BraTS2021_00000" and ids["2023"] == ids["2024-gli"] == [
        f"BraTS-GLI-{i:05d}-000" for i in range(4)]
    found = {n: discover_brats(root, brats_labels="2024-gli" if n == "2024-gli" else None) for n, root in sets.items()}
    assert [c.label_convention for c in found["2021"]] == ["brats2021"] * 4
    assert [c.label_convention for c in found["2023"]] == ["brats2023"] * 4
    assert [c.label_convention for c in found["2024-gli"]] == ["brats2024gli"] * 4
    with_cavity = 0
    for a, b, c in zip(found["2021"], found["2023"], found["2024-gli"]):
        assert [m for m in a.images if a.images[m]] == [m for m in b.images if b.images[m]]  # same missing sequences
        assert Path(b.images["t1ce"] or b.label).name.startswith(b.case_id + "-")
        s21, s23, s24 = _read(Path(a.label)), _read(Path(b.label)), _read(Path(c.label))
        assert set(np.unique(s21)) <= {0, 1, 2, 4} and set(np.unique(s23)) <= {0, 1, 2, 3}
        np.testing.assert_array_equal(np.where(s21 == 4, 3, s21), s23)
        cavity = s24 == 4
        with_cavity += bool(cavity.any())
        np.testing.assert_array_equal(np.where(cavity, 0, s24), s23)  # the cavity only takes background voxels
        for m, path in a.images.items():
            if path:
                np.testing.assert_array_equal(_read(Path(path)), _read(Path(b.images[m])))
    assert with_cavity == 2


def test_2024_gli_resection_cavity_is_in_no_region_and_never_enhancing(tmp_path):
    """Label 4 is the resection cavity under 2024-gli: no region when training targets are made, none when scored;
    a 2023-named set holding 4 is refused with the advice to say 2024-gli; 2021 would have called it enhancing."""
    from medssl.data.preprocess import encode_label
    from medssl.evaluation.segmentation import label_map_metrics

    label = np.zeros((1, 6, 6), np.uint8)
    label[0, 0, :2], label[0, 1, :2], label[0, 2, :2], label[0, 4, :3] = 1, 2, 3, 4  # NCR, ED, ET, cavity
    regions = encode_label(label, "brats_regions", "brats2024gli")
    assert not regions[:, label == 4].any()  # the cavity is in none of TC, WT, ET
    assert regions[2, label == 3].all() and regions[0, label == 1].all()
    assert encode_label(label, "brats_regions", "brats2021")[2, label == 4].all()  # what 2021 would have trained

    oracle = CONVENTIONS["brats2024gli"].label_map(regions.astype(bool))
    assert 4 not in oracle  # predictions never write the cavity
    scored = label_map_metrics(oracle, label, brats_labels="2024-gli")
    assert scored["dice"] == {"TC": 1.0, "WT": 1.0, "ET": 1.0} and scored["enhancing_label"]["label"] == 3
    with pytest.raises(DataError, match="2024-gli"):  # read from values, 3 and 4 together: ask, never guess
        label_map_metrics(oracle, label)
    with pytest.raises(DataError, match="not BraTS 2023 labels"):
        label_map_metrics(oracle, label, brats_labels="2023")


def test_2024_gli_labels_under_2023_reading_refused_with_the_advice(tmp_path):
    from medssl.data.preprocess import Preprocessing, check_label
    from medssl.data.synth import synth_brats

    synth_brats(tmp_path / "b", cases=1, seed=0, size=(48, 48, 32), naming="2024-gli")
    (case,) = discover_brats(tmp_path / "b")
    assert case.label_convention == "brats2023"  # the names cannot say 2024
    import SimpleITK as sitk

    label = sitk.ReadImage(case.label)
    with pytest.raises(DataError, match="2024-gli"):
        check_label(label, label, Preprocessing(("t1",), ("t1",)), case.case_id, case.label, case.label_convention)
    check_label(label, label, Preprocessing(("t1",), ("t1",)), case.case_id, case.label, "brats2024gli")


def test_reconstructed_sequences_are_named_as_the_input_names_them():
    from medssl.data.layouts import Case
    from medssl.reconstruct import output_name

    assert output_name(Case("BraTS2021_00001", "p", {}, label_convention="brats2021"), "flair") == \
        "BraTS2021_00001_flair.nii.gz"
    assert output_name(Case("BraTS-GLI-00001-000", "p", {}, label_convention="brats2024gli"), "t1ce") == \
        "BraTS-GLI-00001-000-t1c.nii.gz"
    assert output_name(Case("10000_1000000", "10000", {}), "adc") == "10000_1000000_adc.nii.gz"
