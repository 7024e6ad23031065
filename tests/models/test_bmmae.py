"""Contract tests for medssl.models.bmmae: tiny configs on CPU, full-size checks on the meta device."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

from medssl.models.bmmae import (
    BMMAE,
    BMMAEUNETR,
    BMMAEClassifier,
    load_encoder_weights,
    sincos_pos_embed_3d,
)
from tests.models.bmmae_reference import official_shapes, random_state_dict, reference_encode

MODS = ("t1", "t1ce", "t2", "flair")
TINY = {
    "img_size": 32,
    "patch_size": 8,
    "embed_dim": 48,
    "depth": 3,
    "num_heads": 4,
    "decoder_embed_dim": 24,
    "decoder_depth": 1,
    "decoder_num_heads": 4,
    "decoder_mlp_dim": 48,
}
TINY_N = (32 // 8) ** 3  # tokens per modality
TINY_NET = {"img_size": 32, "embed_dim": 48, "depth": 3, "num_heads": 4, "feature_size": 8}
TINY_SHAPES = official_shapes(img=32, patch=8, dim=48, depth=3, mlp=96, ddim=24, ddepth=1, dmlp=48)


def volumes(batch: int = 2, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(batch, 1, size, size, size, generator=g) for m in MODS}


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    sd = random_state_dict(TINY_SHAPES)
    path = tmp_path_factory.mktemp("ckpt") / "bmmae_tiny.pth"
    torch.save(sd, path)
    return str(path), sd


# --------------------------------------------------------------------------- structure


def test_full_size_parameter_count_and_official_keys():
    with torch.device("meta"):
        model = BMMAE()
        encoder = BMMAE(with_decoder=False)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 76_511_104
    assert sum(p.numel() for p in encoder.parameters() if p.requires_grad) == 69_312_768
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_shapes()


def test_tiny_state_dict_matches_official_layout():
    assert {k: tuple(v.shape) for k, v in BMMAE(**TINY).state_dict().items()} == TINY_SHAPES


def test_sincos_table_matches_monai_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_table = build_sincos_position_embedding([2, 3, 4], 48, spatial_dims=3)
    ours = sincos_pos_embed_3d((2, 3, 4), 48)
    torch.testing.assert_close(ours, monai_table.data)
    # token (h=0, w=1, d=0) sits at index 1 * 4 (h-major); channel 0 is sin(w * omega_0) = sin(1)
    assert ours[0, 4, 0].item() == pytest.approx(math.sin(1.0))
    assert ours[0, 4, 16].item() == pytest.approx(0.0)  # sin(h = 0)


def test_patchify_follows_conv_token_order():
    model = BMMAE(**{**TINY, "img_size": (32, 16, 24)})  # non-cubic grid 4 x 2 x 3 exposes order bugs
    x = torch.randn(2, 1, 32, 16, 24)
    conv = model.tokenizers["t1"].patch_embedding.patch_embeddings
    tokens = conv(x).flatten(2).transpose(1, 2)  # [B, N, D]
    via_patchify = model.patchify(x) @ conv.weight.flatten(1).T + conv.bias  # [B, N, D]
    torch.testing.assert_close(tokens, via_patchify, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(model.unpatchify(model.patchify(x)), x)


# --------------------------------------------------------------------------- official weights


@pytest.mark.parametrize("subset", [("t1", "flair"), ("t1ce", "t2"), MODS])
def test_from_official_matches_reference_forward(tiny_official, subset):
    path, sd = tiny_official
    model = BMMAE.from_official(path, **TINY).eval()
    vols = {m: v for m, v in volumes().items() if m in subset}  # [B, 1, x, y, z], as nibabel gives them
    with torch.no_grad():
        ours = model.encode({m: v.transpose(2, 4) for m, v in vols.items()})  # medssl's [z, y, x] arrays
        ref = reference_encode(sd, vols, heads=4, patch=8)
    assert ours.shape == (2, 1 + len(subset) * TINY_N, 48)
    assert (ours - ref).abs().max().item() < 1e-3


def test_from_official_unwraps_and_strips_prefixes(tmp_path, tiny_official):
    _, sd = tiny_official
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = BMMAE.from_official(path, **TINY)
    torch.testing.assert_close(model.state_dict()["blocks.2.attn.qkv.weight"], sd["blocks.2.attn.qkv.weight"])


def test_from_official_full_size(tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in BMMAE().state_dict().items()}
    sd = {k: torch.zeros(s) for k, s in shapes.items()}
    sd["cls_token"] += 0.5
    path = tmp_path / "bmmae.pth"
    torch.save(sd, path)
    del sd
    model = BMMAE.from_official(path)
    assert torch.all(model.cls_token == 0.5)


def test_from_official_at_another_img_size_rebuilds_position_tables(tiny_official):
    """Strict loading at 16^3 from 32^3 weights: only the fixed sin-cos tables differ, and they are rebuilt."""
    path, sd = tiny_official
    model = BMMAE.from_official(path, **{**TINY, "img_size": 16})
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])
    report = load_encoder_weights(BMMAE(**{**TINY, "img_size": 16, "axis_order": "xyz"}), sd, axis_order="xyz")
    assert report["skipped"] and all(k.endswith("position_embeddings") for k in report["skipped"])
    assert not report["missing"] and not report["mismatched"]


@pytest.mark.parametrize(
    ("edit", "key"),
    [("drop", "norm.bias"), ("add", "foo.bar"), ("reshape", "decoder.decoder_pred.bias")],
)
def test_from_official_rejects_mismatched_keys(tmp_path, tiny_official, edit, key):
    sd = dict(tiny_official[1])
    if edit == "drop":
        del sd[key]
    elif edit == "add":
        sd[key] = torch.zeros(3)
    else:
        sd[key] = torch.zeros(7)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        BMMAE.from_official(path, **TINY)


class _Payload:
    """Pickles into a call that would create a file when unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_from_official_refuses_pickle_payload(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 48), "x": _Payload(str(target))}, path)
    with pytest.raises(ValueError, match="refused: the file is not a plain weights file"):
        BMMAE.from_official(path, **TINY)
    assert not target.exists()


def test_load_encoder_weights_into_downstream_net():
    sd = BMMAE(**{**TINY, "patch_size": 16}).state_dict()  # UNETR needs 16^3 patches
    ckpt = {"state_dict": {f"model.{k}": v for k, v in sd.items()}}
    net = BMMAEUNETR(in_channels=4, out_channels=3, **TINY_NET)
    report = load_encoder_weights(net.encoder, ckpt, axis_order="zyx")
    assert set(report["loaded"]) == set(net.encoder.state_dict())
    assert set(report["skipped"]) == {k for k in sd if k.startswith("decoder.")}
    assert not report["missing"] and not report["unexpected"] and not report["mismatched"]
    torch.testing.assert_close(net.encoder.cls_token, sd["cls_token"])
    with pytest.raises(ValueError, match="no tensor matches BMMAE"):
        load_encoder_weights(net.encoder, {"foo": torch.zeros(1)}, axis_order="zyx")
    with pytest.raises(ValueError, match="modalities"):
        load_encoder_weights(net.encoder, {"modalities": ["t2w", "adc"], **sd}, axis_order="zyx")


# --------------------------------------------------------------------------- missing modalities


def test_key_padding_equals_dropping_absent_tokens():
    model = BMMAE(**TINY).eval()
    vols = volumes()  # absent modalities hold noise: it must not leak into present tokens
    mask = torch.tensor([[True, False, True, True], [False, True, False, False]])
    with torch.no_grad():
        tokens, hidden = model.encode(vols, mask, return_layers=(0, 2))
        for b in range(2):
            names = [m for m, keep in zip(MODS, mask[b].tolist(), strict=True) if keep]
            alone, alone_hidden = model.encode({m: vols[m][b : b + 1] for m in names}, return_layers=(0, 2))
            rows = [0] + [1 + MODS.index(m) * TINY_N + n for m in names for n in range(TINY_N)]
            torch.testing.assert_close(tokens[b, rows], alone[0], atol=1e-5, rtol=1e-5)
            for h, h_alone in zip(hidden, alone_hidden, strict=True):
                torch.testing.assert_close(h[b, rows], h_alone[0], atol=1e-5, rtol=1e-5)


MIXED = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)


def test_pretraining_forward_mixed_subsets():
    torch.manual_seed(0)
    model = BMMAE(**TINY).train()
    seen = []
    model.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(out.shape[1]))
    out = model(volumes(batch=3), MIXED)
    n_keep = [int(k * TINY_N * 0.25) for k in MIXED.sum(1).tolist()]  # 64, 32, 16
    assert seen == [1 + max(n_keep)]  # CLS + visible tokens (padded to the batch max) only
    assert out["pred"].shape == (3, 4 * TINY_N, 8**3) and out["mask"].shape == (3, 4 * TINY_N)
    token_present = MIXED.repeat_interleave(TINY_N, dim=1)
    assert ((out["mask"] == 0) & token_present).sum(1).tolist() == n_keep
    assert out["mask"][~token_present].sum() == 0  # absent tokens are never scored
    assert torch.isfinite(out["loss"])
    assert set(out["loss_per_modality"]) == set(MODS)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_pretraining_skips_modalities_no_sample_has():
    model = BMMAE(**TINY)
    mask = MIXED.clone()
    mask[:, 1] = False  # no t1ce anywhere
    out = model(volumes(batch=3), mask)
    assert set(out["loss_per_modality"]) == {"t1", "t2", "flair"}
    assert all(torch.isfinite(v) for v in out["loss_per_modality"].values())


def test_loss_is_mse_over_masked_tokens_of_present_modalities():
    model = BMMAE(**TINY).eval()  # eval: no decoder dropout, masking still random
    vols = volumes(batch=3)
    torch.manual_seed(1)
    out = model(vols, MIXED)
    target = torch.cat([model.patchify(vols[m]) for m in MODS], dim=1)
    err = ((out["pred"] - target) ** 2).mean(-1).view(3, 4, TINY_N)
    m = out["mask"].view(3, 4, TINY_N)
    expected = ((err * m).sum(-1) / m.sum(-1).clamp_min(1)).sum(1).mean()
    torch.testing.assert_close(out["loss"], expected)
    # what an absent modality holds changes nothing (same random draw)
    noisy = {k: v.clone() for k, v in vols.items()}
    noisy["t1ce"][1:] = 100.0
    noisy["t1"][2] = -5.0
    torch.manual_seed(1)
    again = model(noisy, MIXED)
    torch.testing.assert_close(again["loss"], out["loss"])
    torch.testing.assert_close(again["mask"], out["mask"])


def test_visible_budget_split_is_exact_and_capped():
    model = BMMAE(**{**TINY, "mask_ratio": 0.5})  # n_keep = 2N for four modalities: caps kick in
    present = torch.rand(256, 4) < 0.7
    present[:, 0] |= ~present.any(1)
    ids_shuffle, n_keep = model.random_masking(present)
    kept = torch.zeros(256, 4 * TINY_N, dtype=torch.bool)
    kept.scatter_(1, ids_shuffle, torch.arange(4 * TINY_N) < n_keep[:, None])
    per_modality = kept.view(256, 4, TINY_N).sum(-1)  # [B, 4]
    assert torch.equal(per_modality.sum(1), n_keep)
    assert torch.equal(n_keep, (present.sum(1) * TINY_N * 0.5).long())
    assert per_modality.max() <= TINY_N and per_modality[~present].sum() == 0


def test_reconstruct_missing_modalities():
    model = BMMAE(**TINY).eval()
    vols = volumes()
    out = model.reconstruct({"t1": vols["t1"], "t2": vols["t2"]}, missing=("flair", "t1ce"))
    assert set(out) == {"t1ce", "flair"}
    for v in out.values():
        assert v.shape == (2, 1, 32, 32, 32) and torch.isfinite(v).all() and not v.requires_grad
    with pytest.raises(ValueError, match="missing"):
        model.reconstruct(vols, missing=("pd",))


# --------------------------------------------------------------------------- downstream nets


def test_unetr_shape_and_every_parameter_gets_a_gradient():
    net = BMMAEUNETR(in_channels=4, out_channels=3, **TINY_NET)
    logits = net(torch.randn(2, 4, 32, 32, 32), torch.ones(2, 4, dtype=torch.bool))
    assert logits.shape == (2, 3, 32, 32, 32)
    logits.mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_unetr_mixed_subsets_ignore_absent_channels():
    net = BMMAEUNETR(in_channels=4, out_channels=2, **TINY_NET).eval()
    x = torch.randn(2, 4, 32, 32, 32)
    mask = torch.tensor([[True, False, False, True], [False, True, True, True]])
    noisy = x.clone()
    noisy[0, 1:3] = 50.0
    noisy[1, 0] = -7.0
    with torch.no_grad():
        torch.testing.assert_close(net(noisy, mask), net(x, mask), atol=1e-4, rtol=1e-4)
    net.train().modality_dropout = 0.5
    assert torch.isfinite(net(x, mask)).all()


def test_classifier_shape_and_gradients():
    net = BMMAEClassifier(
        num_classes=5, in_channels=4, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4
    )
    logits = net(torch.randn(2, 4, 32, 32, 32), torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0]], dtype=torch.bool))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 3}, r"set model\.init_args\.net\.init_args\.in_channels to 4"),
        ({"patch_size": 8}, r"set model\.init_args\.net\.init_args\.patch_size to 16"),
        ({"skip_layers": (1, 2, 3)}, "skip_layers"),
        ({"embed_dim": 50}, "embed_dim"),
        ({"modality_dropout": 1.0}, "modality_dropout"),
    ],
)
def test_unetr_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BMMAEUNETR(**{"in_channels": 4, "out_channels": 3, **TINY_NET, **kwargs})


def test_bmmae_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mask_ratio"):
        BMMAE(**{**TINY, "mask_ratio": 1.0})
    with pytest.raises(ValueError, match="img_size"):
        BMMAE(**{**TINY, "img_size": 30})
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        BMMAE(**TINY).encode({"t2w": torch.zeros(1, 1, 32, 32, 32)})


# --------------------------------------------------------------------------- axis order


def _twins(img_size=(32, 16, 24)) -> tuple[BMMAE, BMMAE]:
    """The same weights read as zyx and as xyz; ``img_size`` is each model's own order."""
    zyx = BMMAE(**{**TINY, "img_size": img_size}).eval()
    xyz = BMMAE(**{**TINY, "img_size": img_size, "axis_order": "xyz"}).eval()
    xyz.load_state_dict(zyx.state_dict())
    return zyx, xyz


def test_xyz_model_reads_zyx_inputs_as_their_transpose():
    zyx, xyz = _twins()
    assert xyz.input_size == (24, 16, 32) and xyz.grid_size == zyx.grid_size == (4, 2, 3)
    vols = {m: v[..., :16, :24] for m, v in volumes().items()}  # [B, 1, 32, 16, 24]: zyx's input
    as_zyx = {m: v.transpose(2, 4) for m, v in vols.items()}  # the same volume in medssl's array order
    with torch.no_grad():
        torch.testing.assert_close(xyz.encode(as_zyx), zyx.encode(vols))
        recon_xyz = xyz.reconstruct({"t1": as_zyx["t1"]}, missing=("flair",))["flair"]
        recon_zyx = zyx.reconstruct({"t1": vols["t1"]}, missing=("flair",))["flair"]
    assert recon_xyz.shape == (2, 1, 24, 16, 32)  # reconstructions come back in the input's order
    torch.testing.assert_close(recon_xyz, recon_zyx.transpose(2, 4))
    torch.manual_seed(3)
    loss_zyx = zyx(vols)["loss"]
    torch.manual_seed(3)
    loss_xyz = xyz(as_zyx)["loss"]
    torch.testing.assert_close(loss_xyz, loss_zyx)  # the same masking, targets and predictions
    with pytest.raises(ValueError, match=r"input size \(24, 16, 32\)"):
        xyz.encode(vols)


def test_xyz_patchify_round_trip_and_token_order():
    zyx, xyz = _twins()
    x = torch.randn(2, 1, 24, 16, 32)  # [z, y, x]
    torch.testing.assert_close(xyz.unpatchify(xyz.patchify(x)), x)
    torch.testing.assert_close(xyz.patchify(x), zyx.patchify(x.transpose(2, 4)))
    conv = xyz.tokenizers["t1"].patch_embedding.patch_embeddings
    tokens = conv(x.transpose(2, 4)).flatten(2).transpose(1, 2)  # [B, N, D], the tokenizer's order
    torch.testing.assert_close(tokens, xyz.patchify(x) @ conv.weight.flatten(1).T + conv.bias, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("axis_order", ["zyx", "xyz"])
def test_unetr_feature_grid_is_in_zyx_order(axis_order):
    """``_to_grid`` puts each token where its patch lies in the [z, y, x] input, whatever the encoder's order."""
    net = BMMAEUNETR(in_channels=4, out_channels=2, **{**TINY_NET, "img_size": (64, 32, 16)}, axis_order=axis_order)
    x = torch.randn(1, 1, *net.encoder.input_size)
    patch_means = net.encoder.patchify(x).mean(-1, keepdim=True)  # [1, N, 1] in token order
    tokens = torch.cat([torch.zeros(1, 1, 1), patch_means], dim=1)  # CLS + one modality
    torch.testing.assert_close(net._to_grid(tokens, None), F.avg_pool3d(x, 16))
    logits = net(torch.randn(1, 4, *net.encoder.input_size))
    assert logits.shape == (1, 2, *net.encoder.input_size)


def test_axis_order_is_validated():
    with pytest.raises(ValueError, match="axis_order"):
        BMMAE(**TINY, axis_order="yxz")
    with pytest.raises(ValueError, match="axis_order"):
        BMMAEClassifier(in_channels=4, img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, axis_order="x")
