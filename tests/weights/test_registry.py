"""A new architecture and a new data layout are one registry entry each: a toy net family and a toy layout added here
(and only here) go through discovery, checking, preprocessing, ``load_model``, ``init_from`` and ``embed``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from torch import nn

from medssl.checkpoint import load_weights
from medssl.data.check import check_dataset
from medssl.data.datamodule import FinetuneDataModule
from medssl.data.layouts import LAYOUTS, Case, Layout, discover
from medssl.embed import run_embed
from medssl.weights import ARCHITECTURES, Architecture, CheckpointMeta, architecture_of, init_from, load_model

MODALITIES = ("t2w", "adc")


class ToyEncoder(nn.Module):
    def __init__(self, in_channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))  # [B, width, D, H, W]


class ToyPretrain(nn.Module):
    """The toy family's pretraining model: an encoder and a head that only pretraining uses."""

    def __init__(self, in_channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.encoder = ToyEncoder(in_channels, width)
        self.head = nn.Conv3d(width, in_channels, 1)


class ToySeg(nn.Module):
    """The toy family's finetuning net: the same encoder and a segmentation head."""

    def __init__(self, in_channels: int = 2, out_channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.encoder = ToyEncoder(in_channels, width)
        self.out = nn.Conv3d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(x))


def _transfer(net, source, meta, name):
    state = source.state_dict() if isinstance(source, nn.Module) else source
    return load_weights(net, {k: v for k, v in state.items() if k.startswith("encoder.")}, name=name)


def _embed(encoder, image, present, pool):
    return encoder(image[None]).mean(dim=(2, 3, 4))[0]  # [width]


TOY = Architecture("toy", nets=(ToyPretrain, ToySeg), transfer=_transfer, pools=("mean",), embed=_embed,
                   embed_dim=lambda encoder: encoder.conv.out_channels)


def discover_toy(root, **_) -> list[Case]:
    """``<root>/<case>_<modality>.nii.gz``, the label ``<case>_seg.nii.gz``."""
    root = Path(root)
    cases = sorted({p.name.split("_")[0] for p in root.iterdir()})
    return [Case(c, c, {m: str(root / f"{c}_{m}.nii.gz") if (root / f"{c}_{m}.nii.gz").is_file() else None
                        for m in MODALITIES},
                 str(root / f"{c}_seg.nii.gz") if (root / f"{c}_seg.nii.gz").is_file() else None) for c in cases]


TOY_LAYOUT = Layout("toy", discover_toy, MODALITIES, reference_order=("t2w",), reference_required=True,
                    label_values=(0, 1))


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "toy", TOY)
    monkeypatch.setitem(LAYOUTS, "toy", TOY_LAYOUT)


@pytest.fixture
def toy_data(tmp_path):
    root = tmp_path / "toy"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        for m in (*MODALITIES, "seg"):
            if m == "adc" and i == 3:
                continue  # a missing modality is normal data
            array = (rng.random((6, 12, 12)) > 0.9).astype(np.uint8) if m == "seg" else \
                rng.normal(100, 20, (6, 12, 12)).astype(np.float32)
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((1.0, 1.0, 2.0))
            sitk.WriteImage(image, str(root / f"case{i}_{m}.nii.gz"))
    return root


def _checkpoint(path, net: nn.Module, kind: str) -> None:
    cls = type(net)
    config = {"model": {"init_args": {"net": {"class_path": f"{cls.__module__}.{cls.__name__}",
                                              "init_args": {"in_channels": 2, "width": 4}}}},
              "data": {"init_args": {"layout": "toy", "modalities": list(MODALITIES), "spacing": [2.0, 1.0, 1.0],
                                     "spatial_size": [6, 12, 12]}}}
    meta = CheckpointMeta(architecture=architecture_of(net), net=cls.__name__, kind=kind, config=yaml.safe_dump(config))
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "medssl": meta.to_entry()}, path)


def test_a_toy_layout_is_one_registry_entry(registered, toy_data, tmp_path):
    cases = discover("toy", toy_data)
    assert [c.case_id for c in cases] == ["case0", "case1", "case2", "case3"] and cases[3].images["adc"] is None
    summary = check_dataset(str(toy_data), "toy")
    assert summary["cases"] == 4 and summary["modalities"] == {"t2w": 4, "adc": 3} and not summary["errors"]
    dm = FinetuneDataModule(layout="toy", root=str(toy_data), n_folds=2, cache_dir=None, augmentation=None,
                            spacing=[2.0, 1.0, 1.0], spatial_size=[6, 12, 12],
                            split_file=str(tmp_path / "splits.json"))
    dm.setup("fit")
    assert dm.modalities == list(MODALITIES) and dm.preprocessing(True).reference_order == ("t2w",)
    item = dm.make_dataset(dm.val_cases, with_labels=True, train=False)[0]
    assert tuple(item["image"].shape) == (2, 6, 12, 12) and tuple(item["label"].shape) == (1, 6, 12, 12)


def test_a_toy_architecture_is_one_registry_entry(registered, toy_data, tmp_path):
    torch.manual_seed(0)
    pre = ToyPretrain()
    _checkpoint(tmp_path / "pre.ckpt", pre, "pretraining")
    model, meta = load_model(tmp_path / "pre.ckpt")
    assert isinstance(model, ToyPretrain) and (meta.architecture, meta.kind) == ("toy", "pretraining")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in pre.state_dict().items())
    assert meta.modalities == list(MODALITIES) and meta.spacing == [2.0, 1.0, 1.0]  # from the run's config

    seg = ToySeg()
    report, _ = init_from(seg, tmp_path / "pre.ckpt")
    assert set(report["loaded"]) == {"encoder.conv.weight", "encoder.conv.bias"} and report["missing"]
    assert torch.equal(seg.encoder.conv.weight, pre.encoder.conv.weight)

    result = run_embed(tmp_path / "pre.ckpt", "toy", toy_data, tmp_path / "emb", pool="mean", device="cpu")
    assert result["dim"] == 4 and result["computed"] == 4
    with pytest.raises(Exception, match="--pool cls"):
        run_embed(tmp_path / "pre.ckpt", "toy", toy_data, tmp_path / "emb2", pool="cls", device="cpu")
