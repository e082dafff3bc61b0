"""The machine the benchmark runs on: its name, its clock, its matrix-multiply peak."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for the device, so that a clock read afterwards includes all queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. ``NVIDIA H100 80GB HBM3`` or ``AMD EPYC, 2 cores``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def default_peak_size(device: torch.device) -> int:
    """Side of the square matrices for the peak: large enough to keep the device busy."""
    return 2048 if device.type == "cpu" else 8192


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5
) -> float:
    """Best rate of an ``n x n`` matrix multiply, in GFLOP/s (``2 n^3`` FLOPs each).

    ``n`` defaults to :func:`default_peak_size`.  Each timing repeats the multiply for at least
    ~50 ms, between device synchronisations.
    """
    n = n or default_peak_size(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up: library initialisation, kernel selection
    sync(device)
    t = time.perf_counter()
    torch.mm(a, b, out=c)
    sync(device)
    inner = max(1, int(0.05 / max(time.perf_counter() - t, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n**3 / best / 1e9


def peaks(device: torch.device, n: int | None) -> dict[str, float]:
    """The fp32 peak, and on CUDA (where the course trains under bf16 autocast) the bf16 one."""
    out = {"fp32": matmul_peak(device, torch.float32, n)}
    if device.type == "cuda":
        out["bf16"] = matmul_peak(device, torch.bfloat16, n)
    return out
