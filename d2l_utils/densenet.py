"""DenseNet (Huang et al., CVPR 2017) as the d2l book builds it for Fashion-MNIST.

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
from collections.abc import Iterator, Sequence
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["DenseBlock", "conv_block", "densenet", "transition_block"]


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
                    use_reentrant=False,
                    early_stop=True,  # stop recomputing once the conv's saved input is back
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
    num_classes: int = 10,
    in_channels: int = 1,
    growth_rate: int = 32,
    num_convs_in_dense_blocks: Sequence[int] = (4, 4, 4, 4),
    memory_efficient: bool = False,
) -> nn.Sequential:
    """The book's DenseNet: ``(B, in_channels, H, W) -> (B, num_classes)`` logits.

    ResNet's stem (7x7/2 conv with 64 channels, BN, ReLU, 3x3/2 max pool), then dense blocks
    with a channel-halving transition block between each two, then BN, ReLU, global average
    pooling and a linear layer.  With the defaults: 64 -> 192 -> 96 -> 224 -> 112 -> 240 ->
    120 -> 248 channels.
    """
    layers: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    ]
    num_channels = 64
    for i, num_convs in enumerate(num_convs_in_dense_blocks):
        block = DenseBlock(num_convs, num_channels, growth_rate, memory_efficient)
        layers.append(block)
        num_channels = block.out_channels
        if i != len(num_convs_in_dense_blocks) - 1:
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
