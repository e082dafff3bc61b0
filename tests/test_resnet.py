"""d2l_utils.models.resnet against torchvision's ResNets and blocks, and the residual block's
promises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.testing import assert_close
from torchvision.models import resnet as tv

from d2l_utils.measure import count_params
from d2l_utils.models import resnet as R


def _randomize_bn(net: nn.Module, gen: torch.Generator) -> None:
    """Random gamma, beta and running statistics, so eval mode is not the identity map."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _shapes(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in net.state_dict().items()]


# --- the torchvision family ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_family_matches_torchvision(depth):
    torch.manual_seed(depth)
    ours = getattr(R, f"resnet{depth}")().eval()
    # torchvision's twin is built on the meta device (no time spent on its random init) and then
    # receives our weights; its structure and forward pass are torchvision's own.
    with torch.device("meta"):
        ref = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    ref = ref.to_empty(device="cpu").eval()
    assert count_params(ours) == count_params(ref)
    assert _shapes(ours) == _shapes(ref)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(x), ref(x))


def test_in_channels_and_num_classes():
    net = R.resnet18(num_classes=10, in_channels=1)
    assert net.conv1.weight.shape == (64, 1, 7, 7)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        assert R.resnet50(num_classes=7).fc.weight.shape == (7, 2048)


@pytest.mark.parametrize("block", [tv.BasicBlock, tv.Bottleneck], ids=["basic", "bottleneck"])
def test_zero_init_residual_zeroes_the_same_gammas_as_torchvision(block):
    ours = R.ResNet(getattr(R, block.__name__), [1, 2, 1, 1], zero_init_residual=True)
    ref = tv.ResNet(block, [1, 2, 1, 1], zero_init_residual=True)

    def zeroed(net):
        return {k for k, v in net.state_dict().items() if k.endswith("weight") and not v.any()}

    assert zeroed(ours) == zeroed(ref)
    assert len(zeroed(ours)) == 5  # one per block


def test_init_follows_torchvision():
    # Kaiming normal, fan_out: std = sqrt(2 / (out_channels * k * k)); checked on a big layer.
    torch.manual_seed(0)
    w = R.resnet18().layer4[1].conv2.weight
    assert_close(w.std().item(), (2 / (512 * 9)) ** 0.5, rtol=0.01, atol=0)
    assert abs(w.mean().item()) < 1e-4


# --- blocks against torchvision's blocks ---------------------------------------------------------


def _downsample(inplanes: int, outplanes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(R.conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "name, inplanes, planes, stride",
    [("BasicBlock", 8, 8, 1), ("BasicBlock", 8, 16, 2), ("Bottleneck", 16, 4, 1),
     ("Bottleneck", 16, 8, 2)],
)  # fmt: skip
def test_blocks_match_torchvision(name, inplanes, planes, stride, train):
    gen = torch.Generator().manual_seed(0)
    cls, ref_cls = getattr(R, name), getattr(tv, name)
    out = planes * cls.expansion
    down = _downsample(inplanes, out, stride) if (stride, inplanes) != (1, out) else None
    ours = cls(inplanes, planes, stride, down)
    _randomize_bn(ours, gen)
    ref_down = _downsample(inplanes, out, stride) if down is not None else None
    ref = ref_cls(inplanes, planes, stride, ref_down)
    assert _shapes(ours) == _shapes(ref)
    ref.load_state_dict(ours.state_dict())
    ours.train(train), ref.train(train)

    x = torch.randn(4, inplanes, 7, 7, generator=gen)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    assert y1.shape == (4, out, (7 + stride - 1) // stride, (7 + stride - 1) // stride)
    assert_close(y1, y2)
    y1.pow(2).sum().backward(), y2.pow(2).sum().backward()
    assert_close(x1.grad, x2.grad)
    assert_close(ours.conv1.weight.grad, ref.conv1.weight.grad)


@pytest.mark.parametrize("use_1x1conv, strides, out", [(False, 1, 6), (True, 1, 9), (True, 2, 9)])
def test_residual_is_torchvision_basic_block_plus_redundant_biases(use_1x1conv, strides, out):
    # In training mode batch norm subtracts each channel's mean, so the book's convolution biases
    # cancel: the book's block with random biases computes torchvision's BasicBlock exactly.
    gen = torch.Generator().manual_seed(1)
    book = R.Residual(6, out, use_1x1conv=use_1x1conv, strides=strides)
    with torch.no_grad():
        book.conv1.bias.copy_(torch.randn(out, generator=gen))
        book.conv2.bias.copy_(torch.randn(out, generator=gen))
    # The book's projection is a bare 1x1 convolution (with bias, without batch norm); it goes
    # in torchvision's ``downsample`` slot under that name.
    down = nn.Conv2d(6, out, 1, stride=strides) if use_1x1conv else None
    ref = tv.BasicBlock(6, out, strides, down)
    state = {k.replace("conv3", "downsample"): v for k, v in book.state_dict().items()}
    result = ref.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == ["conv1.bias", "conv2.bias"]
    x = torch.randn(5, 6, 8, 8, generator=gen)
    assert_close(book(x), ref(x))


def test_residual_has_the_books_state_dict():
    keys = set(R.Residual(3, 6, use_1x1conv=True, strides=2).state_dict())
    bn = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
    expected = {f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    expected |= {f"bn{i}.{p}" for i in (1, 2) for p in bn}
    assert keys == expected
    assert R.Residual(3, 3).conv3 is None


# --- shapes ---------------------------------------------------------------------------------------


def test_residual_shapes():
    x = torch.randn(4, 3, 6, 6)
    assert R.Residual(3, 3)(x).shape == (4, 3, 6, 6)
    assert R.Residual(3, 6, use_1x1conv=True, strides=2)(x).shape == (4, 6, 3, 3)
    assert R.Residual(3, 6, use_1x1conv=True, strides=2)(torch.randn(4, 3, 7, 7)).shape == (
        4,
        6,
        4,
        4,
    )
    # Without the projection the shortcut cannot be added to the branch's output.
    with pytest.raises(RuntimeError, match="must match the size"):
        R.Residual(3, 6)(x)
    with pytest.raises(RuntimeError, match="must match the size"):
        R.Residual(3, 3, strides=2)(x)


def test_bottleneck_shapes():
    x = torch.randn(2, 256, 8, 8)
    assert R.Bottleneck.expansion == 4 and R.BasicBlock.expansion == 1
    assert R.Bottleneck(256, 64)(x).shape == (2, 256, 8, 8)
    block = R.Bottleneck(256, 128, stride=2, downsample=_downsample(256, 512, 2))
    assert block(x).shape == (2, 512, 4, 4)
    # The stride is on the 3x3 convolution (v1.5), not on the first 1x1.
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    with pytest.raises(RuntimeError, match="must match the size"):
        R.Bottleneck(64, 64)(torch.randn(2, 64, 8, 8))


def test_d2l_resnet18_shapes_follow_torchvision_resnet18():
    book, ref = R.d2l_resnet18().eval(), R.resnet18(num_classes=10, in_channels=1).eval()
    x = torch.randn(2, 1, 64, 64)
    ref_stages = [nn.Sequential(ref.conv1, ref.bn1, ref.relu, ref.maxpool)]
    ref_stages += [ref.layer1, ref.layer2, ref.layer3, ref.layer4]
    y, z = x, x
    with torch.no_grad():
        for b, r in zip(book[:5], ref_stages, strict=True):
            y, z = b(y), r(z)
            assert y.shape == z.shape
        assert book(x).shape == ref(x).shape == (2, 10)
    assert len(book) == 8 and isinstance(book[7], nn.Linear)
    # The book's extras over torchvision's layout: the convolution biases, minus the batch
    # norms torchvision puts after its three projections.
    biases = sum(m.bias.numel() for m in book.modules() if isinstance(m, nn.Conv2d))
    projection_bn = sum(2 * c for c in (128, 256, 512))
    assert count_params(book) == count_params(ref) + biases - projection_bn


# --- identity at zero-gamma init, gradient flow through the shortcut ---------------------------


def _zero_last_gamma(block: nn.Module) -> None:
    last_bn = block.bn3 if isinstance(block, R.Bottleneck) else block.bn2
    nn.init.zeros_(last_bn.weight)


def _blocks():
    return [
        R.Residual(6, 6),
        R.BasicBlock(6, 6),
        R.Bottleneck(24, 6),
    ]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("idx", [0, 1, 2], ids=["Residual", "BasicBlock", "Bottleneck"])
def test_zero_gamma_block_is_exact_identity(idx, train):
    gen = torch.Generator().manual_seed(2)
    block = _blocks()[idx].train(train)
    _zero_last_gamma(block)
    # A block's input is the previous block's ReLU output, so it is non-negative.
    x = torch.relu(torch.randn(3, block.conv1.in_channels, 5, 5, generator=gen))
    assert torch.equal(block(x), x)
    # Default init (gamma = 1) is not the identity: the check can fail.
    assert not torch.equal(_blocks()[idx].train(train)(x), x)


def test_zero_init_residual_network_blocks_pass_their_shortcut():
    torch.manual_seed(0)
    net = R.resnet18(num_classes=10, in_channels=1, zero_init_residual=True)
    x = torch.relu(torch.randn(2, 64, 8, 8))
    for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in stage:
            y = block(x)
            assert torch.equal(y, torch.relu(block.shortcut(x)))
            x = y
    assert x.shape == (2, 512, 1, 1)


def test_gradient_passes_a_deep_zero_gamma_stack_unchanged():
    torch.manual_seed(0)
    residual = nn.Sequential(*[R.BasicBlock(4, 4) for _ in range(12)])
    for block in residual:
        _zero_last_gamma(block)
    x = torch.relu(torch.randn(2, 4, 5, 5)).requires_grad_()
    residual(x).sum().backward()
    assert torch.equal(x.grad, (x > 0).float())
    # Without the shortcut the same zeroed branch passes nothing at all.
    x.grad = None
    plain = residual[0]
    plain.bn2(plain.conv2(plain.relu(plain.bn1(plain.conv1(x))))).sum().backward()
    assert not x.grad.any()


@pytest.mark.parametrize("block", [R.Residual(4, 4), R.BasicBlock(4, 4), R.Bottleneck(16, 4)])
def test_shortcut_adds_identity_to_the_jacobian(block):
    # y = relu(F(x) + x), so dL/dx = J_F^T (m * g) + m * g with m = 1[F(x) + x > 0], g = dL/dy:
    # the shortcut adds the gradient itself, however small J_F is.
    gen = torch.Generator().manual_seed(3)
    _randomize_bn(block, gen)
    block.eval()
    x = torch.randn(2, block.conv1.in_channels, 5, 5, generator=gen, requires_grad=True)
    g = torch.randn(x.shape, generator=gen)
    y = block(x)
    (grad_block,) = torch.autograd.grad(y, x, g)

    def branch(t):
        if isinstance(block, R.Bottleneck):
            t = block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(t))))))
            return block.bn3(block.conv3(t))
        return block.bn2(block.conv2(block.relu(block.bn1(block.conv1(t)))))

    mg = (y > 0).float() * g
    (grad_branch,) = torch.autograd.grad(branch(x), x, mg)
    assert_close(grad_block, grad_branch + mg)


def test_projection_gets_gradient():
    block = R.Residual(3, 6, use_1x1conv=True, strides=2)
    block(torch.randn(2, 3, 6, 6)).sum().backward()
    assert block.conv3.weight.grad.abs().sum() > 0


# --- option A shortcut ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_shortcut_a_is_a_fixed_1x1_convolution(size, stride):
    # Option A equals a 1x1 stride-s convolution whose weight is the identity padded with zero
    # rows: each old channel copied, each new channel zero.
    x = torch.randn(2, 3, size, size)
    weight = torch.eye(8, 3)[:, :, None, None]
    shortcut = R.ShortcutA(3, 8, stride)
    assert_close(shortcut(x), F.conv2d(x, weight, stride=stride), rtol=0, atol=0)
    assert count_params(shortcut) == 0


def test_shortcut_a_in_a_basic_block():
    a = R.BasicBlock(16, 32, stride=2, downsample=R.ShortcutA(16, 32, 2))
    b = R.BasicBlock(16, 32, stride=2, downsample=_downsample(16, 32, 2))
    x = torch.randn(2, 16, 9, 9)
    assert a(x).shape == b(x).shape == (2, 32, 5, 5)
    assert count_params(b) - count_params(a) == 16 * 32 + 2 * 32  # 1x1 conv + its batch norm
    with pytest.raises(ValueError, match="only add channels"):
        R.ShortcutA(32, 16, 2)


# --- torchvision's argument order ----------------------------------------------------------------


def test_positional_arguments_mean_what_they_mean_in_torchvision():
    # ResNet(block, layers, num_classes, zero_init_residual): the fourth positional argument is
    # torchvision's zero_init_residual, never the number of input channels.
    torch.manual_seed(0)
    ours = R.ResNet(R.BasicBlock, [2, 2, 2, 2], 10, True)
    with torch.device("meta"):
        ref = tv.ResNet(tv.BasicBlock, [2, 2, 2, 2], 10, True)
    assert _shapes(ours) == _shapes(ref)
    assert ours.conv1.in_channels == 3 and ours.fc.out_features == 10
    assert not ours.layer1[0].bn2.weight.any()  # zero_init_residual took effect


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_factories_take_keyword_arguments_only(depth):
    factory = getattr(R, f"resnet{depth}")
    with torch.device("meta"):
        net = factory(num_classes=10, in_channels=1, zero_init_residual=True)
        assert net.conv1.in_channels == 1 and net.fc.out_features == 10
        with pytest.raises(TypeError):
            factory(10, 1)
    with pytest.raises(TypeError):
        R.ResNet(R.BasicBlock, [2, 2, 2, 2], 10, False, 1)  # in_channels is keyword-only
    with pytest.raises(TypeError):
        R.d2l_resnet18(10, 1)


# --- the bugs of widely copied bottleneck and Keras code, and the check that catches each ---------
#
# Each buggy block below is the package's block with one mistake that circulates in copied code.
# The same check is run on the correct block (it must pass) and on the buggy one (it must fail),
# so each test shows which kind of check a reader needs to catch that bug.


class _CopiedBottleneck(nn.Module):
    """A bottleneck as widely copied code writes it, with switches for its known bugs."""

    def __init__(self, inplanes, planes, *, conv2_reads_input=False, bn3=True):
        super().__init__()
        self.conv1 = R.conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        # Bug 1: conv2 declared with the block's *input* width instead of conv1's output width.
        self.conv2 = R.conv3x3(inplanes if conv2_reads_input else planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = R.conv1x1(planes, 4 * planes)
        # Bug 2: the batch norm after the expanding 1x1 convolution left out.
        self.bn3 = nn.BatchNorm2d(4 * planes) if bn3 else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + x)


class _KerasBasicBlock(R.BasicBlock):
    """The basic block as a widely copied Keras version writes it, with switches for its bugs."""

    def __init__(
        self,
        inplanes,
        planes,
        stride=1,
        downsample=None,
        *,
        relu_branch=False,
        relu_projection=False,
    ):
        super().__init__(inplanes, planes, stride, downsample)
        self.relu_branch, self.relu_projection = relu_branch, relu_projection

    def forward(self, x):
        out = self.branch(x)
        # Bug 3: a ReLU on the branch before the add, so the branch can only add, never subtract.
        out = F.relu(out) if self.relu_branch else out
        s = self.shortcut(x)
        # Bug 4: a ReLU on the projection shortcut, so the shortcut no longer passes x linearly.
        s = F.relu(s) if self.relu_projection and self.downsample is not None else s
        return F.relu(out + s)


def _projection(inplanes, planes, stride):
    return nn.Sequential(R.conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))


def _runs_on_a_256_channel_input(make_block):
    """Check for bug 1: the bottleneck of stages 2-4 reads 4 * planes channels."""
    block = make_block()
    try:
        block(torch.randn(2, 256, 8, 8))
    except RuntimeError:
        return False
    return True


def _has_torchvisions_parameters(make_block):
    """Check for bug 2: keys, shapes and count of torchvision's Bottleneck(256, 64)."""
    block, ref = make_block(), tv.Bottleneck(256, 64)
    return _shapes(block) == _shapes(ref) and count_params(block) == count_params(ref)


def _computes_torchvisions_function(make_block):
    """Check for bugs 3 and 4: torchvision's weights loaded, torchvision's outputs expected."""
    torch.manual_seed(0)
    ref = tv.BasicBlock(16, 32, 2, _projection(16, 32, 2))
    _randomize_bn(ref, torch.Generator().manual_seed(1))
    block = make_block()
    block.load_state_dict(ref.state_dict())
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        return torch.allclose(block.eval()(x), ref.eval()(x), rtol=1.3e-6, atol=1e-5)


def _head_has_num_classes_outputs(make_head):
    """Check for bug 5: the classifier must output (B, num_classes), whatever the block counts."""
    try:
        head = make_head(num_blocks=[3, 4, 6, 3], num_classes=10)
    except TypeError:  # nn.Linear(2048, [3, 4, 6, 3]) refuses a list at construction
        return False
    return head(torch.randn(2, 2048)).shape == (2, 10)


BUGS = {
    # name: (check, correct version, copied-code version)
    "bottleneck conv2 reads the block input (shape error)": (
        _runs_on_a_256_channel_input,
        lambda: _CopiedBottleneck(256, 64),
        lambda: _CopiedBottleneck(256, 64, conv2_reads_input=True),
    ),
    "bottleneck without bn3 (parameter count)": (
        _has_torchvisions_parameters,
        lambda: _CopiedBottleneck(256, 64),
        lambda: _CopiedBottleneck(256, 64, bn3=False),
    ),
    "Keras ReLU on the branch before the add (outputs)": (
        _computes_torchvisions_function,
        lambda: _KerasBasicBlock(16, 32, 2, _projection(16, 32, 2)),
        lambda: _KerasBasicBlock(16, 32, 2, _projection(16, 32, 2), relu_branch=True),
    ),
    "Keras ReLU on the projection shortcut (outputs)": (
        _computes_torchvisions_function,
        lambda: _KerasBasicBlock(16, 32, 2, _projection(16, 32, 2)),
        lambda: _KerasBasicBlock(16, 32, 2, _projection(16, 32, 2), relu_projection=True),
    ),
    "Linear(..., num_blocks) head (construction)": (
        _head_has_num_classes_outputs,
        lambda num_blocks, num_classes: nn.Linear(2048, num_classes),
        lambda num_blocks, num_classes: nn.Linear(2048, num_blocks),
    ),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_copied_code_bug_is_caught(bug):
    check, correct, buggy = BUGS[bug]
    assert check(correct)
    assert not check(buggy)


def test_copied_bottleneck_bugs_hide_in_the_first_stage_block():
    # Bug 1 goes unnoticed where it matters least: in the first block of stage 1 input and
    # conv1 widths are both 64, so conv2's wrong declaration happens to be right.
    buggy = _CopiedBottleneck(64, 64, conv2_reads_input=True)
    assert buggy.conv2.in_channels == 64


def test_book_residual_is_at_the_package_top_level():
    # The book's multi-GPU chapter builds its ResNet-18 from d2l.Residual.
    import d2l_utils as d2l

    assert d2l.Residual is R.Residual
    blk = d2l.Residual(64, 128, use_1x1conv=True, strides=2)
    assert blk(torch.randn(2, 64, 8, 8)).shape == (2, 128, 4, 4)
