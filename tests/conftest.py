"""Shared fixtures: synthetic data sets in the real layouts, made once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medssl.data.synth import synth_brats, synth_picai

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def picai_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("picai")
    synth_picai(root, cases=30, seed=3)
    return root


@pytest.fixture(scope="session")
def brats_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    synth_brats(root, cases=8, seed=1, size=(32, 32, 24))
    return root


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    """Write ``array`` ([D, H, W]) with the given geometry (x, y, z)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def run_medssl(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "medssl", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def cv_workers(out: Path) -> list[str]:
    """Process ids of the ``medssl cv --workers`` fold processes writing under ``out``."""
    found = subprocess.run(["pgrep", "-f", "--", f"--worker-dir {out}"], capture_output=True, text=True)
    return found.stdout.split()


def wait_for_cv_workers(proc: subprocess.Popen, out: Path, n: int = 2, timeout: float = 300) -> None:
    """Wait until ``n`` fold workers of ``proc`` (a ``medssl cv --workers`` run into ``out``) are running."""
    import time

    deadline = time.time() + timeout
    while len(cv_workers(out)) < n:
        assert proc.poll() is None and time.time() < deadline, "the workers never started"
        time.sleep(0.5)


class _Evil:
    """Pickles to a call of ``exec``: loading it unsafely writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def plant_evil_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "hyper_parameters": _Evil(marker)}, path)


@pytest.fixture
def tiny_reference(monkeypatch):
    """Make a tiny official-format BM-MAE file pass for the official one: its sizes and head counts are the
    reference's (``medssl.weights.bmmae``)."""
    from medssl.weights import bmmae

    tiny = {"patch_size": 8, "embed_dim": 48, "depth": 3, "decoder_embed_dim": 24, "decoder_depth": 1}
    monkeypatch.setattr(bmmae, "REFERENCE_SIZES", {k: tiny[k] for k in bmmae.REFERENCE_SIZES})
    monkeypatch.setattr(bmmae, "REFERENCE_HEADS", {"num_heads": 4, "decoder_num_heads": 4})
