"""Training and evaluation: the book's ``train_ch6``, made fast and honest.

Read :func:`train_ch6` first: its body is the book's loop (init, optimizer, per-epoch training,
evaluation, plot or print, the closing lines).  What stays the book's: xavier-uniform init of
every ``nn.Linear``/``nn.Conv2d``, plain SGD, cross-entropy, the live plot of train loss / train
acc / test acc, and the closing lines ``loss …, train acc …, test acc …`` and
``… examples/sec on <device>``.

What changes, without changing what is computed:

* metrics stay on the device and are read once per epoch (and at the plot's five points per
  epoch in Jupyter), instead of forcing a device-to-host copy after every batch;
* convolutional nets with convolutions of 32 or more channels run in ``channels_last`` memory
  format (:func:`~d2l_utils.device.prefers_channels_last`);
* mixed precision chosen by the device (:func:`~d2l_utils.device.amp_dtype`): bf16 on CUDA GPUs
  of compute capability 8.0 or higher, fp16 with a gradient scaler on older ones, fp32 on a CPU
  and on Apple's MPS.  Evaluation runs in the same layout and precision as training;
* it returns a :class:`History`, works with fewer than 5 batches an epoch, and outside Jupyter
  prints one line per epoch instead of drawing an empty figure.

The bookkeeping that makes a long run trustworthy wraps the loop and lives in
:mod:`d2l_utils.training_run`, a part a reader can skip: bad arguments are reported before the
first step; the stop button stops the cell after saying how far the run got; a loss that becomes
NaN/inf or explodes raises :class:`DivergenceError` and puts the last good weights back;
``checkpoint=PATH`` saves every epoch and resumes (:mod:`d2l_utils.checkpoint`); ``seed=`` makes
a run repeatable on a CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from d2l_utils.checkpoint import CheckpointError
from d2l_utils.device import (
    amp_dtype,
    autocast,
    device_of,
    grad_scaler,
    in_layout,
    prefers_channels_last,
    try_gpu,
)
from d2l_utils.plot import Animator, EpochLog, in_notebook
from d2l_utils.profiles import Profile
from d2l_utils.training_run import DivergenceError, History, TrainingRun, count_correct

__all__ = [
    "Accumulator",
    "CheckpointError",
    "DivergenceError",
    "History",
    "Timer",
    "accuracy",
    "autocast_dtype",
    "evaluate_accuracy_gpu",
    "init_weights",
    "train_ch6",
]


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


def autocast_dtype(amp: bool | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype an ``amp=`` option means on ``device`` (``None``: plain fp32).

    ``None``: what the device does best, :func:`~d2l_utils.device.amp_dtype`; ``False``: fp32;
    ``True``: that dtype, or bf16 where the device has no preference (a CPU); a dtype: itself.
    """
    if amp is None:
        return amp_dtype(device)
    if amp is False:
        return None
    if amp is True:
        return amp_dtype(device) or torch.bfloat16
    return None if amp == torch.float32 else amp


def _to_device(
    X: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    # Pinned host memory lets the copy to a CUDA GPU overlap with computation.
    non_blocking = device.type == "cuda" and X.device.type == "cpu"
    if non_blocking:
        X, y = X.pin_memory(), y.pin_memory()
    X = X.to(device, non_blocking=non_blocking)
    y = y.to(device, non_blocking=non_blocking)
    return in_layout(X, channels_last), y


def _move_loader(data_iter: Iterable, device: torch.device) -> None:
    """Let a :class:`~d2l_utils.data.BatchLoader` build its batches on ``device``."""
    mover = getattr(data_iter, "to", None)
    if callable(mover) and hasattr(data_iter, "dataset"):
        mover(device)


def evaluate_accuracy_gpu(
    net: nn.Module,
    data_iter: Iterable,
    device: torch.device | str | None = None,
    *,
    channels_last: bool | None = None,
    amp: bool | torch.dtype | None = None,
) -> float:
    """Accuracy of ``net`` over ``data_iter`` (eval mode; reads the result from the device once).

    Args:
        net: a classifier producing logits ``(B, C)``.
        data_iter: batches ``(X, y)``.
        device: where to run; default: where ``net``'s parameters are.
        channels_last: memory format of the batches; ``None``: as
            :func:`~d2l_utils.device.prefers_channels_last` decides for ``net``.
        amp: mixed precision, as in :func:`train_ch6` (see :func:`autocast_dtype`).
    """
    device = device_of(net) if device is None else torch.device(device)
    channels_last = prefers_channels_last(net) if channels_last is None else channels_last
    dtype = autocast_dtype(amp, device)
    _move_loader(data_iter, device)
    was_training = net.training
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        with torch.no_grad(), autocast(device, dtype):
            for X, y in data_iter:
                X, y = _to_device(X, y, device, channels_last)
                correct += count_correct(net(X), y)
                count += y.numel()
    finally:  # an interrupt during evaluation must not leave the net in eval mode
        net.train(was_training)
    return correct.item() / max(count, 1)


def train_ch6(  # noqa: PLR0913 - the book's six arguments, then keyword-only options
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable,
    num_epochs: int,
    lr: float,
    device: torch.device | str | None = None,
    *,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    loss: nn.Module | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init: bool = True,
    seed: int | None = None,
    profile: str | Profile | None = None,
    plot: bool = True,
    channels_last: bool | None = None,
    amp: bool | torch.dtype | None = None,
    compile: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
) -> History:
    """Train ``net`` the book's way and return what was measured.

    Args:
        net: a classifier producing logits ``(B, C)``.
        train_iter, test_iter: batches ``(X, y)``: ``X`` float ``(B, C, H, W)``, ``y`` int64
            ``(B,)``.
        num_epochs: epochs asked for (the profile may cap them, and says so).
        lr: learning rate of the default SGD optimizer (a positive finite number).
        device: default :func:`try_gpu`.
        optimizer: an optimizer, or a callable ``params -> optimizer``; default ``SGD(lr=lr)``.
        scheduler: callable ``optimizer -> LR scheduler``, stepped after every batch.
        loss: default ``nn.CrossEntropyLoss()``.
        augment: callable applied to each training batch ``X`` on the device.
        init: apply the book's xavier init; ``False`` keeps the model's own initialisation.
        seed: makes the run repeatable on a CPU: seeds torch's RNG (with ``init``, the layers
            the book's init covers are re-drawn whole, biases too) and restarts the training
            loader's shuffle from the seed.  Calling again with the same seed gives the same
            history, even on the same loaders and, for nets without other trained state (batch
            norm), on the same already trained net.
        profile: run profile (name or object); default ``D2L_PROFILE`` or the device's default.
        plot: draw the live plot in Jupyter.
        channels_last: ``None`` = :func:`~d2l_utils.device.prefers_channels_last`.
        amp: mixed precision; ``None`` = :func:`~d2l_utils.device.amp_dtype`: bf16 on CUDA
            capability >= 8.0, fp16 with a gradient scaler on older CUDA GPUs, none on a CPU or
            MPS; ``False`` = fp32; ``True`` = that dtype, or bf16 on a CPU.  Training and
            evaluation use the same choice.
        compile: wrap the model in ``torch.compile`` for training.
        checkpoint: a file path.  After every epoch the net, optimizer, scheduler, history and
            random number generators are saved there (atomically); when the file exists, the
            run resumes after its last completed epoch, and with the same seed on a CPU it ends
            with exactly the weights of an uninterrupted run.  Epochs count against
            ``num_epochs`` after the profile's cap, and a checkpoint belongs to one profile
            (name the file after ``PROFILE.name`` to keep one per profile).

    Returns:
        A :class:`History` with one entry per completed epoch.

    Raises:
        KeyboardInterrupt: the stop button (Ctrl-C) was pressed.  Before it propagates (so the
            cell stops) one line says how far the run got and how to resume; the net keeps its
            current weights, the checkpoint (if any) holds the last completed epoch, and the
            history of the completed epochs is the exception's ``history`` attribute (in Jupyter:
            ``sys.last_value.history``), marked ``interrupted``.
        ValueError: for a bad ``num_epochs``, ``lr`` or ``seed``, an empty loader, or labels
            the net has no output for; all before the first training step.
        DivergenceError: when the running loss becomes NaN/inf, or, for cross-entropy, exceeds
            1000 times its chance level log C, or the weights become non-finite; the net (and
            optimizer) are reset to the end of the last completed epoch (or to the start).
        CheckpointError: for a checkpoint that is corrupt or written by a different run; the
            file is left untouched.
    """
    device = try_gpu() if device is None else torch.device(device)
    # Checks the arguments, caps the epochs to the profile, reads and checks the checkpoint.
    run = TrainingRun(net, train_iter, test_iter, num_epochs, lr, profile, seed, checkpoint)
    if init:
        if seed is not None:
            net.apply(_redraw)  # the biases too, so that the seed alone decides the start
        net.apply(init_weights)
    print("training on", device)
    channels_last = prefers_channels_last(net) if channels_last is None else channels_last
    amp = autocast_dtype(amp, device)  # bf16, fp16 (with a gradient scaler) or None: fp32
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    _move_loader(train_iter, device)  # a BatchLoader builds its batches there (test_iter: below)
    opt = _make_optimizer(optimizer, net, lr)
    sched = scheduler(opt) if scheduler is not None else None
    loss_fn = nn.CrossEntropyLoss() if loss is None else loss
    scaler = grad_scaler(device, amp)
    model = torch.compile(net) if compile else net
    log = EpochLog(run.epochs, _animator(run.epochs, plot))
    points = log.points(run.num_batches)
    timer = Timer()
    # Resumes from the checkpoint; on an interrupt or divergence, finishes the bookkeeping.
    with run.guarded(device, opt, sched, loss_fn, log):
        for epoch in range(run.epochs_done, run.epochs):
            net.train()
            metric = run.start_epoch(epoch)  # loss, correct predictions, examples: on device
            timer.start()
            for i, (X, y) in enumerate(train_iter):
                X, y = _to_device(X, y, device, channels_last)
                if augment is not None:
                    X = augment(X)
                opt.zero_grad(set_to_none=True)
                with autocast(device, amp):
                    y_hat = model(X)
                    l = loss_fn(y_hat, y)
                scaler.scale(l).backward()  # scaled only in fp16, where small gradients underflow
                scaler.step(opt)
                scaler.update()
                if sched is not None:
                    sched.step()
                metric.add(l, y_hat, y)
                log.step()
                if i in points:  # the book's five plot points per epoch (one read each)
                    log.batch(epoch + (i + 1) / run.num_batches, *metric.mean())
            train_l, train_acc = metric.mean()  # NaN, inf or an explosion: DivergenceError
            train_time = timer.stop()
            test_acc = evaluate_accuracy_gpu(
                net, test_iter, device, channels_last=channels_last, amp=amp or False
            )
            run.end_epoch(train_l, train_acc, test_acc, train_time)  # history, log, checkpoint
    history = run.history
    print(
        f"loss {history.train_loss[-1]:.3f}, train acc {history.train_acc[-1]:.3f}, "
        f"test acc {history.test_acc[-1]:.3f}"
    )
    print(f"{history.examples_per_sec:.1f} examples/sec on {device}")
    return history


# --- Small helpers of train_ch6 -----------------------------------------------------------------


def _make_optimizer(
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None,
    net: nn.Module,
    lr: float,
) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.SGD(net.parameters(), lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    return optimizer(net.parameters())


def _animator(num_epochs: int, plot: bool) -> Animator | None:
    """The book's animator, in Jupyter only (elsewhere the epoch log prints lines)."""
    if not (plot and in_notebook()):
        return None
    return Animator(
        xlabel="epoch",
        # One epoch (the smoke profile) has its points in (0, 1]: [1, 1] would be empty.
        xlim=[1, num_epochs] if num_epochs > 1 else [0, 1],
        legend=["train loss", "train acc", "test acc"],
    )


def _redraw(m: nn.Module) -> None:
    """Re-draw a layer the book's init covers (PyTorch's default init: the bias matters).

    With a seed, the bias then depends on the seed alone, not on when the net was built or on
    an earlier run; layers the model initialised itself (a zero batch-norm scale) are kept.
    """
    if type(m) in (nn.Linear, nn.Conv2d):
        m.reset_parameters()
