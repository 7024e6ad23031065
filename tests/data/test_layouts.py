"""Case discovery in the PI-CAI, BraTS and datalist layouts."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from medssl.data.layouts import discover
from medssl.errors import ConfigError, DataError


def test_picai_root_may_be_parent_or_images(picai_root):
    a = discover("picai", picai_root)
    b = discover("picai", picai_root / "images", labels_root=picai_root / "picai_labels")
    c = discover("picai", picai_root / "images")  # picai_labels found beside images/
    assert [x.case_id for x in a] == [x.case_id for x in b] == [x.case_id for x in c]
    assert [x.label for x in a] == [x.label for x in b] == [x.label for x in c]
    case = a[0]
    assert case.case_id == f"{case.patient_id}_{case.clinical['study_id']}"
    assert set(case.images) == {"t2w", "adc", "hbv"}
    assert case.clinical["case_csPCa"] in {"YES", "NO"}


def test_picai_default_is_expert_else_ai(picai_root):
    both = discover("picai", picai_root)  # default: human_expert+AI, the published cohort
    expert = discover("picai", picai_root, label_source="human_expert")
    delineations = picai_root / "picai_labels" / "csPCa_lesion_delineations"
    on_disk_expert = {p.name.removesuffix(".nii.gz") for p in delineations.glob("human_expert/resampled/*.nii.gz")}
    on_disk_ai = {p.name.removesuffix(".nii.gz") for p in delineations.glob("AI/Bosma22a/*.nii.gz")}
    assert {c.case_id for c in expert if c.label} == on_disk_expert
    assert {c.case_id for c in both if c.label} == on_disk_expert | on_disk_ai
    for case in both:
        expected = "human_expert" if case.case_id in on_disk_expert else "AI" if case.case_id in on_disk_ai else None
        assert case.label_source == expected
    assert all("human_expert" in c.label for c in expert if c.label)


def test_brats_missing_sequences_are_normal(brats_root):
    cases = discover("brats", brats_root)
    on_disk = {m: len(list(brats_root.glob(f"*/*_{m}.nii.gz"))) for m in ("t1", "t1ce", "t2", "flair")}
    assert {m: sum(c.images[m] is not None for c in cases) for m in on_disk} == on_disk
    assert on_disk["flair"] < len(cases) or on_disk["t1ce"] < len(cases)


def test_datalist_json_and_csv(tmp_path, brats_root):
    cases = discover("brats", brats_root)[:3]
    rows = [{"case_id": c.case_id, "patient_id": "P", "t1": c.images["t1"], "flair": c.images["flair"],
             "label": c.label} for c in cases]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    lines = ["case_id,patient_id,t1,flair,label"] + [
        f"{r['case_id']},P,{r['t1']},{r['flair'] or ''},{r['label']}" for r in rows]
    (tmp_path / "list.csv").write_text("\n".join(lines))
    for name in ("list.json", "list.csv"):
        found = discover("datalist", tmp_path / name)
        assert [c.case_id for c in found] == [c.case_id for c in cases]
        assert [c.images["flair"] for c in found] == [c.images["flair"] for c in cases]
        assert {c.patient_id for c in found} == {"P"}


def test_empty_root_and_bad_layout(tmp_path):
    with pytest.raises(DataError, match="no PI-CAI cases found"):
        discover("picai", tmp_path)
    with pytest.raises(DataError, match="no BraTS cases found"):
        discover("brats", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        discover("picai", tmp_path / "nope")
    with pytest.raises(ConfigError, match="data.layout 'nifti': choose one of picai, brats, prostate158, nnunet, "
                                          "datalist"):
        discover("nifti", tmp_path)


def test_label_is_read_in_its_own_space(picai_root):
    case = next(c for c in discover("picai", picai_root) if c.label)
    label, t2w = sitk.ReadImage(case.label), sitk.ReadImage(case.images["t2w"])
    assert label.GetSize() == t2w.GetSize()
