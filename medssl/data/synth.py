"""Synthetic data in the real on-disk layouts, for the quickstart, the tests and the notebooks.

Each case is a phantom defined in physical (world) coordinates, then sampled on every
modality's own grid, so a lesion lands where it should only if the reader resamples with the
images' geometry. PI-CAI cases vary the T2W spacing and orientation like the real scanners, put
ADC and HBV on a coarser, shifted grid, label lesions with ISUP grades 2..5, leave some cases
unlabelled (or with only an AI-derived label) and give some patients two studies. BraTS cases
drop flair or t1ce now and then.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

T2W_SPACINGS = ((0.5, 0.5, 3.0), (0.3, 0.3, 3.6), (0.4, 0.4, 3.0), (0.342, 0.342, 3.0))  # x, y, z mm
MARKSHEET_COLUMNS = (
    "patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
    "histopath_type", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa", "center",
)


def _rotation_z(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _world(size, spacing, origin, direction) -> np.ndarray:
    """World coordinates (x, y, z) of every voxel, as an array [D, H, W, 3]."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in size[::-1]), indexing="ij")
    index = np.stack([x, y, z], axis=-1) * np.asarray(spacing)  # [D, H, W, 3]
    return index @ np.asarray(direction).reshape(3, 3).T + np.asarray(origin)


def _write(array: np.ndarray, path: Path, spacing, origin, direction) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp_" + path.name)
    sitk.WriteImage(image, str(tmp), useCompression=True)
    os.replace(tmp, path)


def _ellipsoid(world: np.ndarray, centre, radii) -> np.ndarray:
    return (((world - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def _grid_around(centre, size, spacing, direction) -> np.ndarray:
    """Origin that centres a grid of ``size`` (x, y, z) on ``centre``."""
    return np.asarray(centre) - direction @ (np.asarray(spacing) * (np.asarray(size) - 1) / 2)


def synth_picai(
    out: str | Path, cases: int = 30, seed: int = 0, fov_mm: float = 48.0, first_patient: int = 10000
) -> list[str]:
    """Write a PI-CAI-layout folder: ``out/images`` and ``out/picai_labels``. Returns the case ids.

    Args:
        out: destination folder (created).
        cases: number of studies.
        seed: random seed; the same seed writes the same data.
        fov_mm: in-plane field of view of the T2W images (small keeps it fast).
        first_patient: first patient id; study ids follow it (another set needs other ids).
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    labels_dir = out / "picai_labels" / "csPCa_lesion_delineations"
    rows, case_ids = [], []
    patient, study_of_patient = first_patient, 0
    for i in range(cases):
        # every fifth patient comes back for a second study
        if i > 0 and not (study_of_patient == 0 and patient % 5 == 0):
            patient, study_of_patient = patient + 1, 0
        else:
            study_of_patient += 1 if i > 0 else 0
        pid, sid = str(patient), str(100 * first_patient + i)
        case_id = f"{pid}_{sid}"
        case_ids.append(case_id)

        spacing = np.array(T2W_SPACINGS[i % len(T2W_SPACINGS)])
        size = np.array([round(fov_mm / spacing[0]), round(fov_mm / spacing[1]), 16 if spacing[2] <= 3.0 else 13])
        direction = _rotation_z(rng.uniform(-12, 12) if i % 3 == 0 else 0.0)  # some oblique
        centre = rng.uniform(-20, 20, 3)
        origin = _grid_around(centre, size, spacing, direction)

        gland_c = centre + rng.uniform(-3, 3, 3)
        gland_r = rng.uniform([15, 12, 13], [19, 15, 16])
        positive = rng.random() < 0.45
        lesions = []
        for _ in range(rng.integers(1, 3) if positive else 0):
            offset = rng.uniform(-0.45, 0.45, 3) * gland_r
            lesions.append((gland_c + offset, rng.uniform(4.0, 6.5, 3), int(rng.integers(2, 6))))

        def phantom(world, values, noise, lesions=lesions, gland_c=gland_c, gland_r=gland_r):
            body = _ellipsoid(world, gland_c, gland_r * 1.6)
            img = np.where(body, values[0], 0.05)
            img = np.where(_ellipsoid(world, gland_c, gland_r), values[1], img)
            for c, r, _ in lesions:
                img = np.where(_ellipsoid(world, c, r), values[2], img)
            return (img * (1 + noise * rng.standard_normal(img.shape))).clip(0).astype(np.float32)

        world = _world(size, spacing, origin, direction)
        t2w = phantom(world, (0.45, 0.8, 0.6), 0.12) * 400
        _write(t2w, out / "images" / pid / f"{case_id}_t2w.mha", spacing, origin, direction)

        # DWI: its own coarser grid, shifted and slightly rotated
        d_spacing = np.array([2.0, 2.0, spacing[2]])
        d_size = np.array([round((fov_mm + 8) / 2.0), round((fov_mm + 8) / 2.0), size[2]])
        d_direction = direction @ _rotation_z(rng.uniform(-4, 4))
        d_origin = _grid_around(centre + rng.uniform(-2.5, 2.5, 3), d_size, d_spacing, d_direction)
        d_world = _world(d_size, d_spacing, d_origin, d_direction)
        _write(phantom(d_world, (0.5, 0.75, 0.5), 0.12) * 1800, out / "images" / pid / f"{case_id}_adc.mha",
               d_spacing, d_origin, d_direction)
        _write(phantom(d_world, (0.15, 0.3, 0.55), 0.12) * 30, out / "images" / pid / f"{case_id}_hbv.mha",
               d_spacing, d_origin, d_direction)

        label = np.zeros(t2w.shape, np.uint8)
        for c, r, isup in lesions:
            label[_ellipsoid(world, c, r)] = isup
        kind = rng.random()
        if kind < 0.12:
            pass  # unlabelled case
        elif positive and kind < 0.22:
            _write((label > 0).astype(np.uint8), labels_dir / "AI" / "Bosma22a" / f"{case_id}.nii.gz",
                   spacing, origin, direction)  # AI-derived only
        else:
            _write(label, labels_dir / "human_expert" / "resampled" / f"{case_id}.nii.gz", spacing, origin, direction)
        isups = [isup for _, _, isup in lesions]
        rows.append({
            "patient_id": pid, "study_id": sid, "mri_date": f"2020-01-{1 + i % 28:02d}",
            "patient_age": int(rng.integers(50, 80)), "psa": round(float(rng.uniform(2, 20)), 1),
            "psad": round(float(rng.uniform(0.05, 0.5)), 2), "prostate_volume": int(rng.integers(25, 90)),
            "histopath_type": "MRBx" if positive else "", "lesion_GS": ",".join(f"{(v + 6) // 2}+{(v + 7) // 2}"
                                                                               for v in isups) or "N/A",
            "lesion_ISUP": ",".join(map(str, isups)) or "N/A", "case_ISUP": max(isups, default=0),
            "case_csPCa": "YES" if positive else "NO", "center": "SYN",
        })
    marksheet = out / "picai_labels" / "clinical_information" / "marksheet.csv"
    marksheet.parent.mkdir(parents=True, exist_ok=True)
    with marksheet.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MARKSHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return case_ids


def synth_brats(out: str | Path, cases: int = 12, seed: int = 0, size=(64, 64, 48)) -> list[str]:
    """Write a BraTS-layout folder ``out/BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Args:
        out: destination folder (created).
        cases: number of cases.
        seed: random seed.
        size: volume size (x, y, z) at 1 mm; real BraTS is 240 x 240 x 155.
    """
    rng = np.random.default_rng(seed)
    out = Path(out)
    size = np.asarray(size)
    spacing, direction = np.ones(3), np.eye(3)
    origin = np.array([0.0, -float(size[1] - 1), 0.0])
    world = _world(size, spacing, origin, direction)
    centre = origin + (size - 1) / 2
    values = {  # background brain, oedema, enhancing, necrosis
        "t1": (0.6, 0.45, 0.5, 0.2), "t1ce": (0.6, 0.45, 1.0, 0.15),
        "t2": (0.5, 0.9, 0.7, 1.0), "flair": (0.5, 1.0, 0.7, 0.4),
    }
    ids = []
    for i in range(cases):
        case_id = f"BraTS2021_{i:05d}"
        ids.append(case_id)
        brain_r = size * rng.uniform(0.36, 0.44, 3)
        t_centre = centre + rng.uniform(-0.15, 0.15, 3) * size
        t_r = rng.uniform(5, 9)
        brain = _ellipsoid(world, centre, brain_r)
        oedema = _ellipsoid(world, t_centre, [t_r * 1.6] * 3) & brain
        enhancing = _ellipsoid(world, t_centre, [t_r] * 3) & brain
        necrosis = _ellipsoid(world, t_centre, [t_r * 0.5] * 3) & brain
        seg = np.zeros(brain.shape, np.uint8)
        seg[oedema], seg[enhancing], seg[necrosis] = 2, 4, 1
        missing = set()
        if rng.random() < 0.25:
            missing.add("flair")
        if rng.random() < 0.2:
            missing.add("t1ce")
        for m, (v_brain, v_oed, v_enh, v_nec) in values.items():
            if m in missing:
                continue
            img = np.where(brain, v_brain, 0.0)
            img = np.where(seg == 2, v_oed, img)
            img = np.where(seg == 4, v_enh, img)
            img = np.where(seg == 1, v_nec, img)
            img = img * (1 + 0.05 * rng.standard_normal(img.shape)) * brain
            _write((img * 1000).clip(0).astype(np.float32), out / case_id / f"{case_id}_{m}.nii.gz",
                   spacing, origin, direction)
        _write(seg, out / case_id / f"{case_id}_seg.nii.gz", spacing, origin, direction)
    return ids
