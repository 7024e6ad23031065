"""Contract tests for medssl.models.cswin_unet (tiny configs, CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch

from medssl.checkpoint import load_weights, state_dict_of
from medssl.errors import CheckpointError
from medssl.models.cswin_unet import (
    CrossShapedAttention,
    CSwinBlock,
    CSwinEncoder,
    CSwinUNet,
    checkpoint_filter_fn,
    load_pretrained,
)
from medssl.models.ssl_heads import CSwinSSLModel

TINY = {"embed_dim": 12, "depths": (1, 1, 1, 1), "num_heads": (2, 2, 2, 4), "drop_path_rate": 0.0}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_unet(**kwargs) -> CSwinUNet:
    return CSwinUNet(in_channels=3, out_channels=2, **{**TINY, **kwargs})


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(1, 3, 5, 36, 28), (2, 3, 8, 32, 32), (1, 3, 1, 17, 40)])
def test_tiny_output_matches_input_size(shape: tuple[int, ...]) -> None:
    out = tiny_unet()(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[2:])


@pytest.mark.parametrize("shape", [(1, 3, 20, 96, 96), (1, 3, 19, 100, 84)])
def test_default_net_output_matches_input_size(shape: tuple[int, ...]) -> None:
    net = CSwinUNet(in_channels=3, out_channels=2).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (1, 2, *shape[2:])
    assert torch.isfinite(out).all()


def test_forward_intermediates_and_features() -> None:
    net = tiny_unet()
    x = torch.randn(1, 3, 8, 32, 32)
    feats = net.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [
        (1, 12, 8, 8, 8),
        (1, 24, 8, 4, 4),
        (1, 48, 4, 2, 2),
        (1, 96, 2, 1, 1),
    ]
    assert torch.allclose(net.forward_features(x), feats[-1])
    assert net.encoder.total_strides == (4, 32, 32)
    assert net.no_weight_decay() == set()


# ------------------------------------------------------------------------------------ window correctness
def _stripes(h: int, w: int, sw: int) -> tuple[list[int], list[int]]:
    return [i // sw for i in range(h)], [j // sw for j in range(w)]


@pytest.mark.parametrize(("h", "w", "sw"), [(8, 8, 2), (7, 5, 3), (6, 9, 4)])
def test_stripe_block_receptive_field(h: int, w: int, sw: int) -> None:
    """A voxel sees exactly the tokens of its row stripe and its column stripe (also when padded)."""
    block = CSwinBlock(dim=8, num_heads=2, split_size=sw).eval()
    x = torch.randn(1, 2, h, w, 8)
    ref = block(x)
    rows, cols = _stripes(h, w, sw)
    d0, h0, w0 = 1, h - 1, w - 1  # a voxel in the (possibly padded) last stripes
    for hp, wp in itertools.product(range(h), range(w)):
        x2 = x.clone()
        x2[0, 0, hp, wp] += 5.0 * torch.randn(8)  # not a constant: LayerNorm would remove that
        changed = not torch.allclose(block(x2)[0, d0, h0, w0], ref[0, d0, h0, w0], atol=1e-6)
        inside = rows[hp] == rows[h0] or cols[wp] == cols[w0]
        assert changed == inside, (hp, wp)


def _reference_attention(attn: CrossShapedAttention, x: torch.Tensor) -> torch.Tensor:
    """Naive cross-shaped attention: full attention with a same-stripe mask, LePE per window slice."""
    b, d, h, w, c = x.shape
    sw = attn.split_size
    branches = len(attn.lepe)
    heads = attn.num_heads // branches
    cb = c // branches
    qkv = attn.qkv(x).view(b, d, h, w, 3, branches, cb)
    _, hh, ww = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    outs = []
    for i in range(branches):
        q, k, v = (qkv[..., j, i, :] for j in range(3))  # [B, D, H, W, cb]
        if branches == 1:
            group = torch.zeros(d * h * w, dtype=torch.long)
        else:
            group = (hh if i == 0 else ww).flatten() // sw
        allowed = group[:, None] == group[None, :]  # [N, N]
        qh, kh, vh = (t.reshape(b, -1, heads, cb // heads).transpose(1, 2) for t in (q, k, v))
        logits = qh @ kh.transpose(-1, -2) / (cb // heads) ** 0.5
        o = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ vh  # [B, h, N, hd]
        o = o.transpose(1, 2).reshape(b, d, h, w, cb)
        lepe = torch.zeros_like(o)
        vmap = v.permute(0, 4, 1, 2, 3)  # [B, cb, D, H, W]
        for s in range(int(group.max()) + 1):
            sl = slice(s * sw, (s + 1) * sw)
            if branches == 1:
                lepe = attn.lepe[i](vmap).permute(0, 2, 3, 4, 1)
            elif i == 0:
                lepe[:, :, sl] = attn.lepe[i](vmap[:, :, :, sl]).permute(0, 2, 3, 4, 1)
            else:
                lepe[:, :, :, sl] = attn.lepe[i](vmap[:, :, :, :, sl]).permute(0, 2, 3, 4, 1)
        outs.append(o + lepe)
    return attn.proj(torch.cat(outs, -1))


@pytest.mark.parametrize(("h", "w", "sw", "heads"), [(8, 8, 2, 2), (7, 5, 3, 4), (5, 6, 8, 2), (6, 5, 0, 2)])
def test_attention_matches_naive_reference(h: int, w: int, sw: int, heads: int) -> None:
    """Windowed SDPA + padding/masking equals masked full attention (padded tokens never leak)."""
    attn = CrossShapedAttention(dim=16, num_heads=heads, split_size=sw).double()  # float64: exact compare
    with torch.no_grad():
        attn.qkv.weight.mul_(20)  # sharpen attention so that a leak would show
    x = torch.randn(2, 3, h, w, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), atol=1e-10, rtol=1e-10)


# -------------------------------------------------------------------------------------------- gradients
def _assert_all_params_have_grad(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


def test_every_parameter_gets_gradient() -> None:
    net = tiny_unet(split_sizes=(1, 2, 8, 0))
    net(torch.randn(1, 3, 8, 32, 32)).square().mean().backward()
    _assert_all_params_have_grad(net)


def test_grad_checkpointing_gives_same_gradients() -> None:
    x = torch.randn(1, 3, 8, 32, 32)  # bottleneck 2x1x1: InstanceNorm needs > 1 voxel in training
    net = tiny_unet()
    net(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    net.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in net.encoder.stages)
    net(x).sum().backward()
    for n, p in net.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5), n


# ------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_heads": (3, 2, 2, 4)}, r"num_heads\[0\]=3 must be even"),
        ({"num_heads": (2, 2, 2, 5)}, r"num_heads\[3\]=5 must be >= 1 and divide"),
        ({"num_heads": (2, 2, 2)}, "must have the same non-zero length"),
        ({"depths": (1, 1, 1), "num_heads": (2, 2, 2), "split_sizes": (1, 2, 0)}, "must have 4 stages"),
        ({"split_sizes": (1, -2, 8, 0)}, r"split_sizes=.* must be >= 0"),
        ({"merge_strides": ((1, 2, 2), (2, 2, 2))}, "merge_strides=.* must have len"),
        ({"patch_stride": (1, 0, 4)}, "patch_stride=.* must be a positive int"),
        ({"drop_path_rate": 1.5}, r"drop_path_rate=1.5 must be in \[0, 1\)"),
        ({"feature_size": 0}, "feature_size=0 must be >= 1"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_unet(**kwargs)


def test_bad_channels_raise() -> None:
    with pytest.raises(ValueError, match="in_channels=0 must be >= 1"):
        CSwinUNet(in_channels=0, out_channels=2, **TINY)
    with pytest.raises(ValueError, match="out_channels=0 must be >= 1"):
        CSwinUNet(in_channels=3, out_channels=0, **TINY)
    with pytest.raises(ValueError, match=r"lepe_kernel=.* must be odd"):
        CrossShapedAttention(8, 2, 1, lepe_kernel=(1, 2, 3))


# ------------------------------------------------------------------------------------ checkpoint filter
def _lightning_ckpt(model: torch.nn.Module, prefix: str = "model.") -> dict:
    return {"epoch": 3, "state_dict": {prefix + k: v for k, v in model.state_dict().items()}}


def test_ssl_encoder_transfers_into_unet() -> None:
    ssl = CSwinSSLModel(in_channels=3, **TINY)
    unet = tiny_unet()
    renamed = checkpoint_filter_fn(state_dict_of(_lightning_ckpt(ssl)), unet)  # pure: names only
    assert all(k.startswith("encoder.") for k in renamed)
    report = load_weights(unet, _lightning_ckpt(ssl), checkpoint_filter_fn)
    n_encoder = len(unet.encoder.state_dict())
    assert len(report["loaded"]) == n_encoder
    assert set(report["missing"]) == {k for k in unet.state_dict() if not k.startswith("encoder.")}
    assert report["mismatched"] == []
    assert any("rotation_head" in k for k in report["skipped"])
    for k, v in unet.encoder.state_dict().items():
        assert torch.equal(v, ssl.encoder.state_dict()[k])


def test_filter_reports_shape_mismatch_and_bare_encoder_keys() -> None:
    src = CSwinEncoder(in_channels=4, **TINY)  # different stem: mismatch, the rest loads
    ckpt = {f"net.backbone.{k}": v for k, v in src.state_dict().items()}
    report = load_weights(tiny_unet(), ckpt, checkpoint_filter_fn)
    assert [m.split(":")[0] for m in report["mismatched"]] == ["encoder.patch_embed.proj.weight"]
    assert "encoder.patch_embed.proj.weight" in report["missing"]
    assert len(report["loaded"]) == len(src.state_dict()) - 1


def test_load_fails_when_nothing_matches() -> None:
    with pytest.raises(CheckpointError, match="no tensor matches CSwinUNet"):
        load_weights(tiny_unet(), {"state_dict": {"model.decoder.weight": torch.zeros(3)}}, checkpoint_filter_fn)


def test_strict_load_names_what_does_not_match() -> None:
    src = CSwinEncoder(in_channels=4, **TINY)
    with pytest.raises(CheckpointError, match="mismatched .*patch_embed"):
        load_weights(CSwinEncoder(in_channels=3, **TINY), src.state_dict(), checkpoint_filter_fn, strict=True)


def test_load_pretrained_roundtrip(tmp_path) -> None:
    ssl = CSwinSSLModel(in_channels=3, **TINY)
    path = tmp_path / "ssl.ckpt"
    torch.save(_lightning_ckpt(ssl), path)
    unet = tiny_unet()
    decoder_before = unet.out.conv.conv.weight.clone()
    report = load_pretrained(unet, path)
    assert len(report["loaded"]) == len(unet.encoder.state_dict())
    assert torch.equal(
        unet.encoder.stages[2].blocks[0].attn.qkv.weight, ssl.encoder.stages[2].blocks[0].attn.qkv.weight
    )
    assert torch.equal(unet.out.conv.conv.weight, decoder_before)


def _payload(marker: str) -> None:
    with open(marker, "w") as f:
        f.write("pwned")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_payload, (self.marker,))


def test_load_pretrained_refuses_code_pickles(tmp_path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "hyper_parameters": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused: the file is not a plain weights file"):
        load_pretrained(tiny_unet(), path)
    assert not marker.exists()


def test_attention_global_stage_uses_all_heads() -> None:
    attn = CrossShapedAttention(dim=16, num_heads=4, split_size=None).double()
    assert len(attn.lepe) == 1 and attn.branch_dim == 16
    x = torch.randn(1, 2, 3, 3, 16, dtype=torch.float64)
    torch.testing.assert_close(attn(x), _reference_attention(attn, x), atol=1e-10, rtol=1e-10)
