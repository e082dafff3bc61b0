"""Devices: pick a GPU when there is one, fall back to the CPU, never raise."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "cpu",
    "device_of",
    "in_layout",
    "num_gpus",
    "prefers_channels_last",
    "try_all_gpus",
    "try_gpu",
]

# Narrower convolutions than this run faster in the default (contiguous) layout.
CHANNELS_LAST_MIN_WIDTH = 32


def cpu() -> torch.device:
    """The CPU device."""
    return torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def num_gpus() -> int:
    """Number of usable GPUs: CUDA devices, else 1 for Apple's MPS, else 0."""
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1 if _mps_available() else 0


def try_gpu(i: int = 0) -> torch.device:
    """GPU ``i`` if it exists (CUDA, then Apple MPS for ``i == 0``), else the CPU."""
    if torch.cuda.is_available() and i < torch.cuda.device_count():
        return torch.device(f"cuda:{i}")
    if i == 0 and not torch.cuda.is_available() and _mps_available():
        return torch.device("mps")
    return cpu()


def try_all_gpus() -> list[torch.device]:
    """All GPUs, or ``[cpu()]`` when there is none."""
    devices = [try_gpu(i) for i in range(num_gpus())]
    return devices if devices else [cpu()]


def prefers_channels_last(net: nn.Module) -> bool:
    """Whether ``net`` should run in ``channels_last`` memory format: when it has a convolution
    producing at least 32 channels.

    Measured for a training step on a 2-core CPU: ``channels_last`` makes ResNet-18 about 1.4x
    faster at 96 px and the course's DenseNet and CIFAR ResNet-20 7-20 % faster at 28-32 px, but
    LeNet (6 and 16 channels) about 1.5x slower.  On GPUs it is what the tensor cores want.
    """
    return any(
        isinstance(m, nn.Conv2d) and m.out_channels >= CHANNELS_LAST_MIN_WIDTH
        for m in net.modules()
    )


def device_of(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters are; the CPU for a net without parameters."""
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def in_layout(X: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``X`` in ``channels_last`` memory format if asked and ``X`` is ``(B, C, H, W)``."""
    if channels_last and X.dim() == 4:
        return X.contiguous(memory_format=torch.channels_last)
    return X
