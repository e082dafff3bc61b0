"""Peak memory of one training step, measured, on a GPU or a CPU.

What is measured is the memory a training step needs *on top of* what is already held when it
starts (the weights and the batch): activations kept for the backward pass, gradients,
temporaries and workspaces.  The step is the one :func:`d2l_utils.train_ch6` takes: zero the
gradients (``set_to_none``), forward (``channels_last`` for conv nets, bf16 autocast on CUDA),
cross-entropy, backward, an SGD update.

How, by device:

CUDA
    ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``, in this
    process, after one warm-up step (so one-time library workspaces count as already held).
    Bytes of live tensors, as PyTorch's caching allocator counts them.
CPU
    A CPU has no allocator statistics, so the step runs in a *fresh Python process* and the
    operating system's count is read: the increase of its peak resident set size (RSS, the
    physical memory the process occupies) over its RSS just before the step.  Before measuring,
    the child process runs a warm-up step on a 2-image batch (loads code pages and thread pools,
    allocates nothing batch-sized), frees the gradients, returns freed heap memory to the OS
    (glibc ``malloc_trim``) and resets the peak counter (Linux ``/proc/self/clear_refs``).  RSS
    counts whole pages and allocator overhead, so it is a little above the bytes of live tensors
    a GPU would report; where the peak counter cannot be reset (not Linux), the peak since the
    process started is used, which the small warm-up keeps close.

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
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import torch
from torch import nn

from d2l_utils.device import in_layout, prefers_channels_last

__all__ = ["StepMemory", "saved_tensor_bytes", "training_step_memory"]

_MIB = 2**20


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """One measurement by :func:`training_step_memory`."""

    peak_bytes: int  # peak during the step minus what was held just before it
    before_bytes: int  # held just before the step (CPU: the whole process's RSS)
    method: str  # how it was measured
    device: str

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / _MIB

    def __str__(self) -> str:
        return f"{self.peak_mib:,.1f} MiB on {self.device} ({self.method})"


def _training_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    amp: bool,
) -> None:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(X.device.type, dtype=torch.bfloat16, enabled=amp):
        loss = nn.functional.cross_entropy(net(X), y)
    loss.backward()
    optimizer.step()


def _batch(
    net: nn.Module, input_shape: Sequence[int], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch of ``input_shape`` and labels valid for ``net``'s output."""
    gen = torch.Generator().manual_seed(0)
    X = in_layout(torch.rand(*input_shape, generator=gen).to(device), channels_last)
    with torch.no_grad():
        was_training = net.training
        num_classes = net.eval()(X[:1]).shape[1]
        net.train(was_training)
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
    net: nn.Module, input_shape: Sequence[int], device: torch.device, channels_last: bool, amp: bool
) -> StepMemory:
    net, opt = _prepare(copy.deepcopy(net), device, channels_last)
    X, y = _batch(net, input_shape, device, channels_last)
    _training_step(net, opt, X, y, amp)  # warm-up: cuDNN/cuBLAS workspaces are one-time
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    _training_step(net, opt, X, y, amp)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return StepMemory(peak - before, before, "torch.cuda.max_memory_allocated", str(device))


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of Linux's ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def _max_rss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS: bytes; Linux: KiB


def _reset_peak_rss() -> bool:
    """Set the peak-RSS counter to the current RSS (Linux >= 4.0)."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _release_free_heap() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc only


def _child_measure_cpu(job_path: str, result_path: str) -> None:
    """Runs in the fresh process: one measured training step on the CPU."""
    job = torch.load(job_path, weights_only=False)
    device = torch.device("cpu")
    net, opt = _prepare(job["net"], device, job["channels_last"])
    X, y = _batch(net, job["input_shape"], device, job["channels_last"])
    _training_step(net, opt, X[:2], y[:2], amp=False)  # warm-up, batch-size independent
    opt.zero_grad(set_to_none=True)
    _release_free_heap()
    before = _status_bytes("VmRSS")
    if before is not None and _reset_peak_rss():
        _training_step(net, opt, X, y, amp=False)
        peak = _status_bytes("VmHWM")
        method = "peak RSS increase of a fresh process"
    else:
        before = _max_rss_bytes()
        _training_step(net, opt, X, y, amp=False)
        peak = _max_rss_bytes()
        method = "peak RSS increase of a fresh process (peak since its start)"
    assert peak is not None
    pathlib.Path(result_path).write_text(
        json.dumps({"peak_bytes": peak - before, "before_bytes": before, "method": method})
    )


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
    return StepMemory(data["peak_bytes"], data["before_bytes"], data["method"], "cpu")


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
        amp: bf16 autocast, CUDA only; default: on CUDA (as ``train_ch6``).

    Returns:
        A :class:`StepMemory`: the peak increase during the step over what was held before it.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if channels_last is None:
        channels_last = prefers_channels_last(net)
    if device.type == "cuda":
        return _measure_cuda(net, input_shape, device, channels_last, amp is not False)
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
