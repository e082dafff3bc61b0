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

Synchronized batch norm (for data-parallel training, one process per device): given a process
``group``, ``batch_norm`` all-reduces each replica's per-channel sum, sum of squares and count
before normalizing, so every replica normalizes with the statistics of the *global* batch, and
the backward pass sends the gradient through the same all-reduce.  :func:`convert_sync_batchnorm`
swaps every batch norm of a model for a synchronized :class:`BatchNorm`.  PyTorch's
``nn.SyncBatchNorm`` does the same, but only for GPU tensors; this version also runs on CPUs
(Gloo).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["BatchNorm", "batch_norm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """``dist.all_reduce`` (sum) that autograd can differentiate.

    Every replica's output is the sum over replicas, so the gradient reaching replica ``r``'s
    input is the sum of the gradients of all replicas' outputs: an all-reduce again.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup) -> Tensor:  # type: ignore[override]
        ctx.group = group
        tensor = tensor.clone()  # all_reduce works in place; the input must stay as it was
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return tensor

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def _batch_stats(
    X: Tensor, dims: list[int], group: dist.ProcessGroup | None
) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance of ``X`` over ``dims``, and the number of values.

    Without a group: this batch's own, centred before squaring.  With one: the global batch's,
    from the all-reduced sum, sum of squares and count of every replica (one collective).
    """
    if group is None:
        mean = X.mean(dim=dims)
        var = ((X - mean.reshape((1, -1) + (1,) * (X.dim() - 2))) ** 2).mean(dim=dims)
        return mean, var, X.numel() // X.shape[1]
    # Accumulate in float64 (float32 on Apple's MPS, which has no float64): the variance comes
    # from E[x^2] - mean^2, which in float32 loses digits when |mean| is large against the std.
    acc = torch.float32 if X.device.type == "mps" else torch.float64
    Xa = X.to(acc)
    count = torch.full((1,), X.numel() // X.shape[1], dtype=acc, device=X.device)
    stats = torch.cat([Xa.sum(dim=dims), (Xa * Xa).sum(dim=dims), count])
    total = _AllReduceSum.apply(stats, group)  # the sums over every replica, on every replica
    C, n = X.shape[1], total[-1]
    mean = total[:C] / n
    var = (total[C : 2 * C] / n - mean * mean).clamp(min=0)  # clamp: rounding below zero
    return mean.to(X.dtype), var.to(X.dtype), int(n.item())


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
    group: dist.ProcessGroup | None = None,
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
        group: a ``torch.distributed`` process group (e.g. ``dist.group.WORLD``) to take the
            training statistics over the batches of all its replicas, as if they were one batch;
            every replica must call this with its slice of the batch.  ``None``: this batch only.

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
    mean, var, n = _batch_stats(X, dims, group)  # n: values per channel (in the global batch)
    if n < 2:
        # One value per channel: X - mean is 0 and the variance is undefined (PyTorch raises too).
        raise ValueError(f"expected more than 1 value per channel when training, got {n}")
    X_hat = (X - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
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
    ``group`` (keyword-only) makes it synchronized: see :func:`batch_norm`.
    """

    def __init__(
        self,
        num_features: int,
        num_dims: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        *,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if num_dims not in (2, 4):
            raise ValueError(f"num_dims must be 2 (fully connected) or 4 (conv), got {num_dims}")
        self.num_features = num_features
        self.num_dims = num_dims
        self.eps = eps
        self.momentum = momentum
        self.group = group
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
            group=self.group,
        )
        if self.training:
            # In place, so the buffers stay the same tensors (state_dict views, device moves).
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return Y

    def __deepcopy__(self, memo: dict[int, object]) -> BatchNorm:
        # A process group cannot be copied (nor pickled): the copy takes part in the same one.
        memo[id(self.group)] = self.group
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return new

    def extra_repr(self) -> str:
        sync = "" if self.group is None else ", synchronized"
        return (
            f"{self.num_features}, num_dims={self.num_dims}, eps={self.eps}, "
            f"momentum={self.momentum}{sync}"
        )


def convert_sync_batchnorm(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replace every batch norm in ``module`` by a synchronized :class:`BatchNorm` over ``group``.

    ``nn.BatchNorm1d`` (on ``(B, C)`` inputs), ``nn.BatchNorm2d`` and :class:`BatchNorm` layers
    are swapped for ``BatchNorm(..., group=group)`` with the same ``eps``, ``momentum``,
    parameters and running statistics (tensors shared, not copied), in place like PyTorch's
    ``nn.SyncBatchNorm.convert_sync_batchnorm``.  Returns ``module`` (or its replacement when
    ``module`` is itself a batch norm).

    Raises:
        ValueError: for a batch norm without learnable γ, β or without running statistics.
    """
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | BatchNorm):
        return _synchronized(module, group)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, group)
        if new is not child:
            setattr(module, name, new)
    return module


def _synchronized(bn: nn.Module, group: dist.ProcessGroup) -> BatchNorm:
    if isinstance(bn, BatchNorm):
        num_dims = bn.num_dims
    else:
        if not (bn.affine and bn.track_running_stats):
            raise ValueError(f"{bn} has no affine parameters or no running statistics")
        num_dims = 4 if isinstance(bn, nn.BatchNorm2d) else 2
    new = BatchNorm(bn.num_features, num_dims, bn.eps, bn.momentum, group=group)
    new.weight, new.bias = bn.weight, bn.bias  # the same Parameters: optimizers keep working
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(new, name, getattr(bn, name))  # a tensor on a registered buffer name stays one
    new.train(bn.training)
    return new
