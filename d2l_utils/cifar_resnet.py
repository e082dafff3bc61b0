"""CIFAR-style residual networks and their plain twins (He et al., 2015, section 4.2).

The ImageNet ResNets in :mod:`d2l_utils.resnet` open with a 7x7 stride-2 convolution and a max
pool, which would shrink a 28x28 image to 7x7 before the first block.  For small images the paper
uses a thinner design whose depth is a single knob: a 3x3 stem with 16 channels, three stages of
``2n`` 3x3 convolutions with 16, 32 and 64 channels (the first convolution of stages 2 and 3 has
stride 2), global average pooling and a linear layer: ``6n + 2`` weighted layers.

The *plain* network is the same stack with the shortcuts removed, so any difference between the
two is due to the shortcuts alone.  With option A shortcuts (subsample and pad with zeros) the
shortcuts have no parameters and both variants have exactly the same parameter count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from d2l_utils.resnet import BasicBlock, ShortcutA, conv1x1, conv3x3, he_init_

__all__ = ["CifarBlock", "CifarResNet", "cifar_resnet", "layer_grad_norms"]


class CifarBlock(BasicBlock):
    """Two 3x3 convolutions, each followed by batch norm, with or without the shortcut.

    ``residual=True`` is the ResNet block ``relu(F(x) + shortcut(x))``
    (:class:`~d2l_utils.resnet.BasicBlock`, as torchvision's, same ``state_dict``);
    ``residual=False`` is the plain block ``relu(F(x))`` with exactly the same convolutions and
    batch norms.

    Args:
        inplanes: input channels; the input is ``(B, inplanes, H, W)``.
        planes: output channels; the output is ``(B, planes, ceil(H/stride), ceil(W/stride))``.
        stride: stride of the first convolution.
        residual: add the shortcut.
        shortcut: where the shape changes, ``"A"`` (:class:`~d2l_utils.resnet.ShortcutA`: zero
            padding, no parameters) or ``"B"`` (1x1 convolution and batch norm); elsewhere the
            shortcut is the identity.  Unused when ``residual=False``.
        batch_norm: ``False`` drops the batch norms and gives the convolutions a bias instead.
    """

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        residual: bool = True,
        shortcut: str = "A",
        batch_norm: bool = True,
    ) -> None:
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        super().__init__(inplanes, planes, stride, bias=not batch_norm)
        if not batch_norm:
            self.bn1, self.bn2 = nn.Identity(), nn.Identity()
        self.residual = residual
        if residual and (stride != 1 or inplanes != planes):
            if shortcut == "A":
                self.downsample = ShortcutA(inplanes, planes, stride)
            elif batch_norm:
                self.downsample = nn.Sequential(
                    conv1x1(inplanes, planes, stride), nn.BatchNorm2d(planes)
                )
            else:
                self.downsample = conv1x1(inplanes, planes, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return self.relu(out + self.shortcut(x) if self.residual else out)


class CifarResNet(nn.Module):
    """The CIFAR network of the paper: ``depth = 6n + 2`` weighted layers.

    Input ``(B, in_channels, H, W)``, output logits ``(B, num_classes)``; any ``H, W >= 4`` work
    because the head averages over whatever spatial size is left (28x28 becomes 28, 14, 7).

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
        self.fc = nn.Linear(64 * CifarBlock.expansion, num_classes)

        he_init_(self)  # as in the paper and torchvision
        if zero_init_residual:
            # The residual branch then outputs 0 and each block starts as relu(shortcut(x)):
            # the identity on the non-negative activations it receives (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, CifarBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [CifarBlock(self.inplanes, planes, stride, **self._block_kwargs)]
        self.inplanes = planes * CifarBlock.expansion
        layers += [
            CifarBlock(self.inplanes, planes, **self._block_kwargs) for _ in range(1, blocks)
        ]
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


def cifar_resnet(depth: int, residual: bool = True, **kwargs: Any) -> CifarResNet:
    """ResNet-``depth`` (``residual=True``) or plain-``depth`` for small images; the other
    keyword arguments are :class:`CifarResNet`'s."""
    return CifarResNet(depth, residual, **kwargs)


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
