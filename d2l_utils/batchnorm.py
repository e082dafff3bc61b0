"""Batch normalization (批量规范化) from scratch, in PyTorch's conventions.

``batch_norm`` is the whole algorithm as one function; ``BatchNorm`` wraps it in a module whose
``state_dict`` has the keys and shapes of ``nn.BatchNorm1d``/``nn.BatchNorm2d``, so weights move
between the two with ``load_state_dict`` and the outputs agree to float rounding.

Conventions (the same as ``torch.nn.BatchNorm*``):

* ``momentum`` is the weight of the *new* batch: ``running = (1 - momentum) * running + momentum *
  batch`` (TensorFlow/Keras and the d2l book use the opposite, ``0.9`` meaning "keep 90 %").
* Training normalizes with the biased batch variance (divide by ``n``), but the running variance
  is updated with the unbiased one (divide by ``n - 1``), ``n`` being the values per channel.
* ``self.training`` (``model.train()``/``model.eval()``) picks batch or running statistics;
  ``torch.no_grad()`` does not.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm", "batch_norm"]


def batch_norm(
    X: Tensor,
    gamma: Tensor,
    beta: Tensor,
    moving_mean: Tensor,
    moving_var: Tensor,
    eps: float = 1e-5,
    momentum: float = 0.1,
    *,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize ``X`` per channel, then scale by ``gamma`` and shift by ``beta``.

    Args:
        X: ``(B, C)`` from a fully connected layer or ``(B, C, H, W)`` from a convolution
            (any ``(B, C, *)`` works: the statistics are taken over every axis but 1).
        gamma, beta: ``(C,)`` learnable scale and shift.
        moving_mean, moving_var: ``(C,)`` running statistics; not modified in place.
        eps: added to the variance so a constant channel does not divide by zero.
        momentum: weight of the current batch in the new running statistics.
        training: ``True`` normalizes with this batch's statistics and updates the running
            ones; ``False`` normalizes with the running statistics and returns them unchanged.

    Returns:
        ``(Y, new_moving_mean, new_moving_var)``: ``Y`` has the shape of ``X``; the statistics
        are ``(C,)`` and carry no autograd history.
    """
    if X.dim() < 2:
        raise ValueError(f"expected a (B, C, *) input, got shape {tuple(X.shape)}")
    # Broadcast (C,) vectors against X: (1, C) for (B, C), (1, C, 1, 1) for (B, C, H, W).
    shape = (1, X.shape[1]) + (1,) * (X.dim() - 2)
    if not training:
        # Inference: a fixed affine map, the same for every example whatever the batch.
        X_hat = (X - moving_mean.reshape(shape)) / torch.sqrt(moving_var.reshape(shape) + eps)
        return gamma.reshape(shape) * X_hat + beta.reshape(shape), moving_mean, moving_var

    dims = [0, *range(2, X.dim())]  # every axis except the channel axis
    n = X.numel() // X.shape[1]  # values per channel in this batch
    if n < 2:
        # One value per channel: X - mean is 0 and the variance is undefined (PyTorch raises too).
        raise ValueError(f"expected more than 1 value per channel when training, got {n}")
    mean = X.mean(dim=dims)
    centered = X - mean.reshape(shape)
    var = (centered**2).mean(dim=dims)  # biased: divide by n
    X_hat = centered / torch.sqrt(var.reshape(shape) + eps)
    # The running statistics are estimates, not part of the graph: no gradient flows into them.
    mean, var = mean.detach(), var.detach()
    new_mean = (1.0 - momentum) * moving_mean + momentum * mean
    new_var = (1.0 - momentum) * moving_var + momentum * var * (n / (n - 1))  # unbiased
    return gamma.reshape(shape) * X_hat + beta.reshape(shape), new_mean, new_var


class BatchNorm(nn.Module):
    """Batch normalization for ``(B, C)`` (``num_dims=2``) or ``(B, C, H, W)`` (``num_dims=4``).

    Parameters ``weight`` (γ) and ``bias`` (β) and buffers ``running_mean``, ``running_var``,
    ``num_batches_tracked`` have the names and ``(C,)`` shapes of ``nn.BatchNorm1d/2d``.
    ``momentum=None`` averages all batches seen so far (a cumulative mean), as PyTorch does.
    """

    def __init__(
        self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float | None = 0.1
    ) -> None:
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (fully connected) or 4 (conv), got {num_dims}")
        self.num_features = num_features
        self.num_dims = num_dims
        self.eps = eps
        self.momentum = momentum
        # γ = 1 and β = 0 start BN as a pure standardization; training moves them as it needs.
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        # Buffers, not parameters: saved in the state_dict and moved by .to(device), never trained.
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, X: Tensor) -> Tensor:
        if X.dim() != self.num_dims:
            raise ValueError(f"expected {self.num_dims}D input, got shape {tuple(X.shape)}")
        momentum = self.momentum
        if self.training:
            self.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        Y, mean, var = batch_norm(
            X,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            momentum if momentum is not None else 0.0,
            training=self.training,
        )
        if self.training:
            # In place, so the buffers stay the same tensors (state_dict views, device moves).
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return Y

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )
