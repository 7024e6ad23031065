"""``medssl infer``: a finetuned checkpoint on new cases, maps in each case's own geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.layouts import discover
from medssl.data.synth import synth_brats, synth_picai
from medssl.lightning_cli import MedsslCLI
from tests.conftest import REPO, run_medssl

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it


def _fit(config: str, root, run_dir, *extra) -> None:
    MedsslCLI(args=["fit", "--config", str(REPO / config), "--data.root", str(root),
                    "--data.cache_dir", str(run_dir / "cache"), "--data.n_folds", "2", "--trainer.max_epochs", "1",
                    "--trainer.default_root_dir", str(run_dir), "--trainer.enable_progress_bar", "false", *extra])


@pytest.fixture(scope="module")
def detection_run(picai_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("det_run")
    _fit("configs/finetune/unet_picai_tiny.yaml", picai_root, run_dir, "--model.init_args.tta_flip", "false")
    return run_dir / "checkpoints" / "last.ckpt"


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6))


def test_detection_maps_for_every_new_case_in_its_t2w_geometry(detection_run, tmp_path):
    new = tmp_path / "new"
    synth_picai(new, cases=5, seed=11, first_patient=50000)
    out = tmp_path / "out"
    result = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(new), "--output", str(out),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "predictions.json").read_text())
    cases = {c.case_id: c for c in discover("picai", new)}
    assert sorted(record["cases"]) == sorted(cases)  # labelled or not, every case
    for case_id, entry in record["cases"].items():
        det = sitk.ReadImage(entry["path"])
        assert _same_geometry(det, sitk.ReadImage(cases[case_id].images["t2w"]))
        values = sitk.GetArrayFromImage(det)
        assert 0.0 <= values.min() and values.max() <= 1.0
        assert entry["case_score"] == pytest.approx(float(values.max()))
    assert record["roi_size"] == [8, 32, 32]  # the training windows (data.crop_size), not the whole volume
    # a rerun finds every map written and predicts nothing again
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    again = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(new), "--output", str(out),
                       cwd=tmp_path)
    assert again.returncode == 0 and {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")} == before


def test_weights_that_do_not_fit_the_config_are_one_line(detection_run, picai_root, tmp_path):
    result = run_medssl("infer", "--checkpoint", str(detection_run), "--config",
                        str(REPO / "configs/finetune/cswin_picai_tiny.yaml"), "--data.root", str(picai_root),
                        "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert str(detection_run) in last and "does not fit" in last
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_segmentation_writes_brats_labels_in_the_reference_geometry(tmp_path):
    root = tmp_path / "brats"
    synth_brats(root, cases=3, seed=4, size=(32, 32, 24))
    _fit("configs/finetune/bmmae_brats_tiny.yaml", root, tmp_path / "run", "--trainer.limit_val_batches", "0")
    out = tmp_path / "out"
    result = run_medssl("infer", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
                        "--output", str(out), cwd=tmp_path)  # data.root from the run's own config
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "predictions.json").read_text())
    assert record["task"] == "segmentation" and len(record["cases"]) == 3
    for entry in record["cases"].values():
        labels = sitk.ReadImage(entry["path"])
        assert _same_geometry(labels, sitk.ReadImage(entry["reference"]))
        values = sitk.GetArrayFromImage(labels)
        assert set(np.unique(values)) <= {0, 1, 2, 4}
        assert entry["voxels"] == {name: int((values == v).sum()) for name, v in (("ncr", 1), ("ed", 2), ("et", 4))}


def test_missing_reference_is_skipped_or_stops_in_one_line(detection_run, tmp_path):
    new = tmp_path / "new"
    synth_picai(new, cases=3, seed=12, first_patient=60000)
    cases = sorted(discover("picai", new), key=lambda c: c.case_id)
    Path(cases[0].images["t2w"]).unlink()  # the reference modality of the first case
    common = ("infer", "--checkpoint", str(detection_run), "--data.root", str(new))
    stopped = run_medssl(*common, "--output", str(tmp_path / "stop"), cwd=tmp_path)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert cases[0].case_id in stopped.stderr.strip().splitlines()[-1]
    skipped = run_medssl(*common, "--output", str(tmp_path / "skip"), "--data.on_bad_case", "skip", cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    record = json.loads((tmp_path / "skip" / "predictions.json").read_text())
    assert list(record["skipped"]) == [cases[0].case_id]
    assert sorted(record["cases"]) == [c.case_id for c in cases[1:]]


def test_output_written_by_another_checkpoint_is_refused(detection_run, picai_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".medssl_infer.json").write_text(json.dumps({"checkpoint_sha256": "0" * 64, "settings": {}}))
    result = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(picai_root),
                        "--output", str(out), cwd=tmp_path)
    assert result.returncode == 2 and "made with other settings" in result.stderr.strip().splitlines()[-1]
    assert not list(out.glob("*.nii.gz"))
    redo = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(picai_root),
                      "--output", str(out), "--overwrite", cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert len(list(out.glob("*.nii.gz"))) == len(discover("picai", picai_root))


def test_an_ensemble_of_one_model_twice_is_that_model(detection_run, tmp_path):
    new = tmp_path / "new"
    synth_picai(new, cases=3, seed=13, first_patient=70000)
    one = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(new),
                     "--output", str(tmp_path / "one"), cwd=tmp_path)
    two = run_medssl("infer", "--checkpoint", str(detection_run), str(detection_run), "--data.root", str(new),
                     "--output", str(tmp_path / "two"), cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert len(record["models"]) == 2
    for path in (tmp_path / "one").glob("*.nii.gz"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "two" / path.name)))
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_rerun_verifies_what_it_skips(detection_run, tmp_path):
    """A cut map, or an input image changed after its map was written, is predicted again; the rest is kept."""
    new = tmp_path / "new"
    synth_picai(new, cases=3, seed=14, first_patient=80000)
    out = tmp_path / "out"
    args = ("infer", "--checkpoint", str(detection_run), "--data.root", str(new), "--output", str(out))
    assert run_medssl(*args, cwd=tmp_path).returncode == 0
    maps = sorted(out.glob("*.nii.gz"))
    before = {p.name: p.stat().st_mtime_ns for p in maps}
    data = maps[0].read_bytes()
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(maps[0])))
    maps[0].write_bytes(data[: len(data) // 2])  # a truncated map from an earlier crash or a full disk
    case = discover("picai", new)[[c.case_id for c in discover("picai", new)].index(maps[1].name[:-7])]
    adc = sitk.ReadImage(case.images["adc"])
    sitk.WriteImage(adc * 2, case.images["adc"])  # its input changed after the map was written
    again = run_medssl(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert after[maps[0].name] != before[maps[0].name] and after[maps[1].name] != before[maps[1].name]
    assert after[maps[2].name] == before[maps[2].name]
    np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(str(maps[0]))), original, atol=1e-6)
    assert "changed since it was written" in again.stderr


def test_null_setting_does_not_skip_the_checkpoint_check(detection_run, picai_root, tmp_path):
    result = run_medssl("infer", "--checkpoint", str(detection_run), "--data.root", str(picai_root),
                        "--data.spacing", "null", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "data.spacing is None but" in result.stderr.strip().splitlines()[-1]


def test_predict_subcommand_writes_what_infer_writes(detection_run, picai_root, tmp_path):
    run = detection_run.parent.parent
    config = sorted(run.glob("lightning_logs/version_*/config.yaml"))[0]
    result = run_medssl("predict", "--config", str(config), "--ckpt_path", str(detection_run),
                        "--data.cache_dir", "null", "--trainer.default_root_dir", str(tmp_path / "pred"),
                        "--trainer.logger", "false", cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    record = json.loads((tmp_path / "pred" / "predictions" / "predictions.json").read_text())
    cases = {c.case_id: c for c in discover("picai", picai_root)}
    assert sorted(record["cases"]) == sorted(cases)
    for case_id, entry in record["cases"].items():
        assert _same_geometry(sitk.ReadImage(entry["path"]), sitk.ReadImage(cases[case_id].images["t2w"]))


def test_test_subcommand_prints_the_validation_metrics(detection_run, picai_root, tmp_path):
    run = detection_run.parent.parent
    config = sorted(run.glob("lightning_logs/version_*/config.yaml"))[0]
    result = run_medssl("test", "--config", str(config), "--ckpt_path", str(detection_run),
                        "--trainer.default_root_dir", str(tmp_path / "test"), "--trainer.logger", "false",
                        cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "test/auroc" in result.stdout and "test/ap" in result.stdout and "test/score" in result.stdout


def make_prostate158(picai: Path, root: Path) -> dict[str, bool]:
    """Prostate158 as published, from a synthetic PI-CAI set: t2/adc/dwi NIfTI, the tumour label on the ADC grid,
    the split CSVs. Returns case id -> whether its ADC-grid tumour label has a lesion voxel."""
    from medssl.data.geometry import Grid, resample

    columns = ["ID", "t2", "adc", "dwi", "t2_anatomy_reader1", "adc_tumor_reader1"]
    rows, positive = [], {}
    for k, case in enumerate(sorted(discover("picai", picai), key=lambda c: c.case_id)):
        if case.label is None:
            continue
        case_id = f"{20 + k:03d}"
        folder = root / "train" / case_id
        folder.mkdir(parents=True)
        for src, name in (("t2w", "t2"), ("adc", "adc"), ("hbv", "dwi")):
            sitk.WriteImage(sitk.ReadImage(case.images[src]), str(folder / f"{name}.nii.gz"))
        adc_grid = Grid.from_file(case.images["adc"])
        tumour = resample(sitk.ReadImage(case.label), adc_grid, nearest=True)
        positive[case_id] = bool((tumour >= 1).any())
        name = "adc_tumor_reader1" if positive[case_id] else "empty"
        sitk.WriteImage(adc_grid.image((tumour >= 1).astype(np.uint8)), str(folder / f"{name}.nii.gz"))  # 0/1
        t2 = sitk.ReadImage(case.images["t2w"])
        sitk.WriteImage(Grid.from_image(t2).image(np.zeros(Grid.from_image(t2).shape_zyx, np.uint8)),
                        str(folder / "t2_anatomy_reader1.nii.gz"))
        rel = f"train/{case_id}"
        rows.append([case_id, f"{rel}/t2.nii.gz", f"{rel}/adc.nii.gz", f"{rel}/dwi.nii.gz",
                     f"{rel}/t2_anatomy_reader1.nii.gz", f"{rel}/{name}.nii.gz"])
    (root / "train.csv").write_text("\n".join(",".join(r) for r in [columns, *rows]) + "\n", encoding="utf-8-sig")
    return positive


def test_prostate158_check_infer_evaluate(detection_run, tmp_path):
    """A PI-CAI-trained model runs unchanged on Prostate158: check counts it, infer writes maps in each case's T2W
    geometry, evaluate scores them against the ADC-grid labels resampled onto T2W, as picai_eval does."""
    picai = tmp_path / "picai"
    synth_picai(picai, cases=8, seed=21, first_patient=90000)
    p158 = tmp_path / "p158"
    positive = make_prostate158(picai, p158)
    check = run_medssl("check", str(p158), "--layout", "prostate158", "--json", cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    summary = json.loads(check.stdout)
    assert summary["cases"] == summary["labelled"] == len(positive)
    assert summary["positive"] == sum(positive.values())
    out = tmp_path / "out"
    infer = run_medssl("infer", "--checkpoint", str(detection_run), "--data.layout", "prostate158", "--data.root",
                       str(p158), "--output", str(out), cwd=tmp_path)
    assert infer.returncode == 0, infer.stderr[-3000:]
    for case_id in positive:
        t2 = sitk.ReadImage(str(p158 / "train" / case_id / "t2.nii.gz"))
        assert _same_geometry(sitk.ReadImage(str(out / f"{case_id}.nii.gz")), t2)
    scored = run_medssl("evaluate", "--predictions", str(out), "--layout", "prostate158", "--data.root", str(p158),
                        "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    result = json.loads(scored.stdout)
    assert result["cases"] == len(positive) and result["positives"] == sum(positive.values())
    assert {"auroc", "ap", "score"} <= set(result)
