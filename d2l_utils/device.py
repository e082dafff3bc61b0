"""Where and how a net runs: pick a GPU when there is one (else the CPU, never raising), its
mixed precision and memory layout, eval mode for a block of code, and whether this is Jupyter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "amp_dtype",
    "autocast",
    "cpu",
    "device_of",
    "eval_mode",
    "grad_scaler",
    "in_layout",
    "in_notebook",
    "num_gpus",
    "prefers_channels_last",
    "try_all_gpus",
    "try_gpu",
]

# Compute capability from which CUDA GPUs compute in bf16 natively (Ampere: A100, RTX 30xx).
BF16_MIN_CAPABILITY = (8, 0)

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


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put ``net`` in eval mode for the ``with`` block and give it back in the mode it was in.

    The ``finally`` matters: an exception or the stop button inside the block must not leave a
    net that was training in eval mode (its batch norms would stop updating their statistics).
    """
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def in_notebook() -> bool:
    """Whether code runs in a Jupyter kernel (where figures can be shown and updated)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def device_of(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters are; the CPU for a net without parameters."""
    param = next(iter(net.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def in_layout(X: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``X`` in ``channels_last`` memory format if asked and ``X`` is ``(B, C, H, W)``."""
    if channels_last and X.dim() == 4:
        return X.contiguous(memory_format=torch.channels_last)
    return X


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype for training on ``device``, or ``None`` for plain fp32.

    * CUDA with compute capability 8.0 or higher (A100, H100, RTX 30xx/40xx): ``bfloat16``,
      which has fp32's exponent range, so gradients need no scaling;
    * older CUDA GPUs (T4, V100, P100: capability 6.x-7.x), where bf16 is emulated or missing:
      ``float16``, to be used with :class:`torch.amp.GradScaler` (see :func:`grad_scaler`);
    * the CPU and Apple's MPS: ``None``.  On a CPU bf16 autocast is slower than fp32 on most
      processors; MPS runs fp32.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index) >= BF16_MIN_CAPABILITY:
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` in ``dtype``; does nothing when ``dtype`` is ``None``."""
    device = torch.device(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (whose small range lets gradients underflow).

    Disabled, ``scale(loss)`` returns ``loss`` and ``step(opt)`` calls ``opt.step()``, so one
    training step serves every precision.
    """
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
