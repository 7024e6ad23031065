"""Every command block of README.md, run as written on synthetic data (the slow tier).

A user copies these blocks; a path one command writes and the next reads, a flag that no longer parses or a file
name that moved fails here. Only what cannot exist on a CI machine is replaced, each line of ``SYNTHETIC`` saying
why: the data paths (``/data/picai``, ``DATA``, ``PRE.ckpt``) point at synthetic sets, the real-size recipes at
their tiny twins of the same code path with the CPU smoke overlay, SLURM's ``srun`` and its multi-node counts at
two local DDP processes, and five folds at two. The installation lines are what ``.ci/run`` (which runs this
test) has just done, and ``bash .ci/run`` is this suite itself; both are checked to be what the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
SMOKE = "--config configs/trainer/cpu_smoke.yaml"

# (pattern, replacement, why): applied in this order to every block before it runs
SYNTHETIC = [
    (r"/data/picai_archive\b", "{archive}", "a synthetic unlabelled archive (other patients)"),
    (r"/data/picai\b", "{picai}", "a synthetic PI-CAI-layout set"),
    (r"/data/prostate158\b", "{prostate158}", "the synthetic set's sibling written in Prostate158's layout"),
    (r"(?<=--data.root )DATA\b", "{picai}", "the README's placeholder for the user's data"),
    (r"\bPRE\.ckpt\b", "{pretrained}", "the README's placeholder for a pretraining checkpoint: a tiny one"),
    (r"configs/pretrain/cswin_bpmri\.yaml", "configs/pretrain/cswin_tiny.yaml", "the real-size net needs a GPU"),
    (r"configs/finetune/cswin_picai\.yaml", "configs/finetune/cswin_picai_tiny.yaml", "likewise"),
    (r" --data\.split_file picai_public", "", "the public folds name the 1,500 real PI-CAI cases"),
    (r"^srun ", "", "no SLURM allocation on a CI machine"),
    (r"--seeds 0,1,2\b", "--seeds 0,1", "two seeds and two fractions keep every arm of the study in minutes"),
    (r"--train-fractions 0\.1,0\.25,1\.0\b", "--train-fractions 0.25,1.0", "likewise"),
    (r"--trainer\.devices 4 --trainer\.num_nodes 2", "--trainer.devices 2 --trainer.num_nodes 1",
     "two DDP processes on one machine instead of 4 GPUs on each of 2 nodes"),
]


def blocks() -> list[str]:
    """The ```bash blocks of README.md, indented ones too, with continuation lines joined."""
    found = re.findall(r"^( *)```bash\n(.*?)^\1```", README.read_text(), flags=re.S | re.M)
    return [re.sub(r"\\\n\s*", "", "\n".join(line[len(indent):] for line in body.splitlines()))
            for indent, body in found]


def synthetic(block: str, paths: dict[str, str]) -> str:
    """One block with ``SYNTHETIC`` applied, comments dropped and the smoke overlay after every training command."""
    lines = []
    for line in block.splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", line).strip()  # comments (and #SBATCH lines)
        if not line:
            continue
        for pattern, replacement, _ in SYNTHETIC:
            line = re.sub(pattern, replacement.format(**paths), line)
        if re.match(r"medssl (fit|cv) ", line):
            line += f" {SMOKE}"
        if line.startswith("medssl cv "):
            line += " --data.n_folds 2"
        lines.append(line)
    return "\n".join(lines)


def test_the_readme_blocks_are_the_ones_this_test_knows():
    """A new block must be added here on purpose: each is run below or accounted for."""
    found = blocks()
    assert found[0] == INSTALL + "medssl quickstart --output runs/quickstart"
    assert found[1] == "bash .ci/run"
    assert (REPO / ".ci/run").is_file() and "pytest" in (REPO / ".ci/run").read_text()
    assert "pip install --quiet \"torch==2.13.0\"" in (REPO / ".ci/run").read_text()
    rest = found[2:]
    assert len(rest) == 4, "README.md has a new command block: run it in this module"
    assert rest[0].startswith("medssl check /data/picai") and "medssl infer --cv" in rest[0]
    assert rest[1].startswith("medssl check /data/picai --layout picai --json")
    assert rest[2].startswith("medssl cv ") and "--seeds" in rest[2]
    assert rest[3].startswith("#SBATCH") and "srun medssl fit" in rest[3]


def test_the_substitutions_change_only_what_they_say():
    paths = {"picai": "/s/p", "archive": "/s/a", "prostate158": "/s/q", "pretrained": "/s/pre.ckpt"}
    out = synthetic("medssl fit --config configs/pretrain/cswin_bpmri.yaml --data.root /data/picai_archive  # x\n"
                    "medssl cv --config C --data.root DATA --data.split_file picai_public --model.init_args.init_from "
                    "PRE.ckpt --output runs/cv", paths)
    assert out.splitlines() == [
        f"medssl fit --config configs/pretrain/cswin_tiny.yaml --data.root /s/a {SMOKE}",
        f"medssl cv --config C --data.root /s/p --model.init_args.init_from /s/pre.ckpt --output runs/cv {SMOKE} "
        "--data.n_folds 2"]


def as_prostate158(picai: Path, out: Path) -> None:
    """The synthetic PI-CAI cases in Prostate158's layout: case folders of NIfTI files and a train.csv, the tumour
    label on the ADC grid as Prostate158 ships it."""
    images = picai / "images"
    labels = picai / "picai_labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled"
    rows = ["ID,t2,adc,dwi,t2_anatomy_reader1,t2_tumor_reader1,adc_tumor_reader1"]
    for n, t2w in enumerate(sorted(images.glob("*/*_t2w.mha"))):
        case, stem = f"{n:03d}", t2w.name[: -len("_t2w.mha")]
        folder = out / "train" / case
        folder.mkdir(parents=True)
        for src, dst in (("t2w", "t2"), ("adc", "adc"), ("hbv", "dwi")):
            sitk.WriteImage(sitk.ReadImage(str(t2w.parent / f"{stem}_{src}.mha")), str(folder / f"{dst}.nii.gz"))
        adc = sitk.ReadImage(str(folder / "adc.nii.gz"))
        label = sitk.ReadImage(str(labels / f"{stem}.nii.gz"))
        on_adc = sitk.Resample(label, adc, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
        sitk.WriteImage(on_adc, str(folder / "adc_tumor_reader1.nii.gz"))
        rel = f"train/{case}"
        rows.append(f"{case},{rel}/t2.nii.gz,{rel}/adc.nii.gz,{rel}/dwi.nii.gz,,,{rel}/adc_tumor_reader1.nii.gz")
    (out / "train.csv").write_text("\n".join(rows) + "\n")


def medssl_env() -> dict[str, str]:
    """The environment a user's shell has after activating the venv: ``medssl`` on PATH, quiet thread pools."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_block(script: str, cwd: Path) -> None:
    """A block in a fresh working folder holding the repository's configs (``configs/...`` as in a clone)."""
    (cwd / "configs").symlink_to(REPO / "configs")
    log = cwd / "block.log"
    with log.open("w") as out:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=medssl_env(), stdout=out,
                              stderr=subprocess.STDOUT, timeout=1800)
    text = log.read_text()
    assert done.returncode == 0, f"README block failed (rc {done.returncode}):\n{script}\n--- log tail ---\n" \
                                 f"{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
    assert "It is recommended to use" not in text, "a metric logged per rank without being synchronised"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("readme_data")
    env = medssl_env()
    for args in (["picai", str(root / "picai"), "--cases", "12"],
                 ["picai", str(root / "archive"), "--cases", "8", "--first-patient", "20000"],
                 ["picai", str(root / "p158_src"), "--cases", "4", "--first-patient", "30000"]):
        subprocess.run([sys.executable, "-m", "medssl", "synth", *args], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    as_prostate158(root / "p158_src", root / "prostate158")
    paths = {"picai": str(root / "picai"), "archive": str(root / "archive"),
             "prostate158": str(root / "prostate158"), "pretrained": str(root / "pre/checkpoints/last.ckpt")}
    subprocess.run([sys.executable, "-m", "medssl", "fit", "--config", "configs/pretrain/cswin_tiny.yaml",
                    "--config", "configs/trainer/cpu_smoke.yaml", "--data.root", paths["archive"],
                    "--trainer.default_root_dir", str(root / "pre")], check=True, cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert Path(paths["pretrained"]).is_file()
    return paths


@pytest.mark.slow
def test_the_quickstart_as_written(tmp_path):
    """The first command after its installation (which ``.ci/run`` has made), in a new folder."""
    block = blocks()[0]
    assert block.startswith(INSTALL)
    run_block(block[len(INSTALL):], tmp_path)
    assert (tmp_path / "runs/quickstart/cv/cv_report.md").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("index", [2, 3, 4, 5], ids=["typical-use", "picai-reproduction", "label-efficiency",
                                                      "slurm"])
def test_a_readme_block_runs(index, data, tmp_path):
    script = synthetic(blocks()[index], data)
    run_block(script, tmp_path)
    written = re.findall(r"--(?:output|trainer\.default_root_dir) (\S+)", script)
    if re.search(r"^medssl fit (?!.*--trainer\.default_root_dir)", script, flags=re.M):
        written.append("checkpoints/last.ckpt")  # a fit without a root writes into the working folder
    assert written and all((tmp_path / p).exists() for p in written), written
