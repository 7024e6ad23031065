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


def make_train_step(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
) -> Callable[[], tuple[float, float]]:
    """Return a closure that runs one forward + CE + backward + AdamW step.

    The closure returns ``(wall seconds, process CPU seconds)`` of the step.

    Args:
        model: network returning logits ``[B, K, D, H, W]`` (put in train mode).
        x: input batch on the model's device.
        target: integer labels ``[B, D, H, W]``.
    """
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> tuple[float, float]:
        _sync(x.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
        _sync(x.device)
        return time.perf_counter() - start, time.process_time() - start_cpu

    return step


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
    in_channels = input_shape[1]
    models = {
        "cswin_unet": CSwinUNet(in_channels=in_channels, out_channels=2),
        "swin_unetr": SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=48),
    }
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
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in steps}
    for _ in range(repeats):  # alternate the models so that load drift hits both
        for name, step in steps.items():
            times[name].append(step())
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
