"""The systems: no import-time global state, one loss/step/gather path, errors that name the real key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from medssl.systems.finetune import DetectionSystem, SegmentationSystem, detection_loss
from tests.conftest import REPO, run_medssl


def test_importing_the_systems_leaves_matplotlib_and_warnings_as_they_were():
    # the libraries medssl builds on may set filters of their own when imported: import them first, so the
    # comparison sees only what importing medssl does
    code = (
        "import warnings, matplotlib\n"
        "import torch, lightning.pytorch, lightning.pytorch.cli, monai.transforms, monai.losses, monai.inferers\n"
        "import monai.networks.nets, monai.optimizers, SimpleITK, scipy.ndimage, einops, jsonargparse\n"
        "matplotlib.use('svg')\n"
        "before = (matplotlib.get_backend(), list(warnings.filters))\n"
        "import medssl.systems.common, medssl.systems.finetune, medssl.systems.pretrain, medssl.evaluation.report\n"
        "after = (matplotlib.get_backend(), list(warnings.filters))\n"
        "assert before == after, (before[0], after[0], len(before[1]), len(after[1]))\n"
        "print('same')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "same" in result.stdout, result.stderr[-2000:]


@pytest.mark.slow
def test_net_argument_errors_name_the_key_path_the_config_uses(tmp_path):
    config = str(REPO / "configs/finetune/cswin_picai_tiny.yaml")
    result = run_medssl("fit", "--config", config, "--data.root", str(tmp_path),
                        "--model.init_args.net.init_args.in_channels", "0", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.init_args.net.init_args.in_channels" in result.stderr.strip().splitlines()[-1]
    result = run_medssl("fit", "--config", config, "--data.root", str(tmp_path),
                        "--model.init_args.net.init_args.drop_path_rate", "-1", cwd=tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "model.init_args.net.init_args." in last, last


@pytest.mark.slow
@pytest.mark.parametrize("option, value, key", [("--model.init_args.lr", "-1", "model.init_args.lr"),
                                                ("--data.n_folds", "1", "data.n_folds"),
                                                ("--data.num_workers", "-2", "data.num_workers"),
                                                ("--model.init_args.loss", "hinge", "loss")])
def test_bad_values_are_one_line_naming_the_key(tmp_path, option, value, key):
    result = run_medssl("fit", "--config", str(REPO / "configs/finetune/cswin_picai_tiny.yaml"),
                        "--data.root", str(tmp_path), option, value, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert key in result.stderr.strip().splitlines()[-1]


def test_named_losses_are_modules_and_a_loss_module_can_be_given():
    from monai.losses import DiceFocalLoss
    from monai.networks.nets import UNet

    net = UNet(3, 3, 2, channels=(4, 8), strides=(2,))
    logits, target = torch.randn(2, 2, 8, 8, 8), torch.randint(0, 2, (2, 1, 8, 8, 8))
    for name in ("focal", "focal_ce", "ce", "dice_ce"):
        loss = detection_loss(name)
        assert isinstance(loss, torch.nn.Module) and torch.isfinite(loss(logits, target))
    system = DetectionSystem(net, loss=DiceFocalLoss(to_onehot_y=True, softmax=True))
    assert isinstance(system.loss_fn, DiceFocalLoss)
    assert isinstance(SegmentationSystem(UNet(3, 4, 3, channels=(4, 8), strides=(2,))).loss_fn, torch.nn.Module)


def test_focal_alpha_defaults_to_the_negative_fraction_of_the_training_fold():
    from monai.networks.nets import UNet

    system = DetectionSystem(UNet(3, 3, 2, channels=(4, 8), strides=(2,)))
    assert system.loss_fn.focal.alpha is None  # set in setup from the data module

    class Trainer:
        class datamodule:  # noqa: N801
            modalities = ["t2w", "adc", "hbv"]

            @staticmethod
            def negative_fraction():
                return 0.8

    system._trainer = Trainer()
    system.setup("validate")
    assert system.loss_fn.focal.alpha == pytest.approx(0.8) and system.focal_alpha_used == pytest.approx(0.8)


def test_picai_score_is_one_definition():
    from medssl.evaluation.picai import picai_score

    assert picai_score(0.8, 0.4) == pytest.approx(0.6)
    assert picai_score(float("nan"), 0.4) is None and picai_score(None, 0.5) is None
