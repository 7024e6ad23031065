"""``medssl embed``: one vector per case, equal to the official BM-MAE pipeline's for the official weights,
resumable, refusing a folder another checkpoint wrote; CSwin UNet checkpoints pool their bottleneck."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

from medssl import cli
from medssl.commands.embed import main as embed_main
from medssl.data.datamodule import MRIDataModule
from medssl.data.geometry import Grid
from medssl.data.synth import synth_picai
from medssl.data.transforms import case_transform, deterministic_transforms
from medssl.errors import ConfigError
from medssl.models.cswin_unet import CSwinUNet, pad_to_multiple
from medssl.models.ssl_heads import CSwinSSLModel
from medssl.runs import resolve
from tests.conftest import REPO
from tests.models.bmmae_reference import (
    CASE_SHAPES,
    MODS,
    official_inputs,
    official_state_dict,
    reference_encode,
    write_brats_case,
)

CASES = {"BraTS2021_00011": MODS, "BraTS2021_00012": ("t1", "t2", "flair")}  # the second lacks t1ce


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Two non-cubic 1 mm BraTS cases in BraTS 2021 naming, sizes odd-different from the 32^3 crop."""
    root = tmp_path_factory.mktemp("brats_embed")
    for (case_id, modalities), shape in zip(CASES.items(), CASE_SHAPES, strict=True):
        write_brats_case(root, case_id, shape, modalities, seed=int(case_id[-2:]))
    return root


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-format bmmae.pth at a tiny size (32^3 crop, 8^3 patches) and its state dict."""
    path = tmp_path_factory.mktemp("weights") / "it.pth"
    sd = official_state_dict(seed=5)
    torch.save(sd, path)
    return path, sd


def _embed(*args: str) -> int:
    return embed_main([*args, "--device", "cpu"])


def test_voxel_aligned_case_transform_crops_as_monai(brats):
    """The official pipeline's crop (CenterSpatialCrop: start (n - m) // 2), on a case lacking t1ce, non-cubic."""
    case_id, modalities = "BraTS2021_00012", CASES["BraTS2021_00012"]
    data = MRIDataModule(layout="brats", root=str(brats), spacing=[1.0, 1.0, 1.0], spatial_size=[24, 32, 40],
                         cache_dir=None, augmentation=None)
    (case,) = [c for c in data.discover() if c.case_id == case_id]
    prep = data.preprocessing(with_labels=False)
    item = case_transform(prep, voxel_aligned=True)(case.to_item())
    theirs = official_inputs(brats / case_id, modalities, (40, 32, 24))  # [1, 1, x, y, z]
    for i, m in enumerate(MODS):
        expected = theirs[m][0, 0].transpose(0, 2) if m in modalities else torch.zeros(24, 32, 40)
        torch.testing.assert_close(torch.as_tensor(item["image"][i]), expected, atol=1e-5, rtol=1e-5)
    reference = Grid.from_file(case.images["t1"])
    assert Grid.from_array(item["grid"]).same_as(reference.centred_subgrid((1, 1, 1), (24, 32, 40), voxel_aligned=True),
                                                 tol_mm=1e-6)
    centred = case_transform(prep)(case.to_item())  # medssl's own runs: the exact centre, half a voxel off here
    assert not torch.allclose(torch.as_tensor(centred["image"]), torch.as_tensor(item["image"]), atol=1e-3)


def test_official_weights_give_the_official_pipelines_cls(brats, official, tiny_reference, tmp_path):
    path, sd = official
    out = tmp_path / "emb"
    assert _embed("--checkpoint", str(path), "--data.layout", "brats", "--data.root", str(brats),
                  "--output", str(out)) == 0
    for case_id, modalities in CASES.items():
        vector = np.load(out / f"{case_id}.npy")
        assert vector.dtype == np.float32 and vector.shape == (48,)
        inputs = official_inputs(brats / case_id, modalities, (32, 32, 32))  # [1, 1, x, y, z] each
        with torch.no_grad():
            cls = reference_encode(sd, inputs, heads=4, patch=8)[0, 0].numpy()
            transposed = reference_encode(sd, {m: v.transpose(2, 4) for m, v in inputs.items()}, heads=4,
                                          patch=8)[0, 0].numpy()
        assert np.abs(vector - cls).max() < 1e-3
        assert np.abs(vector - transposed).max() > 0.05  # an x/z swap would show
    with (out / "embeddings.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["case_id", *MODS] and list(rows[0])[-1] == "f47"
    assert [r["case_id"] for r in rows] == list(CASES)
    assert [int(rows[1][m]) for m in MODS] == [1, 0, 1, 1]
    for row in rows:
        saved = np.load(out / f"{row['case_id']}.npy")
        np.testing.assert_array_equal(np.array([float(row[f"f{i}"]) for i in range(48)], np.float32), saved)


def test_mean_pooling_and_resume_and_a_foreign_folder(brats, official, tiny_reference, tmp_path, capsys,
                                                      monkeypatch):
    path, sd = official
    out = tmp_path / "emb"
    args = ["--checkpoint", str(path), "--data.root", str(brats), "--output", str(out), "--pool", "mean"]
    assert _embed(*args) == 0
    inputs = official_inputs(brats / "BraTS2021_00011", MODS, (32, 32, 32))
    with torch.no_grad():
        mean = reference_encode(sd, inputs, heads=4, patch=8)[0, 1:].mean(0).numpy()
    assert np.abs(np.load(out / "BraTS2021_00011.npy") - mean).max() < 1e-3
    capsys.readouterr()

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    (out / "BraTS2021_00012.npy").unlink()  # as if the first run had been killed before this case
    assert _embed(*args) == 0
    assert "(1 computed, 1 kept from an earlier run)" in capsys.readouterr().out
    assert (out / "BraTS2021_00011.npy").stat().st_mtime_ns == written["BraTS2021_00011.npy"]
    assert (out / "BraTS2021_00012.npy").is_file()

    other = tmp_path / "other.pth"
    torch.save(official_state_dict(seed=6), other)
    with pytest.raises(ConfigError, match="other settings"):
        _embed("--checkpoint", str(other), "--data.root", str(brats), "--output", str(out), "--pool", "mean")
    with pytest.raises(ConfigError, match="other settings"):
        _embed(*args[:-1], "cls")  # same weights, other pooling
    # through the CLI: one line, no traceback, nothing rewritten
    monkeypatch.setitem(cli.OWN_COMMANDS, "embed", ("medssl.commands.embed:main", "one vector per case"))
    code = cli.main(["embed", *args[:-1], "cls", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("medssl: error:")]
    assert str(out) in line and "other settings" in line
    assert (out / "BraTS2021_00011.npy").stat().st_mtime_ns == written["BraTS2021_00011.npy"]


# --------------------------------------------------------------------------- CSwin UNet


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    root = tmp_path_factory.mktemp("picai_embed")
    synth_picai(root, cases=3, seed=4)
    return root


@pytest.mark.parametrize(("config_file", "net_class", "architecture"), [
    ("configs/pretrain/cswin_tiny.yaml", CSwinSSLModel, "cswin_unet"),  # CSwinPretrainSystem
    ("configs/finetune/cswin_picai_tiny.yaml", CSwinUNet, "CSwinUNet"),  # DetectionSystem: the encoder part
])
def test_cswin_checkpoint_mean_pools_the_bottleneck(picai, tmp_path, config_file, net_class, architecture):
    config = resolve([REPO / config_file], ["--data.root", str(picai)])  # as a run resolves (and saves) it
    torch.manual_seed(0)
    net = net_class(**config["model"]["init_args"]["net"]["init_args"]).eval()
    data_args = config["data"]["init_args"]
    # as the systems save it: the net under net., the medssl entry with the resolved config
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "medssl": {"architecture": architecture, "modalities": ["t2w", "adc", "hbv"],
                           "spacing": data_args["spacing"], "spatial_size": data_args["spatial_size"],
                           "config": yaml.safe_dump(config)}}, ckpt)
    out = tmp_path / "emb"
    with pytest.raises(ConfigError, match="pools mean; use --pool mean"):
        _embed("--checkpoint", str(ckpt), "--data.layout", "picai", "--data.root", str(picai), "--output", str(out))
    assert _embed("--checkpoint", str(ckpt), "--data.layout", "picai", "--data.root", str(picai),
                  "--output", str(out), "--pool", "mean") == 0

    # the preprocessing the run trained with: its config's clipping too (the medssl entry here does not record it)
    data = MRIDataModule(layout="picai", root=str(picai), spacing=data_args["spacing"],
                         spatial_size=data_args["spatial_size"], cache_dir=None, augmentation=None,
                         clip_percentiles=data_args.get("clip_percentiles"))
    cases = data.discover()
    transform = deterministic_transforms(data.preprocessing(with_labels=False))
    for case in cases:
        image = torch.as_tensor(transform(case.to_item())["image"])[None]  # [1, 3, D, H, W]
        with torch.no_grad():
            bottleneck = net.encoder.forward_features(pad_to_multiple(image, net.encoder.total_strides))
        expected = bottleneck.mean(dim=(2, 3, 4))[0].numpy()
        vector = np.load(out / f"{case.case_id}.npy")
        assert vector.shape == (96,)  # 12 * 2^3 channels at the bottleneck
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    with (out / "embeddings.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:4] == ["case_id", "t2w", "adc", "hbv"] and len(header) == 4 + 96
