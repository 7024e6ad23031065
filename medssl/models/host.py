"""Host-to-device copies that do not make the host wait for the GPU."""

from __future__ import annotations

import torch


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
