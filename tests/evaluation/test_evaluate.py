"""Scoring a predictions folder: ``medssl evaluate`` against picai_eval itself, missing and off-grid maps,
labels on another grid, the report files, and BraTS Dice on hand-made label maps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import picai_eval
import pytest

from medssl.commands.evaluate import main
from medssl.errors import DataError
from medssl.evaluation.evaluate import evaluate_predictions, labels_of_cases, write_evaluation_report
from medssl.evaluation.picai import picai_score
from tests.conftest import write_image
from tests.evaluation.conftest import SPACING, make_cases, write_cases


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Ten cases: ``det/<case>.nii.gz`` detection maps on the grid of ``labels/<case>.nii.gz`` (ISUP 2..5)."""
    cases = make_cases(10, seed=2)
    root = tmp_path_factory.mktemp("evaluate")
    write_cases(cases, root)
    return cases, root / "det", root / "labels"


def _reference(cases, empty=()):
    """picai_eval.evaluate on the arrays themselves, labels binarised as >= 1."""
    return picai_eval.evaluate(
        y_det=[np.zeros_like(c["det"]) if k in empty else c["det"] for k, c in cases.items()],
        y_true=[(c["label"] >= 1).astype(np.int32) for c in cases.values()],
        subject_list=list(cases), num_parallel_calls=1)


def _json(capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object on stdout


def _copy(det: Path, tmp_path: Path, without=()) -> Path:
    out = tmp_path / "det"
    shutil.copytree(det, out)
    for case in without:
        (out / f"{case}.nii.gz").unlink()
    return out


def test_evaluate_json_equals_picai_eval(folders, capsys):
    cases, det, labels = folders
    result = _json(capsys, ["--predictions", str(det), "--labels", str(labels), "--json", "--bootstrap", "200"])
    ref = _reference(cases)
    assert result["auroc"] == pytest.approx(ref.auroc, abs=1e-4) and 0 < ref.auroc < 1
    assert result["ap"] == pytest.approx(ref.AP, abs=1e-4) and 0 < ref.AP < 1
    assert result["score"] == pytest.approx(ref.score, abs=1e-4)
    assert result["score"] == pytest.approx(picai_score(result["auroc"], result["ap"]))
    assert result["cases"] == 10 and result["positives"] == sum(c["label"].any() for c in cases.values()) == 6
    assert result["num_lesions"] == ref.num_lesions
    for metric in ("auroc", "ap", "score"):
        low, high = result["ci"][metric]
        assert low <= result[metric] <= high
    assert result["froc"]["sensitivity"] and result["missing_as_empty"] == [] and result["unlabelled_maps"] == []


def test_missing_map_is_one_line_naming_the_case(folders, tmp_path, capsys):
    cases, det, labels = folders
    det = _copy(det, tmp_path, without=["case03"])
    argv = ["--predictions", str(det), "--labels", str(labels), "--json", "--bootstrap", "50"]
    with pytest.raises(DataError, match=r"case case03: no map case03\.nii\.gz or \.mha .*1 of the 10 labelled") as e:
        main(argv)
    assert "\n" not in str(e.value)
    result = _json(capsys, [*argv, "--missing", "empty"])
    ref = _reference(cases, empty={"case03"})
    assert result["missing_as_empty"] == ["case03"] and result["cases"] == 10
    assert result["auroc"] == pytest.approx(ref.auroc, abs=1e-4) and result["ap"] == pytest.approx(ref.AP, abs=1e-4)
    assert result["case_pred"]["case03"] == 0.0


def test_map_off_the_label_grid_is_refused_naming_the_case(folders, tmp_path):
    cases, det, labels = folders
    det = _copy(det, tmp_path)
    write_image(det / "case02.nii.gz", cases["case02"]["det"], (0.6, 0.5, 3.0))
    with pytest.raises(DataError, match=r"case case02: .*map grid .* differs from its label's"):
        main(["--predictions", str(det), "--labels", str(labels)])


def test_unlabelled_maps_are_listed_and_case_ids_select(folders, tmp_path):
    cases, det, labels = folders
    det = _copy(det, tmp_path)
    shutil.copy(det / "case00.nii.gz", det / "other99.nii.gz")
    (det / ".case01.nii.gz.tmp.nii.gz").write_bytes(b"")  # an unfinished write: ignored
    (det / "predictions.json").write_text("{}")
    chosen = ["case00", "case01", "case06", "case07"]
    result = evaluate_predictions(det, {c: labels / f"{c}.nii.gz" for c in cases}, case_ids=chosen, n_bootstrap=50)
    ref = _reference({c: cases[c] for c in chosen})
    assert result["unlabelled_maps"] == ["other99"] and result["cases"] == 4
    assert result["auroc"] == pytest.approx(ref.auroc, abs=1e-6) and result["ap"] == pytest.approx(ref.AP, abs=1e-6)
    with pytest.raises(DataError, match="case nope: has no label"):
        evaluate_predictions(det, labels, case_ids=["case00", "nope"])


def test_prostate158_labels_on_the_adc_grid_are_resampled_onto_t2w(folders, tmp_path, capsys):
    """--layout prostate158: the tumour label lies on the ADC grid and is scored on the T2W grid of the maps."""
    cases, det, labels = folders
    root, on_t2w = tmp_path / "prostate158", {}
    for case, c in cases.items():
        # ADC at twice the in-plane spacing, its voxel centres between the T2W ones: nearest
        # neighbour onto the T2W grid repeats each ADC voxel twice along H and W
        coarse = c["label"][:, ::2, ::2]
        folder = root / "train" / case
        folder.mkdir(parents=True)
        shutil.copy(labels / f"{case}.nii.gz", folder / "t2.nii.gz")  # an image on the T2W grid
        for name, array in (("adc", coarse.astype(np.float32)), ("adc_tumor_reader1", coarse)):
            write_image(folder / f"{name}.nii.gz", array, (1.0, 1.0, 3.0), origin=(0.25, 0.25, 0.0))
        on_t2w[case] = {"det": c["det"], "label": np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)}
    result = _json(capsys, ["--predictions", str(det), "--layout", "prostate158", "--data.root", str(root),
                            "--json", "--bootstrap", "50"])
    ref = _reference(on_t2w)
    assert ref.num_lesions > 0 and result["num_lesions"] == ref.num_lesions and result["cases"] == 10
    assert result["auroc"] == pytest.approx(ref.auroc, abs=1e-6) and result["ap"] == pytest.approx(ref.AP, abs=1e-6)

    found = [SimpleNamespace(case_id="a", label="a.nii.gz", label_grid="adc", images={"t2w": "t2.nii.gz"}),
             SimpleNamespace(case_id="b", label="b.nii.gz", images={"t2w": "t2b.nii.gz"}),
             SimpleNamespace(case_id="c", label=None, images={"t2w": "t2c.nii.gz"})]
    assert labels_of_cases(found) == ({"a": "a.nii.gz", "b": "b.nii.gz"}, {"a": "t2.nii.gz"})
    with pytest.raises(DataError, match="case x: .*adc grid and it has no t2w image"):
        labels_of_cases([SimpleNamespace(case_id="x", label="x.nii.gz", label_grid="adc", images={"t2w": None})])


def test_picai_layout_labels(folders, tmp_path, capsys):
    cases, det, labels = folders
    ids = {case: f"1{i:04d}_2{i:06d}" for i, case in enumerate(cases)}  # <patient_id>_<study_id>
    preds, label_dir = tmp_path / "preds", tmp_path / "labels"
    preds.mkdir(), label_dir.mkdir()
    for case, case_id in ids.items():
        patient = tmp_path / "images" / case_id.split("_")[0]
        patient.mkdir(parents=True)
        shutil.copy(labels / f"{case}.nii.gz", patient / f"{case_id}_t2w.nii.gz")  # an image on the T2W grid
        shutil.copy(det / f"{case}.nii.gz", preds / f"{case_id}.nii.gz")
        shutil.copy(labels / f"{case}.nii.gz", label_dir / f"{case_id}.nii.gz")
    result = _json(capsys, ["--predictions", str(preds), "--layout", "picai", "--data.root", str(tmp_path),
                            "--data.labels_root", str(label_dir), "--json", "--bootstrap", "50"])
    ref = _reference(cases)
    assert result["cases"] == 10 and result["auroc"] == pytest.approx(ref.auroc, abs=1e-6)
    assert set(result["case_pred"]) == set(ids.values())


def test_compare_and_report_files(folders, tmp_path, capsys):
    cases, det, labels = folders
    worse = tmp_path / "worse"
    for case, c in cases.items():  # every candidate at a tenth of its confidence, plus a false positive
        d = c["det"] * 0.1
        d[0, :3, :3] = 0.5
        write_image(worse / f"{case}.nii.gz", d.astype(np.float32), SPACING)
    out = tmp_path / "report"
    result = _json(capsys, ["--predictions", str(det), "--labels", str(labels), "--compare", str(worse),
                            "--output", str(out), "--json", "--bootstrap", "200"])
    comparison = result["comparison"]
    assert comparison["cases"] == 10 and comparison["b"] == str(worse)
    assert comparison["auroc"]["a"] == pytest.approx(result["auroc"])
    assert comparison["auroc"]["difference"] > 0 and comparison["auroc"]["ci"][0] <= comparison["auroc"]["difference"]
    assert json.loads((out / "evaluation.json").read_text()) == result
    md = (out / "evaluation.md").read_text()
    assert "| AUROC | AP | PI-CAI score |" in md and "difference [95% CI]" in md
    for plot in ("roc", "pr", "froc"):
        assert (out / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert main(["--predictions", str(det), "--labels", str(labels), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "PI-CAI score" in text and "10 cases (6 positive" in text


def _brats(*boxes: tuple[tuple[slice, ...], int], shape=(6, 12, 12)) -> np.ndarray:
    """A label map painted box by box (later boxes over earlier ones)."""
    out = np.zeros(shape, np.uint8)
    for box, value in boxes:
        out[box] = value
    return out


def test_segmentation_dice_equals_hand_computation(tmp_path):
    # label (2021): necrosis 1 in a 2x2x2 core, enhancing 4 around it (2x4x4), oedema 2 around that (4x8x8)
    label = _brats((np.s_[1:5, 2:10, 2:10], 2), (np.s_[2:4, 4:8, 4:8], 4), (np.s_[2:4, 5:7, 5:7], 1))
    pred = _brats((np.s_[1:5, 2:10, 3:10], 2), (np.s_[2:4, 4:8, 4:6], 4), (np.s_[2:4, 5:7, 5:6], 1))
    empty_et = _brats((np.s_[1:5, 2:10, 2:10], 2))  # case b: oedema only, and no map predicted

    def dice(p, t):
        return 2 * np.logical_and(p, t).sum() / (p.sum() + t.sum())

    regions = {"TC": (1, 4), "WT": (1, 2, 4), "ET": (4,)}
    expected = {r: dice(np.isin(pred, v), np.isin(label, v)) for r, v in regions.items()}
    # by hand: TC 2*16/(16+32), WT 2*224/(224+256), ET 2*12/(12+24)
    assert expected == pytest.approx({"TC": 2 / 3, "WT": 14 / 15, "ET": 2 / 3})
    spacing = (1.0, 1.0, 2.0)
    for folder, enhancing in (("2021", 4), ("2023", 3)):  # 2023 labels: enhancing is 3
        lab = np.where(label == 4, enhancing, label).astype(np.uint8)
        write_image(tmp_path / folder / "labels" / "a.nii.gz", lab, spacing)
        write_image(tmp_path / folder / "labels" / "b.nii.gz", empty_et, spacing)
        write_image(tmp_path / folder / "preds" / "a.nii.gz", pred, spacing)  # predictions as medssl infer: ET 4
    result = evaluate_predictions(tmp_path / "2021" / "preds", tmp_path / "2021" / "labels", task="segmentation",
                                  missing="empty")
    assert result["missing_as_empty"] == ["b"] and result["cases"] == 2
    for region in regions:
        assert result["per_case"]["a"]["dice"][region] == pytest.approx(expected[region])
    assert result["per_case"]["b"]["dice"]["WT"] == 0.0 and result["per_case"]["b"]["dice"]["ET"] is None
    assert result["dice"]["ET"] == pytest.approx(expected["ET"])  # b's ET is undefined (empty target): left out
    assert result["dice"]["WT"] == pytest.approx(expected["WT"] / 2)
    assert result["regions"]["ET"]["dice_undefined"] == 1
    b2023 = evaluate_predictions(tmp_path / "2023" / "preds", tmp_path / "2023" / "labels", task="segmentation",
                                 missing="empty")
    assert b2023["per_case"]["a"]["enhancing_label"] == {"prediction": 4, "label": 3}
    assert b2023["per_case"]["a"]["dice"] == result["per_case"]["a"]["dice"]
    with pytest.raises(DataError, match=r"case a: .*labels/a.nii.gz: values \[3\] are not BraTS 2021 labels"):
        evaluate_predictions(tmp_path / "2023" / "preds", tmp_path / "2023" / "labels", task="segmentation",
                             missing="empty", brats_labels="2021")
    both = label.copy()
    both[0, 0, 0] = 3
    write_image(tmp_path / "2021" / "labels" / "a.nii.gz", both, spacing)
    with pytest.raises(DataError, match="case a: .*holds both 3 and 4"):
        evaluate_predictions(tmp_path / "2021" / "preds", tmp_path / "2021" / "labels", task="segmentation",
                             missing="empty")
    report = write_evaluation_report(tmp_path / "seg_report", b2023)
    assert [p.name for p in report] == ["evaluation.json", "evaluation.md"]
    assert "| ET |" in (tmp_path / "seg_report" / "evaluation.md").read_text()


def test_a_segmentation_metrics_convention_on_detection_maps_is_refused(folders):
    from medssl.errors import ConfigError

    _, det, labels = folders
    with pytest.raises(ConfigError, match="--metrics legacy is a BraTS segmentation convention"):
        main(["--predictions", str(det), "--labels", str(labels), "--metrics", "legacy"])
