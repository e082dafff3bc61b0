"""DenseNet: channel arithmetic, each block against PyTorch's functional ops, and the
memory-efficient (checkpointed) net against the plain one."""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from d2l_utils.models import densenet as densenet_module
from d2l_utils.models.densenet import DenseBlock, DenseNet, conv_block, densenet, transition_block


def _bn_relu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    # Training-mode batch norm by hand: batch statistics, biased variance.
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(var + bn.eps)
    return F.relu(x_hat * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))


def _randomize_bn(net: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters, so a mix-up of layers cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def test_conv_block_is_bn_relu_conv3x3():
    torch.manual_seed(0)
    blk = conv_block(3, 10)
    _randomize_bn(blk)
    x = torch.randn(4, 3, 8, 8)
    bn, conv = blk[0], blk[2]
    expected = F.conv2d(_bn_relu(x, bn), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(blk(x), expected)
    assert conv.kernel_size == (3, 3) and conv.out_channels == 10


def test_dense_block_concatenates_its_input_and_every_output():
    # The book's example: 3 input channels, 2 conv blocks of 10 channels -> 3 + 2 * 10 = 23.
    torch.manual_seed(0)
    blk = DenseBlock(2, 3, 10)
    _randomize_bn(blk)
    x = torch.randn(4, 3, 8, 8)
    y = blk(x)
    assert blk.out_channels == 23
    assert y.shape == (4, 23, 8, 8)
    # Concatenated, not added: the input comes out untouched in the first channels ...
    torch.testing.assert_close(y[:, :3], x, rtol=0, atol=0)
    # ... followed by each conv block's output on everything before it.
    y1 = blk.net[0](x)
    y2 = blk.net[1](torch.cat([x, y1], dim=1))
    torch.testing.assert_close(y, torch.cat([x, y1, y2], dim=1))
    assert [b[2].in_channels for b in blk.net] == [3, 13]


@pytest.mark.parametrize(
    ("num_convs", "input_channels", "num_channels"), [(1, 5, 7), (4, 64, 32), (6, 16, 12)]
)
def test_dense_block_growth_rate_arithmetic(num_convs, input_channels, num_channels):
    blk = DenseBlock(num_convs, input_channels, num_channels)
    expected = input_channels + num_convs * num_channels
    assert blk.out_channels == expected
    assert blk(torch.randn(2, input_channels, 5, 5)).shape == (2, expected, 5, 5)
    # Conv block i reads the input and the i outputs before it.
    assert [b[0].num_features for b in blk.net] == [
        input_channels + i * num_channels for i in range(num_convs)
    ]


def test_transition_block_halves_channels_and_resolution():
    torch.manual_seed(0)
    blk = transition_block(23, 10)
    _randomize_bn(blk)
    x = torch.randn(4, 23, 8, 8)
    conv = blk[2]
    expected = F.avg_pool2d(F.conv2d(_bn_relu(x, blk[0]), conv.weight, conv.bias), 2)
    y = blk(x)
    assert y.shape == (4, 10, 4, 4)
    torch.testing.assert_close(y, expected)


def _expected_channels(growth_rate: int, num_convs: tuple[int, ...]) -> list[int]:
    channels, out = 64, []
    for i, n in enumerate(num_convs):
        channels += n * growth_rate
        out.append(channels)
        if i < len(num_convs) - 1:
            channels //= 2
            out.append(channels)
    return out


def _expected_params(
    growth_rate: int, num_convs: tuple[int, ...], in_channels: int, num_classes: int
) -> int:
    # Stem: 7x7 conv with bias, BN (gamma, beta).
    total = in_channels * 64 * 49 + 64 + 2 * 64
    c = 64
    for i, n in enumerate(num_convs):
        for j in range(n):
            c_in = c + j * growth_rate
            total += 2 * c_in + c_in * growth_rate * 9 + growth_rate  # BN + 3x3 conv with bias
        c += n * growth_rate
        if i < len(num_convs) - 1:
            total += 2 * c + c * (c // 2) + c // 2  # BN + 1x1 conv with bias
            c //= 2
    return total + 2 * c + c * num_classes + num_classes  # final BN + linear


@pytest.mark.parametrize(
    ("growth_rate", "num_convs", "in_channels", "num_classes"),
    [(32, (4, 4, 4, 4), 1, 10), (12, (2, 3, 4), 3, 7)],
)
def test_densenet_shapes_and_parameter_count(growth_rate, num_convs, in_channels, num_classes):
    net = densenet(
        num_classes=num_classes,
        in_channels=in_channels,
        growth_rate=growth_rate,
        block_config=num_convs,
    )
    x = torch.randn(2, in_channels, 32, 32)
    channels = []
    for layer in net:
        x = layer(x)
        # Record after every dense block and every transition block (not after the stem).
        if isinstance(layer, DenseBlock) or (
            isinstance(layer, nn.Sequential) and layer is not net[0]
        ):
            channels.append(x.shape[1])
    assert channels == _expected_channels(growth_rate, num_convs)
    assert x.shape == (2, num_classes)
    assert sum(p.numel() for p in net.parameters()) == _expected_params(
        growth_rate, num_convs, in_channels, num_classes
    )


def test_densenet_resolution_walk():
    # 96 -> stem /4 -> 24, each of the three transitions halves it: 12, 6, 3.
    net = densenet()
    x = torch.randn(1, 1, 96, 96)
    sizes = []
    for layer in net[:8]:
        x = layer(x)
        sizes.append(x.shape[-1])
    assert sizes == [24, 24, 12, 12, 6, 6, 3, 3]
    assert math.prod(x.shape[1:]) == 248 * 3 * 3


def _twins(seed: int = 0, **kwargs) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    plain = densenet(**kwargs)
    _randomize_bn(plain, seed)
    efficient = densenet(**kwargs, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    return plain, efficient


def _train_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    out = net(x)
    F.cross_entropy(out, y).backward()
    return out, x.grad


def _assert_same_state(plain: nn.Module, efficient: nn.Module) -> None:
    for (name, p), (_, q) in zip(
        plain.named_parameters(), efficient.named_parameters(), strict=True
    ):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m, n=name: f"grad of {n}: {m}")
    # Running means/variances and batch counts: exactly one update per forward pass.
    torch.testing.assert_close(efficient.state_dict(), plain.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_memory_efficient_matches_plain_in_training(channels_last):
    plain, efficient = _twins(growth_rate=16, block_config=(3, 3))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 32, 32, generator=gen)
    y = torch.randint(10, (8,), generator=gen)
    if channels_last:
        plain.to(memory_format=torch.channels_last)
        efficient.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # two steps: the second one reads the running stats the first wrote
        plain.zero_grad()
        efficient.zero_grad()
        out_p, gx_p = _train_step(plain, x, y)
        out_e, gx_e = _train_step(efficient, x, y)
        torch.testing.assert_close(out_e, out_p)
        torch.testing.assert_close(gx_e, gx_p)
        _assert_same_state(plain, efficient)
    assert plain[1].net[0][0].num_batches_tracked.item() == 2
    plain.eval()
    efficient.eval()
    torch.testing.assert_close(efficient(x), plain(x))


def test_memory_efficient_matches_plain_in_eval_mode_with_grad():
    plain, efficient = _twins(growth_rate=8, block_config=(2, 2))
    plain.eval()
    efficient.eval()
    x = torch.rand(4, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    out_p, gx_p = _train_step(plain, x, y)
    out_e, gx_e = _train_step(efficient, x, y)
    torch.testing.assert_close(out_e, out_p)
    torch.testing.assert_close(gx_e, gx_p)
    _assert_same_state(plain, efficient)


def _count_calls(net: nn.Module) -> dict[str, int]:
    """Forward calls of the BN, ReLU and conv of every dense-block conv block."""
    calls = {"bn": 0, "relu": 0, "conv": 0}

    def counter(key):
        def hook(*_):
            calls[key] += 1

        return hook

    for m in net.modules():
        if isinstance(m, DenseBlock):
            for blk in m.net:
                for key, layer in zip(calls, blk, strict=True):
                    layer.register_forward_hook(counter(key))
    return calls


def test_memory_efficient_recomputes_bn_and_relu_but_not_the_conv():
    plain, efficient = _twins(growth_rate=8, block_config=(2, 3))
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    calls_p, calls_e = _count_calls(plain), _count_calls(efficient)
    out_p = plain(x)
    out_e = efficient(x)
    assert calls_p == calls_e == {"bn": 5, "relu": 5, "conv": 5}
    F.cross_entropy(out_p, y).backward()
    F.cross_entropy(out_e, y).backward()
    assert calls_p == {"bn": 5, "relu": 5, "conv": 5}
    # The backward pass rebuilt every concatenation's BN and ReLU; the conv only needs its
    # input (and weight) for its gradients, so checkpoint stops before running it again.
    assert calls_e == {"bn": 10, "relu": 10, "conv": 5}
    with torch.no_grad():  # nothing is checkpointed without autograd
        efficient(x)
    assert calls_e == {"bn": 15, "relu": 15, "conv": 10}


def test_without_the_guard_recomputation_updates_running_stats_twice(monkeypatch):
    # What torchvision's memory_efficient=True does: checkpoint's recomputation runs BN in
    # training mode again.  Switching the guard off must make the equality checks above fail.
    monkeypatch.setattr(
        densenet_module,
        "_recompute_without_buffer_updates",
        lambda module: (contextlib.nullcontext(), contextlib.nullcontext()),
    )
    plain, efficient = _twins(growth_rate=8, block_config=(2, 2))
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3])
    _train_step(plain, x, y)
    _train_step(efficient, x, y)
    bn = efficient[1].net[0][0]
    assert bn.num_batches_tracked.item() == 2
    assert plain[1].net[0][0].num_batches_tracked.item() == 1
    with pytest.raises(AssertionError):
        _assert_same_state(plain, efficient)


def test_memory_efficient_net_has_the_plain_layout_and_survives_deepcopy():
    net = densenet(memory_efficient=True)
    twin = copy.deepcopy(net)
    assert isinstance(twin, nn.Sequential)
    assert all(m.memory_efficient for m in twin.modules() if isinstance(m, DenseBlock))
    assert list(net.state_dict()) == list(densenet().state_dict())


def test_densenet_options_are_keyword_only_and_named_as_torchvision():
    with pytest.raises(TypeError):
        densenet(32)  # once meant 32 classes; now every option is named
    net = densenet(num_classes=32, num_init_features=16, block_config=(2, 2), growth_rate=8)
    assert net[0][0].out_channels == 16 and net[-1].out_features == 32
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 32)


# --- DenseNet-BC against torchvision ----------------------------------------------------------


def _shapes(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


@pytest.mark.parametrize("depth", [121, 161, 169, 201])
def test_densenet_bc_family_has_torchvisions_state_dict(depth):
    with torch.device("meta"):
        ours = getattr(densenet_module, f"densenet{depth}")()
        ref = getattr(torchvision.models, f"densenet{depth}")(weights=None)
    assert _shapes(ours) == _shapes(ref)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    # The paper's sizes, to the digit torchvision's documentation prints: 8.0, 28.7, 14.1, 20.0 M.
    assert round(count / 1e6, 1) == {121: 8.0, 161: 28.7, 169: 14.1, 201: 20.0}[depth]


def _randomize_running_stats(net: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("depth", [121])  # the others share every module type; 121 is quickest
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_densenet_bc_computes_torchvisions_outputs(depth, train):
    torch.manual_seed(depth)
    ref = getattr(torchvision.models, f"densenet{depth}")(weights=None)
    _randomize_bn(ref, depth)
    _randomize_running_stats(ref, depth)
    with torch.device("meta"):
        ours = getattr(densenet_module, f"densenet{depth}")()
    ours = ours.to_empty(device="cpu")
    ours.load_state_dict(ref.state_dict())
    ref.train(train)
    ours.train(train)
    x = torch.randn(1, 3, 64, 64)  # 2x2 maps in the last block: its 3x3 convs use every tap
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    # In training mode both folded the batch into the same running statistics.
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())


def test_densenet_bc_initialisation_and_dropout_follow_torchvision():
    kwargs = {"growth_rate": 8, "block_config": (2, 3), "num_init_features": 16, "num_classes": 5}
    torch.manual_seed(0)
    ours = DenseNet(**kwargs, drop_rate=0.5)
    torch.manual_seed(0)
    ref = torchvision.models.DenseNet(**kwargs, drop_rate=0.5)
    # Same modules in the same order and the same init calls: the same random weights.
    torch.testing.assert_close(ours.state_dict(), ref.state_dict(), rtol=0, atol=0)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    out = ours(x)
    torch.manual_seed(1)
    torch.testing.assert_close(out, ref(x))  # the same dropout masks, drawn in the same order
    assert not torch.equal(out, ours(x))  # and dropout does act in training mode


def test_densenet_bc_in_channels_and_num_classes():
    net = densenet_module.densenet121(num_classes=10, in_channels=1)
    assert net.features.conv0.in_channels == 1 and net.classifier.out_features == 10
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(TypeError):
        densenet_module.densenet121(10)


def test_memory_efficient_densenet_bc_matches_plain_in_training():
    kwargs = {"growth_rate": 8, "block_config": (2, 3), "num_init_features": 16, "num_classes": 5}
    torch.manual_seed(0)
    plain = DenseNet(**kwargs)
    _randomize_bn(plain)
    efficient = DenseNet(**kwargs, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    out_p, grad_p = _train_step(plain, x, y)
    out_e, grad_e = _train_step(efficient, x, y)
    torch.testing.assert_close(out_e, out_p)
    torch.testing.assert_close(grad_e, grad_p)
    _assert_same_state(plain, efficient)
