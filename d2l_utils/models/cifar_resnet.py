"""CIFAR-style residual networks and their plain twins (He et al., 2015, section 4.2).

The ImageNet ResNets in :mod:`d2l_utils.models.resnet` open with a 7x7 stride-2 convolution and a
max pool, which would shrink a 28x28 image to 7x7 before the first block.  For small images the
paper uses a thinner design whose depth is a single knob: a 3x3 stem with 16 channels, three
stages of
``2n`` 3x3 convolutions with 16, 32 and 64 channels (the first convolution of stages 2 and 3 has
stride 2), global average pooling and a linear layer: ``6n + 2`` weighted layers.

The *plain* network is the same stack with the shortcuts removed, so any difference between the
two is due to the shortcuts alone.  With option A shortcuts (subsample and pad with zeros) the
shortcuts have no parameters and both variants have exactly the same parameter count.

As with torchvision's ResNets, one class builds every member (:class:`CifarResNet`, given the
depth) and a factory names each network of the paper: :func:`resnet20` ... :func:`resnet110`
and their plain twins :func:`plain20` ... :func:`plain110`, all with keyword-only options.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from d2l_utils.models.resnet import ShortcutA, conv1x1, conv3x3, he_init_

__all__ = [
    "CifarBlock",
    "CifarResNet",
    "layer_grad_norms",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


def _shortcut(inplanes: int, planes: int, stride: int, option: str, batch_norm: bool) -> nn.Module:
    """The shortcut of a block that changes the shape: option A (zero padding) or B (1x1 conv)."""
    if option == "A":
        return ShortcutA(inplanes, planes, stride)
    if batch_norm:
        return nn.Sequential(conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes))
    return conv1x1(inplanes, planes, stride, bias=True)


class CifarBlock(nn.Module):
    """The paper's CIFAR building block: two 3x3 conv-BN layers, residual or plain.

    ``F(x) = bn2(conv2(relu(bn1(conv1(x)))))``; the block returns ``relu(F(x) + shortcut(x))``
    when ``residual`` (a ResNet block) and ``relu(F(x))`` otherwise (the plain block: the same
    layers and parameters, no shortcut).  A residual block with batch norm has the modules and
    ``state_dict`` of torchvision's ``BasicBlock``, so their weights load into each other.

    Args:
        inplanes: input channels; the input is ``(B, inplanes, H, W)``.
        planes: output channels; the output is ``(B, planes, ceil(H/stride), ceil(W/stride))``.
        stride: stride of the first convolution.
        residual: add the shortcut (``False``: the plain block).
        shortcut: where the shape changes, ``"A"`` (:class:`~d2l_utils.models.resnet.ShortcutA`:
            zero padding, no parameters) or ``"B"`` (1x1 convolution, with batch norm when
            ``batch_norm``); elsewhere the shortcut is the identity.  Unused when plain.
        batch_norm: ``False`` builds the block without batch norm: ``bn1`` and ``bn2`` are
            ``nn.Identity`` (no parameters) and the convolutions get a bias instead.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        *,
        residual: bool = True,
        shortcut: str = "A",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = conv3x3(inplanes, planes, stride, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(planes) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(planes) if batch_norm else nn.Identity()
        self.residual = residual
        self.downsample = None
        if residual and (stride != 1 or inplanes != planes):
            self.downsample = _shortcut(inplanes, planes, stride, shortcut, batch_norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """``F(x)``: conv-BN-ReLU-conv-BN, the whole block when it is plain (before its ReLU)."""
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The path that skips the convolutions: the identity unless the shape changes."""
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        # Both ReLUs may be in place: they act on fresh tensors, never on x itself.
        return self.relu(out + self.shortcut(x) if self.residual else out)


class CifarResNet(nn.Module):
    """The CIFAR network of the paper: ``depth = 6n + 2`` weighted layers, residual or plain.

    Input ``(B, in_channels, H, W)``, output logits ``(B, num_classes)``; any ``H, W >= 4`` work
    because the head averages over whatever spatial size is left (28x28 becomes 28, 14, 7).
    The factories :func:`resnet20`, :func:`plain20`, ... call it with the paper's depths.

    Args:
        depth: number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110 in the paper).
        residual: ``False`` builds the plain network: the same layers without shortcuts.
        num_classes: outputs of the linear head.
        in_channels: 1 for Fashion-MNIST, 3 for CIFAR-10.
        shortcut: ``"A"`` zero-padding shortcuts (no parameters, the paper's CIFAR choice) or
            ``"B"`` 1x1-convolution projections where the shape changes.
        batch_norm: ``False`` removes every batch norm (the convolutions get biases instead).
        zero_init_residual: start every block's last batch-norm scale at 0, so each residual
            block begins as the identity (Goyal et al., 2017).

    Raises:
        ValueError: for a depth that is not ``6n + 2`` or an unknown shortcut option.
    """

    def __init__(
        self,
        depth: int,
        *,
        residual: bool = True,
        num_classes: int = 10,
        in_channels: int = 1,
        shortcut: str = "A",
        batch_norm: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}"
            )
        if zero_init_residual and not (residual and batch_norm):
            # Zeroing the last gamma of a plain block would cut the signal path entirely.
            raise ValueError("zero_init_residual needs residual=True and batch_norm=True")
        self.depth = depth
        self.residual = residual
        self._block_kwargs = {"residual": residual, "shortcut": shortcut, "batch_norm": batch_norm}
        n = (depth - 2) // 6

        self.conv1 = conv3x3(in_channels, 16, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(16) if batch_norm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = 16
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

        he_init_(self)  # as in the paper and torchvision
        if zero_init_residual:
            # The residual branch then outputs 0 and each block starts as relu(shortcut(x)):
            # the identity on the non-negative activations it receives (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, CifarBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [CifarBlock(self.inplanes, planes, stride, **self._block_kwargs)]
        self.inplanes = planes
        layers += [CifarBlock(planes, planes, **self._block_kwargs) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def weighted_layers(self) -> list[tuple[str, nn.Module]]:
        """The ``depth`` convolutions and linear layer on the main path, input to output.

        Option B projections are left out: the paper does not count shortcuts in the depth.
        """
        return [
            (name, m)
            for name, m in self.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and "downsample" not in name
        ]


def resnet20(**kwargs: Any) -> CifarResNet:
    """ResNet-20 of the paper (``n = 3``, 0.27 M parameters for CIFAR-10).

    Keyword-only options, as :class:`CifarResNet`'s: ``num_classes=10``, ``in_channels=1``,
    ``shortcut="A"``, ``batch_norm=True``, ``zero_init_residual=False``.
    """
    return CifarResNet(20, **kwargs)


def resnet32(**kwargs: Any) -> CifarResNet:
    """ResNet-32 of the paper (``n = 5``, 0.46 M parameters for CIFAR-10).

    Keyword-only options, as :class:`CifarResNet`'s: ``num_classes=10``, ``in_channels=1``,
    ``shortcut="A"``, ``batch_norm=True``, ``zero_init_residual=False``.
    """
    return CifarResNet(32, **kwargs)


def resnet44(**kwargs: Any) -> CifarResNet:
    """ResNet-44 of the paper (``n = 7``, 0.66 M parameters for CIFAR-10).

    Keyword-only options, as :class:`CifarResNet`'s: ``num_classes=10``, ``in_channels=1``,
    ``shortcut="A"``, ``batch_norm=True``, ``zero_init_residual=False``.
    """
    return CifarResNet(44, **kwargs)


def resnet56(**kwargs: Any) -> CifarResNet:
    """ResNet-56 of the paper (``n = 9``, 0.85 M parameters for CIFAR-10).

    Keyword-only options, as :class:`CifarResNet`'s: ``num_classes=10``, ``in_channels=1``,
    ``shortcut="A"``, ``batch_norm=True``, ``zero_init_residual=False``.
    """
    return CifarResNet(56, **kwargs)


def resnet110(**kwargs: Any) -> CifarResNet:
    """ResNet-110 of the paper (``n = 18``, 1.7 M parameters for CIFAR-10).

    Keyword-only options, as :class:`CifarResNet`'s: ``num_classes=10``, ``in_channels=1``,
    ``shortcut="A"``, ``batch_norm=True``, ``zero_init_residual=False``.
    """
    return CifarResNet(110, **kwargs)


def plain20(**kwargs: Any) -> CifarResNet:
    """Plain-20: :func:`resnet20` without shortcuts (same layers and parameter count as with
    option A).  Keyword-only options ``num_classes``, ``in_channels``, ``batch_norm``."""
    return CifarResNet(20, residual=False, **kwargs)


def plain32(**kwargs: Any) -> CifarResNet:
    """Plain-32: :func:`resnet32` without shortcuts (same layers and parameter count as with
    option A).  Keyword-only options ``num_classes``, ``in_channels``, ``batch_norm``."""
    return CifarResNet(32, residual=False, **kwargs)


def plain44(**kwargs: Any) -> CifarResNet:
    """Plain-44: :func:`resnet44` without shortcuts (same layers and parameter count as with
    option A).  Keyword-only options ``num_classes``, ``in_channels``, ``batch_norm``."""
    return CifarResNet(44, residual=False, **kwargs)


def plain56(**kwargs: Any) -> CifarResNet:
    """Plain-56: :func:`resnet56` without shortcuts (same layers and parameter count as with
    option A).  Keyword-only options ``num_classes``, ``in_channels``, ``batch_norm``."""
    return CifarResNet(56, residual=False, **kwargs)


def plain110(**kwargs: Any) -> CifarResNet:
    """Plain-110: :func:`resnet110` without shortcuts (same layers and parameter count as with
    option A).  Keyword-only options ``num_classes``, ``in_channels``, ``batch_norm``."""
    return CifarResNet(110, residual=False, **kwargs)


def layer_grad_norms(
    net: CifarResNet, X: torch.Tensor, y: torch.Tensor, loss: nn.Module | None = None
) -> dict[str, float]:
    """L2 norm of the loss gradient for each weighted layer's weight, after one backward pass.

    Args:
        net: the network; its mode (train/eval) is used as it is.
        X: a batch ``(B, C, H, W)``; y: its labels ``(B,)``.
        loss: default ``nn.CrossEntropyLoss()``.

    Returns:
        ``{layer name: ||dL/dW||_2}`` in order from input to output.  The gradients are left in
        ``.grad`` for inspection.
    """
    loss = nn.CrossEntropyLoss() if loss is None else loss
    net.zero_grad(set_to_none=True)
    loss(net(X), y).backward()
    return {name: m.weight.grad.norm().item() for name, m in net.weighted_layers()}
