"""Where and how a net runs: pick a GPU when there is one (else the CPU, never raising), its
mixed precision and memory layout, eval mode for a block of code, and whether this is Jupyter."""

from __future__ import annotations

import contextlib
import sys
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
    return any(isinstance(m, nn.Conv2d) and m.out_channels >= CHANNELS_LAST_MIN_WIDTH
               for m in net.modules())  # fmt: skip


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """Put ``net`` in eval mode for the ``with`` block and give it back in the mode it was in.

    The ``finally`` matters: an exception or the stop button inside the block must not leave a
    net that was training in eval mode (its batch norms would stop updating their statistics).
    """
    was_training = net.training
    try:
        yield net.eval()
    finally:
        net.train(was_training)


def in_notebook() -> bool:
    """Whether code runs in a Jupyter kernel (where figures can be shown and updated).

    Every Jupyter kernel has imported IPython: where it is not imported, this is no kernel."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and hasattr(ipython.get_ipython(), "kernel")


def device_of(net: nn.Module) -> torch.device:
    """Where ``net``'s parameters are; the CPU for a net without parameters."""
    return next((p.device for p in net.parameters()), torch.device("cpu"))


def in_layout(X: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``X`` in ``channels_last`` memory format if asked and ``X`` is ``(B, C, H, W)``."""
    return X.contiguous(memory_format=torch.channels_last) if channels_last and X.dim() == 4 else X


def amp_dtype(device: torch.device | str,
              amp: bool | torch.dtype | None = None) -> torch.dtype | None:  # fmt: skip
    """The autocast dtype for training on ``device`` that ``amp=`` asks for (``None``: plain fp32).

    ``amp=None`` (the default) asks for what the device does best:

    * CUDA with compute capability 8.0 or higher (A100, H100, RTX 30xx/40xx): ``bfloat16``,
      which has fp32's exponent range, so gradients need no scaling;
    * older CUDA GPUs (T4, V100, P100: capability 6.x-7.x), where bf16 is emulated or missing:
      ``float16``, to be used with :class:`torch.amp.GradScaler` (see :func:`grad_scaler`);
    * the CPU and Apple's MPS: ``None``.  On a CPU bf16 autocast is slower than fp32 on most
      processors; MPS runs fp32.

    ``amp=False`` (or ``torch.float32``): ``None``; ``amp=True``: the device's dtype, or bf16
    where it has none (a CPU); a dtype: that dtype.
    """
    if amp not in (None, True):  # False, or a dtype
        return None if amp is False or amp == torch.float32 else amp
    device = torch.device(device)
    if device.type != "cuda":
        return torch.bfloat16 if amp else None  # asked for (amp=True): the CPU's autocast dtype
    # The GPU it is given; "cuda" without an index (None) is the current device.
    native = torch.cuda.get_device_capability(device.index) >= BF16_MIN_CAPABILITY
    return torch.bfloat16 if native else torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` in ``dtype``; does nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(device: torch.device | str, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (whose small range lets gradients underflow).

    Disabled, ``scale(loss)`` returns ``loss`` and ``step(opt)`` calls ``opt.step()``, so one
    training step serves every precision.
    """
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
