"""The notebooks: committed without outputs, and each one runs headless on small inputs.

The inputs are made once per module, small enough for a 2-core CPU: a 12-case synthetic PI-CAI set,
a one-epoch tiny CSwin pretraining run and a one-epoch tiny BM-MAE run on 4 synthetic BraTS cases
(both through ``python -m medssl fit``, as a user runs them), and a two-run ``cv_report.json``
written by the report writer ``medssl cv`` uses, from detection maps drawn around the labels and
scored by picai_eval (a real ``medssl cv --twin`` takes minutes here; tests/test_cv.py runs one).
Each notebook then runs with its input paths injected after its ``parameters`` cell, as papermill does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.layouts import discover
from medssl.data.synth import synth_brats, synth_picai
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # end to end: `pytest -m "not slow"` skips it

NOTEBOOKS = REPO / "notebooks"
NAMES = ("01_data", "02_pretraining", "03_cv_results", "04_label_efficiency")


def _read(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs_and_a_parameters_cell(name):
    nb = _read(name)
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    for cell in code:
        assert cell["outputs"] == [], f"{name}: a code cell has outputs; save it stripped"
        assert cell["execution_count"] is None, f"{name}: a code cell has an execution count"
    tagged = [cell for cell in nb["cells"] if "parameters" in cell.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], f"{name}: the first code cell must be the one tagged parameters"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert nb["cells"][0]["cell_type"] == "markdown"


def _fit(config: str, root: Path, work: Path, *extra: str) -> subprocess.Popen:
    """``python -m medssl fit`` for one epoch, started in the background."""
    args = [sys.executable, "-m", "medssl", "fit", "--config", str(REPO / config), "--data.root", str(root),
            "--data.cache_dir", str(work / "cache"), "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(work), "--trainer.enable_progress_bar", "false", *extra]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]


def _cv_report(picai: Path, out: Path) -> Path:
    """A two-fold ``pretrained`` + ``scratch`` report: lesion-shaped detection maps, a false positive per case."""
    from medssl.data.geometry import write_like
    from medssl.evaluation.picai import evaluate_maps
    from medssl.evaluation.report import write_cv_report

    labelled = [case for case in discover("picai", picai) if case.label]
    folds = [labelled[0::2], labelled[1::2]]
    rng = np.random.default_rng(0)
    runs = {}
    for name, hit in (("pretrained", (0.4, 1.0)), ("scratch", (0.1, 0.9))):
        runs[name] = []
        for k, cases in enumerate(folds):
            predictions = {}
            for case in cases:
                lesion = sitk.GetArrayFromImage(sitk.ReadImage(case.label)) >= 1  # [D, H, W]
                det = np.zeros(lesion.shape, np.float32)
                det[lesion] = rng.uniform(*hit)
                det[1:3, 2:6, 2:6] = rng.uniform(0.05, 0.6)  # a false positive in the corner
                path = out / name / f"fold_{k}" / "predictions" / f"{case.case_id}.nii.gz"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_like(det, case.images["t2w"], path)
                predictions[case.case_id] = str(path)
            labels = {case.case_id: case.label for case in cases}
            runs[name].append({"fold": k, "cases": sorted(predictions), "predictions": predictions,
                               "labels": labels, "metrics": evaluate_maps(predictions, labels),
                               "leaked_cases": [], "train_cases": len(labelled) - len(cases)})
    write_cv_report(out, runs, {"leakage": {"validated_cases_seen_in_pretraining": [], "note": "test"}},
                    n_bootstrap=100)
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("nbclient")  # before the minute of pretraining the notebooks would not use
    work = tmp_path_factory.mktemp("notebooks")
    picai, brats = work / "picai", work / "brats"
    synth_picai(picai, cases=12, seed=0)
    synth_brats(brats, cases=4, seed=0, size=(32, 32, 24))  # two of them lack flair
    (work / "cswin").mkdir()
    (work / "bmmae").mkdir()
    runs = [_fit("configs/pretrain/cswin_tiny.yaml", picai, work / "cswin"),
            _fit("configs/pretrain/bmmae_tiny.yaml", brats, work / "bmmae", "--data.layout", "brats")]
    cv = _cv_report(picai, work / "cv")  # while the two pretrainings run
    for process in runs:
        _wait(process)
    (bmmae_ckpt,) = (work / "bmmae").rglob("last.ckpt")
    return {"picai": picai, "brats": brats, "cswin": work / "cswin", "bmmae": work / "bmmae",
            "bmmae_ckpt": bmmae_ckpt, "cv": cv}


def _execute(name: str, parameters: dict, cwd: Path):
    """Run a notebook with ``parameters`` injected after its parameters cell; returns the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, injected)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, cwd / f"{name}.executed.ipynb")  # for a look after a failure
    return nb


def _outputs(nb) -> tuple[int, str]:
    """Number of figures (PNG outputs) and all text the notebook printed or displayed."""
    figures, text = 0, []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{output.ename}: {output.evalue}"
            data = output.get("data", {})
            figures += "image/png" in data
            text.append(output.get("text", "") + data.get("text/plain", "") + data.get("text/html", ""))
    return figures, "\n".join(text)


def test_data_notebook(inputs, tmp_path):
    nb = _execute("01_data", {"DATA_ROOT": str(inputs["picai"]), "LAYOUT": "picai", "LABELS_ROOT": None}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 2  # spacing per file, example slices
    assert "12 cases of 10 patients" in text
    assert all(case.case_id in text for case in discover("picai", inputs["picai"]))


def test_data_notebook_brats(inputs, tmp_path):
    nb = _execute("01_data", {"DATA_ROOT": str(inputs["brats"]), "LAYOUT": "brats", "N_EXAMPLES": 4}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 2
    assert "4 cases of 4 patients" in text and "–" in text  # two cases without flair in the presence table


def test_pretraining_notebook_cswin(inputs, tmp_path):
    nb = _execute("02_pretraining", {"PRETRAIN_LOG_DIR": str(inputs["cswin"]), "BMMAE_CHECKPOINT": None}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 2  # loss curves, inpainting_epoch0000.png
    assert "inpainting_epoch0000.png" in text and "train/loss_inpaint" in text
    assert "no reconstructions" in text


def test_pretraining_notebook_bmmae(inputs, tmp_path):
    nb = _execute("02_pretraining", {"PRETRAIN_LOG_DIR": str(inputs["bmmae"]),
                                     "BMMAE_CHECKPOINT": str(inputs["bmmae_ckpt"]),
                                     "BRATS_ROOT": str(inputs["brats"])}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 5  # loss curves, saved PNG, masked autoencoding, leave one out, missing sequence
    assert "reconstruction_epoch0000.png" in text and "train/loss_flair" in text
    assert "dropping" not in text  # a case really lacks flair


def test_cv_results_notebook(inputs, tmp_path):
    nb = _execute("03_cv_results", {"CV_DIR": str(inputs["cv"])}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 4  # curves per run, pooled side by side, metrics per fold, case scores
    report = json.loads((inputs["cv"] / "cv_report.json").read_text())
    assert "pretrained - scratch" in text
    assert all(case in text for fold in report["folds"] for case in fold["cases"])
    assert f"{report['runs']['scratch']['pooled']['auroc']:.3f}" in text


def test_label_efficiency_notebook(tmp_path):
    """Drawn from a study's report: the fractions as medssl cv --train-fractions --twin --control writes them,
    every arm - scratch in the table (the pretrained run's `difference`, each control's under `controls`)."""
    def run(score, lo, hi, n):
        return {"pooled": {"score": score, "ci": {"score": [lo, hi]}}, "mean_train_cases": n}

    def diff(d, w, p):
        return {"score": {"pooled_difference": d, "pooled_ci": [d - w, d + w], "p_value": p, "cases": 40}}

    rows = [{"fraction": f, "runs": {"pretrained": run(a, a - 0.1, a + 0.1, n), "scratch": run(b, b - 0.1, b + 0.1, n),
                                     "supervised": run(c, c - 0.1, c + 0.1, n)},
             "difference": diff(a - b, w, p), "controls": {"supervised": diff(c - b, 0.05, 0.001)}}
            for f, a, b, c, n, w, p in ((0.25, 0.7, 0.5, 0.75, 8, 0.1, 0.01), (0.5, 0.75, 0.7, 0.45, 16, 0.1, 0.3),
                                        (1.0, 0.8, 0.8, 0.9, 32, 0.05, 0.9))]
    reading = "the positive control beat scratch: the study can detect a pretraining gain of that size"
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "cv_report.json").write_text(json.dumps(
        {"fractions": rows, "provenance": {}, "positive_control": {"beat_scratch": True, "reading": reading}}))
    nb = _execute("04_label_efficiency", {"STUDY_DIR": str(tmp_path / "study")}, tmp_path)
    figures, text = _outputs(nb)
    assert figures == 2  # the curve, the paired differences of every arm
    table = text[text.index("<table>"):]
    rows_html = table.split("<tr>")[2:]
    assert len(rows_html) == 6  # 3 fractions x (pretrained, supervised)
    verdicts = {(r.split("<td>")[1].split("<")[0], r.split("<td>")[2].split(" ")[0]): r.split("<td>")[7].split("<")[0]
                for r in rows_html}
    assert verdicts == {("0.25", "pretrained"): "helped", ("0.5", "pretrained"): "no detectable difference",
                        ("1", "pretrained"): "no detectable difference", ("0.25", "supervised"): "helped",
                        ("0.5", "supervised"): "hurt", ("1", "supervised"): "helped"}
    assert reading in text


def test_label_efficiency_notebook_default_is_the_committed_study(tmp_path):
    """With no parameters it reads the study RESULTS.md reports, from the repository root above Jupyter's folder
    (a checkout made of links to this one's pyproject.toml and results/, started in its notebooks/)."""
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    for name in ("pyproject.toml", "results"):
        (checkout / name).symlink_to(REPO / name)
    nb = _execute("04_label_efficiency", {}, checkout / "notebooks")
    figures, text = _outputs(nb)
    assert figures == 2
    assert "positive control:" in text
