"""d2l_utils.models.lenet: shapes, parameter counts, scratch vs. PyTorch batch norm, the bias
before BN."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from d2l_utils.models.batchnorm import BatchNorm
from d2l_utils.models.lenet import lenet, lenet_bn


def _conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_out * c_in * k * k + (c_out if bias else 0)


def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _images(batch: int = 8) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _walk(net: nn.Sequential) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """The logits for 8 images, and the feature shape after each pooling layer."""
    X, feature_shapes = _images(), []
    for layer in net:
        X = layer(X)
        if isinstance(layer, nn.AvgPool2d):
            feature_shapes.append(tuple(X.shape[1:]))
    return X, feature_shapes


def test_lenet_shapes_and_parameter_count():
    net = lenet()
    X, feature_shapes = _walk(net)
    assert feature_shapes == [(6, 14, 14), (16, 5, 5)]
    assert X.shape == (8, 10)
    expected = (
        _conv(1, 6, 5) + _conv(6, 16, 5) + _linear(400, 120) + _linear(120, 84) + _linear(84, 10)
    )
    assert _n_params(net) == expected


@pytest.mark.parametrize("scratch", [False, True])
def test_lenet_bn_shapes_and_parameter_count(scratch):
    net = lenet_bn(scratch)
    X, feature_shapes = _walk(net)
    assert feature_shapes == [(6, 12, 12), (16, 4, 4)]
    assert X.shape == (8, 10)
    convs_linears = (
        _conv(1, 6, 5) + _conv(6, 16, 5) + _linear(256, 120) + _linear(120, 84) + _linear(84, 10)
    )
    gamma_beta = 2 * (6 + 16 + 120 + 84)
    assert _n_params(net) == convs_linears + gamma_beta


def test_lenet_bn_uses_the_requested_batch_norm():
    scratch = [m for m in lenet_bn(scratch=True) if isinstance(m, BatchNorm)]
    assert [(m.num_features, m.num_dims) for m in scratch] == [(6, 4), (16, 4), (120, 2), (84, 2)]
    torch_bn = [m for m in lenet_bn() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [type(m) for m in torch_bn] == [nn.BatchNorm2d] * 2 + [nn.BatchNorm1d] * 2
    assert not any(isinstance(m, BatchNorm) for m in lenet_bn())
    for net in (lenet_bn(True, momentum=0.9), lenet_bn(False, momentum=0.9)):
        assert [m.momentum for m in net if hasattr(m, "running_mean")] == [0.9] * 4


def test_scratch_and_pytorch_lenet_bn_are_interchangeable():
    torch.manual_seed(0)
    ref = lenet_bn(scratch=False)
    ours = lenet_bn(scratch=True)
    ref_sd = ref.state_dict()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in ref_sd.items()
    ]
    ours.load_state_dict(ref_sd)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # training mode, running statistics updated the same way
        X = torch.rand(16, 1, 28, 28, generator=gen)
        assert_close(ours(X), ref(X))
    for key, value in ref.state_dict().items():
        assert_close(ours.state_dict()[key], value)
    ref.eval(), ours.eval()
    X = torch.rand(16, 1, 28, 28, generator=gen)
    assert_close(ours(X), ref(X))


@pytest.mark.parametrize("scratch", [False, True])
def test_bias_before_batch_norm_is_dead_weight(scratch):
    with_bias = lenet_bn(scratch)
    without = lenet_bn(scratch, bias=False)
    assert _n_params(with_bias) - _n_params(without) == 6 + 16 + 120 + 84
    biases = [m.bias is not None for m in without if isinstance(m, nn.Conv2d | nn.Linear)]
    assert biases == [False, False, False, False, True]  # only the output layer keeps its bias
    # Same weights, the biases dropped: in training mode BN subtracts the batch mean, which
    # contains the bias, so the outputs agree and the biases get no gradient.  float64, so that
    # "zero" is not hidden behind float32 rounding of sums over 16 * 24 * 24 values.
    with_bias, without = with_bias.double(), without.double()
    without.load_state_dict(with_bias.state_dict(), strict=False)
    X = _images(16).double()
    assert_close(without(X), with_bias(X))
    with_bias(X).sum().backward()
    for layer in list(with_bias)[:-1]:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            assert_close(layer.bias.grad, torch.zeros_like(layer.bias), rtol=0, atol=1e-12)
            assert layer.weight.grad.abs().max() > 1e-6  # the weights themselves do learn
