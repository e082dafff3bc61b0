"""Tests of d2l_utils.models.cifar_resnet: the CIFAR-style plain and residual networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from d2l_utils.models import cifar_resnet as C
from d2l_utils.models.cifar_resnet import CifarBlock, CifarResNet, layer_grad_norms
from d2l_utils.models.resnet import ShortcutA


def _expected_params(depth: int, in_channels: int = 3, num_classes: int = 10) -> int:
    """Parameter count of the paper's option-A network, written out layer by layer."""
    n = (depth - 2) // 6
    conv = lambda cin, cout: cin * cout * 9  # noqa: E731  (3x3, no bias)
    bn = lambda c: 2 * c  # noqa: E731  (gamma and beta)
    total = conv(in_channels, 16) + bn(16)
    for cin, cout in ((16, 16), (16, 32), (32, 64)):
        # The first block of a stage changes the width, the other n - 1 keep it.
        total += conv(cin, cout) + conv(cout, cout) + 2 * bn(cout)
        total += (n - 1) * (2 * conv(cout, cout) + 2 * bn(cout))
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_stage_shapes(residual: bool, in_channels: int, size: int) -> None:
    net = CifarResNet(8, residual=residual, in_channels=in_channels, num_classes=7)
    x = torch.rand(2, in_channels, size, size)
    x = net.relu(net.bn1(net.conv1(x)))
    assert x.shape == (2, 16, size, size)
    x = net.layer1(x)
    assert x.shape == (2, 16, size, size)
    x = net.layer2(x)
    assert x.shape == (2, 32, size // 2, size // 2)
    x = net.layer3(x)
    assert x.shape == (2, 64, size // 4, size // 4)
    assert net(torch.rand(2, in_channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize("depth", [8, 20, 56, 110])
def test_depth_formula(depth: int) -> None:
    net = CifarResNet(depth)
    layers = net.weighted_layers()
    assert len(layers) == depth
    n = (depth - 2) // 6
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [n, n, n]
    # Input to output, readable by name.
    assert layers[0][0] == "conv1"
    assert layers[-2][0] == f"layer3.{n - 1}.conv2"
    assert layers[-1][0] == "fc"
    # Option B projections are not counted in the depth.
    assert len(CifarResNet(depth, shortcut="B").weighted_layers()) == depth


@pytest.mark.parametrize("depth", [0, 2, 7, 18, 21, 22, 20.0, "20"])
def test_bad_depth_raises(depth: object) -> None:
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(depth)  # type: ignore[arg-type]


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(20, shortcut="C")
    with pytest.raises(ValueError, match="zero_init_residual"):
        CifarResNet(20, residual=False, zero_init_residual=True)
    with pytest.raises(ValueError, match="zero_init_residual"):
        CifarResNet(20, batch_norm=False, zero_init_residual=True)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_parameter_counts(depth: int) -> None:
    resnet = CifarResNet(depth, in_channels=3)
    plain = CifarResNet(depth, residual=False, in_channels=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(resnet) == count(plain) == _expected_params(depth)
    # The paper's Table 6 rounds these to 0.27M, 0.46M, 0.66M, 0.85M and 1.7M.
    paper = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}[depth]
    assert round(count(resnet) / 1e6, 1 if depth == 110 else 2) == paper
    # Option B adds a 1x1 projection and its batch norm at each of the two width changes.
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert count(CifarResNet(depth, in_channels=3, shortcut="B")) == count(resnet) + projections


def _randomise_bn(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            nn.init.uniform_(m.running_mean, -0.2, 0.2)
            nn.init.uniform_(m.running_var, 0.5, 2.0)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    ("inplanes", "planes", "stride", "option"),
    [(16, 16, 1, "A"), (16, 32, 2, "A"), (16, 32, 2, "B")],
)
def test_residual_block_matches_torchvision(
    train: bool, inplanes: int, planes: int, stride: int, option: str
) -> None:
    torch.manual_seed(0)
    ours = CifarBlock(inplanes, planes, stride, shortcut=option)
    _randomise_bn(ours)
    downsample = None
    if inplanes != planes:
        downsample = (
            ShortcutA(inplanes, planes, stride)
            if option == "A"
            else nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        )
    theirs = BasicBlock(inplanes, planes, stride, downsample)
    theirs.load_state_dict(ours.state_dict())  # the same names and shapes as torchvision's
    ours.train(train)
    theirs.train(train)
    x = torch.randn(4, inplanes, 9, 9)
    torch.testing.assert_close(ours(x), theirs(x))


def test_plain_block_is_the_residual_block_without_shortcut() -> None:
    torch.manual_seed(0)
    plain = CifarBlock(16, 32, stride=2, residual=False)
    _randomise_bn(plain)
    assert plain.downsample is None
    resnet = CifarBlock(16, 32, stride=2)
    resnet.load_state_dict(plain.state_dict())  # same parameter names and shapes
    plain.eval()
    resnet.eval()
    x = torch.randn(4, 16, 8, 8)
    branch = nn.Sequential(plain.conv1, plain.bn1, nn.ReLU(), plain.conv2, plain.bn2)
    torch.testing.assert_close(plain(x), F.relu(branch(x)))
    shortcut = torch.cat([x[:, :, ::2, ::2], torch.zeros(4, 16, 4, 4)], dim=1)
    torch.testing.assert_close(resnet(x), F.relu(branch(x) + shortcut))


@pytest.mark.parametrize("train", [True, False])
def test_zero_gamma_resnet_is_identity(train: bool) -> None:
    """With every block's last gamma at 0, each block passes its (non-negative) input through."""
    torch.manual_seed(0)
    net = CifarResNet(14, zero_init_residual=True).train(train)
    x = torch.rand(3, 1, 28, 28)
    stem = net.relu(net.bn1(net.conv1(x)))
    torch.testing.assert_close(net.layer1(stem), stem)
    # Two stride-2 stages: every 4th pixel, channels padded 16 -> 32 -> 64 with zeros.
    features = F.pad(stem[:, :, ::4, ::4], (0, 0, 0, 0, 0, 48))
    expected = net.fc(features.mean(dim=(2, 3)))
    torch.testing.assert_close(net(x), expected)
    # Without the zero init the blocks do change their input.
    torch.manual_seed(0)
    other = CifarResNet(14).train(train)
    stem = other.relu(other.bn1(other.conv1(x)))
    assert (other.layer1(stem) - stem).abs().max() > 0.1


def test_he_initialisation() -> None:
    torch.manual_seed(0)
    net = CifarResNet(8, residual=False)
    w = net.layer3[0].conv2.weight  # 64 x 64 x 3 x 3: 36,864 samples
    fan_out = 64 * 9
    torch.testing.assert_close(w.std().item(), (2 / fan_out) ** 0.5, rtol=0.03, atol=0.0)
    assert abs(w.mean().item()) < 0.003
    assert all((m.weight == 1).all() for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_without_batch_norm() -> None:
    net = CifarResNet(14, batch_norm=False, shortcut="B")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is not None for m in convs)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_layer_grad_norms_match_autograd() -> None:
    torch.manual_seed(0)
    net = CifarResNet(8, residual=False)
    x, y = torch.rand(4, 1, 16, 16), torch.randint(0, 10, (4,))
    norms = layer_grad_norms(net, x, y)
    assert list(norms) == [name for name, _ in net.weighted_layers()]
    weights = [m.weight for _, m in net.weighted_layers()]
    grads = torch.autograd.grad(F.cross_entropy(net(x), y), weights)
    expected = torch.stack([g.norm() for g in grads])
    torch.testing.assert_close(torch.tensor(list(norms.values())), expected)
    # A second call starts from fresh gradients instead of accumulating.
    torch.testing.assert_close(list(layer_grad_norms(net, x, y).values()), list(norms.values()))


DEPTHS = [20, 32, 44, 56, 110]


@pytest.mark.parametrize("depth", DEPTHS)
def test_factories_build_the_papers_networks(depth: int) -> None:
    resnet, plain = getattr(C, f"resnet{depth}"), getattr(C, f"plain{depth}")
    with torch.device("meta"):
        net = resnet(in_channels=3)
        assert isinstance(net, CifarResNet) and net.depth == depth and net.residual
        assert not plain().residual and plain().depth == depth
        # The options are CifarResNet's, keyword-only as in torchvision's factories.
        b = resnet(num_classes=7, in_channels=3, shortcut="B", zero_init_residual=True)
        assert b.fc.out_features == 7 and b.conv1.in_channels == 3
        assert isinstance(b.layer2[0].downsample, nn.Sequential)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain(batch_norm=False).modules())
        with pytest.raises(TypeError):
            resnet(10)
        with pytest.raises(TypeError):
            plain(residual=True)
        with pytest.raises(TypeError):
            CifarResNet(depth, False)  # residual is keyword-only
    # The paper's Table 6 sizes (CIFAR-10, option A): 0.27, 0.46, 0.66, 0.85 and 1.7 M.
    assert _params(net) == _expected_params(depth)
    # Each size as printed, to its last digit: (value, half a unit of that digit).
    paper = {20: (0.27, 0.005), 32: (0.46, 0.005), 44: (0.66, 0.005), 56: (0.85, 0.005)}
    value, half_unit = paper.get(depth, (1.7, 0.05))
    assert abs(_params(net) / 1e6 - value) <= half_unit


def _params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_blocks_are_not_disguised_torchvision_blocks() -> None:
    # A plain block is no BasicBlock; without batch norm the block says so in its modules.
    assert not issubclass(CifarBlock, BasicBlock)
    plain = CifarBlock(16, 32, 2, residual=False, batch_norm=False)
    assert isinstance(plain.bn1, nn.Identity) and plain.downsample is None
    assert list(plain.state_dict()) == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"]
    residual_b = CifarBlock(16, 32, 2, shortcut="B")
    assert list(residual_b.state_dict()) == list(
        BasicBlock(16, 32, 2, residual_b.downsample).state_dict()
    )
