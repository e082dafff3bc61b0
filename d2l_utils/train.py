"""Training and evaluation: the book's ``train_ch6``, made fast and honest.

What stays the book's: xavier-uniform init of every ``nn.Linear``/``nn.Conv2d``, plain SGD,
cross-entropy, the live plot of train loss / train acc / test acc, and the closing lines
``loss …, train acc …, test acc …`` and ``… examples/sec on <device>``.

What changes, without changing what is computed:

* metrics stay on the device and are read once per epoch (and at the plot's five points per
  epoch in Jupyter), instead of forcing a device-to-host copy after every batch;
* convolutional nets with convolutions of 32 or more channels run in ``channels_last`` memory
  format (about 1.4x faster for ResNet-18 on a CPU, faster on GPUs too; LeNet's narrow
  convolutions are faster without it); bf16 autocast on CUDA (never on a CPU, where it is far
  slower);
* batches are built on the training device by :class:`d2l_utils.data.BatchLoader`;
* it returns a :class:`History`, works with fewer than 5 batches an epoch, and outside Jupyter
  prints one line per epoch instead of drawing an empty figure.

What it adds, so a long run can be trusted:

* bad arguments (``num_epochs``, ``lr``, an empty loader, labels the net has no output for) are
  reported before the first step;
* an interrupt (Ctrl-C, Jupyter's stop button) ends the run at the current batch with one line
  and returns the history so far;
* a non-finite loss stops the run with a :class:`DivergenceError` naming the epoch and step, and
  the net goes back to its last finite weights.  The check costs no device sync: the running loss
  sum stays non-finite once a batch loss is, so it is read where the loop reads numbers anyway;
* ``checkpoint=PATH`` saves every epoch atomically and resumes from the file
  (:mod:`d2l_utils.checkpoint`); ``seed=`` makes a run repeatable on a CPU.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_utils.checkpoint import FORMAT as CHECKPOINT_FORMAT
from d2l_utils.checkpoint import VERSION as CHECKPOINT_VERSION
from d2l_utils.checkpoint import (
    CheckpointError,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from d2l_utils.device import device_of, in_layout, prefers_channels_last, try_gpu
from d2l_utils.plot import Animator, in_notebook
from d2l_utils.profiles import Profile, get_profile

__all__ = [
    "Accumulator",
    "CheckpointError",
    "DivergenceError",
    "History",
    "Timer",
    "accuracy",
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


def _correct(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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
    return float(_correct(y_hat, y))


def _prepare_batch(
    X: torch.Tensor, y: torch.Tensor, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    non_blocking = device.type == "cuda" and X.device.type == "cpu"
    if non_blocking:
        X, y = X.pin_memory(), y.pin_memory()
    X = X.to(device, non_blocking=non_blocking)
    y = y.to(device, non_blocking=non_blocking)
    return in_layout(X, channels_last), y


def _autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _move_loader(data_iter: Iterable, device: torch.device) -> None:
    mover = getattr(data_iter, "to", None)
    if callable(mover) and hasattr(data_iter, "dataset"):
        mover(device)


def evaluate_accuracy_gpu(
    net: nn.Module, data_iter: Iterable, device: torch.device | str | None = None
) -> float:
    """Accuracy of ``net`` over ``data_iter`` (eval mode; reads the result from the device once).

    Args:
        net: a classifier producing logits ``(B, C)``.
        data_iter: batches ``(X, y)``.
        device: where to run; default: where ``net``'s parameters are.
    """
    device = device_of(net) if device is None else torch.device(device)
    _move_loader(data_iter, device)
    was_training = net.training
    net.eval()
    channels_last = prefers_channels_last(net)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    try:
        with torch.no_grad(), _autocast(device, device.type == "cuda"):
            for X, y in data_iter:
                X, y = _prepare_batch(X, y, device, channels_last)
                correct += _correct(net(X), y)
                count += y.numel()
    finally:  # an interrupt during evaluation must not leave the net in eval mode
        net.train(was_training)
    return correct.item() / max(count, 1)


def init_weights(m: nn.Module) -> None:
    """The book's init: xavier-uniform weights for exactly ``nn.Linear`` and ``nn.Conv2d``."""
    if type(m) in (nn.Linear, nn.Conv2d):
        nn.init.xavier_uniform_(m.weight)


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

    def as_rows(self) -> list[dict[str, float]]:
        """One dict per epoch, for tables."""
        return [
            {"epoch": i + 1, "train_loss": lo, "train_acc": tr, "test_acc": te, "time_s": t}
            for i, (lo, tr, te, t) in enumerate(
                zip(self.train_loss, self.train_acc, self.test_acc, self.epoch_time, strict=True)
            )
        ]


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss (or weights); the net holds its last finite weights.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the batch (1-based) whose loss was first non-finite, or ``None`` when only the
            weights were found non-finite at the end of the epoch.
        history: the completed epochs.
    """

    def __init__(self, message: str, epoch: int, step: int | None, history: History) -> None:
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


class _EpochLog:
    """Draws the book's live plot in Jupyter; prints one line per epoch elsewhere."""

    def __init__(self, num_epochs: int, plot: bool) -> None:
        self.num_epochs = num_epochs
        self.animator = (
            Animator(
                xlabel="epoch",
                # One epoch (the smoke profile) has its points in (0, 1]: [1, 1] would be empty.
                xlim=[1, num_epochs] if num_epochs > 1 else [0, 1],
                legend=["train loss", "train acc", "test acc"],
            )
            if plot and in_notebook()
            else None
        )
        self.progress = None

    def points(self, num_batches: int) -> set[int]:
        """Batch indices after which the book adds a plot point (five per epoch)."""
        if self.animator is None:
            return set()
        step = max(num_batches // 5, 1)
        return {i for i in range(num_batches) if (i + 1) % step == 0} | {num_batches - 1}

    def replay(self, history: History) -> None:
        """Draw the epochs a resumed run restored from its checkpoint."""
        if self.animator is not None:
            rows = zip(history.train_loss, history.train_acc, history.test_acc, strict=True)
            for e, values in enumerate(rows):
                self.animator.add(e + 1, values)

    def batch(self, x: float, loss: float, acc: float) -> None:
        if self.animator is not None:
            self.animator.add(x, (loss, acc, None))

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        if self.animator is None and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=num_batches, desc=f"epoch {epoch + 1}/{self.num_epochs}", leave=False
            )

    def step(self) -> None:
        if self.progress is not None:
            self.progress.update()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def end_epoch(self, epoch: int, loss: float, train_acc: float, test_acc: float, t: float):
        self.close()
        if self.animator is not None:
            self.animator.add(epoch + 1, (None, None, test_acc))
        else:
            print(
                f"epoch {epoch + 1}/{self.num_epochs}: loss {loss:.3f}, train acc {train_acc:.3f}, "
                f"test acc {test_acc:.3f} ({t:.1f} s)",
                flush=True,
            )


def _check_args(num_epochs: object, lr: object, seed: object) -> None:
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, numbers.Integral):
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ValueError(f"seed must be an int or None, got {seed!r}")


def _num_batches(data_iter: Iterable, name: str) -> int:
    try:
        n = len(data_iter)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must have a length (a DataLoader or a d2l_utils BatchLoader), "
            f"got {type(data_iter).__name__}"
        ) from None
    if n < 1:
        raise ValueError(f"{name} is empty (0 batches); expected a loader with at least one batch")
    return n


def _labels_of(data_iter: Iterable) -> torch.Tensor | None:
    """All labels of a loader's dataset, when it exposes them (no iteration, no RNG draw)."""
    dataset = getattr(data_iter, "dataset", None)
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if isinstance(labels, torch.Tensor) and labels.numel() and not labels.is_floating_point():
            return labels
    return None


def _check_outputs(net: nn.Module, train_iter: Iterable, test_iter: Iterable) -> None:
    """Run the net on two test images and check that every label has an output.

    One tiny forward pass in eval mode, without gradients, where the net's parameters are: it
    changes no weight or statistic and draws from no shuffling generator (the test loader does
    not shuffle), so a wrong last layer or input size fails before anything else happens.
    """
    try:
        X, y = next(iter(test_iter))
    except StopIteration:
        raise ValueError("test_iter yielded no batches; expected at least one") from None
    device = device_of(net)
    X, y = X[:2].to(device), y[:2].to(device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            y_hat = net(X)
    except Exception as exc:
        raise RuntimeError(
            f"before training, net failed on a test batch X of shape {tuple(X.shape)}: {exc}"
        ) from exc
    finally:
        net.train(was_training)
    if y_hat.dim() != 2:
        return  # not (B, num_classes) logits: nothing to compare the labels with
    num_classes = y_hat.shape[1]
    for name, data_iter in (("train_iter", train_iter), ("test_iter", test_iter)):
        labels = _labels_of(data_iter)
        if labels is None:
            labels = y if name == "test_iter" else None
        if labels is None:
            continue
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} has labels {lo}..{hi}, but net outputs {num_classes} class scores, so "
                f"labels must be 0..{num_classes - 1}; give the net's last layer {hi + 1} outputs "
                "or fix the labels"
            )


def _redraw(m: nn.Module) -> None:
    """Re-draw a layer the book's init covers (PyTorch's default init: the bias matters).

    With a seed, the bias then depends on the seed alone, not on when the net was built or on
    an earlier run; layers the model initialised itself (a zero batch-norm scale) are kept.
    """
    if type(m) in (nn.Linear, nn.Conv2d):
        m.reset_parameters()


def _all_finite(net: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one device sync).

    The largest absolute value is NaN or infinite exactly when some value is, never overflows,
    and is one pass over the weights without a temporary tensor (4x faster than ``isfinite``).
    """
    largest = [
        torch.linalg.vector_norm(t, math.inf)
        for t in net.state_dict().values()
        if t.is_floating_point() and t.numel()
    ]
    return bool(torch.isfinite(torch.stack(largest)).all()) if largest else True


def _snapshot(net: nn.Module, opt: torch.optim.Optimizer, sched: object) -> tuple:
    """Copies of the net's, optimizer's and scheduler's state, kept on their devices."""
    return (
        {k: v.detach().clone() for k, v in net.state_dict().items()},
        copy.deepcopy(opt.state_dict()),
        copy.deepcopy(sched.state_dict()) if sched is not None else None,  # type: ignore[attr-defined]
    )


def _restore(snapshot: tuple, net: nn.Module, opt: torch.optim.Optimizer, sched: object) -> None:
    model, optim, schedule = snapshot
    net.load_state_dict(model)
    opt.load_state_dict(optim)
    if sched is not None:
        sched.load_state_dict(schedule)  # type: ignore[attr-defined]


def _check_resumable(
    state: dict[str, Any], path: Path, net: nn.Module, profile: str, epochs: int, lr: float
) -> None:
    """Refuse a checkpoint written by a different run, before anything is changed."""
    where = f"checkpoint {path}"
    fix = "pass the settings it was written with, or delete it (or pass another checkpoint= path)"
    if state["profile"] != profile:
        raise CheckpointError(
            f"{where} was written under profile {state['profile']}, this run uses {profile} "
            "(the profiles train on different data; give each its own file, e.g. "
            f"f'run-{{PROFILE.name}}.pt'); {fix}"
        )
    if state["lr"] != float(lr):
        raise CheckpointError(
            f"{where} was written with lr={state['lr']}, this call has lr={lr}; {fix}"
        )
    if state["epoch"] > epochs:
        raise CheckpointError(
            f"{where} holds {state['epoch']} completed epochs, more than the {epochs} this call "
            f"trains; {fix}"
        )
    if state["model_class"] != type(net).__qualname__:
        raise CheckpointError(
            f"{where} holds a {state['model_class']}, net is a {type(net).__qualname__}; {fix}"
        )
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    if ours != theirs:
        problems = [f"missing {k}" for k in ours if k not in theirs]
        problems += [f"unexpected {k}" for k in theirs if k not in ours]
        problems += [
            f"{k} is {theirs[k]}, net has {ours[k]}"
            for k in ours
            if k in theirs and ours[k] != theirs[k]
        ]
        raise CheckpointError(
            f"{where} does not fit net ({'; '.join(problems[:3])}"
            f"{'; …' if len(problems) > 3 else ''}); {fix}"
        )


def _resume(
    state: dict[str, Any],
    path: Path,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: object,
    train_iter: Iterable,
) -> tuple[History, int]:
    """Load a checked checkpoint into the run; returns the restored history and examples seen."""
    net.load_state_dict(state["model"])
    fix = "build the optimizer and scheduler as when it was written, or delete it"
    sched_class = type(sched).__qualname__ if sched is not None else None
    if (
        state["optimizer_class"] != type(opt).__qualname__
        or state["scheduler_class"] != sched_class
    ):
        raise CheckpointError(
            f"checkpoint {path} was written with optimizer {state['optimizer_class']} and "
            f"scheduler {state['scheduler_class']}, this call has {type(opt).__qualname__} and "
            f"{sched_class}; {fix}"
        )
    try:
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])  # type: ignore[attr-defined]
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit the optimizer ({exc}); {fix}"
        ) from exc
    loader_state = state["loader"]
    if loader_state is not None and hasattr(train_iter, "load_state_dict"):
        train_iter.load_state_dict(loader_state)  # the shuffle of the next epoch, exactly
    names = {f.name for f in fields(History)}
    history = History(**{k: v for k, v in state["history"].items() if k in names})
    set_rng_state(state["rng"])  # last: everything above may draw random numbers
    return history, int(state["examples_seen"])


def _checkpoint_state(
    *,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    sched: object,
    train_iter: Iterable,
    history: History,
    epochs: int,
    lr: float,
    seen: int,
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "epoch": history.num_epochs,
        "num_epochs": epochs,
        "profile": history.profile,
        "lr": float(lr),
        "model_class": type(net).__qualname__,
        "model": net.state_dict(),
        "optimizer_class": type(opt).__qualname__,
        "optimizer": opt.state_dict(),
        "scheduler_class": type(sched).__qualname__ if sched is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,  # type: ignore[attr-defined]
        "history": asdict(history),
        "examples_seen": seen,
        "rng": get_rng_state(),
        "loader": train_iter.state_dict() if hasattr(train_iter, "state_dict") else None,  # type: ignore[attr-defined]
    }


def _finish(history: History, start: float, seen: int, earlier: float) -> None:
    history.total_time = earlier + time.perf_counter() - start
    if history.num_epochs:
        history.examples_per_sec = seen / sum(history.epoch_time)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def train_ch6(
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable,
    num_epochs: int,
    lr: float,
    device: torch.device | str | None = None,
    *,
    optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
    scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
    loss: nn.Module | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    init: bool = True,
    seed: int | None = None,
    profile: str | Profile | None = None,
    plot: bool = True,
    channels_last: bool | None = None,
    amp: bool | None = None,
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
        amp: bf16 autocast; ``None`` = on CUDA only.
        compile: wrap the model in ``torch.compile`` for training.
        checkpoint: a file path.  After every epoch the net, optimizer, scheduler, history and
            random number generators are saved there (atomically); when the file exists, the
            run resumes after its last completed epoch, and with the same seed on a CPU it ends
            with exactly the weights of an uninterrupted run.  Epochs count against
            ``num_epochs`` after the profile's cap, and a checkpoint belongs to one profile
            (name the file after ``PROFILE.name`` to keep one per profile).

    Returns:
        A :class:`History` with one entry per completed epoch.  On ``KeyboardInterrupt`` (the
        Jupyter stop button) training stops at the current batch, one line says how far it
        got, the net keeps its current weights and the history so far is returned.

    Raises:
        ValueError: for a bad ``num_epochs``, ``lr`` or ``seed``, an empty loader, or labels
            the net has no output for; all before the first training step.
        DivergenceError: when the loss becomes NaN or infinite; the net (and optimizer) are
            reset to the end of the last completed epoch (or to the start).
        CheckpointError: for a checkpoint that is corrupt or written by a different run; the
            file is left untouched.
    """
    _check_args(num_epochs, lr, seed)
    num_batches = _num_batches(train_iter, "train_iter")
    _num_batches(test_iter, "test_iter")
    ckpt_path = None if checkpoint is None else Path(checkpoint)
    state = load_checkpoint(ckpt_path) if ckpt_path is not None and ckpt_path.exists() else None
    if ckpt_path is not None and ckpt_path.is_dir():  # a folder that does not exist yet is fine
        raise CheckpointError(f"checkpoint={str(ckpt_path)!r} is a folder; expected a file path")
    device = try_gpu() if device is None else torch.device(device)
    prof = get_profile(profile)
    epochs = num_epochs
    if prof.max_epochs is not None and num_epochs > prof.max_epochs:
        epochs = prof.max_epochs
        print(
            f"profile {prof.name}: {epochs} of {num_epochs} epochs; "
            "set D2L_PROFILE=full for the book's run"
        )
    if state is not None:
        _check_resumable(state, ckpt_path, net, prof.name, epochs, lr)  # type: ignore[arg-type]
    _check_outputs(net, train_iter, test_iter)
    if seed is not None:
        torch.manual_seed(seed)
        generator = getattr(train_iter, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
    if init:
        if seed is not None:
            net.apply(_redraw)
        net.apply(init_weights)
    print("training on", device)
    channels_last = prefers_channels_last(net) if channels_last is None else channels_last
    amp = device.type == "cuda" if amp is None else amp
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    _move_loader(train_iter, device)
    _move_loader(test_iter, device)
    if optimizer is None:
        opt = torch.optim.SGD(net.parameters(), lr=lr)
    elif isinstance(optimizer, torch.optim.Optimizer):
        opt = optimizer
    else:
        opt = optimizer(net.parameters())
    sched = scheduler(opt) if scheduler is not None else None
    loss_fn = nn.CrossEntropyLoss() if loss is None else loss
    model = torch.compile(net) if compile else net

    history, seen, start_epoch = History(), 0, 0
    if state is not None:
        history, seen = _resume(state, ckpt_path, net, opt, sched, train_iter)  # type: ignore[arg-type]
        start_epoch = history.num_epochs
        if start_epoch < epochs:
            print(f"resuming from checkpoint {checkpoint}: {start_epoch} of {epochs} epochs done")
        else:
            done = _plural(epochs, "epoch")
            print(
                f"checkpoint {checkpoint}: training already finished ({done}); net loaded from it"
            )
    history.device, history.profile, history.interrupted = str(device), prof.name, False
    earlier, saved = history.total_time, start_epoch
    log = _EpochLog(epochs, plot)
    log.replay(history)
    points = log.points(num_batches)
    start = time.perf_counter()
    train_l = history.train_loss[-1] if history.train_loss else math.nan
    train_acc = history.train_acc[-1] if history.train_acc else math.nan
    test_acc = history.test_acc[-1] if history.test_acc else math.nan
    good = _snapshot(net, opt, sched)  # the last finite state, restored on divergence
    epoch, step, phase = start_epoch, 0, "train"

    def diverged(what: str, at_step: int | None) -> DivergenceError:
        log.close()
        _restore(good, net, opt, sched)
        _finish(history, start, seen, earlier)
        at = f", step {at_step}/{num_batches}" if at_step is not None else ""
        kept = f"the end of epoch {epoch}" if epoch else "their state before training"
        return DivergenceError(
            f"training diverged: {what} in epoch {epoch + 1}/{epochs}{at} with lr={lr}. The net "
            f"and optimizer were reset to {kept}. Try a lower learning rate, e.g. lr={lr / 10:g}"
            + (" (with a new checkpoint= path)" if ckpt_path is not None else ""),
            epoch + 1,
            at_step,
            history,
        )

    try:
        for epoch in range(start_epoch, epochs):
            step, phase = 0, "train"
            net.train()
            loss_sum = torch.zeros((), device=device)
            # Steps before the loss sum first became non-finite: the failing step, without a sync.
            finite_steps = torch.zeros((), dtype=torch.int64, device=device)
            correct = torch.zeros((), dtype=torch.int64, device=device)
            count = 0
            log.start_epoch(epoch, num_batches)
            t0 = time.perf_counter()
            for i, (X, y) in enumerate(train_iter):
                X, y = _prepare_batch(X, y, device, channels_last)
                if augment is not None:
                    X = augment(X)
                opt.zero_grad(set_to_none=True)
                with _autocast(device, amp):
                    y_hat = model(X)
                    batch_loss = loss_fn(y_hat, y)
                batch_loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()  # type: ignore[attr-defined]
                with torch.no_grad():
                    loss_sum += batch_loss.detach().float() * y.numel()
                    finite_steps += torch.isfinite(loss_sum)
                    correct += _correct(y_hat.detach(), y)
                count += y.numel()
                step = i + 1
                log.step()
                if i in points:  # the plot needs numbers: one sync per plot point
                    running = loss_sum.item() / count
                    if not math.isfinite(running):
                        raise diverged(f"the loss became {running}", int(finite_steps) + 1)
                    log.batch(epoch + (i + 1) / num_batches, running, correct.item() / count)
            if count == 0:
                raise ValueError(f"train_iter yielded no batches in epoch {epoch + 1}")
            train_l, train_acc = loss_sum.item() / count, correct.item() / count
            epoch_time = time.perf_counter() - t0
            if not math.isfinite(train_l):
                raise diverged(f"the loss became {train_l}", int(finite_steps) + 1)
            if not _all_finite(net):
                raise diverged("the weights became non-finite", None)
            history.epoch_time.append(epoch_time)
            phase = "evaluate"
            test_acc = evaluate_accuracy_gpu(net, test_iter, device)
            history.train_loss.append(train_l)
            history.train_acc.append(train_acc)
            history.test_acc.append(test_acc)
            history.num_epochs = epoch + 1
            log.end_epoch(epoch, train_l, train_acc, test_acc, history.epoch_time[-1])
            seen += count
            good = _snapshot(net, opt, sched)
            if ckpt_path is not None:
                phase = "save"
                _finish(history, start, seen, earlier)
                save_checkpoint(
                    ckpt_path,
                    _checkpoint_state(
                        net=net, opt=opt, sched=sched, train_iter=train_iter, history=history,
                        epochs=epochs, lr=lr, seen=seen,
                    ),
                )  # fmt: skip
                saved = epoch + 1
    except KeyboardInterrupt:
        log.close()
        _finish(history, start, seen, earlier)
        history.interrupted = True
        where = {
            "train": f"after step {step}/{num_batches}",
            "evaluate": "while evaluating",
            "save": "while saving its checkpoint",
        }[phase]
        resume = (
            f"; call again with checkpoint={str(checkpoint)!r} to resume after epoch {saved}"
            if ckpt_path is not None and saved
            else ""
        )
        print(
            f"interrupted in epoch {epoch + 1}/{epochs} {where}: net keeps its current weights; "
            f"returning the history of {_plural(history.num_epochs, 'completed epoch')}{resume}",
            flush=True,
        )
        return history
    _finish(history, start, seen, earlier)
    print(f"loss {train_l:.3f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    print(f"{history.examples_per_sec:.1f} examples/sec on {device}")
    return history
