"""d2l_utils.device: CUDA, then Apple's MPS, then the CPU; never an error.

The GPUs are simulated by replacing ``torch.cuda.is_available`` / ``device_count`` and
``torch.backends.mps.is_available``, so every branch runs on any machine.
"""

from __future__ import annotations

import torch

import d2l_utils as d2l

CPU = torch.device("cpu")


def _machine(monkeypatch, cuda: int, mps: bool) -> None:
    """Pretend the machine has ``cuda`` CUDA devices and, or not, an MPS device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_cpu():
    assert d2l.cpu() == CPU and isinstance(d2l.cpu(), torch.device)


def test_no_gpu_falls_back_to_the_cpu(monkeypatch):
    _machine(monkeypatch, cuda=0, mps=False)
    assert d2l.try_gpu() == CPU and d2l.try_gpu(0) == CPU and d2l.try_gpu(3) == CPU
    assert d2l.num_gpus() == 0
    assert d2l.try_all_gpus() == [CPU]


def test_cuda_devices(monkeypatch):
    _machine(monkeypatch, cuda=2, mps=False)
    assert d2l.try_gpu() == torch.device("cuda:0")
    assert d2l.try_gpu(1) == torch.device("cuda:1")
    assert d2l.try_gpu(2) == CPU  # no third GPU: the CPU, as the book's try_gpu
    assert d2l.num_gpus() == 2
    assert d2l.try_all_gpus() == [torch.device("cuda:0"), torch.device("cuda:1")]


def test_cuda_comes_before_mps(monkeypatch):
    _machine(monkeypatch, cuda=1, mps=True)
    assert d2l.try_gpu() == torch.device("cuda:0")
    assert d2l.try_all_gpus() == [torch.device("cuda:0")]


def test_apple_mps(monkeypatch):
    _machine(monkeypatch, cuda=0, mps=True)
    assert d2l.try_gpu() == torch.device("mps")
    assert d2l.try_gpu(1) == CPU
    assert d2l.num_gpus() == 1
    assert d2l.try_all_gpus() == [torch.device("mps")]


def test_devices_of_this_machine_are_usable():
    for device in [d2l.try_gpu(), *d2l.try_all_gpus()]:
        assert isinstance(device, torch.device)
        assert torch.ones(2, device=device).sum().item() == 2.0  # usable, not just named


def test_try_gpu_matches_this_machine():
    if torch.cuda.is_available():
        assert d2l.try_gpu() == torch.device("cuda:0")
    elif torch.backends.mps.is_available():
        assert d2l.try_gpu() == torch.device("mps")
    else:
        assert d2l.try_gpu() == CPU and d2l.num_gpus() == 0


def test_channels_last_only_for_nets_with_wide_convolutions():
    from torch import nn

    from d2l_utils.cifar_resnet import cifar_resnet
    from d2l_utils.densenet import densenet
    from d2l_utils.device import prefers_channels_last
    from d2l_utils.lenet import lenet, lenet_bn
    from d2l_utils.resnet import d2l_resnet18

    # LeNet's convolutions have 6 and 16 channels: faster in the default layout.
    assert not prefers_channels_last(lenet()) and not prefers_channels_last(lenet_bn())
    assert not prefers_channels_last(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)))
    assert not prefers_channels_last(nn.Conv2d(3, 31, 3))
    assert prefers_channels_last(nn.Conv2d(3, 32, 3))
    for net in (d2l_resnet18(), densenet(), cifar_resnet(20)):
        assert prefers_channels_last(net)
