"""LeNet-5 for 28x28 Fashion-MNIST, without and with batch normalization (批量规范化).

``lenet()`` is the book's sigmoid LeNet; ``lenet_bn()`` inserts a batch-norm layer after every
convolution and every hidden fully connected layer, before the sigmoid, as the book does.
"""

from __future__ import annotations

from torch import nn

from d2l_utils.models.batchnorm import BatchNorm

__all__ = ["lenet", "lenet_bn"]


def lenet() -> nn.Sequential:
    """The book's sigmoid LeNet: ``(B, 1, 28, 28)`` images to ``(B, 10)`` logits."""
    return nn.Sequential(
        # padding=2 turns the 28x28 image into the 32x32 input LeNet-5 was designed for.
        nn.Conv2d(1, 6, kernel_size=5, padding=2),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.Sigmoid(),
        nn.Linear(120, 84),
        nn.Sigmoid(),
        nn.Linear(84, 10),
    )


def _norm(num_features: int, num_dims: int, scratch: bool, momentum: float | None) -> nn.Module:
    """A batch-norm layer for ``(B, C)`` (``num_dims=2``) or ``(B, C, H, W)`` (``num_dims=4``)."""
    if scratch:
        return BatchNorm(num_features, num_dims, momentum=momentum)
    layer = nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d
    return layer(num_features, momentum=momentum)


def lenet_bn(
    scratch: bool = False, *, bias: bool = True, momentum: float | None = 0.1
) -> nn.Sequential:
    """The book's LeNet with batch norm: ``(B, 1, 28, 28)`` images to ``(B, 10)`` logits.

    Args:
        scratch: use :class:`d2l_utils.models.batchnorm.BatchNorm` instead of ``nn.BatchNorm1d/2d``.
            Both have the same ``state_dict`` keys and shapes.
        bias: give the layers that feed a batch-norm layer a bias.  The batch mean subtracts
            any constant shift, so such a bias is dead weight that BN's β replaces;
            ``bias=False`` drops it (226 parameters fewer).
        momentum: the batch-norm layers' momentum, in PyTorch's convention (weight of the
            new batch in the running statistics).
    """
    return nn.Sequential(
        # No padding here (unlike lenet()): 28 -> 24 -> 12 -> 8 -> 4, so 16 * 4 * 4 = 256 features.
        nn.Conv2d(1, 6, kernel_size=5, bias=bias),
        _norm(6, 4, scratch, momentum),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5, bias=bias),
        _norm(16, 4, scratch, momentum),
        nn.Sigmoid(),
        nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120, bias=bias),
        _norm(120, 2, scratch, momentum),
        nn.Sigmoid(),
        nn.Linear(120, 84, bias=bias),
        _norm(84, 2, scratch, momentum),
        nn.Sigmoid(),
        # The output layer feeds the loss, not a BN layer, so it keeps its bias.
        nn.Linear(84, 10),
    )
