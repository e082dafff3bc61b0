"""Counting a model's size and cost: parameters and FLOPs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from d2l_utils.device import device_of, eval_mode

__all__ = ["count_flops", "count_params"]


def count_params(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BN's running statistics are not counted)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs for one input of ``input_shape`` (e.g. ``(1, 1, 96, 96)``), in eval mode.

    Counted by ``torch.utils.flop_counter`` (matrix multiplies and convolutions; one
    multiply-add is 2 FLOPs).  A training step costs about three times the forward pass.
    """
    x = torch.zeros(*input_shape, device=device_of(net))
    # Eval mode: counting must not update batch norm's running statistics.
    with eval_mode(net), torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    return int(counter.get_total_flops())
