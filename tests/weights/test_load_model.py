"""One way from a checkpoint to a model: ``embed``, ``reconstruct``, ``infer``, ``predict`` and ``init_from`` all
rebuild their weights with ``medssl.weights.load_model``, and loading leaves a seeded run's random stream alone."""

from __future__ import annotations

import pytest
import torch
import yaml

from medssl import weights
from medssl.data.synth import synth_brats
from medssl.embed import run_embed
from medssl.errors import CheckpointError
from medssl.inference import run_infer
from medssl.lightning_cli import MedsslCLI
from medssl.models.bmmae import BMMAE, BMMAEUNETR
from medssl.reconstruct import run_reconstruct
from medssl.runs import resolve
from medssl.weights import CheckpointMeta
from tests.conftest import REPO

PRETRAIN = REPO / "configs/pretrain/bmmae_tiny.yaml"
FINETUNE = REPO / "configs/finetune/bmmae_brats_tiny.yaml"


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    root = tmp_path_factory.mktemp("brats_load")
    synth_brats(root, cases=4, seed=5, size=(32, 32, 24))
    return root


def _checkpoint(path, config_file, root, kind: str) -> None:
    """A checkpoint as the systems write it: the net under ``net.``, the ``medssl`` entry with the resolved config."""
    config = resolve([config_file], ["--data.root", str(root)])
    net_args = config["model"]["init_args"]["net"]["init_args"]
    torch.manual_seed(1)
    net = (BMMAE if kind == "pretraining" else BMMAEUNETR)(**net_args)
    data = config["data"]["init_args"]
    meta = CheckpointMeta(architecture="bmmae", net=type(net).__name__, kind=kind, axis_order="zyx",
                          task="segmentation" if kind == "finetuned" else None, layout="brats",
                          modalities=list(data["modalities"] or ("t1", "t1ce", "t2", "flair")),
                          spacing=data["spacing"], spatial_size=data["spatial_size"], clip_percentiles=None,
                          voxel_aligned=False, config=yaml.safe_dump(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "medssl": meta.to_entry()}, path)


@pytest.fixture(scope="module")
def checkpoints(brats, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    pre, fine = folder / "pre" / "checkpoints" / "last.ckpt", folder / "fine" / "checkpoints" / "last.ckpt"
    _checkpoint(pre, PRETRAIN, brats, "pretraining")
    _checkpoint(fine, FINETUNE, brats, "finetuned")
    return pre, fine


@pytest.fixture
def calls(monkeypatch):
    """Every call of ``load_model`` (the package's and ``init_from``'s module-level name), with its source."""
    seen = []
    real = weights.load.load_model

    def spy(source, *args, **kwargs):
        seen.append(str(source))
        return real(source, *args, **kwargs)

    monkeypatch.setattr(weights, "load_model", spy)
    monkeypatch.setattr(weights.load, "load_model", spy)
    return seen


def test_every_command_rebuilds_its_weights_with_load_model(brats, checkpoints, calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pre, fine = checkpoints

    run_embed(pre, "brats", brats, tmp_path / "emb", device="cpu")
    assert calls == [str(pre)]

    run_reconstruct(pre, "brats", brats, tmp_path / "recon", device="cpu")
    assert calls[-1] == str(pre) and len(calls) == 2

    run_infer([fine], tmp_path / "infer", overrides={"data": {"init_args": {"root": str(brats)}}})
    assert calls[-1] == str(fine) and len(calls) == 3

    MedsslCLI(args=["predict", "--config", str(FINETUNE), "--ckpt_path", str(fine), "--data.root", str(brats),
                    "--data.cache_dir", "null", "--trainer.default_root_dir", str(tmp_path / "pred"),
                    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    assert calls[-1] == str(fine) and len(calls) == 4
    assert len(list((tmp_path / "pred" / "predictions").glob("*.nii.gz"))) == 4

    MedsslCLI(args=["fit", "--config", str(FINETUNE), "--data.root", str(brats), "--data.cache_dir",
                    str(tmp_path / "cache"), "--data.n_folds", "2", "--trainer.max_epochs", "1",
                    "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0",
                    "--trainer.default_root_dir", str(tmp_path / "fit"), "--trainer.logger", "false",
                    "--trainer.enable_progress_bar", "false", "--model.init_args.init_from", str(pre)])
    assert calls[-1] == str(pre) and len(calls) == 5


def test_loading_weights_leaves_the_global_random_stream_alone(checkpoints):
    pre, fine = checkpoints
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    weights.load_model(pre)
    weights.load_model(fine)
    assert torch.equal(torch.rand(3), expected)


def test_a_checkpoint_naming_a_foreign_class_is_refused_before_it_is_built(checkpoints, tmp_path):
    pre, _ = checkpoints
    saved = torch.load(pre, weights_only=True)
    config = yaml.safe_load(saved["medssl"]["config"])
    config["model"]["init_args"]["net"] = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", "x"]}}
    saved["medssl"].update(config=yaml.safe_dump(config), architecture=None, kind="finetuned")
    torch.save(saved, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="not a medssl or MONAI net; refused"):
        weights.load_model(tmp_path / "evil.ckpt")
    assert not (tmp_path / "x").exists()


def test_the_shuffled_control_keeps_every_tensors_values_but_no_structure(checkpoints, tmp_path):
    pre, _ = checkpoints
    target = weights.shuffled_checkpoint(pre, tmp_path / "controls" / "shuffled.ckpt", seed=0)
    original, shuffled = (torch.load(p, weights_only=True)["state_dict"] for p in (pre, target))
    assert original.keys() == shuffled.keys()
    varied = [k for k, v in original.items() if v.numel() > 4 and v.unique().numel() > 4]  # not a constant norm
    for key, value in original.items():
        assert torch.equal(value.flatten().sort().values, shuffled[key].flatten().sort().values), key
    assert varied and all(not torch.equal(original[k], shuffled[k]) for k in varied)
    model, meta = weights.load_model(target)  # still the same architecture, and says what it is
    assert isinstance(model, BMMAE) and "permuted" in meta.derived and "negative control" in meta.derived
    again = weights.shuffled_checkpoint(pre, tmp_path / "again.ckpt", seed=0)
    assert all(torch.equal(torch.load(again, weights_only=True)["state_dict"][k], v) for k, v in shuffled.items())
