"""Synthetic PI-CAI-like cases: probability maps with blobs, ISUP-graded labels, written on a T2W-like grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.evaluation.detection import detection_map
from tests.conftest import write_image

SHAPE = (8, 32, 32)  # [D, H, W]
SPACING = (0.5, 0.5, 3.0)  # x, y, z


def _blob(centre, amplitude, sigma=(0.8, 2.5, 2.5)):
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    d2 = sum(((c - g) / s) ** 2 for c, g, s in zip(centre, (z, y, x), sigma))
    return amplitude * np.exp(-d2 / 2)


def make_cases(n: int = 10, seed: int = 0, noise: float = 0.0) -> dict[str, dict]:
    """``n`` cases; 6 of 10 have one or two lesions (ISUP 2..5), detected with varying confidence; some FPs."""
    rng = np.random.default_rng(seed)
    cases = {}
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        prob = np.zeros(SHAPE)
        if i % 10 < 6:
            for k in range(1 + i % 2):
                c = (3 + k, 8 + 14 * k, 10 + 12 * k)
                label[c[0] - 1:c[0] + 2, c[1] - 3:c[1] + 4, c[2] - 3:c[2] + 4] = 2 + (i + k) % 4
                if (i + k) % 5 != 4:  # some lesions missed
                    prob = np.maximum(prob, _blob(c, float(np.clip(0.5 + 0.4 * rng.random() - noise, 0.05, 0.95))))
        if i % 3 == 0:  # a false positive elsewhere
            prob = np.maximum(prob, _blob((5, 25, 5), float(0.2 + 0.5 * rng.random())))
        prob = np.clip(prob + noise * rng.random(SHAPE) * 0.05, 0, 1)
        cases[f"case{i:02d}"] = {"prob": prob, "label": label, "det": detection_map(prob)}
    return cases


def write_cases(cases: dict[str, dict], folder: Path, spacing=SPACING) -> tuple[dict[str, str], dict[str, str]]:
    det_paths, label_paths = {}, {}
    for case, c in cases.items():
        det_paths[case] = str(write_image(folder / "det" / f"{case}.nii.gz", c["det"], spacing))
        label_paths[case] = str(write_image(folder / "labels" / f"{case}.nii.gz", c["label"], SPACING))
    return det_paths, label_paths


@pytest.fixture(scope="session")
def written(tmp_path_factory):
    """The pretrained-like run's cases and their files."""
    cases = make_cases()
    det_paths, label_paths = write_cases(cases, tmp_path_factory.mktemp("picai_eval"))
    return cases, det_paths, label_paths
