"""``medssl reconstruct``: every missing sequence, in its case's own geometry, from a safe checkpoint only;
with the official weights, the voxels the official pipeline's prediction puts there."""

from __future__ import annotations

import os
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from medssl import cli
from medssl.commands.reconstruct import main as reconstruct_main
from medssl.data.datamodule import MRIDataModule
from medssl.data.synth import synth_brats
from medssl.data.transforms import deterministic_transforms
from medssl.errors import CheckpointError
from medssl.models.bmmae import BMMAE
from medssl.reconstruct import reconstruct_case, to_case_intensities
from tests.conftest import REPO, run_medssl
from tests.models.bmmae_reference import (
    CASE_SHAPES,
    OFFICIAL_TINY,
    official_inputs,
    official_state_dict,
    write_brats_case,
)

MODS = ("t1", "t1ce", "t2", "flair")
TINY_CONFIG = REPO / "configs/pretrain/bmmae_tiny.yaml"
TINY = {"img_size": 32, "patch_size": 16, "embed_dim": 48, "depth": 3, "num_heads": 4, "decoder_embed_dim": 24,
        "decoder_depth": 1, "decoder_num_heads": 4, "decoder_mlp_dim": 48}
OBLIQUE = "BraTS2021_00001"


def _regrid(folder, case_id: str) -> None:
    """Put every image of a case on an oblique, anisotropic grid (all modalities still share it)."""
    a, b = np.deg2rad(25), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    for path in (folder / case_id).glob("*.nii.gz"):
        image = sitk.ReadImage(str(path))
        image.SetDirection(tuple((rz @ rx).ravel()))
        image.SetSpacing((1.2, 0.9, 1.5))
        image.SetOrigin((-7.0, 3.0, 11.0))
        sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Four cases: one lacks flair and t2, one (on an oblique grid) lacks t1ce, whatever else synth drops."""
    root = tmp_path_factory.mktemp("brats_recon")
    ids = synth_brats(root, cases=4, seed=0, size=(32, 32, 24))
    for m in ("flair", "t2"):
        (root / ids[0] / f"{ids[0]}_{m}.nii.gz").unlink()
    _regrid(root, OBLIQUE)
    (root / OBLIQUE / f"{OBLIQUE}_t1ce.nii.gz").unlink(missing_ok=True)
    return root


def _missing(root) -> set[tuple[str, str]]:
    return {(case.name, m) for case in root.iterdir() for m in MODS
            if not (case / f"{case.name}_{m}.nii.gz").is_file()}


@pytest.fixture(scope="module")
def pretrained(brats, tmp_path_factory):
    """A one-epoch tiny BM-MAE pretraining run on the incomplete cases; its last.ckpt (config.yaml beside)."""
    work = tmp_path_factory.mktemp("pretrain")
    result = run_medssl("fit", "--config", str(TINY_CONFIG), "--data.layout", "brats", "--data.root", str(brats),
                        "--data.cache_dir", str(work / "cache"), "--trainer.max_epochs", "1",
                        "--trainer.default_root_dir", str(work / "run"), "--model.init_args.image_every_n_epochs", "0",
                        cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    (last,) = (work / "run").rglob("last.ckpt")
    return last


@pytest.mark.slow
def test_cli_writes_every_missing_sequence_in_the_case_geometry(brats, pretrained, tmp_path):
    out = tmp_path / "recon"
    result = run_medssl("reconstruct", "--checkpoint", str(pretrained), "--data.layout", "brats",
                        "--data.root", str(brats), "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = _missing(brats)
    assert ("BraTS2021_00000", "flair") in expected and (OBLIQUE, "t1ce") in expected
    assert {p.name for p in out.iterdir()} == {f"{c}_{m}.nii.gz" for c, m in expected}
    for case_id, m in expected:
        t1 = nib.load(brats / case_id / f"{case_id}_t1.nii.gz")
        recon = nib.load(out / f"{case_id}_{m}.nii.gz")
        assert recon.shape == t1.shape and recon.shape != (32, 32, 32)  # the case's grid, not the model's crop
        np.testing.assert_allclose(recon.affine, t1.affine, atol=1e-4)
        values, brain = np.asarray(recon.dataobj), np.asarray(t1.dataobj) > 0
        assert np.isfinite(values).all() and values.min() >= 0
        assert not values[~brain].any()  # background stays 0
        assert (values[brain] > 0).mean() > 0.5
    lines = result.stdout.splitlines()
    assert sum(ln.startswith("wrote ") for ln in lines) == len(expected)
    complete = {c.name for c in brats.iterdir()} - {c for c, _ in expected}
    assert sum("skipped" in ln for ln in lines[:-1]) == len(complete)
    assert lines[-1].startswith(f"reconstructed {len(expected)} sequences in {len({c for c, _ in expected})} cases")


@pytest.mark.slow
def test_a_2023_named_set_gets_2023_named_sequences(pretrained, tmp_path):
    """The same checkpoint on BraTS 2023 names: the missing FLAIR comes back as `<case>-t2f.nii.gz`, not `_flair`."""
    root = tmp_path / "b23"
    ids = synth_brats(root, cases=2, seed=5, size=(32, 32, 24), naming="2023")
    for case_id in ids:
        (root / case_id / f"{case_id}-t2f.nii.gz").unlink(missing_ok=True)
    out = tmp_path / "recon"
    result = run_medssl("reconstruct", "--checkpoint", str(pretrained), "--data.layout", "brats",
                        "--data.root", str(root), "--output", str(out), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = {p.name for p in out.iterdir()}
    assert {f"{c}-t2f.nii.gz" for c in ids} <= written and not any("_" in name for name in written)
    assert all(name.endswith(("-t1n.nii.gz", "-t1c.nii.gz", "-t2w.nii.gz", "-t2f.nii.gz")) for name in written)


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.slow
def test_code_pickle_refused_in_one_line_nothing_written(brats, tmp_path):
    marker = tmp_path / "payload_ran"
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"net.cls_token": torch.zeros(1, 1, 48)}, "x": _Payload(str(marker))}, bad)
    out = tmp_path / "recon"
    result = run_medssl("reconstruct", "--checkpoint", str(bad), "--data.layout", "brats", "--data.root", str(brats),
                        "--output", str(out), cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("medssl: error:")]
    assert len(errors) == 1 and "refused" in errors[0] and str(bad) in errors[0], result.stderr
    assert not out.exists() and not marker.exists()
    torch.load(bad, weights_only=False)  # the payload is live: an unsafe load would have run it
    assert marker.is_dir()


def test_unreadable_case_is_one_line_naming_it(brats, pretrained, tmp_path, capsys):
    root = tmp_path / "data"
    case = root / OBLIQUE
    case.mkdir(parents=True)
    for f in (brats / OBLIQUE).iterdir():
        (case / f.name).write_bytes(f.read_bytes()[: 200 if "_t2" in f.name else None])
    code = cli.main(["reconstruct", "--checkpoint", str(pretrained), "--data.root", str(root),
                     "--output", str(tmp_path / "recon"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("medssl: error:")]
    assert OBLIQUE in line and "_t2" in line
    assert not (tmp_path / "recon").exists()


def test_oracle_reconstruction_lands_on_the_case_voxels(brats, tmp_path):
    """An oracle returning the present t1 must give back the t1 file itself, voxel for voxel, on the oblique grid.

    The t1 is replaced by a linear ramp in world coordinates inside the brain, which linear interpolation
    reproduces exactly, so the round trip through the preprocessing grid is the identity away from the brain edge
    and any swapped or flipped axis shows.
    """
    case_dir = tmp_path / OBLIQUE
    case_dir.mkdir()
    for f in (brats / OBLIQUE).iterdir():
        (case_dir / f.name).write_bytes(f.read_bytes())
    t1_path = case_dir / f"{OBLIQUE}_t1.nii.gz"
    image = sitk.ReadImage(str(t1_path))
    brain = sitk.GetArrayFromImage(image) > 0  # [D, H, W]
    index = np.stack(np.meshgrid(*(np.arange(n) for n in brain.shape), indexing="ij")[::-1], -1)  # (x, y, z)
    world = index * image.GetSpacing() @ np.reshape(image.GetDirection(), (3, 3)).T + image.GetOrigin()
    ramp = np.where(brain, 600 + world @ np.array([6.0, -4.0, 3.0]), 0).astype(np.float32)
    assert ramp[brain].min() > 100
    ramped = sitk.GetImageFromArray(ramp)
    ramped.CopyInformation(image)
    sitk.WriteImage(ramped, str(t1_path))

    data = MRIDataModule(layout="brats", root=str(tmp_path), spacing=[1.0, 1.0, 1.0], spatial_size=[48, 48, 48],
                         cache_dir=None, augmentation=None)
    (case,) = data.discover()
    prep = data.preprocessing(with_labels=False)
    oracle = SimpleNamespace(modalities=MODS, reconstruct=lambda volumes, missing: {m: volumes["t1"] for m in missing})
    ref_path, out = reconstruct_case(oracle, case, prep, deterministic_transforms(prep), torch.device("cpu"))
    assert ref_path == str(t1_path) and set(out) == {"t1ce"}
    got = out["t1ce"]
    assert got.shape == ramp.shape and not got[~brain].any()
    inner = ndimage.binary_erosion(brain, iterations=2)  # interpolation mixes in background at the edge
    error = np.abs(got[inner] - ramp[inner]) / ramp[inner]
    assert np.median(error) < 1e-4 and error.max() < 0.02  # exact but for a few voxels the edge still reaches


def test_weights_without_decoder_refused(brats, tmp_path):
    encoder = BMMAE(**TINY, with_decoder=False)
    torch.save({"state_dict": {f"net.encoder.{k}": v for k, v in encoder.state_dict().items()}}, tmp_path / "seg.ckpt")
    with pytest.raises(CheckpointError, match="no BM-MAE decoder"):
        reconstruct_main(["--checkpoint", str(tmp_path / "seg.ckpt"), "--config", str(TINY_CONFIG),
                          "--data.root", str(brats), "--output", str(tmp_path / "recon")])
    assert not (tmp_path / "recon").exists()


def test_to_case_intensities_maps_onto_the_reference_distribution():
    reference = np.array([0.0, 100.0, 200.0, 300.0])  # non-zero mean 200, std 81.6
    z = np.array([5.0, 0.0, 1.0, -10.0])
    brain = np.array([False, True, True, True])
    out = to_case_intensities(z, reference, brain)
    np.testing.assert_allclose(out, [0.0, 200.0, 200.0 + np.std([100.0, 200.0, 300.0]), 0.0], rtol=1e-6)
    assert out.dtype == np.float32


def test_official_weights_write_the_official_prediction_in_the_case_geometry(tmp_path, tiny_reference):
    """Non-cubic 1 mm BraTS cases (x, y axes negative) and an official-format file: each missing sequence lands in
    the case's own grid, and inside the 32^3 crop it is the official model's prediction on the official pipeline's
    [x, y, z] arrays, mapped onto the t1 intensities."""
    root = tmp_path / "data"
    cases = {"BraTS2021_00021": ("t1", "t1ce", "t2"), "BraTS2021_00022": ("t1", "t2")}
    for (case_id, modalities), shape in zip(cases.items(), CASE_SHAPES, strict=True):
        write_brats_case(root, case_id, shape, modalities, seed=int(case_id[-2:]))
    sd = official_state_dict(seed=2)
    torch.save(sd, tmp_path / "bmmae.pth")
    out = tmp_path / "recon"
    assert reconstruct_main(["--checkpoint", str(tmp_path / "bmmae.pth"), "--data.root", str(root),
                             "--output", str(out), "--device", "cpu"]) == 0
    assert {p.name for p in out.iterdir()} == {"BraTS2021_00021_flair.nii.gz", "BraTS2021_00022_t1ce.nii.gz",
                                               "BraTS2021_00022_flair.nii.gz"}
    # the official model, reading [x, y, z] arrays natively: a zyx-order BMMAE given them as they are
    official = BMMAE(**OFFICIAL_TINY, img_size=32).eval()
    official.load_state_dict(sd)
    for case_id, modalities in cases.items():
        t1 = nib.load(root / case_id / f"{case_id}_t1.nii.gz")
        inputs = official_inputs(root / case_id, modalities, (32, 32, 32))  # [1, 1, x, y, z]
        raw_t1 = official_inputs(root / case_id, ["t1"], (32, 32, 32), normalize=False)["t1"][0, 0].numpy()
        missing = [m for m in MODS if m not in modalities]
        with torch.no_grad():
            predicted = official.reconstruct(inputs, missing)
        start = [(n - 32) // 2 for n in t1.shape]  # CenterSpatialCrop's
        crop = tuple(slice(s, s + 32) for s in start)
        brain = np.zeros(t1.shape, bool)
        for m in modalities:
            brain |= np.asarray(nib.load(root / case_id / f"{case_id}_{m}.nii.gz").dataobj) != 0
        for m in missing:
            written = nib.load(out / f"{case_id}_{m}.nii.gz")
            assert written.shape == t1.shape and not np.array_equal(written.shape, (32, 32, 32))
            np.testing.assert_allclose(written.affine, t1.affine, atol=1e-4)
            values = np.asarray(written.dataobj)  # [x, y, z], as nibabel reads it
            assert not values[~brain].any()
            outside = np.ones(t1.shape, bool)
            outside[crop] = False
            assert not values[outside].any()  # outside the model's field of view
            expected = to_case_intensities(predicted[m][0, 0].numpy(), raw_t1, brain[crop])
            np.testing.assert_allclose(values[crop], expected, atol=1e-3 * float(np.abs(expected).max()))
