"""Synthetic PI-CAI data: the easy set as the quickstart knows it, the realistic set hard where real bpMRI is hard."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medssl.data.layouts import discover
from medssl.data.synth import T2W_SPACINGS, RealisticProstate, synth_brats, synth_picai
from medssl.errors import ConfigError

LABELS = Path("picai_labels") / "csPCa_lesion_delineations"
# A 32 mm T2W-like grid at 1 x 1 x 3 mm, (size, spacing, origin, direction): small enough to sample a phantom fast.
GRID = ((32, 32, 16), (1.0, 1.0, 3.0), (-15.5, -15.5, -22.5), np.eye(3))
FOV_HALF = np.array([15.5, 15.5, 22.5])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _arrays(root: Path) -> dict[str, tuple]:
    """Every image's array and geometry, and the marksheet's text, by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.suffix == ".csv":
            out[str(path.relative_to(root))] = path.read_text()
        elif path.is_file():
            image = sitk.ReadImage(str(path))
            out[str(path.relative_to(root))] = (sitk.GetArrayFromImage(image), image.GetSpacing(),
                                                image.GetOrigin(), image.GetDirection())
    return out


def _marksheet(root: Path) -> list[dict[str, str]]:
    with (root / "picai_labels" / "clinical_information" / "marksheet.csv").open() as f:
        return list(csv.DictReader(f))


def _realistic_cases(n_lesions: int, **need) -> list[RealisticProstate]:
    """Realistic phantoms drawn on ``GRID``'s field of view, with ``n_lesions`` lesions among them."""
    cases, seed = [], 0
    while sum(len(c.lesions) for c in cases) < n_lesions:
        case = RealisticProstate.draw(np.random.default_rng(seed), np.zeros(3), np.eye(3), FOV_HALF)
        seed += 1
        if case.lesions and all(len(getattr(case, k)) >= v for k, v in need.items()):
            cases.append(case)
    return cases


def _cnr(case: RealisticProstate, without: RealisticProstate, series: str) -> dict[str, float]:
    """Contrast-to-noise of what ``case`` has and ``without`` lacks, per modality of ``series``.

    The same noise seed in both makes their difference the contrast alone: its mean over the voxels where
    it is at least half its peak. The noise is the spread of two noise draws of the same case.
    """
    images = case.images(np.random.default_rng(1), GRID, series)
    lacking = without.images(np.random.default_rng(1), GRID, series)
    other = case.images(np.random.default_rng(2), GRID, series)
    cnr = {}
    for m, image in images.items():
        contrast = np.abs(image - lacking[m])
        tissue = image > 0.2 * image.max()
        sigma = np.std((image - other[m])[tissue]) / np.sqrt(2)
        cnr[m] = float(contrast[contrast >= contrast.max() / 2].mean() / sigma)
    return cnr


def test_easy_is_the_default_and_keeps_its_layout(tmp_path):
    default, easy = tmp_path / "default", tmp_path / "easy"
    ids = synth_picai(default, cases=4, seed=2, fov_mm=24)
    assert synth_picai(easy, cases=4, seed=2, fov_mm=24, difficulty="easy") == ids
    a, b = _arrays(default), _arrays(easy)
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(".csv"):
            assert a[key] == b[key]
        else:
            np.testing.assert_array_equal(a[key][0], b[key][0])
            assert a[key][1:] == b[key][1:], key

    rows = {f"{r['patient_id']}_{r['study_id']}": r for r in _marksheet(default)}
    assert list(rows) == ids
    lesion_t2w = []
    for case in discover("picai", default):
        t2w = sitk.ReadImage(case.images["t2w"])
        assert tuple(round(s, 3) for s in t2w.GetSpacing()) in T2W_SPACINGS
        assert sitk.ReadImage(case.images["adc"]).GetSpacing()[:2] == (2.0, 2.0)
        if case.label is None:
            continue
        label = sitk.GetArrayFromImage(sitk.ReadImage(case.label))
        assert set(np.unique(label)) <= ({0, 1} if "Bosma22a" in case.label else {0, 2, 3, 4, 5})  # AI: binary
        assert label.any() == (rows[case.case_id]["case_csPCa"] == "YES")
        lesion_t2w.append(sitk.GetArrayFromImage(t2w)[label > 0])
    # the easy lesions stand out in T2W: 0.6 x 400 inside a gland of 0.8 x 400
    assert lesion_t2w and abs(np.concatenate(lesion_t2w).mean() - 240) < 15


def test_realistic_writes_the_picai_layout(tmp_path):
    root = tmp_path / "realistic"
    ids = synth_picai(root, cases=6, seed=1, fov_mm=32, difficulty="realistic")
    rows = {f"{r['patient_id']}_{r['study_id']}": r for r in _marksheet(root)}
    assert list(rows) == ids
    cases = {c.case_id: c for c in discover("picai", root, label_source="human_expert+AI")}
    assert sorted(cases) == sorted(ids)
    positives = 0
    for case_id, case in cases.items():
        assert set(case.present) == {"t2w", "adc", "hbv"}
        t2w, adc = sitk.ReadImage(case.images["t2w"]), sitk.ReadImage(case.images["adc"])
        # DWI on its own grid: coarser, another size and origin
        assert adc.GetSpacing()[:2] == (2.0, 2.0) and adc.GetSize() != t2w.GetSize()
        assert not np.allclose(adc.GetOrigin(), t2w.GetOrigin(), atol=0.5)
        if case.label is None:
            continue  # unlabelled, as some real cases are
        label = sitk.ReadImage(case.label)  # on the T2W grid, as the easy mode writes it
        assert label.GetSize() == t2w.GetSize() and np.allclose(label.GetOrigin(), t2w.GetOrigin())
        assert np.allclose(label.GetDirection(), t2w.GetDirection())
        values = sitk.GetArrayFromImage(label)
        positive = rows[case_id]["case_csPCa"] == "YES"
        assert values.any() == positive, case_id
        positives += positive
    assert positives >= 2
    assert (root / LABELS / "human_expert" / "resampled").is_dir()


def test_realistic_lesions_are_near_the_noise_in_t2w_and_show_in_adc_and_hbv():
    cases = _realistic_cases(n_lesions=4)
    cnr = {m: [] for m in ("t2w", "adc", "hbv")}
    for case in cases:
        without = dataclasses.replace(case, lesions=[])
        for series in ("t2w", "dwi"):
            for m, value in _cnr(case, without, series).items():
                cnr[m].append(value)
    t2w, adc, hbv = (float(np.median(cnr[m])) for m in ("t2w", "adc", "hbv"))
    assert t2w < 1.5, cnr  # about the noise floor
    assert adc > 3 * t2w and hbv > 3 * t2w, cnr
    for case in cases:  # darker in ADC, brighter in HBV, on the T2W grid's label
        assert all(f.factor["adc"] < 1 < f.factor["hbv"] for f in case.lesions)
        assert case.label(GRID).any()


def test_realistic_look_alikes_are_not_labelled():
    cases = _realistic_cases(n_lesions=2, look_alikes=2)
    for case in cases:
        label = case.label(GRID)
        assert set(np.unique(label)) - {0} == {f.isup for f in case.lesions}
        for look_alike in case.look_alikes:
            assert look_alike.isup == 0
            # a look-alike alone in the case: the label does not change
            alone = dataclasses.replace(case, lesions=[], look_alikes=[look_alike])
            assert not alone.label(GRID).any()
    # BPH nodules stand out in T2W more than the lesions do
    nodules = [f for c in cases for f in c.look_alikes if not f.soft]
    assert nodules and max(abs(f.factor["t2w"] - 1) for f in nodules) > max(
        abs(f.factor["t2w"] - 1) for c in cases for f in c.lesions)
    case = cases[0]
    assert _cnr(case, dataclasses.replace(case, look_alikes=[]), "t2w")["t2w"] > 2


def test_realistic_dwi_sees_the_patient_moved():
    case = _realistic_cases(n_lesions=1)[0]
    still = dataclasses.replace(case, motion_rotation=np.eye(3), motion_shift=np.zeros(3))
    assert 0 < np.linalg.norm(case.motion_shift) <= 3.0

    def lesion_centre(c: RealisticProstate, series: str, modality: str) -> np.ndarray:
        """Centroid (mm, z y x) of where the lesions change the image, above half their peak."""
        seen = np.abs(c.images(np.random.default_rng(1), GRID, series)[modality]
                      - dataclasses.replace(c, lesions=[]).images(np.random.default_rng(1), GRID, series)[modality])
        weight = np.where(seen >= seen.max() / 2, seen, 0)
        return np.average(np.argwhere(weight), axis=0, weights=weight[weight > 0]) * np.array(GRID[1])[::-1]

    # T2W, where the labels live, does not move; the DWI series moves by a few millimetres
    np.testing.assert_array_equal(lesion_centre(case, "t2w", "t2w"), lesion_centre(still, "t2w", "t2w"))
    moved = np.linalg.norm(lesion_centre(case, "dwi", "hbv") - lesion_centre(still, "dwi", "hbv"))
    assert 0.3 < moved < 5.0


@pytest.mark.parametrize("synth", [synth_picai, synth_brats])
def test_non_empty_destination_is_refused_and_left_alone(synth, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(out)
    with pytest.raises(ConfigError, match="not empty") as error:
        synth(out, cases=1)
    assert str(out) in str(error.value) and "\n" not in str(error.value)
    assert _snapshot(out) == before
    with pytest.raises(ConfigError, match="not a folder"):
        synth(out / "notes.txt", cases=1)


def test_empty_destination_is_used_and_unknown_difficulty_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(synth_brats(empty, cases=1, size=(16, 16, 12))) == 1
    with pytest.raises(ConfigError, match="difficulty 'hard'"):
        synth_picai(tmp_path / "hard", cases=1, difficulty="hard")
    assert not (tmp_path / "hard").exists()


def test_context_mimics_carry_the_lesions_contrast_and_only_anatomy_tells_them_apart():
    """Every csPCa lesion is a single peripheral-zone focus; the unlabelled mimics have a lesion's own contrast
    factors and sit where csPCa is not: transition zone, mirror-symmetric pairs, across the capsule."""
    from medssl.data.synth import ContextProstate, lesion_factors

    kinds, lesion_zones = set(), set()
    for seed in range(40):
        case = ContextProstate.draw(np.random.default_rng(seed), np.zeros(3), np.eye(3), FOV_HALF)
        lesion_zones |= {case._zone_of(lesion.centre) for lesion in case.lesions}
        mimics = [f for f in case.look_alikes if set(f.factor) == set(lesion_factors(0.5)) and not f.soft
                  and 1 - f.factor["adc"] >= 0.25]  # a lesion's ADC drop (BPH nodules drop at most 0.3 with T2W)
        for f in mimics:
            zone = case._zone_of(f.centre)
            twin = [g for g in mimics if g is not f and g.factor == f.factor]
            if twin:
                v, w = (case.rotation.T @ (h.centre - case.centre) for h in (f, twin[0]))
                assert np.allclose(v[1:], w[1:]) and np.isclose(v[0], -w[0])  # mirrored across the midline
                kinds.add("symmetric_pair")
            elif zone == "tz":
                kinds.add("transition_zone")
            elif zone == "outside":
                kinds.add("capsule")
        assert all(f.isup == 0 for f in case.look_alikes)  # never labelled (labels come from the lesions only)
    assert lesion_zones == {"pz"} and kinds == {"transition_zone", "symmetric_pair", "capsule"}


def test_context_writes_the_layout_and_leaves_realistic_as_it_was(tmp_path):
    ids = synth_picai(tmp_path / "context", cases=3, seed=5, fov_mm=32, difficulty="context")
    assert sorted(c.case_id for c in discover("picai", tmp_path / "context")) == sorted(ids)
    synth_picai(tmp_path / "r1", cases=2, seed=5, fov_mm=32, difficulty="realistic")
    synth_picai(tmp_path / "r2", cases=2, seed=5, fov_mm=32, difficulty="realistic")
    assert _snapshot(tmp_path / "r1") == _snapshot(tmp_path / "r2")  # deterministic for a seed
    context = _arrays(tmp_path / "context")
    realistic = _arrays(tmp_path / "r1")
    key = next(k for k in realistic if k.endswith("_adc.mha"))
    assert not np.array_equal(context[key][0], realistic[key][0])  # the mimics are in the images
