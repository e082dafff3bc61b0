"""DenseNet (Huang et al., CVPR 2017): the book's, and torchvision's DenseNet-BC family.

Two spellings live here, as in :mod:`d2l_utils.models.resnet`:

* The book's: :func:`conv_block`, :class:`DenseBlock`, :func:`transition_block` and
  :func:`densenet`, the small DenseNet the book trains on Fashion-MNIST (``state_dict`` keys are
  the book's ``nn.Sequential`` indices).
* torchvision's: :class:`DenseNet` and ``densenet121/161/169/201``, the ImageNet networks of the
  paper.  They are DenseNet-**BC**, not the book's network with other block counts: every layer
  has a *bottleneck* (BN-ReLU-1x1 conv to ``bn_size * growth_rate`` channels before the
  BN-ReLU-3x3 conv) and every transition *compresses* the channels by 0.5.  With
  ``in_channels=3`` each has the ``state_dict`` keys, shapes and parameter count of
  ``torchvision.models.densenetNNN()`` and, for the same weights, the same outputs.

稠密连接 dense connection: every conv block in a dense block reads the channel-wise
*concatenation* of the block's input and the outputs of all blocks before it (ResNet *adds* a
shortcut instead).  Each block contributes ``num_channels`` maps, the 增长率 growth rate, so a
dense block widens its input by ``num_convs * num_channels`` channels; a 过渡层 transition layer
(1x1 conv + 2x2 average pool) then halves channels and resolution.

``memory_efficient=True`` is the checkpointed variant of Pleiss et al., "Memory-Efficient
Implementation of DenseNets" (2017), as torchvision's ``densenet121(memory_efficient=True)``: the
concatenation and the BN-ReLU applied to it are recomputed during the backward pass instead of
being kept, so stored activations grow linearly rather than quadratically with depth.  Unlike
torchvision's (which updates BatchNorm's running statistics twice per training step, once more
during recomputation), the recomputation here leaves the running statistics alone, so plain and
memory-efficient nets stay identical: same outputs, gradients and ``state_dict``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "conv_block",
    "densenet",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "transition_block",
]


def conv_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """BN-ReLU-3x3 conv: ``(B, input_channels, H, W) -> (B, num_channels, H, W)``.

    Normalisation and activation come *before* the conv (the pre-activation order of ResNet v2),
    so each block normalises the concatenated features it reads with its own statistics.
    """
    return nn.Sequential(
        nn.BatchNorm2d(input_channels),
        nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=3, padding=1),
    )


def _concat_then(blk: nn.Module, *features: torch.Tensor) -> torch.Tensor:
    return blk(torch.cat(features, dim=1))


@contextlib.contextmanager
def _undo_buffer_updates(module: nn.Module) -> Iterator[None]:
    """Restore ``module``'s buffers (BN running mean/var, batch count) on exit.

    Used around checkpoint's recomputation: a BatchNorm in training mode would otherwise fold the
    same batch into its running statistics a second time during the backward pass.
    """
    saved = [(buf, buf.clone()) for buf in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _recompute_without_buffer_updates(
    module: nn.Module,
) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    # checkpoint's context_fn: nothing special in the forward pass, undo in the recomputation.
    return contextlib.nullcontext(), _undo_buffer_updates(module)


class DenseBlock(nn.Module):
    """``num_convs`` conv blocks, each fed the concatenation of all feature maps before it.

    ``(B, input_channels, H, W) -> (B, out_channels, H, W)`` with
    ``out_channels = input_channels + num_convs * num_channels``.

    Args:
        num_convs: number of BN-ReLU-conv blocks.
        input_channels: channels of the block's input.
        num_channels: channels each conv block adds (the growth rate).
        memory_efficient: checkpoint (``torch.utils.checkpoint``) each concatenation and its
            BN-ReLU-conv: only the block's own outputs are stored, and the backward pass
            recomputes the concatenation, BN and ReLU (not the conv: recomputation stops once
            the conv's input is back).  Same results, less memory, a little more time.
    """

    def __init__(
        self,
        num_convs: int,
        input_channels: int,
        num_channels: int,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        # Conv block i reads the block's input plus the num_channels maps of each of the i
        # blocks before it.
        self.net = nn.Sequential(
            *(conv_block(input_channels + i * num_channels, num_channels) for i in range(num_convs))
        )
        self.out_channels = input_channels + num_convs * num_channels
        self.memory_efficient = memory_efficient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keep the maps in a list and concatenate when a block needs them: the plain path keeps
        # each concatenation alive for BN's backward (quadratic in depth); the checkpointed path
        # keeps only the list, whose maps are shared by every later block (linear in depth).
        features = [x]
        for blk in self.net:
            if self.memory_efficient and torch.is_grad_enabled():
                y = checkpoint(
                    _concat_then,
                    blk,
                    *features,
                    # Non-reentrant, it stops recomputing as soon as the conv's saved input is
                    # back (PyTorch's default "early stop", also in its older releases).
                    use_reentrant=False,
                    context_fn=partial(_recompute_without_buffer_updates, blk),
                )
            else:
                y = _concat_then(blk, *features)
            features.append(y)
        return torch.cat(features, dim=1)


def transition_block(input_channels: int, num_channels: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv to ``num_channels``, then 2x2 average pool with stride 2.

    ``(B, input_channels, H, W) -> (B, num_channels, H // 2, W // 2)``.  It undoes a dense
    block's widening (the book halves the channels) and halves the resolution.
    """
    return nn.Sequential(
        nn.BatchNorm2d(input_channels),
        nn.ReLU(),
        nn.Conv2d(input_channels, num_channels, kernel_size=1),
        nn.AvgPool2d(kernel_size=2, stride=2),
    )


def densenet(
    *,
    growth_rate: int = 32,
    block_config: Sequence[int] = (4, 4, 4, 4),
    num_init_features: int = 64,
    num_classes: int = 10,
    in_channels: int = 1,
    memory_efficient: bool = False,
) -> nn.Sequential:
    """The book's DenseNet: ``(B, in_channels, H, W) -> (B, num_classes)`` logits.

    ResNet's stem (7x7/2 conv with ``num_init_features`` channels, BN, ReLU, 3x3/2 max pool),
    then dense blocks of ``block_config[i]`` conv blocks (the book's
    ``num_convs_in_dense_blocks``) with a channel-halving transition block between each two,
    then BN, ReLU, global average pooling and a linear layer.  With the defaults: 64 -> 192 ->
    96 -> 224 -> 112 -> 240 -> 120 -> 248 channels.  The options are keyword-only and named as
    torchvision's :class:`DenseNet`; unlike it, no bottleneck layers and convolutions with bias.
    """
    layers: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3),
            nn.BatchNorm2d(num_init_features),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    ]
    num_channels = num_init_features
    for i, num_convs in enumerate(block_config):
        block = DenseBlock(num_convs, num_channels, growth_rate, memory_efficient)
        layers.append(block)
        num_channels = block.out_channels
        if i != len(block_config) - 1:
            layers.append(transition_block(num_channels, num_channels // 2))
            num_channels //= 2
    layers += [
        nn.BatchNorm2d(num_channels),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)),
        nn.Flatten(),
        nn.Linear(num_channels, num_classes),
    ]
    return nn.Sequential(*layers)


# --- DenseNet-BC, laid out as torchvision's ------------------------------------------------------


class DenseLayer(nn.Module):
    """DenseNet-BC's layer: BN-ReLU-1x1 conv (the bottleneck), then BN-ReLU-3x3 conv.

    Reads the concatenation of ``features`` (``num_input_features`` channels in all), narrows it
    to ``bn_size * growth_rate`` channels with the 1x1 convolution, so the 3x3 convolution's cost
    no longer grows with the block's width, and returns ``(B, growth_rate, H, W)``.

    Args:
        num_input_features: channels of the concatenated input.
        growth_rate: channels this layer adds.
        bn_size: width of the bottleneck, in multiples of ``growth_rate`` (4 in the paper).
        drop_rate: dropout probability on the output (0: none).
        memory_efficient: recompute the concatenation and the bottleneck's BN-ReLU in the
            backward pass instead of storing them, as :class:`DenseBlock` does.
    """

    def __init__(
        self,
        num_input_features: int,
        growth_rate: int,
        bn_size: int,
        drop_rate: float = 0.0,
        memory_efficient: bool = False,
    ) -> None:
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, width, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bottleneck(self, *features: torch.Tensor) -> torch.Tensor:
        """Concatenate, BN-ReLU, 1x1 conv: ``(B, bn_size * growth_rate, H, W)``."""
        return self.conv1(self.relu1(self.norm1(torch.cat(features, dim=1))))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            narrow = checkpoint(
                self.bottleneck,
                *features,
                use_reentrant=False,  # early stop by default, as above
                context_fn=partial(_recompute_without_buffer_updates, self),
            )
        else:
            narrow = self.bottleneck(*features)
        out = self.conv2(self.relu2(self.norm2(narrow)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBCBlock(nn.ModuleDict):
    """``num_layers`` dense layers named ``denselayer1``, ..., each fed every map before it:
    ``(B, C, H, W) -> (B, C + num_layers * growth_rate, H, W)``."""

    def __init__(self, num_layers: int, num_input_features: int, **layer_kwargs: Any) -> None:
        super().__init__()
        growth_rate = layer_kwargs["growth_rate"]
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, **layer_kwargs)
            self[f"denselayer{i + 1}"] = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, dim=1)


def _bc_transition(num_input_features: int, num_output_features: int) -> nn.Sequential:
    """BN-ReLU-1x1 conv (no bias) to ``num_output_features``, 2x2 average pool."""
    return nn.Sequential(
        OrderedDict(
            norm=nn.BatchNorm2d(num_input_features),
            relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False),
            pool=nn.AvgPool2d(kernel_size=2, stride=2),
        )
    )


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al., 2017) with torchvision's arguments, modules and initialisation.

    ``features`` (stem ``conv0, norm0, relu0, pool0``; ``denseblock1``, ``transition1``, ...;
    ``norm5``), then ReLU, global average pooling and ``classifier``:
    ``(B, in_channels, H, W) -> (B, num_classes)``.

    Args:
        growth_rate: channels each :class:`DenseLayer` adds (32; 48 for DenseNet-161).
        block_config: layers per dense block, e.g. ``(6, 12, 24, 16)`` for DenseNet-121.
        num_init_features: channels of the stem's 7x7 convolution.
        bn_size: bottleneck width in multiples of ``growth_rate``.
        drop_rate: dropout after every dense layer.
        num_classes: outputs of ``classifier``.
        memory_efficient: checkpoint each layer's bottleneck (see :class:`DenseLayer`).
        in_channels: input channels (keyword-only; torchvision has no such option and uses 3).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        memory_efficient: bool = False,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        stem = nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)
        self.features = nn.Sequential(
            OrderedDict(
                conv0=stem,
                norm0=nn.BatchNorm2d(num_init_features),
                relu0=nn.ReLU(inplace=True),
                pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        layer_kwargs = {
            "growth_rate": growth_rate,
            "bn_size": bn_size,
            "drop_rate": drop_rate,
            "memory_efficient": memory_efficient,
        }
        channels = num_init_features
        for i, num_layers in enumerate(block_config, start=1):
            self.features.add_module(
                f"denseblock{i}", _DenseBCBlock(num_layers, channels, **layer_kwargs)
            )
            channels += num_layers * growth_rate
            if i < len(block_config):
                # Compression 0.5: the "C" of DenseNet-BC.
                self.features.add_module(f"transition{i}", _bc_transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's choice: He (fan-in) normal convolutions, unit/zero batch norms, zero
        # linear bias (the linear weight keeps PyTorch's default).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def densenet121(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-121 (BC): growth 32, blocks ``(6, 12, 24, 16)``, 8.0 M parameters for ImageNet.

    Keyword-only, as torchvision's factory; ``kwargs`` go to :class:`DenseNet` (``bn_size``,
    ``drop_rate``, ``memory_efficient``).  No ``weights``: every network here starts untrained.
    """
    return DenseNet(
        32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels, **kwargs
    )


def densenet161(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-161 (BC): growth 48, blocks ``(6, 12, 36, 24)``, 96 stem channels, 28.7 M
    parameters for ImageNet; options as :func:`densenet121`."""
    return DenseNet(
        48, (6, 12, 36, 24), 96, num_classes=num_classes, in_channels=in_channels, **kwargs
    )


def densenet169(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-169 (BC): growth 32, blocks ``(6, 12, 32, 32)``, 14.1 M parameters for ImageNet;
    options as :func:`densenet121`."""
    return DenseNet(
        32, (6, 12, 32, 32), 64, num_classes=num_classes, in_channels=in_channels, **kwargs
    )


def densenet201(*, num_classes: int = 1000, in_channels: int = 3, **kwargs: Any) -> DenseNet:
    """DenseNet-201 (BC): growth 32, blocks ``(6, 12, 48, 32)``, 20.0 M parameters for ImageNet;
    options as :func:`densenet121`."""
    return DenseNet(
        32, (6, 12, 48, 32), 64, num_classes=num_classes, in_channels=in_channels, **kwargs
    )
