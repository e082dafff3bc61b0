"""d2l_utils.measure: parameter and FLOP counts, by hand and against torchvision's metadata."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from d2l_utils.measure import count_flops, count_params


def snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_count_params_and_flops_by_hand():
    c_in, c_out, k, h, w = 3, 8, 3, 16, 16
    net = nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(c_out * h * w, 10),
    )
    conv_params = c_out * c_in * k * k + c_out
    bn_params = 2 * c_out
    linear_params = c_out * h * w * 10 + 10
    assert count_params(net) == conv_params + bn_params + linear_params
    net[0].requires_grad_(False)
    assert count_params(net, trainable_only=True) == bn_params + linear_params
    assert count_params(net) == conv_params + bn_params + linear_params
    conv_flops = 2 * c_in * c_out * k * k * h * w  # one multiply-add = 2 FLOPs
    linear_flops = 2 * c_out * h * w * 10
    stats = snapshot(net)
    assert count_flops(net, (1, c_in, h, w)) == conv_flops + linear_flops
    assert count_flops(net, (2, c_in, h, w)) == 2 * (conv_flops + linear_flops)
    assert net.training  # restored, and BN's statistics untouched (counted in eval mode)
    for key, value in snapshot(net).items():
        assert torch.equal(value, stats[key]), key


def test_count_params_and_flops_match_torchvision_resnet18():
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta  # no download: metadata only
    net = torchvision.models.resnet18()
    assert count_params(net) == meta["num_params"]
    # torchvision lists GFLOPS counting one multiply-add as one operation, to 3 decimals.
    assert round(count_flops(net, (1, 3, 224, 224)) / 2 / 1e9, 3) == meta["_ops"]


def test_a_failing_count_leaves_a_training_net_training():
    # The input does not fit the net, so the forward pass raises inside the eval-mode block:
    # the net must come back in training mode, or its batch norm would stop learning statistics.
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).train()
    with pytest.raises(RuntimeError):
        count_flops(net, (2, 5))
    assert all(m.training for m in net.modules())
