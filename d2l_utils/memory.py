"""Peak memory of one training step, measured, on a GPU or a CPU.

What is measured is the memory a training step needs *on top of* what is already held when it
starts (the weights and the batch): activations kept for the backward pass, gradients,
temporaries and workspaces.  The step is :func:`d2l_utils.train.train_step`, the one
:func:`d2l_utils.train_ch6` takes: zero the gradients (``set_to_none``), forward
(``channels_last`` for conv nets; on CUDA mixed precision chosen by
:func:`~d2l_utils.device.amp_dtype`: bf16, or fp16 with a gradient scaler on GPUs older than
compute capability 8.0), cross-entropy, backward, an SGD update.

How, by device:

CUDA
    ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``, in this
    process, after one warm-up step (so one-time library workspaces count as already held).
    Bytes of live tensors, as PyTorch's caching allocator counts them.  Same on every OS.
CPU
    A CPU has no allocator statistics, so the step runs in a *fresh Python process* and the
    operating system's count is read: the increase of the process's peak memory over what it
    held just before the step.  Before measuring, the child process runs a warm-up step on a
    2-image batch (loads code pages and thread pools, allocates nothing batch-sized) and frees
    the gradients.  What each operating system offers:

    * Linux: the peak resident set size (RSS, ``VmHWM`` in ``/proc/self/status``) *can be reset*
      to the current RSS (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0), and freed
      heap memory is first handed back to the OS (glibc's ``malloc_trim``; other C libraries
      skip this), so the step's own peak is measured.
    * macOS and other Unix systems (or Linux without ``clear_refs``): ``resource.getrusage``'s
      ``ru_maxrss`` (bytes on macOS, KiB elsewhere), the peak *since the process started*; it
      *cannot be reset*, so the result is the increase of that peak, which the fresh process and
      the small warm-up keep close to the step's own peak.
    * Windows: ``psutil``'s ``peak_wset`` (peak working set), also since the process started
      and not resettable; needs ``psutil`` (a dependency of the package on Windows).
    * Anywhere else, or without ``psutil`` on Windows: not measurable.  The result then says
      so (``peak_bytes`` is ``None``, ``peak_mib`` is NaN, ``method`` says "not measurable on
      this platform") instead of raising, so a notebook still runs to the end.

    RSS counts whole pages and allocator overhead, so it is a little above the bytes of live
    tensors a GPU would report.

:func:`saved_tensor_bytes` is the exact, device-independent part of that memory: the bytes of
the tensors autograd keeps from the forward pass for the backward pass.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import gc
import itertools
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from d2l_utils.device import amp_dtype, eval_mode, grad_scaler, in_layout, prefers_channels_last
from d2l_utils.train import train_step

__all__ = ["NOT_MEASURABLE", "StepMemory", "saved_tensor_bytes", "training_step_memory"]

_MIB = 2**20

NOT_MEASURABLE = "not measurable on this platform"


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """One measurement by :func:`training_step_memory`.

    ``peak_bytes`` and ``before_bytes`` are ``None`` when the platform offers no way to measure
    (``method`` then starts with :data:`NOT_MEASURABLE`).
    """

    peak_bytes: int | None  # peak during the step minus what was held just before it
    before_bytes: int | None  # held just before the step (CPU: the whole process's RSS)
    method: str  # how it was measured
    device: str

    @property
    def measured(self) -> bool:
        return self.peak_bytes is not None

    @property
    def peak_mib(self) -> float:
        """The peak in MiB; NaN when not measurable (so tables print ``nan``, not an error)."""
        return self.peak_bytes / _MIB if self.peak_bytes is not None else math.nan

    def __str__(self) -> str:
        if self.peak_bytes is None:
            return f"peak memory on {self.device}: {self.method}"
        return f"{self.peak_mib:,.1f} MiB on {self.device} ({self.method})"


def _batch(
    net: nn.Module, input_shape: Sequence[int], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch of ``input_shape`` and labels valid for ``net``'s output."""
    gen = torch.Generator().manual_seed(0)
    X = in_layout(torch.rand(*input_shape, generator=gen).to(device), channels_last)
    with torch.no_grad(), eval_mode(net):  # one image: batch norm cannot use batch statistics
        num_classes = net(X[:1]).shape[1]
    y = torch.randint(num_classes, (input_shape[0],), generator=gen).to(device)
    return X, y


def _prepare(
    net: nn.Module, device: torch.device, channels_last: bool
) -> tuple[nn.Module, torch.optim.Optimizer]:
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    return net, torch.optim.SGD(net.parameters(), lr=0.01)


def _measure_cuda(
    net: nn.Module,
    input_shape: Sequence[int],
    device: torch.device,
    channels_last: bool,
    dtype: torch.dtype | None,
) -> StepMemory:
    net, opt = _prepare(copy.deepcopy(net), device, channels_last)
    X, y = _batch(net, input_shape, device, channels_last)
    scaler = grad_scaler(device, dtype)
    train_step(net, X, y, F.cross_entropy, opt, scaler, dtype)  # warm-up: cuDNN workspaces, scaler
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    train_step(net, X, y, F.cross_entropy, opt, scaler, dtype)  # its results dropped at once
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    method = f"torch.cuda.max_memory_allocated, {precision}"
    return StepMemory(peak - before, before, method, str(device))


# --- the CPU: what each operating system can tell ------------------------------------------------


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Set Linux's peak-RSS counter (``VmHWM``) to the current RSS (Linux >= 4.0)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rusage_max_rss() -> int | None:
    """Peak RSS since the process started, from ``getrusage`` (Unix only), in bytes."""
    try:
        import resource  # not on Windows
    except ImportError:
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if maxrss <= 0:  # some systems leave the field empty
        return None
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS: bytes; others: KiB


def _peak_working_set() -> int | None:
    """Peak working set since the process started (Windows, through psutil), in bytes."""
    try:
        import psutil
    except ImportError:
        return None
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows only
    return int(peak) if peak else None


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):  # no confstr (Windows) or no such name
        return False


def _release_free_heap() -> None:
    gc.collect()
    if _glibc():
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclasses.dataclass(frozen=True)
class _PeakMeter:
    """How this process's peak memory is read: ``start()`` just before the step returns what
    is held then (resetting the peak where the OS allows), ``peak()`` just after it."""

    method: str
    start: Callable[[], int | None]
    peak: Callable[[], int | None]


def _linux_start() -> int | None:
    return _status_bytes("VmRSS") if _reset_peak_rss() else None


def _cpu_peak_meter() -> _PeakMeter | None:
    """The best peak-memory counter this platform offers, or ``None``."""
    fresh = "of a fresh process"
    if _status_bytes("VmRSS") is not None and _reset_peak_rss():
        return _PeakMeter(
            f"peak RSS increase {fresh}", _linux_start, lambda: _status_bytes("VmHWM")
        )
    if _rusage_max_rss() is not None:
        method = f"peak RSS increase {fresh} (peak since its start, getrusage)"
        return _PeakMeter(method, _rusage_max_rss, _rusage_max_rss)
    if _peak_working_set() is not None:
        method = f"peak working set increase {fresh} (peak since its start, psutil)"
        return _PeakMeter(method, _peak_working_set, _peak_working_set)
    return None


def _measure_cpu_here(
    net: nn.Module, input_shape: Sequence[int], channels_last: bool
) -> StepMemory:
    """One measured training step on the CPU, in this process (the fresh child process)."""
    device = torch.device("cpu")
    net, opt = _prepare(net, device, channels_last)
    X, y = _batch(net, input_shape, device, channels_last)
    train_step(net, X[:2], y[:2], F.cross_entropy, opt)  # warm-up, batch-size independent
    opt.zero_grad(set_to_none=True)
    _release_free_heap()
    meter = _cpu_peak_meter()
    if meter is None:
        return StepMemory(None, None, f"{NOT_MEASURABLE} ({sys.platform})", "cpu")
    before = meter.start()
    train_step(net, X, y, F.cross_entropy, opt)  # its results dropped at once
    peak = meter.peak()
    if before is None or peak is None:  # the counter stopped answering
        return StepMemory(None, None, f"{NOT_MEASURABLE} ({sys.platform})", "cpu")
    return StepMemory(peak - before, before, meter.method, "cpu")


def _child_measure_cpu(job_path: str, result_path: str) -> None:
    """Runs in the fresh process: reads the job, measures, writes the result as JSON."""
    job = torch.load(job_path, weights_only=False)
    result = _measure_cpu_here(job["net"], job["input_shape"], job["channels_last"])
    pathlib.Path(result_path).write_text(json.dumps(dataclasses.asdict(result)))


def _measure_cpu_subprocess(
    net: nn.Module, input_shape: Sequence[int], channels_last: bool
) -> StepMemory:
    local = sorted(
        {type(m).__qualname__ for m in net.modules() if type(m).__module__ == "__main__"}
    )
    if local:
        raise ValueError(
            f"the model is measured in a fresh process, which cannot import {', '.join(local)}: "
            "define its classes in a module (e.g. d2l_utils), not in the notebook"
        )
    package_root = str(pathlib.Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        job, result = os.path.join(tmp, "job.pt"), os.path.join(tmp, "result.json")
        net_cpu = copy.deepcopy(net).cpu()
        job_data = {
            "net": net_cpu,
            "input_shape": tuple(input_shape),
            "channels_last": channels_last,
        }
        torch.save(job_data, job)
        code = f"from {__name__} import _child_measure_cpu; _child_measure_cpu(*{[job, result]!r})"
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement failed:\n{proc.stderr[-3000:]}")
        data = json.loads(pathlib.Path(result).read_text())
    return StepMemory(**data)


def training_step_memory(
    net: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str | None = None,
    *,
    channels_last: bool | None = None,
    amp: bool | None = None,
) -> StepMemory:
    """Measure the peak memory one training step of ``net`` needs (``net`` is left untouched).

    Args:
        net: a classifier producing logits ``(B, C)``; on the CPU its classes must be importable
            (it is pickled into a fresh process).
        input_shape: shape of the batch, e.g. ``(256, 1, 96, 96)``.
        device: ``"cuda[:i]"`` or ``"cpu"``; default CUDA when available, else the CPU.
        channels_last: default: :func:`~d2l_utils.device.prefers_channels_last` (as ``train_ch6``).
        amp: mixed precision, CUDA only.  ``None`` or ``True``: the GPU's
            :func:`~d2l_utils.device.amp_dtype` (bf16 from compute capability 8.0, else fp16
            with a gradient scaler), as ``train_ch6``; ``False``: fp32.

    Returns:
        A :class:`StepMemory`: the peak increase during the step over what was held before it;
        on a CPU whose operating system offers no peak counter, a result that says
        "not measurable on this platform" (see the module's docstring).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if channels_last is None:
        channels_last = prefers_channels_last(net)
    if device.type == "cuda":
        dtype = None if amp is False else amp_dtype(device)
        return _measure_cuda(net, input_shape, device, channels_last, dtype)
    if device.type == "cpu":
        if amp:
            raise ValueError("amp is measured on CUDA only (train_ch6 never uses it on a CPU)")
        return _measure_cpu_subprocess(net, input_shape, channels_last)
    raise ValueError(f"peak memory can be measured on 'cuda' or 'cpu', not {device.type!r}")


def saved_tensor_bytes(
    net: nn.Module, input_shape: Sequence[int], *, channels_last: bool | None = None
) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of ``net``.

    One forward pass in training mode on a copy of ``net``, on the CPU, under
    ``torch.autograd.graph.saved_tensors_hooks``; each saved storage counts once, and parameters,
    buffers (BN's running statistics) and the input batch, which are held anyway, not at all.
    Exact and machine-independent, but only for nets without activation checkpointing: a
    checkpointed region saves nothing in the forward pass, and the inputs it keeps alive
    instead are not seen.

    Args:
        net: any module; ``input_shape`` e.g. ``(256, 1, 96, 96)``.
        channels_last: default: :func:`~d2l_utils.device.prefers_channels_last` (as ``train_ch6``).
    """
    if channels_last is None:
        channels_last = prefers_channels_last(net)
    net, _ = _prepare(copy.deepcopy(net).cpu(), torch.device("cpu"), channels_last)
    X = in_layout(torch.rand(*input_shape), channels_last)
    held = itertools.chain(net.parameters(), net.buffers())
    excluded = {t.untyped_storage().data_ptr() for t in held}
    excluded.add(X.untyped_storage().data_ptr())
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            saved[storage.data_ptr()] = storage.nbytes()
        return t  # the graph keeps it alive, so no other storage can reuse its address

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(X)
    del out
    return sum(saved.values())
