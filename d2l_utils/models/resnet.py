"""Residual blocks (残差块) and the ResNet family, in the book's and in torchvision's shapes.

Two spellings of the same idea live here:

* The book's: :class:`Residual`, :func:`resnet_block` and :func:`d2l_resnet18`, the ResNet-18 the
  book trains on Fashion-MNIST.  Module names and ``state_dict`` keys are the book's, so its code
  and weights map one to one.
* torchvision's: :class:`BasicBlock`, :class:`Bottleneck`, :class:`ResNet` and ``resnet18`` ...
  ``resnet152``.  With ``in_channels=3, num_classes=1000`` each has exactly the parameters and
  ``state_dict`` of ``torchvision.models.resnetNN(weights=None)`` and, given the same weights,
  the same outputs.

Every block computes ``relu(F(x) + shortcut(x))``.  The shortcut (跳跃连接 skip connection) is the
identity when the block keeps the shape; when it changes the width or halves the size it is a 1x1
convolution (the paper's option B, :func:`conv1x1`) or parameter-free zero padding (option A,
:class:`ShortcutA`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "Residual",
    "ShortcutA",
    "conv1x1",
    "conv3x3",
    "d2l_resnet18",
    "he_init_",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_block",
]


def he_init_(net: nn.Module) -> None:
    """He (fan-out) initialisation of every convolution, unit scale and zero shift for every batch
    norm, zero convolution biases, as torchvision's ResNet; linear layers keep PyTorch's."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, *, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution, padding 1: keeps ``H, W`` at stride 1, gives ``ceil(H/2)`` at stride 2.

    No bias by default: a batch norm follows every convolution and removes it anyway.
    """
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, *, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution: mixes channels only; with ``stride`` it also subsamples."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=bias)


class ShortcutA(nn.Module):
    """Option A shortcut of He et al. (2015): subsample by ``stride``, pad new channels with zeros.

    No parameters, so a network that uses it has exactly the size of its plain twin.  Use it as a
    block's ``downsample``: ``BasicBlock(16, 32, stride=2, downsample=ShortcutA(16, 32, 2))``.

    Args:
        in_channels: channels of the input ``(B, in_channels, H, W)``.
        out_channels: channels of the output ``(B, out_channels, ceil(H/stride), ceil(W/stride))``,
            at least ``in_channels``; the extra ones are zero.
        stride: keep every ``stride``-th row and column (the pixels a 1x1 stride-``stride``
            convolution would read).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A can only add channels, got {in_channels} -> {out_channels}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad reads (before, after) pairs from the last dimension backwards: W, H, then C.
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """torchvision's basic block: two 3x3 conv-BN pairs and a shortcut, ``relu(F(x) + s(x))``.

    ``F(x) = bn2(conv2(relu(bn1(conv1(x)))))``; the shortcut ``s`` is ``downsample`` or, when it is
    ``None``, the identity.  :class:`Residual` is this block under the book's names.

    Args:
        inplanes: input channels; input ``(B, inplanes, H, W)``.
        planes: output channels; output ``(B, planes, ceil(H/stride), ceil(W/stride))``.
        stride: stride of the first 3x3 convolution.
        downsample: maps the input to the output's shape when they differ, e.g.
            ``nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))`` (option B)
            or ``ShortcutA(inplanes, planes, stride)`` (option A).
        bias: give the convolutions a bias (the book's choice; redundant before batch norm).
    """

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def shortcut(self, x: Tensor) -> Tensor:
        """The path that skips the convolutions: the identity unless the shape changes."""
        return x if self.downsample is None else self.downsample(x)

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch ``F(x)``: conv-BN-ReLU-conv-BN."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: Tensor) -> Tensor:
        # Add to the *input* x (projected if needed), then the last ReLU; both ReLUs may be in
        # place because they act on fresh tensors, never on x itself.
        return self.relu(self.branch(x) + self.shortcut(x))


class Residual(BasicBlock):
    """The book's residual block: conv-BN-ReLU-conv-BN, add the shortcut, ReLU.

    The same computation as :class:`BasicBlock`, under the book's names and arguments: the
    projection is ``conv3`` (a 1x1 convolution without batch norm) instead of ``downsample``,
    and the convolutions keep PyTorch's default ``bias=True`` as in the book, so the book's
    weights load unchanged.  Those biases do nothing useful: the batch norm that follows
    subtracts each channel's mean, and a constant bias with it (in training mode exactly).

    Args:
        input_channels: input ``(B, input_channels, H, W)``.
        num_channels: output ``(B, num_channels, ceil(H/strides), ceil(W/strides))``.
        use_1x1conv: project the shortcut with a 1x1 convolution (``conv3``).  Needed whenever
            ``strides != 1`` or ``input_channels != num_channels``; without it the addition fails
            with a size-mismatch ``RuntimeError``.
        strides: stride of ``conv1`` and ``conv3``.
    """

    def __init__(
        self, input_channels: int, num_channels: int, use_1x1conv: bool = False, strides: int = 1
    ) -> None:
        super().__init__(input_channels, num_channels, strides, bias=True)
        self.conv3 = (
            conv1x1(input_channels, num_channels, strides, bias=True) if use_1x1conv else None
        )

    def shortcut(self, x: Tensor) -> Tensor:
        return x if self.conv3 is None else self.conv3(x)


class Bottleneck(nn.Module):
    """torchvision's bottleneck block: 1x1 reduce, 3x3, 1x1 expand by ``expansion = 4``.

    The 3x3 convolution works on ``planes`` channels while the block's input and output have
    ``4 * planes``, which makes deep networks (ResNet-50 and deeper) affordable.  The stride sits
    on the 3x3 convolution (torchvision's "ResNet v1.5"; the paper put it on the first 1x1).

    Args:
        inplanes: input channels; input ``(B, inplanes, H, W)``.
        planes: width of the 3x3 convolution; output ``(B, 4 * planes, ceil(H/s), ceil(W/s))``.
        stride: stride ``s`` of the 3x3 convolution.
        downsample: shortcut for a change of shape, as in :class:`BasicBlock`.
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """The ImageNet ResNet of He et al. (2015), laid out as torchvision's.

    Stem (7x7/2 convolution, BN, ReLU, 3x3/2 max pool), four stages of blocks with 64, 128, 256
    and 512 ``planes`` (stages 2 to 4 halve the size), global average pooling and a linear layer.

    The arguments come in torchvision's order (``ResNet(block, layers, num_classes,
    zero_init_residual)``), so a call written for torchvision builds the same network here;
    torchvision's later options (``groups``, ``width_per_group``, dilation, ``norm_layer``) are
    not implemented and passing them is an error.  ``in_channels``, which torchvision lacks, is
    keyword-only.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: outputs of ``fc``; logits ``(B, num_classes)``.
        zero_init_residual: start the last batch norm's scale (gamma) of every block at 0.
        in_channels: input ``(B, in_channels, H, W)``; 1 for Fashion-MNIST.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        he_init_(self)
        if zero_init_residual:
            # With the last gamma (and beta) at 0 the residual branch outputs exactly 0, so each
            # block starts as relu(shortcut(x)): the identity on the ReLU outputs it receives.
            # The network then begins as a shallow one and the signal and gradient pass every
            # block unchanged (Goyal et al., 2017), which helps large-batch training.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # Option B: project only where the shape changes; identity shortcuts elsewhere.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-18: basic blocks ``[2, 2, 2, 2]``, 11.7 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`ResNet`
    (``zero_init_residual``).  No ``weights``: every network here starts untrained.
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels=in_channels, **kwargs)


def resnet34(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-34: basic blocks ``[3, 4, 6, 3]``, 21.8 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`ResNet`
    (``zero_init_residual``).  No ``weights``: every network here starts untrained.
    """
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels=in_channels, **kwargs)


def resnet50(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-50: bottleneck blocks ``[3, 4, 6, 3]``, 25.6 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`ResNet`
    (``zero_init_residual``).  No ``weights``: every network here starts untrained.
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels=in_channels, **kwargs)


def resnet101(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-101: bottleneck blocks ``[3, 4, 23, 3]``, 44.5 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`ResNet`
    (``zero_init_residual``).  No ``weights``: every network here starts untrained.
    """
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, in_channels=in_channels, **kwargs)


def resnet152(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> ResNet:
    """ResNet-152: bottleneck blocks ``[3, 8, 36, 3]``, 60.2 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`ResNet`
    (``zero_init_residual``).  No ``weights``: every network here starts untrained.
    """
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes, in_channels=in_channels, **kwargs)


def resnet_block(
    input_channels: int, num_channels: int, num_residuals: int, first_block: bool = False
) -> nn.Sequential:
    """A stage of the book's ResNet: ``num_residuals`` :class:`Residual` blocks.

    The first block halves ``H, W`` and projects to ``num_channels`` unless ``first_block`` (the
    stage right after the stem's max pool, which has already shrunk the image).
    """
    blocks = []
    for i in range(num_residuals):
        if i == 0 and not first_block:
            blocks.append(Residual(input_channels, num_channels, use_1x1conv=True, strides=2))
        else:
            blocks.append(Residual(num_channels, num_channels))
    return nn.Sequential(*blocks)


def d2l_resnet18(*, num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """The book's ResNet-18 for Fashion-MNIST, as ``nn.Sequential(b1, ..., b5, pool, flatten, fc)``.

    Input ``(B, in_channels, H, W)`` (the book uses 96x96), output logits ``(B, num_classes)``.
    It differs from :func:`resnet18` only in the book's conventions: convolution biases, a 1x1
    projection without batch norm, and PyTorch's default initialisation.
    """
    b1 = nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    return nn.Sequential(
        b1,
        resnet_block(64, 64, 2, first_block=True),
        resnet_block(64, 128, 2),
        resnet_block(128, 256, 2),
        resnet_block(256, 512, 2),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
