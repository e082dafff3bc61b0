"""d2l_utils.device: which device, memory format and precision a run gets, on faked machines.

The machines are simulated by replacing ``torch.cuda.is_available`` / ``device_count`` /
``current_device`` / ``get_device_capability`` and ``torch.backends.mps.is_available``, so every
branch runs on any computer.  The expectations are written from the hardware's facts (which GPU
has native bf16, what the book's ``try_gpu`` returns), not from the code's conditions.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

import d2l_utils as d2l
from d2l_utils.device import (
    amp_dtype,
    autocast,
    grad_scaler,
    in_notebook,
    prefers_channels_last,
)
from d2l_utils.models.cifar_resnet import resnet20
from d2l_utils.models.densenet import densenet
from d2l_utils.models.lenet import lenet, lenet_bn
from d2l_utils.models.resnet import d2l_resnet18

CPU = torch.device("cpu")


def machine(monkeypatch, gpus: list[tuple[int, int]] = (), mps: bool = False, current: int = 0):
    """Pretend the machine has CUDA GPUs of the given compute capabilities and/or an MPS device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: len(gpus) > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda i=None: gpus[current if i is None else i]
    )
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


# Compute capabilities of GPUs learners get (NVIDIA's published table).
T4, V100, P100, A100, RTX4090, H100 = (7, 5), (7, 0), (6, 0), (8, 0), (8, 9), (9, 0)


# --- try_gpu and friends ------------------------------------------------------------------------


def test_no_gpu_falls_back_to_the_cpu(monkeypatch):
    machine(monkeypatch)
    assert d2l.try_gpu() == CPU and d2l.try_gpu(0) == CPU and d2l.try_gpu(3) == CPU
    assert d2l.num_gpus() == 0
    assert d2l.try_all_gpus() == [CPU]
    assert d2l.cpu() == CPU


def test_cuda_devices(monkeypatch):
    machine(monkeypatch, [T4, T4])
    assert d2l.try_gpu() == torch.device("cuda:0")
    assert d2l.try_gpu(1) == torch.device("cuda:1")
    assert d2l.try_gpu(2) == CPU  # no third GPU: the CPU, as the book's try_gpu
    assert d2l.num_gpus() == 2
    assert d2l.try_all_gpus() == [torch.device("cuda:0"), torch.device("cuda:1")]


def test_cuda_comes_before_mps(monkeypatch):
    machine(monkeypatch, [A100], mps=True)
    assert d2l.try_gpu() == torch.device("cuda:0")
    assert d2l.try_all_gpus() == [torch.device("cuda:0")]


def test_apple_mps(monkeypatch):
    machine(monkeypatch, mps=True)
    assert d2l.try_gpu() == torch.device("mps")
    assert d2l.try_gpu(1) == CPU
    assert d2l.num_gpus() == 1
    assert d2l.try_all_gpus() == [torch.device("mps")]


def test_devices_of_this_machine_are_usable():
    for device in [d2l.try_gpu(), *d2l.try_all_gpus()]:
        assert torch.ones(2, device=device).sum().item() == 2.0  # usable, not just named


# --- mixed precision by compute capability ------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (P100, torch.float16),
        (V100, torch.float16),
        (T4, torch.float16),
        (A100, torch.bfloat16),
        (RTX4090, torch.bfloat16),
        (H100, torch.bfloat16),
    ],
)
def test_amp_dtype_is_bf16_only_where_the_gpu_has_it_natively(monkeypatch, gpu, expected):
    machine(monkeypatch, [gpu])
    assert amp_dtype(torch.device("cuda:0")) == expected
    assert amp_dtype("cuda:0") == expected


def test_amp_dtype_asks_the_gpu_it_is_given(monkeypatch):
    machine(monkeypatch, [T4, A100], current=1)
    assert amp_dtype("cuda:0") == torch.float16
    assert amp_dtype("cuda:1") == torch.bfloat16
    assert amp_dtype("cuda") == torch.bfloat16  # no index: the current device, cuda:1


def test_no_mixed_precision_on_the_cpu_or_mps(monkeypatch):
    machine(monkeypatch, [A100], mps=True)
    assert amp_dtype("cpu") is None and amp_dtype(torch.device("mps")) is None


@pytest.mark.parametrize(
    ("dtype", "scales"), [(torch.float16, True), (torch.bfloat16, False), (None, False)]
)
def test_grad_scaler_scales_only_fp16(monkeypatch, dtype, scales):
    with monkeypatch.context() as m:
        machine(m, [T4])  # a GradScaler for CUDA is only enabled where CUDA exists
        scaler = grad_scaler("cuda:0", dtype)
    assert scaler.is_enabled() == scales
    if not scales:  # disabled: the loss as it is, and step() is the optimizer's step
        loss = torch.tensor(2.0)
        assert scaler.scale(loss) is loss
        p = nn.Parameter(torch.ones(1))
        p.grad = torch.ones(1)
        scaler.step(torch.optim.SGD([p], lr=0.5))
        assert p.item() == 0.5


def test_grad_scaler_on_the_cpu_scales_the_loss():
    scaler = grad_scaler("cpu", torch.float16)
    assert scaler.scale(torch.tensor(2.0)).item() == 2.0 * 2**16  # the default initial scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_matmuls_in_the_dtype_or_not_at_all(dtype):
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("cpu", dtype):
        assert (a @ b).dtype == dtype
    with autocast("cpu", None):
        assert (a @ b).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


# --- memory format -------------------------------------------------------------------------------


def test_channels_last_only_for_nets_with_wide_convolutions():
    # LeNet's convolutions have 6 and 16 channels: faster in the default layout.
    assert not prefers_channels_last(lenet()) and not prefers_channels_last(lenet_bn())
    assert not prefers_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    assert not prefers_channels_last(nn.Conv2d(3, 31, 3))
    assert prefers_channels_last(nn.Conv2d(3, 32, 3))
    for net in (d2l_resnet18(), densenet(), resnet20()):
        assert prefers_channels_last(net)


# --- Jupyter -------------------------------------------------------------------------------------


class _Shell:
    """Stands in for IPython's shell: a Jupyter kernel's has ``kernel``, a terminal's has not."""

    def __init__(self, kernel: bool) -> None:
        if kernel:
            self.kernel = object()


@pytest.mark.parametrize(
    ("ipython", "expected"),
    [
        (None, False),  # IPython not even imported: plain Python
        (types.SimpleNamespace(get_ipython=lambda: None), False),  # imported, no shell running
        (types.SimpleNamespace(get_ipython=lambda: _Shell(kernel=False)), False),  # a terminal
        (types.SimpleNamespace(get_ipython=lambda: _Shell(kernel=True)), True),  # Jupyter
    ],
)
def test_in_notebook_only_in_a_jupyter_kernel(monkeypatch, ipython, expected):
    if ipython is None:
        monkeypatch.delitem(sys.modules, "IPython", raising=False)
    else:
        monkeypatch.setitem(sys.modules, "IPython", ipython)
    assert in_notebook() is expected
