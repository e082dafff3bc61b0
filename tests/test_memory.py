"""Training-step memory: the bytes autograd saves, and the peak RSS increase on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from d2l_utils.densenet import DenseBlock, densenet
from d2l_utils.memory import StepMemory, saved_tensor_bytes, training_step_memory


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


def test_cpu_measurement_sees_the_activations_of_a_known_step():
    # A 1x1 conv to 64 channels on 64 images of 64x64: every activation is A = 64 MiB of float32.
    # ReLU keeps its output A for the backward pass, and the backward pass allocates A-sized
    # gradients while it is still alive, so the step needs at least 2A; the whole step touches
    # at most conv output, ReLU output and two gradients, 4A.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 64, kernel_size=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
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
    kwargs = {"growth_rate": 32, "num_convs_in_dense_blocks": (12,)}
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
