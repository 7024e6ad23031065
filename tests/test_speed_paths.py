"""The speed paths: compile and channels-last options, the host-side modality mask, sync-free steps."""

from __future__ import annotations

import pytest
import torch

from medssl.data.synth import synth_picai
from medssl.lightning_cli import MedsslCLI
from medssl.models.bmmae import BMMAE, BMMAEUNETR
from medssl.models.ssl_heads import CSwinSSLModel, rotate_axial, ssl_step
from medssl.systems.finetune import DetectionSystem
from tests.conftest import REPO

UNET = str(REPO / "configs/finetune/unet_picai_tiny.yaml")


@pytest.fixture(scope="module")
def picai(tmp_path_factory):
    root = tmp_path_factory.mktemp("picai_speed")
    synth_picai(root, cases=6, seed=5)
    return root


def _fit(picai, tmp_path, *extra):
    return MedsslCLI(args=[
        "fit", "--config", UNET, "--data.root", str(picai), "--data.cache_dir", str(tmp_path / "cache"),
        "--data.n_folds", "2", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0",
        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
        "--seed_everything", "3", *extra])


def test_compiled_channels_last_fit_saves_plain_checkpoint(picai, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = _fit(picai, tmp_path / "fast", "--model.init_args.channels_last", "true",
               "--model.init_args.compile", "{backend: eager}")
    net = cli.model.net
    assert net._compiled_call_impl is not None  # the forward really went through torch.compile
    convs = [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last_3d) for w in convs)
    fast = torch.load(tmp_path / "fast" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    plain = _fit(picai, tmp_path / "plain")
    reference = torch.load(tmp_path / "plain" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # same keys (no "_orig_mod."), so a compiled run's checkpoint loads into an uncompiled net
    assert fast["state_dict"].keys() == reference["state_dict"].keys()
    plain.model.load_state_dict(fast["state_dict"])
    # the same weights compute the same function through the fast path (layout and compilation
    # change the arithmetic order, not the result)
    x = torch.randn(1, 3, *cli.datamodule.crop_size)
    plain.model.eval()
    cli.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cli.model.call_net(x, None), plain.model.call_net(x, None), rtol=1e-4, atol=1e-4)


def test_modality_mask_stays_on_the_host_when_a_batch_moves():
    system = DetectionSystem(net=torch.nn.Conv3d(3, 2, 1))
    batch = {"image": torch.zeros(2, 3, 4, 4, 4), "modality_mask": torch.ones(2, 3, dtype=torch.bool)}
    moved = system.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["image"].device.type == "meta"
    assert moved["modality_mask"].device.type == "cpu"


def test_rotate_axial_matches_per_sample_rot90():
    x = torch.randn(5, 2, 3, 6, 6)
    k = torch.tensor([0, 1, 2, 3, 5])
    expected = torch.stack([torch.rot90(x[i], int(k[i]) % 4, dims=(-2, -1)) for i in range(5)])
    assert torch.equal(rotate_axial(x, k), expected)


TINY_MAE = dict(modalities=("t1", "t1ce", "t2", "flair"), img_size=16, patch_size=8, embed_dim=48, depth=2,
                num_heads=4, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=4, decoder_mlp_dim=48)


def test_training_steps_never_read_device_values_on_the_host():
    """On the ``meta`` device a tensor has no values: ``.item()``, ``bool()``, ``.tolist()``, boolean
    indexing and ``nonzero`` all raise there. A step that runs on it with a host-side modality mask
    therefore never makes the host wait for the device on a GPU (``.to`` copies aside)."""
    device = torch.device("meta")
    try:  # BM-MAE's Dirichlet draw needs _standard_gamma on meta tensors: torch 2.13 has it, 2.11 does not
        torch._standard_gamma(torch.ones(2, device=device))
    except NotImplementedError:
        pytest.skip(f"torch {torch.__version__} has no meta kernel for _standard_gamma")
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    mae = BMMAE(**TINY_MAE).to(device)
    out = mae({m: torch.randn(2, 1, 16, 16, 16, device=device) for m in TINY_MAE["modalities"]}, mask)
    out["loss"].backward()
    assert out["loss"].device.type == "meta" and set(out["loss_per_modality"]) == set(TINY_MAE["modalities"])
    unetr = BMMAEUNETR(in_channels=4, out_channels=3, img_size=16, embed_dim=48, depth=3, num_heads=4,
                       feature_size=8, modality_dropout=0.5).to(device).train()
    unetr(torch.randn(2, 4, 16, 16, 16, device=device), mask).sum().backward()
    ssl = CSwinSSLModel(in_channels=2, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4)).to(device)
    out = ssl_step(ssl, torch.randn(1, 2, 16, 32, 32, device=device))
    sum(out[k] for k in ("loss_rot", "loss_contrastive", "loss_inpaint")).backward()
    assert out["rotations"].device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device syncs only exist with a GPU")
def test_training_steps_never_wait_for_the_gpu():
    """With a host-side modality mask, a BM-MAE and a CSwin SSL step queue work without a sync."""
    device = torch.device("cuda")
    mae = BMMAE(**TINY_MAE).to(device)
    volumes = {m: torch.randn(2, 1, 16, 16, 16, device=device) for m in TINY_MAE["modalities"]}
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]]).pin_memory()
    ssl = CSwinSSLModel(in_channels=2, embed_dim=12, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 4)).to(device)
    x = torch.randn(1, 2, 16, 32, 32, device=device)
    mae(volumes, mask)["loss"].backward()  # warm-up: lazy CUDA initialisation may sync
    out = ssl_step(ssl, x)
    sum(out[k] for k in ("loss_rot", "loss_contrastive", "loss_inpaint")).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mae(volumes, mask)["loss"].backward()
        out = ssl_step(ssl, x)
        sum(out[k] for k in ("loss_rot", "loss_contrastive", "loss_inpaint")).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bmmae_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    import medssl.models.bmmae as bmmae

    calls = []
    real = bmmae.checkpoint
    monkeypatch.setattr(bmmae, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    volumes = {m: torch.randn(2, 1, 16, 16, 16) for m in TINY_MAE["modalities"]}
    mask = torch.tensor([[True, False, True, True], [True, True, True, True]])
    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(1)
        model = BMMAE(**TINY_MAE, decoder_dropout=0.0, use_checkpoint=use_checkpoint)
        torch.manual_seed(2)  # the same masking draw
        model(volumes, mask)["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert len(calls) == TINY_MAE["depth"]  # only the checkpointed run, once per encoder block
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
