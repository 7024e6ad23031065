"""The BM-MAE entry of the registry: the official file, medssl's pretraining and finetuned checkpoints, rebuilt by
``medssl.weights.load_model`` and moved into downstream nets by ``init_from``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from medssl.errors import CheckpointError, ConfigError
from medssl.models.bmmae import BMMAE, BMMAEUNETR
from medssl.weights import ARCHITECTURES, MissingConfig, init_from, load_model, read_weights
from medssl.weights.bmmae import infer_sizes
from tests.conftest import REPO
from tests.models.bmmae_reference import MODS, OFFICIAL_TINY, official_state_dict

TINY_CONFIG = REPO / "configs/pretrain/bmmae_tiny.yaml"
TINY = {"img_size": 32, "patch_size": 16, "embed_dim": 48, "depth": 3, "num_heads": 4, "decoder_embed_dim": 24,
        "decoder_depth": 1, "decoder_num_heads": 4, "decoder_mlp_dim": 48}


def _config(tmp_path: Path, net: str, **init_args) -> Path:
    path = tmp_path / f"{net}.yaml"
    path.write_text(yaml.safe_dump({"model": {"init_args": {"net": {"class_path": f"medssl.models.bmmae.{net}",
                                                                    "init_args": init_args}}}}))
    return path


def _lightning_like(model: BMMAE) -> dict:
    return {"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
            "medssl": {"architecture": "bmmae", "modalities": list(MODS), "spacing": [2.0, 2.0, 2.0],
                       "spatial_size": [32, 32, 32]}}


def test_the_meta_tells_the_official_file_from_ours(tmp_path):
    sd = official_state_dict()
    cases = {
        "official.pth": (sd, "official", "xyz"),
        "lightning.ckpt": ({"state_dict": {f"net.{k}": v for k, v in sd.items()}}, "pretraining", "zyx"),
        "before.ckpt": ({"state_dict": sd, "medssl": {"architecture": "bmmae"}}, "pretraining", "zyx"),
        "xyz.ckpt": ({"state_dict": sd, "medssl": {"architecture": "bmmae", "axis_order": "xyz"}}, "pretraining",
                     "xyz"),
        "bare_with_entry.pth": ({**sd, "medssl": {"architecture": "bmmae"}}, "pretraining", "zyx"),
    }
    for name, (content, kind, order) in cases.items():
        torch.save(content, tmp_path / name)
        meta = read_weights(tmp_path / name).meta
        assert (meta.architecture, meta.kind, meta.axis_order) == ("bmmae", kind, order), name


def test_init_from_official_weights_needs_an_xyz_net(tmp_path):
    torch.save(official_state_dict(patch_size=16), tmp_path / "bmmae.pth")
    net_args = {"in_channels": 4, "out_channels": 3, "img_size": 32, "embed_dim": 48, "depth": 3, "num_heads": 4,
                "feature_size": 8}
    tiny = {"patch_size": 16, "embed_dim": 48, "depth": 3, "decoder_embed_dim": 24, "decoder_depth": 1}
    with pytest.MonkeyPatch.context() as mp:
        from medssl.weights import bmmae

        mp.setattr(bmmae, "REFERENCE_SIZES", tiny)
        mp.setattr(bmmae, "REFERENCE_HEADS", {"num_heads": 4, "decoder_num_heads": 4})
        with pytest.raises(ConfigError, match=r"trained on xyz arrays .* set model\.init_args\.net\.init_args\."
                                              r"axis_order to xyz"):
            init_from(BMMAEUNETR(**net_args), tmp_path / "bmmae.pth")
        net = BMMAEUNETR(**net_args, axis_order="xyz")
        report, meta = init_from(net, tmp_path / "bmmae.pth")
    assert meta.kind == "official"
    assert set(report["loaded"]) == set(net.encoder.state_dict())
    assert report["skipped"] and all(k.startswith("decoder.") for k in report["skipped"])
    sd = official_state_dict(patch_size=16)
    torch.save({"state_dict": {f"net.{k}": v for k, v in sd.items()}, "medssl": {"architecture": "bmmae"}},
               tmp_path / "ours.ckpt")  # no config: matched by name through the BM-MAE filter, after the check
    with pytest.raises(ConfigError, match="trained on zyx arrays"):
        init_from(net, tmp_path / "ours.ckpt")


def test_load_model_of_the_official_file(tmp_path, tiny_reference):
    sd = official_state_dict()
    torch.save(sd, tmp_path / "bmmae.pth")
    model, meta = load_model(tmp_path / "bmmae.pth")
    assert model.axis_order == "xyz" and model.img_size == (32, 32, 32) and model.decoder is not None
    assert (meta.kind, meta.spacing, meta.voxel_aligned, meta.spatial_size) == ("official", [1.0, 1.0, 1.0], True,
                                                                                 [32, 32, 32])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    encoder, _ = load_model(tmp_path / "bmmae.pth", with_decoder=False)
    assert encoder.decoder is None and torch.equal(encoder.cls_token, sd["cls_token"])


def test_checkpoint_of_the_previous_code_loads_unchanged(tmp_path):
    """A pretraining checkpoint written before axis_order existed (no entry) is zyx and gives the same outputs."""
    torch.manual_seed(0)
    before = BMMAE(**{**OFFICIAL_TINY, "img_size": (32, 16, 24)}).eval()
    torch.save({"state_dict": {f"net.{k}": v for k, v in before.state_dict().items()},
                "medssl": {"architecture": "bmmae", "modalities": list(MODS), "spacing": [2.0, 2.0, 2.0],
                           "spatial_size": [32, 16, 24]}}, tmp_path / "last.ckpt")
    config = _config(tmp_path, "BMMAE", **OFFICIAL_TINY)  # img_size: from the metadata's spatial_size
    after, meta = load_model(tmp_path / "last.ckpt", config)
    after.eval()
    assert after.axis_order == "zyx" and after.img_size == after.input_size == (32, 16, 24)
    assert meta.voxel_aligned is False and meta.spacing == [2.0, 2.0, 2.0]
    x = {m: torch.randn(1, 1, 32, 16, 24) for m in MODS}
    with torch.no_grad():
        assert torch.equal(after.encode(x), before.encode(x))
        recon_after, recon_before = (m.reconstruct({"t1": x["t1"]}, ["t2"])["t2"] for m in (after, before))
    assert torch.equal(recon_after, recon_before)


def test_a_finetuned_net_is_rebuilt_whole_and_its_encoder_is_the_registrys(tmp_path):
    net = BMMAEUNETR(in_channels=4, out_channels=3, img_size=(48, 32, 16), embed_dim=48, depth=3, num_heads=4,
                     feature_size=8, axis_order="xyz")
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "medssl": {"architecture": "BMMAEUNETR", "modalities": list(MODS), "spacing": [1.0, 1.0, 1.0],
                           "spatial_size": [16, 32, 48]}}, tmp_path / "seg.ckpt")
    config = _config(tmp_path, "BMMAEUNETR", in_channels=4, out_channels=3, img_size=[48, 32, 16], embed_dim=48,
                     depth=3, num_heads=4, feature_size=8, axis_order="xyz")
    model, meta = load_model(tmp_path / "seg.ckpt", config)
    assert isinstance(model, BMMAEUNETR) and (meta.kind, meta.architecture, meta.net) == ("finetuned", "bmmae",
                                                                                           "BMMAEUNETR")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    encoder = ARCHITECTURES["bmmae"].encoder(model)
    assert encoder.decoder is None and encoder.axis_order == "xyz" and encoder.input_size == (16, 32, 48)


def test_sizes_from_shapes_and_heads_from_config(tmp_path):
    model = BMMAE(**TINY)
    sizes = infer_sizes(model.state_dict())
    assert sizes == {"modalities": list(MODS), "patch_size": 16, "embed_dim": 48, "depth": 3, "mlp_ratio": 2.0,
                     "decoder_embed_dim": 24, "decoder_depth": 1, "decoder_mlp_dim": 48, "num_patches": 8}
    path = tmp_path / "lone.ckpt"
    torch.save(_lightning_like(model), path)
    with pytest.raises(MissingConfig, match="num_heads and decoder_num_heads .*--config"):
        load_model(path)
    with pytest.raises(ConfigError, match="embed_dim is 768 but .* has 48"):
        load_model(path, str(REPO / "configs/pretrain/bmmae_brats.yaml"))
    rebuilt, meta = load_model(path, str(TINY_CONFIG))
    assert meta.spacing == [2.0, 2.0, 2.0] and rebuilt.img_size == (32, 32, 32)
    assert rebuilt.axis_order == "zyx" and meta.voxel_aligned is False
    assert rebuilt.blocks[0].attn.num_heads == 4 and rebuilt.decoder.decoder_blocks[0].attn.num_heads == 4
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_plain_state_dict_of_reference_sizes_loads_like_the_official_file(tmp_path, monkeypatch):
    from medssl.weights import bmmae

    # the official bmmae.pth at tiny size: no metadata, no config, cubic token grid
    monkeypatch.setattr(bmmae, "REFERENCE_SIZES", {k: TINY[k] for k in bmmae.REFERENCE_SIZES})
    monkeypatch.setattr(bmmae, "REFERENCE_HEADS", {"num_heads": 4, "decoder_num_heads": 4})
    model = BMMAE(**TINY)
    torch.save(model.state_dict(), tmp_path / "bmmae.pth")
    rebuilt, meta = load_model(tmp_path / "bmmae.pth")
    assert rebuilt.img_size == (32, 32, 32) and meta.spacing == [1.0, 1.0, 1.0]
    assert rebuilt.axis_order == "xyz" and meta.voxel_aligned is True
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in model.state_dict().items())


def test_weights_of_another_family_cannot_initialise_a_bmmae_net(tmp_path):
    from medssl.models.cswin_unet import CSwinUNet

    cswin = {"in_channels": 4, "out_channels": 3, "embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [2, 2, 2, 4],
             "split_sizes": [1, 2, 2, 0], "patch_stride": [1, 4, 4],
             "merge_strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2]]}
    net = CSwinUNet(**cswin)
    config = {"model": {"init_args": {"net": {"class_path": "medssl.models.cswin_unet.CSwinUNet", "init_args": cswin}}}}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "medssl": {"architecture": "cswin_unet", "net": "CSwinUNet", "kind": "finetuned",
                           "config": yaml.safe_dump(config)}}, tmp_path / "cswin.ckpt")
    target = BMMAEUNETR(in_channels=4, out_channels=3, img_size=32, embed_dim=48, depth=3, num_heads=4,
                        feature_size=8)
    with pytest.raises(CheckpointError, match="cswin_unet weights, which cannot initialise a BMMAEUNETR"):
        init_from(target, tmp_path / "cswin.ckpt")
