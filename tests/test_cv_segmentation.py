"""``medssl cv`` for segmentation (BM-MAE UNETR on BraTS): patient-grouped folds, per-fold label maps in each case's
geometry and label convention, the report per region under a named convention, the twin, and ``infer --cv``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.synth import synth_brats
from tests.conftest import REPO, run_medssl

SMOKE = ["--config", str(REPO / "configs/trainer/cpu_smoke.yaml")]


@pytest.fixture(scope="module")
def brats2023(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_cv")
    synth_brats(root / "data", cases=10, seed=3, size=(32, 32, 24), naming="2023")
    done = run_medssl("fit", "--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), *SMOKE, "--data.root",
                      str(root / "data"), "--trainer.default_root_dir", str(root / "pre"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


@pytest.mark.slow
def test_two_folds_and_the_twin_report_per_region_and_infer_cv_writes_label_maps(brats2023):
    root, data = brats2023, brats2023 / "data"
    done = run_medssl("cv", "--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), *SMOKE, "--data.root",
                      str(data), "--folds", "0,1", "--twin", "--model.init_args.init_from",
                      str(root / "pre/checkpoints/last.ckpt"), "--output", str(root / "cv"), cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pooled Dice (brats2023)" in done.stdout and "pretrained - scratch" in done.stdout
    assert "weights_only" not in done.stderr  # saving last.ckpt at train end says nothing alarming
    report = json.loads((root / "cv/cv_report.json").read_text())
    assert report["task"] == "segmentation" and report["metrics"] == "brats2023"
    assert "lesion-wise" in report["metrics_convention"] and report["partial"] == {"folds": [0, 1], "of": 5}
    assert set(report["runs"]) == {"pretrained", "scratch"}
    for run in report["runs"].values():
        assert [f["fold"] for f in run["folds"]] == [0, 1]
        assert set(run["pooled"]["dice"]) == {"TC", "WT", "ET"} and run["pooled"]["num_cases"] >= 2
    for region, row in report["comparison"]["dice"].items():
        assert row["verdict"] in ("helped", "hurt", "no detectable difference", "undefined"), region
    assert report["provenance"]["init_from"]["sha256"] and report["provenance"]["selection"] == "last"
    markdown = (root / "cv/cv_report.md").read_text()
    assert "segmentation" in markdown and "Dice ET" in markdown and "pretrained - scratch" in markdown
    # every fold's maps: each validation case once, on its reference image's grid, in the data's 2023 labels
    record = json.loads((root / "cv/fold_0/fold_result.json").read_text())
    assert record["task"] == "segmentation" and record["cases"]
    for case, path in record["predictions"].items():
        written = sitk.ReadImage(str(root / "cv/fold_0" / path))
        reference = next((data / case).glob(f"{case}-t1n.nii.gz"))
        assert _same_grid(written, sitk.ReadImage(str(reference)))
        assert set(np.unique(sitk.GetArrayFromImage(written))) <= {0, 1, 2, 3}
    # the fold ensemble on new cases, in their naming
    new = root / "new"
    synth_brats(new, cases=2, seed=9, size=(32, 32, 24), naming="2023")
    inferred = run_medssl("infer", "--cv", str(root / "cv"), "--data.root", str(new), "--output", str(root / "inf"),
                          cwd=root)
    assert inferred.returncode == 0, inferred.stderr[-3000:]
    predictions = json.loads((root / "inf/predictions.json").read_text())
    assert predictions["task"] == "segmentation" and len(predictions["models"]) == 2
    for case, entry in predictions["cases"].items():
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(entry["path"])))) <= {0, 1, 2, 3}, case
        assert entry["path"].endswith(f"{case}.nii.gz")


@pytest.mark.slow
def test_what_a_segmentation_cv_does_not_take_is_refused_in_one_line(brats2023, picai_root, tmp_path):
    common = ["cv", "--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root",
              str(brats2023 / "data"), "--output", str(tmp_path / "cv")]
    for extra, words in ((["--seeds", "0,1"], "--seeds: the label-efficiency study is built for detection"),
                         (["--train-fractions", "0.5,1.0"], "--train-fractions"),
                         (["--control", "shuffled"], "--control")):
        bad = run_medssl(*common, *extra, cwd=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
        assert bad.stderr.strip().splitlines()[-1].startswith("medssl: error:") and words in bad.stderr
    detection = run_medssl("cv", "--config", str(REPO / "configs/finetune/unet_picai_tiny.yaml"), "--data.root",
                           str(picai_root), "--metrics", "legacy", "--output", str(tmp_path / "det"), cwd=tmp_path)
    assert detection.returncode == 2 and "BraTS segmentation convention" in detection.stderr
    assert not (tmp_path / "cv").exists() and not (tmp_path / "det").exists()
