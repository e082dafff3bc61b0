"""The book's training loop as the book runs it: the yardstick for the course's fast loop.

This module re-implements, in what they compute, the *Dive into Deep Learning* helpers
``train_ch6`` and ``evaluate_accuracy_gpu`` and the book's per-image transform
(``Resize``, then ``ToTensor``).  It exists for two readers, and only for them:

* ``tests/test_fastpath.py`` checks :func:`d2l_utils.train_ch6` and
  :func:`d2l_utils.evaluate_accuracy_gpu` against it (the same weights, history and plot points
  for the same seed and data);
* ``benchmarks/`` times it as the textbook path beside the course's path.

What it keeps from the book, because that is what is being compared with:

* xavier-uniform init of every ``nn.Linear`` and ``nn.Conv2d`` weight, plain SGD at ``lr``,
  cross-entropy, ``net.train()`` at the start of every epoch and ``net.eval()`` to evaluate;
* after every batch the summed loss and the number of correct predictions become Python floats
  (the book's ``Accumulator.add``), so the host waits for the device once per batch;
* the metrics reported to the plot after every ``num_batches // 5`` batches and at the end of
  the epoch, as running means over the epoch so far.

It deliberately imports nothing from :mod:`d2l_utils.train`: an oracle that shared the init, the
accuracy count or the accumulator with the code under test could not catch a bug in them.  The
sums are plain Python floats, which is all the book's ``Accumulator`` holds.  Two small
departures, neither of which changes a result: no plot is drawn (a callback gets the points),
and with fewer than 5 batches every batch is a plot point (the book would divide by zero).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torchvision import transforms

__all__ = ["book_evaluate", "book_train_ch6", "book_train_epoch", "book_transform"]


def book_transform(resize: int | tuple[int, int] | None) -> Callable[[Any], torch.Tensor]:
    """The book's per-image transform: ``Resize(resize)`` if asked, then ``ToTensor``.

    Applied to one PIL image (``L`` mode, ``H x W``) it returns a float ``(1, H', W')`` tensor in
    ``[0, 1]``.
    """
    steps: list[Any] = [transforms.ToTensor()]
    if resize is not None:
        steps.insert(0, transforms.Resize(resize))
    return transforms.Compose(steps)


def _xavier(m: nn.Module) -> None:
    # The book tests the exact type, so subclasses of Linear/Conv2d keep their own init.
    if type(m) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight)


def _num_correct(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Correct predictions, read back to the host (logits ``(B, C)``, labels ``(B,)``)."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return float((y_hat.type(y.dtype) == y).type(y.dtype).sum())


def book_evaluate(net: nn.Module, data_iter: Iterable, device: torch.device | None = None) -> float:
    """Accuracy over ``data_iter`` in eval mode, reading the count back after every batch.

    Like the book, it leaves ``net`` in eval mode.  ``device`` defaults to where ``net``'s
    parameters are.
    """
    net.eval()
    if device is None:
        device = next(iter(net.parameters())).device
    correct = count = 0.0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += _num_correct(net(X), y)
            count += y.numel()
    return correct / count


def book_train_epoch(
    net: nn.Module,
    train_iter: Iterable,
    optimizer: torch.optim.Optimizer,
    loss: nn.Module,
    device: torch.device,
    on_batch: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """One epoch of the book's training loop.

    Args:
        on_batch: called as ``on_batch(i, mean loss so far, accuracy so far)`` after batch ``i``.

    Returns:
        ``train_loss``, ``train_acc``, ``images``; and three clocks: ``wall_s`` (the whole loop,
        data included), ``first_batch_s`` (from the start of the loop until the first batch is
        there, e.g. a ``DataLoader`` starting its workers) and ``book_s`` (what the book's
        ``Timer`` measures: from receiving each batch to having its metrics).
    """
    net.train()
    loss_sum = correct = count = 0.0
    book_s = first_batch_s = 0.0
    start = time.perf_counter()
    for i, (X, y) in enumerate(train_iter):
        t = time.perf_counter()
        if i == 0:
            first_batch_s = t - start
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = net(X)
        batch_loss = loss(y_hat, y)
        batch_loss.backward()
        optimizer.step()
        with torch.no_grad():
            # float() waits for the device: the per-batch synchronisation the book pays for.
            loss_sum += float(batch_loss * X.shape[0])
            correct += _num_correct(y_hat, y)
            count += X.shape[0]
        book_s += time.perf_counter() - t
        if on_batch is not None:
            on_batch(i, loss_sum / count, correct / count)
    # No device synchronisation is needed here: the last float() above already waited.
    return {
        "train_loss": loss_sum / count,
        "train_acc": correct / count,
        "images": count,
        "wall_s": time.perf_counter() - start,
        "first_batch_s": first_batch_s,
        "book_s": book_s,
    }


def book_train_ch6(
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable,
    num_epochs: int,
    lr: float,
    device: torch.device,
    *,
    init: bool = True,
    on_batch: Callable[[float, float, float], None] | None = None,
) -> dict[str, list[float]]:
    """The book's ``train_ch6``: xavier init, SGD, cross-entropy, a test evaluation per epoch.

    Args:
        net: a classifier producing logits ``(B, C)``.
        train_iter, test_iter: batches ``(X, y)``, with ``len(train_iter)`` batches per epoch.
        init: apply the book's xavier init (``False`` keeps the current weights).
        on_batch: called as ``on_batch(x, loss, acc)`` at the book's plot points,
            ``x = epoch + (i + 1) / num_batches``.

    Returns:
        Lists with one entry per epoch: ``train_loss``, ``train_acc``, ``test_acc``.
    """
    if init:
        net.apply(_xavier)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    num_batches = len(train_iter)  # type: ignore[arg-type]
    every = max(num_batches // 5, 1)
    history: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "test_acc": []}
    for epoch in range(num_epochs):

        def plot_point(i: int, mean_loss: float, acc: float, epoch: int = epoch) -> None:
            if on_batch is not None and ((i + 1) % every == 0 or i == num_batches - 1):
                on_batch(epoch + (i + 1) / num_batches, mean_loss, acc)

        stats = book_train_epoch(net, train_iter, optimizer, loss, device, plot_point)
        history["train_loss"].append(stats["train_loss"])
        history["train_acc"].append(stats["train_acc"])
        history["test_acc"].append(book_evaluate(net, test_iter, device))
    return history
