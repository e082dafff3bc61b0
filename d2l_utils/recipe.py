"""Notebook 03's modern training recipe, as ``train_ch6`` options, for the notebooks after it.

Notebook 03 builds each piece and explains it; notebook 04 trains DenseNet and ResNet-18 with it.
Nothing here changes the network, only how it is trained::

    net = modern_init_(net)                       # He init, zero-gamma residual blocks
    d2l.train_ch6(net, train_iter, test_iter, num_epochs, max_lr,
                  **modern_recipe(num_epochs * len(train_iter), max_lr, padding=2))

* SGD with Nesterov momentum 0.9, weight decay on the conv and linear weights only;
* a one-cycle learning rate (warm-up to ``max_lr``, cosine decay to almost 0), stepped per batch;
* cross-entropy with label smoothing 0.1;
* random crop (of the zero-padded image) and horizontal flip of every training batch, on the
  training device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from d2l_utils.models.resnet import BasicBlock, Bottleneck, he_init_

__all__ = ["modern_init_", "modern_recipe", "random_crop_flip", "sgd_with_decay"]


def random_crop_flip(X: torch.Tensor, padding: int) -> torch.Tensor:
    """Mirror each image with probability 1/2, then crop it back to ``(H, W)`` from its
    zero-padded copy at a random offset (up to ``padding`` pixels each way).

    ``X``: ``(B, C, H, W)`` on any device; returns the same shape, drawn from torch's generator.
    """
    B, C, H, W = X.shape
    flip = torch.rand(B, 1, 1, 1, device=X.device) < 0.5
    X = torch.where(flip, X.flip(-1), X)
    padded = F.pad(X, (padding,) * 4).permute(0, 2, 3, 1)  # (B, H + 2p, W + 2p, C)
    top = torch.randint(0, 2 * padding + 1, (B, 1, 1), device=X.device)
    left = torch.randint(0, 2 * padding + 1, (B, 1, 1), device=X.device)
    rows = top + torch.arange(H, device=X.device).view(1, H, 1)
    cols = left + torch.arange(W, device=X.device).view(1, 1, W)
    batch = torch.arange(B, device=X.device).view(B, 1, 1)
    # One gather for the whole batch; the result comes out channels-last, as train_ch6 runs.
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def modern_init_(net: nn.Module) -> nn.Module:
    """He init of the convolutions (biases 0, batch norm at unit scale), and the last batch-norm
    scale of every residual block at 0, so each block starts as ``relu(shortcut(x))``.  Nets
    without residual blocks (DenseNet) get the He init only.  Returns ``net``."""
    he_init_(net)
    for m in net.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
        elif isinstance(m, BasicBlock):  # the book's Residual too
            nn.init.zeros_(m.bn2.weight)
    return net


def sgd_with_decay(params: Iterable[nn.Parameter], lr: float,
                   weight_decay: float = 5e-4) -> torch.optim.SGD:  # fmt: skip
    """SGD, Nesterov momentum 0.9; weight decay on the weights of convolutions and linear layers
    (tensors of 2 or more dimensions), none on biases and batch-norm scales and shifts."""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def modern_recipe(total_steps: int, max_lr: float = 0.1, *, weight_decay: float = 5e-4,
                  padding: int = 1, label_smoothing: float = 0.1) -> dict[str, Any]:  # fmt: skip
    """The keyword options of :func:`~d2l_utils.train.train_ch6` for the modern recipe.

    Args:
        total_steps: the one-cycle schedule's length: epochs actually run x batches per epoch.
        max_lr: the schedule's peak (pass it as ``train_ch6``'s ``lr`` too, for its log).
        padding: the largest shift of the random crop, in pixels (notebook 03: 1/16 of the side).

    The net keeps its own init (``init=False``): call :func:`modern_init_` first.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    return {
        "init": False,
        "optimizer": lambda p: sgd_with_decay(p, max_lr, weight_decay),
        "scheduler": lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr, total_steps=total_steps
        ),
        "loss": nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        "augment": lambda X: random_crop_flip(X, padding),
    }
