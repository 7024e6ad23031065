"""Every shipped config parses and builds its system, data module and trainer; the tiny finetune configs train."""

from __future__ import annotations

import pytest
import torch

from medssl.data.synth import synth_brats, synth_picai
from medssl.lightning_cli import MedsslCLI
from medssl.weights import init_from
from tests.conftest import REPO

CONFIGS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml"))
# sections that recipes take whole (`data: ../data/picai.yaml`), not configs of their own
BLOCKS = [c for c in CONFIGS if (REPO / c).read_text().startswith("# Block:")]
RECIPES = [c for c in CONFIGS if c.split("/")[1] in ("pretrain", "finetune")]
PICAI = {  # the PI-CAI recipes and the (data, trainer) blocks they take whole
    "configs/finetune/cswin_picai.yaml": ("picai", "picai"),
    "configs/finetune/unet_picai.yaml": ("picai", "picai"),
    "configs/finetune/cswin_picai_tiny.yaml": ("picai_tiny", "picai_tiny"),
    "configs/finetune/unet_picai_tiny.yaml": ("picai_tiny", "picai_tiny"),
}
NETS = {  # the finetune configs of the BM-MAE / comparator pairs and what they build
    "configs/finetune/bmmae_brats.yaml": "BMMAEUNETR",
    "configs/finetune/bmmae_brats_tiny.yaml": "BMMAEUNETR",
    "configs/finetune/unet_picai.yaml": "DynUNet",
    "configs/finetune/unet_picai_tiny.yaml": "DynUNet",
}


@pytest.fixture(scope="module")
def small_brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_small")
    synth_brats(root, cases=4, seed=0, size=(32, 32, 24))
    return root


@pytest.fixture(scope="module")
def small_picai(tmp_path_factory):
    root = tmp_path_factory.mktemp("picai_small")
    synth_picai(root, cases=8, seed=3)
    return root


def test_configs_found():
    assert set(NETS) <= set(CONFIGS)
    assert any(c.startswith("configs/pretrain/") for c in CONFIGS)


def test_blocks_are_sections_not_configs():
    import yaml

    for block in BLOCKS:
        keys = set(yaml.safe_load((REPO / block).read_text()))
        assert not keys & {"model", "data", "trainer"}, block


@pytest.mark.parametrize("config", RECIPES)
def test_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written, but if it were, not into the repository
    cli = MedsslCLI(args=["--config", str(REPO / config), "--data.root", "/x"], run=False)
    assert cli.datamodule.root == "/x"
    assert sum(p.numel() for p in cli.model.parameters()) > 0
    if config in NETS:
        assert type(cli.model.net).__name__ == NETS[config]
    if NETS.get(config) == "BMMAEUNETR":  # the encoder takes the data crop whole, every modality, with dropout
        net, data = cli.model.net, cli.datamodule
        assert list(net.encoder.img_size) == list(data.spatial_size) == list(cli.model.hparams.roi_size)
        assert list(net.encoder.modalities) == data.modalities and data.task == "segmentation"
        assert net.modality_dropout == 0.25
    assert not list(tmp_path.iterdir())  # DataModule.__init__ and the trainer do no I/O


def test_tiny_bmmae_finetune_encoder_matches_tiny_pretraining():
    """Width, depth, heads and MLP ratio agree, so blocks transfer; the patch size cannot (UNETR needs 16)."""
    pre = MedsslCLI(args=["--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--data.root", "/x"],
                    run=False).model.net
    fine = MedsslCLI(args=["--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root", "/x"],
                     run=False).model.net.encoder
    for key in ("embed_dim", "depth", "img_size", "modalities"):
        assert getattr(pre, key) == getattr(fine, key), key
    blocks = {k: v.shape for k, v in pre.state_dict().items() if k.startswith(("blocks.", "norm.", "cls_token"))}
    own = fine.state_dict()
    assert blocks and all(own[k].shape == s for k, s in blocks.items())


def test_tiny_pretraining_checkpoint_initialises_tiny_finetune_encoder(tmp_path):
    pre = MedsslCLI(args=["--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--data.root", "/x"],
                    run=False).model
    torch.save({"state_dict": pre.state_dict(), "medssl": {"architecture": "bmmae"}}, tmp_path / "last.ckpt")
    fine = MedsslCLI(args=["--config", str(REPO / "configs/finetune/bmmae_brats_tiny.yaml"), "--data.root", "/x"],
                     run=False).model.net
    report, _ = init_from(fine, str(tmp_path / "last.ckpt"))
    assert "blocks.0.attn.qkv.weight" in report["loaded"] and "cls_token" in report["loaded"]
    assert "tokenizers.t1.patch_embedding.patch_embeddings.weight" in report["loaded"]
    assert not report["mismatched"]


def _fit_args(config: str, root, tmp_path) -> list[str]:
    # two folds and a step budget of one batch: one epoch is one step
    # (limit_train_batches would not do: the CLI reads "1" there as the float 1.0, i.e. every batch)
    return ["--config", str(REPO / config), "--data.root", str(root), "--data.cache_dir", str(tmp_path / "cache"),
            "--data.n_folds", "2", "--data.batch_size", "2", "--data.train_batches_per_epoch", "1",
            "--trainer.max_epochs", "1",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false"]


@pytest.mark.parametrize(
    ("config", "data", "extra"),
    [
        ("configs/finetune/bmmae_brats_tiny.yaml", "small_brats", ["--trainer.limit_val_batches", "0.0"]),
        ("configs/finetune/unet_picai_tiny.yaml", "small_picai", ["--model.init_args.tta_flip", "false"]),
    ],
)
def test_tiny_finetune_config_trains_one_step(config, data, extra, request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    MedsslCLI(args=["fit", *_fit_args(config, request.getfixturevalue(data), tmp_path), *extra])
    last = list((tmp_path / "run").rglob("last.ckpt"))
    assert len(last) == 1
    checkpoint = torch.load(last[0], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert checkpoint["medssl"]["net"] == NETS[config]
    assert checkpoint["medssl"]["kind"] == "finetuned"


def test_tiny_segmentation_validates(small_brats, tmp_path, monkeypatch):
    """``medssl validate`` on the tiny BM-MAE segmentation recipe scores every validation case: Dice of each
    region in [0, 1] (or NaN where a region is empty in every case), the mean over them, and HD95."""
    import math

    monkeypatch.chdir(tmp_path)
    config = "configs/finetune/bmmae_brats_tiny.yaml"
    cli = MedsslCLI(args=["validate", *_fit_args(config, small_brats, tmp_path), "--model.init_args.tta_flip",
                          "false"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    regions = ("tc", "wt", "et")
    assert {f"val/dice_{r}" for r in regions} | {f"val/hd95_{r}" for r in regions} | {"val/dice_mean"} <= set(metrics)
    dice = [metrics[f"val/dice_{r}"] for r in regions]
    assert all(math.isnan(d) or 0.0 <= d <= 1.0 for d in dice) and not all(math.isnan(d) for d in dice)
    assert 0.0 <= metrics["val/dice_mean"] <= 1.0
    assert len(cli.datamodule.val_cases) == 2  # two folds of four cases: every validation case was scored


def test_cache_per_node_reaches_lightning(small_brats, tmp_path, monkeypatch):
    """`--data.cache_per_node false`: one rank in all fills a cache that every node shares."""
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(REPO / "configs/pretrain/bmmae_tiny.yaml"), "--data.layout", "brats",
            "--data.root", str(small_brats)]
    assert MedsslCLI(args=args, run=False).datamodule.prepare_data_per_node is True
    cli = MedsslCLI(args=[*args, "--data.cache_per_node", "false"], run=False)
    assert cli.datamodule.prepare_data_per_node is False


def _recipe_lines(path):
    """``# recipe: key.path = value`` lines of a config's header: the values the recipe's reference fixes."""
    import yaml

    for line in (REPO / path).read_text().splitlines():
        if line.startswith("# recipe:"):
            key, value = line.removeprefix("# recipe:").split("=", 1)
            yield key.strip(), yaml.safe_load(value)


@pytest.mark.parametrize("config", [c for c in CONFIGS if "# recipe:" in (REPO / c).read_text()])
def test_recipe_header_matches_its_values(config):
    from medssl.runs import resolve

    data = resolve([REPO / config], ["--data.root", "/x"])  # the blocks a recipe takes are resolved too
    lines = list(_recipe_lines(config))
    assert lines
    for key, expected in lines:
        value = data
        for part in key.split("."):
            value = value[part]
        assert value == expected, f"{config}: {key} is {value}, its header says {expected}"


def test_picai_recipes_name_their_reference_and_rotate_in_3d():
    for config in ("configs/finetune/cswin_picai.yaml", "configs/finetune/unet_picai.yaml",
                   "configs/finetune/cswin_picai_tiny.yaml", "configs/finetune/unet_picai_tiny.yaml"):
        cli = MedsslCLI(args=["--config", str(REPO / config), "--data.root", "/x"], run=False)
        aug = cli.datamodule.augmentation
        assert aug.rotate_all_axes and aug.rotate_deg == 30 and tuple(aug.scale_range) == (0.7, 1.4), config
        assert cli.model.hparams.lr_schedule == "poly" and cli.datamodule.clip_percentiles == (0.5, 99.5)
    text = (REPO / "configs/finetune/cswin_picai.yaml").read_text()
    assert "# Follows: the PI-CAI baseline" in text and "# Departures:" in text
    assert "# Follows:" in (REPO / "configs/finetune/bmmae_brats.yaml").read_text()


def test_picai_recipe_decays_the_learning_rate_over_a_short_fit(small_picai, tmp_path):
    """Read the scheduler's learning rate along a short fit: it falls from lr towards 0 (poly, power 0.95)."""
    from lightning.pytorch.callbacks import Callback

    seen = []

    class Watch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    cli = MedsslCLI(args=["--config", str(REPO / "configs/finetune/cswin_picai_tiny.yaml"),
                          "--data.root", str(small_picai), "--data.cache_dir", str(tmp_path / "cache"),
                          "--data.n_folds", "2", "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "1",
                          "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path),
                          "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"], run=False)
    cli.trainer.callbacks.append(Watch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lr = cli.model.hparams.lr
    assert seen[0] == pytest.approx(lr)
    assert seen == sorted(seen, reverse=True) and seen[-1] < seen[0]
    assert seen[1] == pytest.approx(lr * (1 - 1 / 3) ** 0.95)


OVERLAYS = {  # overlay -> the recipe it is stacked on in this test, and what it must change
    "configs/trainer/cpu_smoke.yaml": ("configs/finetune/cswin_picai.yaml", lambda cli: cli.trainer.max_epochs == 1),
    "configs/data/picai_public.yaml": ("configs/finetune/cswin_picai_tiny.yaml",
                                       lambda cli: cli.datamodule.split_file == "picai_public"),
    "configs/data/brats2023.yaml": ("configs/finetune/bmmae_brats_tiny.yaml",
                                    lambda cli: cli.datamodule.brats_labels == "2023"),
    "configs/net/bmmae_official.yaml": ("configs/finetune/bmmae_brats_tiny.yaml",
                                        lambda cli: cli.model.net.encoder.axis_order == "xyz"
                                        and cli.datamodule.voxel_aligned),
}


def test_every_overlay_is_tested():
    overlays = {c for c in CONFIGS if c.split("/")[1] in ("trainer", "data", "net", "system")} - set(BLOCKS)
    assert overlays == set(OVERLAYS) | {"configs/trainer/gpu_bf16.yaml"}


def test_picai_recipes_take_their_data_and_trainer_blocks_whole():
    """The four PI-CAI recipes stack the shared blocks (the file says so and the resolved sections are the
    block's), and the tiny block's augmentation is the real-size one but for its documented departure."""
    import yaml

    from medssl.runs import resolve

    assert set(BLOCKS) == {f"configs/{s}/{b}.yaml" for s in ("data", "trainer") for b in ("picai", "picai_tiny")}
    for recipe, (data, trainer) in PICAI.items():
        raw = yaml.safe_load((REPO / recipe).read_text())
        assert raw["data"] == f"../data/{data}.yaml" and raw["trainer"] == f"../trainer/{trainer}.yaml", recipe
        resolved = resolve([REPO / recipe], ["--data.root", "/x"])
        block = resolve([], ["--model", "medssl.systems.finetune.DetectionSystem", "--model.net",
                             "monai.networks.nets.BasicUNet", "--data", str(REPO / f"configs/data/{data}.yaml"),
                             "--data.root", "/x", "--trainer", str(REPO / f"configs/trainer/{trainer}.yaml")])
        assert resolved["data"] == block["data"] and resolved["trainer"] == block["trainer"], recipe
    full, tiny = (yaml.safe_load((REPO / f"configs/data/{b}.yaml").read_text())["init_args"]["augmentation"]
                  for b in ("picai", "picai_tiny"))
    assert {k for k in full if full[k] != tiny.get(k)} == {"lowres_prob"} and set(full) == set(tiny)
    assert "lowres_prob 0" in (REPO / "configs/data/picai_tiny.yaml").read_text()


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlays_stack_on_the_recipes(overlay):
    recipe, changed = OVERLAYS[overlay]
    cli = MedsslCLI(args=["--config", str(REPO / recipe), "--config", str(REPO / overlay), "--data.root", "/x"],
                    run=False)
    assert changed(cli)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the overlay simply works")
def test_gpu_overlay_without_a_gpu_is_one_line():
    from medssl.errors import ConfigError

    with pytest.raises(ConfigError, match="gpu"):
        MedsslCLI(args=["--config", str(REPO / "configs/finetune/cswin_picai_tiny.yaml"), "--config",
                        str(REPO / "configs/trainer/gpu_bf16.yaml"), "--data.root", "/x"], run=False)


def test_last_checkpoint_holds_the_final_epoch_whatever_the_validation_interval(small_picai, tmp_path, monkeypatch):
    """7 epochs, validation every 5: Lightning alone would leave last.ckpt at epoch 5; medssl writes it again at the
    end of training, so `--selection last` reports the epoch-7 weights."""
    monkeypatch.chdir(tmp_path)
    cli = MedsslCLI(args=["fit", *_fit_args("configs/finetune/unet_picai_tiny.yaml", small_picai, tmp_path),
                          "--trainer.max_epochs", "7", "--trainer.check_val_every_n_epoch", "5",
                          "--model.init_args.tta_flip", "false"])
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == cli.trainer.global_step == 7 and last["epoch"] >= 6  # not the epoch-5 save
    weights = {k.removeprefix("net."): v for k, v in last["state_dict"].items()}
    assert all(torch.equal(weights[k], v) for k, v in cli.model.net.state_dict().items())
