"""Train-step time of the default CSwinUNet vs MONAI SwinUNETR (feature_size 48) on one input.

One step = forward, cross-entropy on a random 2-class label, backward, AdamW step. Reports the
median over ``repeats`` timed steps after ``warmup`` untimed ones, the ratio cswin / swinunetr and
the parameter counts. The two models' timed steps alternate so that load drift on a shared machine
hits both alike; process CPU time (all threads) is reported beside wall time, as it is steadier
when other jobs share the cores.

Usage:
    PYTHONPATH=. python benchmarks/bench_cswin.py                 # 1x3x32x64x64 on CPU
    PYTHONPATH=. python benchmarks/bench_cswin.py --device cuda --shape 2 3 32 128 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from torch import nn

from medssl.models.cswin_unet import CSwinUNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loss_step(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[], tuple[float, float]]:
    """Return a closure that runs one ``loss_fn()`` forward + backward + AdamW step on ``model``.

    The closure returns ``(wall seconds, process CPU seconds)`` of the step.

    Args:
        model: the network ``loss_fn`` calls (put in train mode).
        loss_fn: computes the scalar loss of one batch with ``model`` (inputs already on ``device``).
        device: where the model lives (CUDA steps are synchronised before and after).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the forward under autocast; None = fp32.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> tuple[float, float]:
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start, time.process_time() - start_cpu

    step.optimizer = optimizer  # type: ignore[attr-defined]  # lets a memory probe build the AdamW state
    return step


def make_train_step(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> Callable[[], tuple[float, float]]:
    """Return a closure that runs one forward + CE + backward + AdamW step.

    The closure returns ``(wall seconds, process CPU seconds)`` of the step.

    Args:
        model: network returning logits ``[B, K, D, H, W]`` (put in train mode).
        x: input batch on the model's device.
        target: integer labels ``[B, D, H, W]``.
        autocast_dtype: e.g. ``torch.bfloat16`` for a bf16-autocast forward; None = fp32.
    """
    return make_loss_step(model, lambda: F.cross_entropy(model(x), target), x.device, autocast_dtype)


def build_cswin(in_channels: int = 3, out_channels: int = 2, **kwargs) -> nn.Module:
    """``CSwinUNet`` (its defaults unless ``kwargs`` override them)."""
    return CSwinUNet(in_channels=in_channels, out_channels=out_channels, **kwargs)


def build_swin_unetr(in_channels: int = 3, out_channels: int = 2, feature_size: int = 48, **kwargs) -> nn.Module:
    """MONAI ``SwinUNETR`` of the given feature size (48 = the compared default); ``kwargs`` go to it."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, **kwargs)


def cswin_pair(in_channels: int = 3, out_channels: int = 2) -> dict[str, nn.Module]:
    """The two compared nets: default ``CSwinUNet`` and ``SwinUNETR(feature_size=48)``."""
    return {
        "cswin_unet": build_cswin(in_channels, out_channels),
        "swin_unetr": build_swin_unetr(in_channels, out_channels, feature_size=48),
    }


def time_alternating(
    steps: dict[str, Callable[[], tuple[float, float]]],
    repeats: int,
    warmup: int,
) -> dict[str, list[tuple[float, float]]]:
    """Run ``warmup`` untimed steps per model, then ``repeats`` rounds of one timed step per model.

    The models alternate inside each round so that load drift on a shared machine hits all alike.

    Returns:
        name -> ``repeats`` ``(wall seconds, CPU seconds)`` pairs.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(step())
    return times


def bench_cswin_vs_swinunetr(
    input_shape: Sequence[int] = (1, 3, 32, 64, 64),
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 2,
) -> dict:
    """Time a train step of default ``CSwinUNet(3, 2)`` and ``SwinUNETR(3, 2, feature_size=48)``.

    Args:
        input_shape: ``(B, C, D, H, W)``; SwinUNETR needs D, H, W divisible by 32.
        device: torch device string.
        repeats: timed steps per model.
        warmup: untimed steps per model.

    Returns:
        Median wall (``*_step_s``) and CPU (``*_cpu_s``) seconds per model, ``ratio`` and ``ratio_cpu``
        = cswin / swinunetr, parameter counts, settings.
    """
    if len(input_shape) != 5:
        raise ValueError(f"input_shape={tuple(input_shape)} must be (B, C, D, H, W)")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*input_shape, generator=gen).to(dev)
    target = torch.randint(0, 2, (input_shape[0], *input_shape[2:]), generator=gen).to(dev)
    models = cswin_pair(in_channels=input_shape[1], out_channels=2)
    result: dict = {
        "input_shape": list(input_shape),
        "device": str(dev),
        "repeats": repeats,
        "warmup": warmup,
        "torch_threads": torch.get_num_threads(),
    }
    steps = {}
    for name, model in models.items():
        result[f"{name}_params"] = sum(p.numel() for p in model.parameters())
        steps[name] = make_train_step(model.to(dev), x, target)
    times = time_alternating(steps, repeats, warmup)
    for name, values in times.items():
        result[f"{name}_step_s"] = statistics.median(wall for wall, _ in values)
        result[f"{name}_cpu_s"] = statistics.median(cpu for _, cpu in values)
        result[f"{name}_all_s"] = [round(wall, 3) for wall, _ in values]
    result["ratio"] = result["cswin_unet_step_s"] / result["swin_unetr_step_s"]
    result["ratio_cpu"] = result["cswin_unet_cpu_s"] / result["swin_unetr_cpu_s"]
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=5, default=(1, 3, 32, 64, 64))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(bench_cswin_vs_swinunetr(args.shape, args.device, args.repeats, args.warmup), indent=2))
