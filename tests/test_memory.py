"""Training-step memory: the bytes autograd saves, the peak RSS increase on the CPU (Linux here;
macOS, Windows and a platform without a peak counter simulated), and the CUDA path (``gpu``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import types

import pytest
import torch
from torch import nn

import d2l_utils.memory
from d2l_utils.device import amp_dtype
from d2l_utils.memory import NOT_MEASURABLE, StepMemory, saved_tensor_bytes, training_step_memory
from d2l_utils.models.densenet import DenseBlock, densenet

_MIB = 2**20


@pytest.mark.parametrize("num_convs", [1, 4, 8])
def test_plain_dense_block_saves_every_concatenation(num_convs):
    # Conv block j reads c_j = 64 + 32 j channels.  For its backward pass autograd keeps BN's
    # input (the concatenation) and the ReLU output (the conv's input), 2 * B * c_j * H * W
    # floats, plus BN's batch mean and inverse std (2 * c_j floats): quadratic in num_convs.
    batch, size = 8, 8
    expected = sum(
        (2 * batch * c * size * size + 2 * c) * 4 for c in (64 + 32 * j for j in range(num_convs))
    )
    got = saved_tensor_bytes(DenseBlock(num_convs, 64, 32), (batch, 64, size, size))
    assert got == expected


def one_wide_conv() -> nn.Sequential:
    """A 1x1 conv to 64 channels, ReLU, pooling and a linear head (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def test_cpu_measurement_sees_the_activations_of_a_known_step():
    # A 1x1 conv to 64 channels on 64 images of 64x64: every activation is A = 64 MiB of float32.
    # ReLU keeps its output A for the backward pass, and the backward pass allocates A-sized
    # gradients while it is still alive, so the step needs at least 2A; the whole step touches
    # at most conv output, ReLU output and two gradients, 4A.
    net = one_wide_conv()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    a = 64 * 64 * 64 * 64 * 4
    m = training_step_memory(net, (64, 1, 64, 64), "cpu")
    assert isinstance(m, StepMemory) and m.device == "cpu"
    assert m.method.startswith("peak RSS increase of a fresh process")
    assert 2 * a <= m.peak_bytes <= 4 * a, f"{m.peak_mib:.1f} MiB"
    assert m.before_bytes > 0
    # The measured net is a copy: weights unchanged, no gradients.
    torch.testing.assert_close(net.state_dict(), before, rtol=0, atol=0)
    assert all(p.grad is None for p in net.parameters())


def test_memory_efficient_densenet_saves_the_stored_concatenations_on_cpu():
    # One dense block of 12 convs (growth 32) at 8x8 after the stem.  The plain block keeps, for
    # its backward pass, every concatenation (BN's input) and its ReLU output: 2 * (64 + 32 j)
    # channels for conv j, 5,760 channels in all.  The checkpointed block keeps neither.
    kwargs = {"growth_rate": 32, "block_config": (12,)}
    batch = 64
    stored = sum(2 * (64 + 32 * j) for j in range(12)) * 8 * 8 * batch * 4  # bytes, ~90 MiB
    torch.manual_seed(0)
    shape = (batch, 1, 32, 32)
    m_plain = training_step_memory(densenet(**kwargs), shape, "cpu")
    m_efficient = training_step_memory(densenet(**kwargs, memory_efficient=True), shape, "cpu")
    assert m_plain.peak_bytes > stored, m_plain
    # The recomputation briefly rebuilds one concatenation at a time, and RSS varies by some
    # MiB from run to run: require at least half of the stored bytes to be saved.
    assert m_plain.peak_bytes - m_efficient.peak_bytes > 0.5 * stored, (m_plain, m_efficient)


def test_classes_defined_in_a_notebook_are_refused():
    local = type("LocalNet", (nn.Sequential,), {"__module__": "__main__"})
    with pytest.raises(ValueError, match="LocalNet"):
        training_step_memory(local(nn.Flatten(), nn.Linear(4, 2)), (2, 4), "cpu")


def test_devices_other_than_cuda_and_cpu_are_refused():
    with pytest.raises(ValueError, match="'meta'"):
        training_step_memory(nn.Linear(4, 2), (2, 4), "meta")


# --- other operating systems, simulated ----------------------------------------------------------


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _counter(start: int, step: int):
    """A peak counter that grows by ``step`` at every read."""
    reads = iter(range(start, start + 100 * step, step))
    return lambda: next(reads)


def _no_glibc(monkeypatch) -> None:
    """Not glibc: malloc_trim must not be called (ctypes would find no libc.so.6)."""
    monkeypatch.delattr(os, "confstr", raising=False)

    def no_libc(*args, **kwargs):
        raise AssertionError("malloc_trim called without glibc")

    monkeypatch.setattr(d2l_utils.memory.ctypes, "CDLL", no_libc)


def test_macos_uses_getrusage_in_bytes(monkeypatch):
    # macOS: no /proc, no clear_refs; getrusage's ru_maxrss is in bytes there (KiB on Linux).
    monkeypatch.setattr(sys, "platform", "darwin")
    _no_glibc(monkeypatch)
    read = _counter(300 * _MIB, 5 * _MIB)
    fake = types.SimpleNamespace(
        RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=read())
    )
    monkeypatch.setitem(sys.modules, "resource", fake)
    m = d2l_utils.memory._measure_cpu_here(_small_net(), (8, 1, 8, 8), channels_last=False)
    assert m.method == "peak RSS increase of a fresh process (peak since its start, getrusage)"
    assert m.peak_bytes == 5 * _MIB  # one read before, one after the step; bytes, not KiB
    assert m.before_bytes > 300 * _MIB and m.device == "cpu" and m.measured


def test_linux_without_clear_refs_falls_back_to_getrusage_in_kib(monkeypatch):
    monkeypatch.setattr(d2l_utils.memory, "_reset_peak_rss", lambda: False)
    read = _counter(300 * 1024, 1024)  # KiB
    fake = types.SimpleNamespace(
        RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=read())
    )
    monkeypatch.setitem(sys.modules, "resource", fake)
    m = d2l_utils.memory._measure_cpu_here(_small_net(), (8, 1, 8, 8), channels_last=False)
    assert m.method.endswith("(peak since its start, getrusage)")
    assert m.peak_bytes == _MIB


def test_windows_uses_psutil_peak_working_set(monkeypatch):
    # Windows: no resource module; psutil's memory_info() has peak_wset there.
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "resource", None)  # import resource -> ImportError
    _no_glibc(monkeypatch)
    read = _counter(200 * _MIB, 3 * _MIB)

    class Process:
        def memory_info(self):
            return types.SimpleNamespace(rss=100 * _MIB, peak_wset=read())

    monkeypatch.setitem(sys.modules, "psutil", types.SimpleNamespace(Process=Process))
    m = d2l_utils.memory._measure_cpu_here(_small_net(), (8, 1, 8, 8), channels_last=False)
    assert m.method == (
        "peak working set increase of a fresh process (peak since its start, psutil)"
    )
    assert m.peak_bytes == 3 * _MIB


@pytest.mark.parametrize("platform", ["win32", "emscripten"])
def test_no_peak_counter_says_not_measurable_instead_of_raising(monkeypatch, platform):
    # Windows without psutil, or a platform with neither getrusage nor psutil.
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setitem(sys.modules, "resource", None)
    monkeypatch.setitem(sys.modules, "psutil", None)
    _no_glibc(monkeypatch)
    m = d2l_utils.memory._measure_cpu_here(_small_net(), (8, 1, 8, 8), channels_last=False)
    assert m.peak_bytes is None and m.before_bytes is None and not m.measured
    assert m.method == f"{NOT_MEASURABLE} ({platform})"
    assert str(m) == f"peak memory on cpu: not measurable on this platform ({platform})"
    assert math.isnan(m.peak_mib)  # a notebook's table prints nan instead of failing
    # What the child process sends back reads back as the same result.
    assert StepMemory(**json.loads(json.dumps(dataclasses.asdict(m)))) == m


def test_glibc_is_detected_only_where_it_is(monkeypatch):
    assert d2l_utils.memory._glibc() == os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    monkeypatch.delattr(os, "confstr")  # Windows has none
    assert not d2l_utils.memory._glibc()


# --- CUDA ----------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_measurement_sees_the_activations_and_amp_halves_them():
    # The net of test_cpu_measurement_sees_the_activations_of_a_known_step, on the GPU: in fp32
    # the step needs 2A..4A (A = 64 MiB), as on the CPU, plus at most one A of cuDNN workspace
    # (allocated from the same pool).  With autocast the activations are 16-bit, so the peak
    # is lower.
    net = one_wide_conv()
    a = 64 * 64 * 64 * 64 * 4
    fp32 = training_step_memory(net, (64, 1, 64, 64), "cuda", amp=False)
    assert fp32.device.startswith("cuda") and fp32.method.endswith("fp32")
    assert 2 * a <= fp32.peak_bytes <= 5 * a, fp32
    mixed = training_step_memory(net, (64, 1, 64, 64), "cuda")
    dtype = str(amp_dtype("cuda")).removeprefix("torch.")
    assert mixed.method == f"torch.cuda.max_memory_allocated, {dtype} autocast"
    assert mixed.peak_bytes < fp32.peak_bytes, (mixed, fp32)
    assert all(p.device.type == "cpu" and p.grad is None for p in net.parameters())
