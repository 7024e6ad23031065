"""Devices: which one to run on, and host-to-device copies that do not make the host wait for the GPU."""

from __future__ import annotations

import torch

from medssl.errors import ConfigError


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``; a CPU tensor bound for a GPU goes through pinned memory, non-blocking.

    A copy from ordinary (pageable) host memory makes the host wait for the GPU's queue; from
    pinned memory it is queued like a kernel. Small masks and labels drawn on the CPU inside a
    training step use this.
    """
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda``; a missing GPU is a one-line ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)
