"""Training and evaluation: the book's ``train_ch6`` and the helpers around it.

Read :func:`train_ch6` first: its body is the book's loop (init, optimizer, per-epoch training,
evaluation, plot or print, the closing lines).  What stays the book's: xavier-uniform init of
every ``nn.Linear``/``nn.Conv2d``, plain SGD, cross-entropy, the live plot of train loss / train
acc / test acc, and the closing lines ``loss …, train acc …, test acc …`` and
``… examples/sec on <device>``.

What changes, without changing what is computed:

* the running loss and accuracy stay on the device and are read once per epoch (and at the
  plot's five points per epoch in Jupyter), instead of a device-to-host copy after every batch;
* convolutional nets with convolutions of 32 or more channels run in ``channels_last`` memory
  format (:func:`~d2l_utils.device.prefers_channels_last`);
* mixed precision chosen by the device (:func:`~d2l_utils.device.amp_dtype`);
* it returns a :class:`History`, and outside Jupyter prints one line per epoch.

The bookkeeping that makes a long run trustworthy (bad arguments reported before the first step,
the stop button, divergence, ``checkpoint=`` to save and resume) is :mod:`d2l_utils.robust`,
which wraps the loop and which a first reading can skip.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm  # the plain bar: it is drawn in a terminal only

from d2l_utils.device import (
    amp_dtype,
    autocast,
    device_of,
    eval_mode,
    grad_scaler,
    in_layout,
    in_notebook,
    prefers_channels_last,
    try_gpu,
)
from d2l_utils.plot import Animator
from d2l_utils.robust import DivergenceError, Run

__all__ = [
    "Accumulator",
    "DivergenceError",
    "History",
    "Timer",
    "accuracy",
    "count_correct",
    "eval_mode",
    "evaluate_accuracy_gpu",
    "init_net",
    "init_weights",
    "train_ch6",
    "train_step",
]


def train_ch6(  # noqa: C901, PLR0913 - the book's loop and arguments, then keyword-only options
    net: nn.Module, train_iter: Iterable, test_iter: Iterable, num_epochs: int, lr: float,
    device: torch.device | str | None = None, *,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None, loss: nn.Module | None = None,
    augment: Callable | None = None, init: bool = True, seed: int | None = None,
    profile: Any = None, plot: bool = True, amp: bool | torch.dtype | None = None,
    channels_last: bool | None = None, checkpoint: str | os.PathLike[str] | None = None,
) -> History:  # fmt: skip
    """Train ``net`` the book's way and return what was measured.

    What it does to your objects: ``net`` is trained in place and left on ``device`` (in the
    memory format it came in); a :class:`~d2l_utils.data.BatchLoader` builds its batches on
    ``device`` from then on; ``seed=`` restarts the training loader's shuffle (see below).

    Args:
        net: a classifier producing logits ``(B, C)``.
        train_iter, test_iter: batches ``(X, y)``: ``X`` float ``(B, C, H, W)``, ``y`` int64.
        num_epochs: epochs asked for (the run profile may cap them, and says so).
        lr: learning rate of the default SGD optimizer.
        device: default :func:`~d2l_utils.device.try_gpu`.
        optimizer: an optimizer, or a callable ``params -> optimizer``; default ``SGD(lr=lr)``.
        scheduler: callable ``optimizer -> LR scheduler``, stepped after every batch.
        loss: default ``nn.CrossEntropyLoss()``.
        augment: callable applied to each training batch ``X`` on the device.
        init: apply the book's xavier init (:func:`init_net`); ``False`` keeps the net's own.
        seed: makes the run repeatable on a CPU.  It seeds torch's generator (init, dropout,
            augmentation draw from it), re-draws the layers the init covers, biases too (so the
            start depends on the seed alone, :func:`init_net`), and restarts the training
            loader's shuffle from the seed.  The same call with the same seed gives the same
            history.
        profile: run profile (name or :class:`~d2l_utils.data.Profile`); default
            ``D2L_PROFILE`` or the device's default.
        plot: draw the book's live plot in Jupyter.
        amp: mixed precision, see :func:`~d2l_utils.device.amp_dtype`; training and evaluation
            use the same.
        channels_last: memory format of the run; ``None``: as
            :func:`~d2l_utils.device.prefers_channels_last` decides for ``net``.
        checkpoint: a file path to save every epoch to and resume from
            (:mod:`d2l_utils.robust`).

    Returns:
        A :class:`History` with one entry per completed epoch.

    Raises:
        ValueError: bad arguments, an empty loader or labels the net has no output for, before
            the first step.  :class:`~d2l_utils.robust.DivergenceError`: the loss or the weights
            went NaN/inf or exploded (the net is put back to its last good state).
            ``KeyboardInterrupt``: the stop button, after one line saying how far the run got.
    """
    device = try_gpu() if device is None else torch.device(device)
    history = History(device=str(device))
    # Checks the arguments, caps the epochs to the profile, seeds: d2l_utils.robust.
    run = Run(net, train_iter, test_iter, num_epochs, lr, profile, seed, checkpoint, history)
    if init:
        init_net(net, seed)
    print("training on", device)
    channels_last = prefers_channels_last(net) if channels_last is None else channels_last
    amp = amp_dtype(device, amp)  # bf16, fp16 (with a gradient scaler) or None: fp32
    came_contiguous = all(p.is_contiguous() for p in net.parameters())
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    _move_loader(train_iter, device)
    if optimizer is None:
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    elif not isinstance(optimizer, torch.optim.Optimizer):  # a callable params -> optimizer
        optimizer = optimizer(net.parameters())
    sched = scheduler(optimizer) if scheduler is not None else None
    loss_fn = nn.CrossEntropyLoss() if loss is None else loss
    scaler = grad_scaler(device, amp) if amp == torch.float16 else None
    log = EpochLog(run.num_epochs, plot and in_notebook())
    with run.guard(optimizer, sched, loss_fn, log, scaler):  # stop button, divergence, resume
        for epoch in range(run.first_epoch, run.num_epochs):
            net.train()
            metric = run.metric = Metrics(device)  # loss sum, correct, examples: on the device
            log.start_epoch(epoch, run.num_batches)
            start = time.perf_counter()
            for X, y in train_iter:
                X, y = _to_device(X, y, device, channels_last)
                if augment is not None:
                    X = augment(X)
                l, y_hat = train_step(net, X, y, loss_fn, optimizer, scaler, amp)
                if sched is not None:
                    sched.step()
                metric.add(l, y_hat, y)
                log.step(epoch, metric)
            train_time = time.perf_counter() - start
            test_acc = evaluate_accuracy_gpu(net, test_iter, device, channels_last=channels_last,
                                             amp=amp or False)  # fmt: skip
            run.epoch_done(metric, test_acc, train_time)  # divergence check, history, checkpoint
    if channels_last and came_contiguous:
        net.to(memory_format=torch.contiguous_format)  # give the net back as it came
    print(f"loss {history.train_loss[-1]:.3f}, train acc {history.train_acc[-1]:.3f}, "
          f"test acc {history.test_acc[-1]:.3f}")  # fmt: skip
    print(f"{history.examples_per_sec:.1f} examples/sec on {device}")
    return history


def train_step(net: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
               dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One step of :func:`train_ch6`: forward, loss, backward, update.

    Args:
        dtype: autocast precision (``None``: fp32); ``scaler``: the gradient scaler fp16 needs
            (:func:`~d2l_utils.device.grad_scaler`; ``None``: none, the book's plain step).

    Returns:
        The batch's loss and the logits, both detached.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast(X.device, dtype):
        y_hat = net(X)
        l = loss_fn(y_hat, y)
    if scaler is None:  # the book's step
        l.backward()
        optimizer.step()
    else:  # scaled only in fp16, where small gradients underflow
        scaler.scale(l).backward()
        scaler.step(optimizer)
        scaler.update()
    return l.detach(), y_hat.detach()


def evaluate_accuracy_gpu(net: nn.Module, data_iter: Iterable,
                          device: torch.device | str | None = None, *,
                          channels_last: bool | None = None,
                          amp: bool | torch.dtype | None = None) -> float:  # fmt: skip
    """Accuracy of ``net`` over ``data_iter`` (in eval mode; reads the device once).

    Args:
        device: where to run; default: where ``net``'s parameters are.
        channels_last: memory format of the batches; ``None``: as
            :func:`~d2l_utils.device.prefers_channels_last` decides for ``net``.
        amp: mixed precision, as in :func:`train_ch6`.
    """
    device = device_of(net) if device is None else torch.device(device)
    channels_last = prefers_channels_last(net) if channels_last is None else channels_last
    _move_loader(data_iter, device)
    correct, count = torch.zeros((), dtype=torch.int64, device=device), 0
    with eval_mode(net), torch.no_grad(), autocast(device, amp_dtype(device, amp)):
        for X, y in data_iter:
            X, y = _to_device(X, y, device, channels_last)
            correct += count_correct(net(X), y)
            count += y.numel()
    return correct.item() / max(count, 1)


# --- What one run measures ----------------------------------------------------------------------


@dataclass
class History:
    """What :func:`train_ch6` measured, one entry per completed epoch."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)  # training only, seconds
    examples_per_sec: float = math.nan  # training throughput, as the book computes it
    total_time: float = 0.0  # training plus evaluation, seconds
    device: str = ""
    profile: str = ""
    num_epochs: int = 0  # epochs actually run
    interrupted: bool = False  # stopped by KeyboardInterrupt before the last epoch ended

    def add_epoch(self, train_loss: float, train_acc: float, test_acc: float, t: float) -> None:
        """Record one completed epoch."""
        self.train_loss.append(train_loss)
        self.train_acc.append(train_acc)
        self.test_acc.append(test_acc)
        self.epoch_time.append(t)
        self.num_epochs += 1

    def as_rows(self) -> list[dict[str, float]]:
        """One dict per epoch, for tables."""
        return [
            {"epoch": i + 1, "train_loss": lo, "train_acc": tr, "test_acc": te, "time_s": t}
            for i, (lo, tr, te, t) in enumerate(
                zip(self.train_loss, self.train_acc, self.test_acc, self.epoch_time, strict=True)
            )
        ]


class Metrics:
    """The book's ``Accumulator(3)`` (loss sum, correct predictions, examples) kept on the device,
    plus each step's loss sum, from which :mod:`d2l_utils.robust` finds where a run diverged."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count, self.step_losses, self.step_sizes = 0, [], []  # loss x size, size of each step

    def add(self, l: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor) -> None:
        """One batch: its mean loss ``l``, logits ``y_hat (B, C)`` and labels ``y (B,)``."""
        self.step_losses.append(l.float() * y.numel())
        self.step_sizes.append(y.numel())
        self.loss_sum += self.step_losses[-1]
        self.correct += count_correct(y_hat, y)
        self.count += y.numel()

    def mean(self) -> tuple[float, float]:
        """Mean loss and accuracy so far (one read from the device)."""
        return self.loss_sum.item() / self.count, self.correct.item() / self.count


class EpochLog:
    """What :func:`train_ch6` shows while it trains: in Jupyter the book's live plot (train loss
    and accuracy at five points per epoch, test accuracy at the end of each); elsewhere a line
    per epoch, and a progress bar while an epoch runs when the output is a terminal."""

    LEGEND = ("train loss", "train acc", "test acc")

    def __init__(self, num_epochs: int, live_plot: bool) -> None:
        self.num_epochs, self.progress, self.animator = num_epochs, None, None
        if live_plot:  # matplotlib, in Jupyter only
            # One epoch (the smoke profile) has its points in (0, 1]: [1, 1] would be empty.
            xlim = [1, num_epochs] if num_epochs > 1 else [0, 1]
            self.animator = Animator(xlabel="epoch", xlim=xlim, legend=self.LEGEND)

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        """Epoch ``epoch`` (0-based) begins; a progress bar in a terminal (tqdm's
        ``disable=None``: none when stderr is no terminal), never beside the plot."""
        self.batches, self.done, self.every = num_batches, 0, max(num_batches // 5, 1)
        self.progress = tqdm(total=num_batches, desc=f"epoch {epoch + 1}", leave=False,
                             disable=True if self.animator is not None else None)  # fmt: skip

    def step(self, epoch: int, metric: Metrics) -> None:
        """One batch done: the progress bar, and the book's plot point (one read from the device)
        after every ``num_batches // 5``-th batch (every batch when there are fewer than 5) and
        after the last."""
        self.done += 1
        self.progress.update()
        if self.animator is not None and (self.done % self.every == 0 or self.done == self.batches):
            self.animator.add(epoch + self.done / self.batches, (*metric.mean(), None))

    def end_epoch(self, epoch: int, loss: float, train_acc: float, test_acc: float, t: float):
        """Epoch ``epoch`` (0-based) done: its test accuracy on the plot, or its line."""
        self.progress.close()
        if self.animator is not None:
            self.animator.add(epoch + 1, (None, None, test_acc))
        else:
            print(f"epoch {epoch + 1}/{self.num_epochs}: loss {loss:.3f}, train acc "
                  f"{train_acc:.3f}, test acc {test_acc:.3f} ({t:.1f} s)", flush=True)  # fmt: skip

    def close(self) -> None:
        """Close the progress bar (also when the run stops early; closing twice is harmless)."""
        if self.progress is not None:
            self.progress.close()


# --- The book's small helpers -------------------------------------------------------------------


class Timer:
    """Record several running times."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        """Start the timer."""
        self.tik = time.perf_counter()

    def stop(self) -> float:
        """Stop the timer and record the time in a list."""
        self.times.append(time.perf_counter() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        """The average time."""
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        """The total time."""
        return sum(self.times)

    def cumsum(self) -> list[float]:
        """The accumulated times."""
        out, total = [], 0.0
        for t in self.times:
            total += t
            out.append(total)
        return out


class Accumulator:
    """Sums over ``n`` variables."""

    def __init__(self, n: int) -> None:
        self.data = [0.0] * n

    def add(self, *args: float) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args, strict=True)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx: int) -> float:
        return self.data[idx]


def count_correct(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions as a 0-d tensor on ``y_hat``'s device (no sync)."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return (y_hat.type(y.dtype) == y).sum()


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """Number of correct predictions (the book's name; divide by ``len(y)`` for a rate).

    Args:
        y_hat: logits ``(B, C)`` or predicted labels ``(B,)``.
        y: labels ``(B,)``.
    """
    return float(count_correct(y_hat, y))


def init_weights(m: nn.Module) -> None:
    """The book's init: xavier-uniform weights for exactly ``nn.Linear`` and ``nn.Conv2d``."""
    if type(m) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight)


def init_net(net: nn.Module, seed: int | None = None) -> None:
    """The init :func:`train_ch6` applies: the book's :func:`init_weights` on every layer.

    With ``seed``: torch's generator is seeded and every ``nn.Linear``/``nn.Conv2d`` is first
    re-drawn whole with PyTorch's default init, so that the biases (which the book's init leaves
    alone) depend on the seed too, not on when the net was built.  Layers the model initialised
    itself (a zero batch-norm scale) are kept.
    """
    if seed is not None:
        _redraw(net, seed)
    net.apply(init_weights)


def _redraw(net: nn.Module, seed: int) -> None:
    """Seed torch's generator, then re-draw every ``nn.Linear``/``nn.Conv2d`` whole, with
    PyTorch's default init."""
    torch.manual_seed(seed)
    for m in net.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            m.reset_parameters()


def _to_device(X: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool):
    """The batch ``(X, y)`` on ``device``, ``X`` in the run's memory format."""
    if device.type == "cuda" and X.device.type == "cpu":  # pinned: the copy overlaps compute
        X, y = (t.pin_memory().to(device, non_blocking=True) for t in (X, y))
    return in_layout(X.to(device), channels_last), y.to(device)


def _move_loader(data_iter: Iterable, device: torch.device) -> None:
    """Let a :class:`~d2l_utils.data.BatchLoader` build its batches on ``device``."""
    if callable(getattr(data_iter, "to", None)) and hasattr(data_iter, "dataset"):
        data_iter.to(device)
