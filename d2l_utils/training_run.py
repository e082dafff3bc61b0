"""The bookkeeping around :func:`d2l_utils.train.train_ch6`'s loop, which a reader can skip.

:class:`TrainingRun` is built before anything changes: it checks the arguments (shared checks of
:mod:`d2l_utils.checks`), caps the epochs to the run profile, reads and checks the checkpoint
(:mod:`d2l_utils.checkpoint`), checks that the net has an output for every label and seeds the
run.  Its :meth:`~TrainingRun.guarded` context wraps the loop:

* it resumes from the checkpoint and saves one after every epoch;
* on ``KeyboardInterrupt`` (the stop button) it finishes the history of the completed epochs,
  attaches it to the exception, prints one line saying how far the run got and how to resume,
  and lets the exception stop the cell;
* on a divergence (:class:`EpochMetrics` finds the running loss NaN/inf or exploded,
  :class:`DivergenceGuard` finds non-finite weights) it puts the last good state back and raises
  :class:`DivergenceError` naming the epoch, the step and the learning rate.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_utils.checkpoint import check_resumable, pack, read_if_present, restore, save_checkpoint
from d2l_utils.checks import integer, num_batches, positive_int, positive_number
from d2l_utils.device import device_of
from d2l_utils.plot import EpochLog
from d2l_utils.profiles import Profile, get_profile

__all__ = [
    "EXPLOSION",
    "DivergenceError",
    "DivergenceGuard",
    "EpochMetrics",
    "History",
    "TrainingRun",
    "count_correct",
    "loss_limit",
]

# A cross-entropy loss this many times its chance-level value log C is a diverged run: a net that
# guesses uniformly scores log C, and no run that is still learning averages 1000 times worse.
EXPLOSION = 1000.0
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def count_correct(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Number of correct predictions as a 0-d tensor on ``y_hat``'s device (no sync)."""
    if y_hat.dim() > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(dim=1)
    return (y_hat.type(y.dtype) == y).sum()


@dataclass
class History:
    """What :func:`~d2l_utils.train.train_ch6` measured, one entry per completed epoch."""

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
    """Training diverged (the loss became NaN/inf or exploded, or the weights non-finite); the
    net and optimizer hold their state at the end of the last completed epoch.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the batch (1-based) at which the running loss first went wrong, or ``None`` when
            only the weights were found non-finite at the end of the epoch.
        history: the completed epochs.
    """

    def __init__(self, message: str, epoch: int, step: int | None, history: History) -> None:
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class _Diverged(Exception):  # noqa: N818 - internal signal, turned into a DivergenceError
    """Raised inside the loop; :meth:`TrainingRun.guarded` restores the net and reports it."""

    def __init__(self, what: str, step: int | None) -> None:
        super().__init__(what)
        self.what, self.step = what, step


def loss_limit(loss_fn: nn.Module, num_classes: int | None) -> float:
    """The running mean loss above which a run has diverged: ``EXPLOSION * log C`` for a
    mean-reduced cross-entropy over ``C >= 2`` classes, else infinity (then only NaN/inf)."""
    if (
        isinstance(loss_fn, nn.CrossEntropyLoss)
        and loss_fn.reduction == "mean"
        and num_classes is not None
        and num_classes >= 2
    ):
        return EXPLOSION * math.log(num_classes)
    return math.inf


class EpochMetrics:
    """The book's ``Accumulator(3)`` (loss sum, correct predictions, examples) kept on the device.

    Adding a batch forces no device-to-host copy; :meth:`mean` reads the numbers.  It also counts,
    without a sync, the steps before the running mean loss first went wrong (NaN/inf or above
    ``limit``), so that a divergence is reported at the step where it happened.
    """

    def __init__(self, device: torch.device, epoch: int, limit: float) -> None:
        self.epoch, self.limit = epoch, limit
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.count, self.steps = 0, 0
        self.still_good = torch.ones((), dtype=torch.bool, device=device)
        self.good_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.bad_mean = torch.zeros((), device=device)  # the running loss when it went wrong

    def add(self, l: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor) -> None:
        """One batch: its mean loss ``l``, logits ``y_hat (B, C)`` and labels ``y (B,)``."""
        with torch.no_grad():
            self.count += y.numel()
            self.steps += 1
            self.loss_sum += l.detach().float() * y.numel()
            # False for NaN and inf too; the bound stays below float32's largest value, which
            # the comparison would otherwise round to inf (and inf <= inf holds).
            ok = self.loss_sum <= min(self.limit * self.count, _FLOAT32_MAX)
            first_wrong = self.still_good & ~ok
            self.bad_mean = torch.where(first_wrong, self.loss_sum / self.count, self.bad_mean)
            self.still_good &= ok
            self.good_steps += self.still_good
            self.correct += count_correct(y_hat.detach(), y)

    def mean(self) -> tuple[float, float]:
        """Mean loss and accuracy so far; raises ``_Diverged`` when the running loss went wrong."""
        if self.count == 0:
            raise ValueError(f"train_iter yielded no batches in epoch {self.epoch + 1}")
        if not self.still_good.item():
            bad = self.bad_mean.item()
            what = f"the loss became {bad:.3g}"
            if math.isfinite(bad):  # exploded: say what the bound is
                what += (
                    f" (over {self.limit:.0f}, {EXPLOSION:g} times the cross-entropy of a "
                    f"uniform guess, {self.limit / EXPLOSION:.2f})"
                )
            raise _Diverged(what, int(self.good_steps) + 1)
        return self.loss_sum.item() / self.count, self.correct.item() / self.count


class DivergenceGuard:
    """Keeps a copy of the last good state (net, optimizer, scheduler) and puts it back."""

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, sched: Any) -> None:
        self.net, self.opt, self.sched = net, opt, sched
        self.keep()

    def keep(self) -> None:
        """Copy the current state, kept on its devices."""
        self.good = (
            {k: v.detach().clone() for k, v in self.net.state_dict().items()},
            copy.deepcopy(self.opt.state_dict()),
            copy.deepcopy(self.sched.state_dict()) if self.sched is not None else None,
        )

    def restore(self) -> None:
        """Put the last kept state back."""
        model, optim, schedule = self.good
        self.net.load_state_dict(model)
        self.opt.load_state_dict(optim)
        if self.sched is not None:
            self.sched.load_state_dict(schedule)

    def check_weights(self) -> None:
        """Raise when a floating-point parameter or buffer is NaN/inf (one device sync).

        Batch norm can hide exploding weights from the loss, so the loss alone is not enough.
        The largest absolute value is non-finite exactly when some value is, and computing it
        needs no temporary tensor (4x faster than ``isfinite``).
        """
        largest = [
            torch.linalg.vector_norm(t, math.inf)
            for t in self.net.state_dict().values()
            if t.is_floating_point() and t.numel()
        ]
        if largest and not bool(torch.isfinite(torch.stack(largest)).all()):
            raise _Diverged("the weights became non-finite", None)


class TrainingRun:
    """The bookkeeping of one :func:`~d2l_utils.train.train_ch6` call, around its loop.

    Built before anything changes, it checks the arguments, caps the epochs to the profile
    (saying so), reads and checks the checkpoint, checks that the net fits the data and seeds
    the run.  :meth:`guarded` wraps the loop: it resumes from the checkpoint, and turns an
    interrupt or a divergence into a finished history, a line of explanation and the exception.
    """

    def __init__(
        self,
        net: nn.Module,
        train_iter: Iterable,
        test_iter: Iterable,
        num_epochs: int,
        lr: float,
        profile: str | Profile | None,
        seed: int | None,
        checkpoint: str | os.PathLike[str] | None,
    ) -> None:
        positive_int(num_epochs, "num_epochs")
        positive_number(lr, "lr")
        if seed is not None:
            integer(seed, "seed")
        self.num_batches = num_batches(train_iter, "train_iter")
        num_batches(test_iter, "test_iter")
        self.path = None if checkpoint is None else Path(checkpoint)
        self.state = read_if_present(self.path)
        prof = get_profile(profile)
        self.epochs = _capped_epochs(num_epochs, prof)
        if self.state is not None:
            check_resumable(self.state, self.path, net, prof.name, self.epochs, lr)  # type: ignore[arg-type]
        self.num_classes = _check_outputs(net, train_iter, test_iter)
        if seed is not None:
            _seed(seed, train_iter)
        self.net, self.train_iter, self.lr = net, train_iter, lr
        self.history = History(profile=prof.name)
        self.epochs_done = self.saved = self.seen = 0
        self.metric: EpochMetrics | None = None
        self.saving = False

    @contextlib.contextmanager
    def guarded(
        self, device: torch.device, opt: torch.optim.Optimizer, sched: Any, loss_fn: nn.Module,
        log: EpochLog,
    ) -> Iterator[None]:  # fmt: skip
        """Resume from the checkpoint, run the loop, and finish the bookkeeping however it ends."""
        self.device, self.opt, self.sched, self.log = device, opt, sched, log
        self.limit = loss_limit(loss_fn, self.num_classes)
        if self.state is not None:
            self._resume()
        self.history.device, self.history.interrupted = str(device), False
        self.guard = DivergenceGuard(self.net, opt, sched)
        self.earlier, self.start = self.history.total_time, time.perf_counter()
        try:
            yield
        except KeyboardInterrupt as exc:
            self.history.interrupted = True
            exc.history = self.history  # type: ignore[attr-defined]
            self._finish()
            print(self._interrupt_line(), flush=True)
            raise
        except _Diverged as exc:
            self.guard.restore()
            self._finish()
            raise self._divergence_error(exc) from None
        self._finish()

    def start_epoch(self, epoch: int) -> EpochMetrics:
        """Begin epoch ``epoch`` (0-based): its metrics, on the device, and its progress bar."""
        self.metric = EpochMetrics(self.device, epoch, self.limit)
        self.log.start_epoch(epoch, self.num_batches)
        return self.metric

    def end_epoch(self, train_l: float, train_acc: float, test_acc: float, t: float) -> None:
        """Record a completed epoch, show it, keep its state as the last good one, save it."""
        self.guard.check_weights()
        epoch = self.metric.epoch  # type: ignore[union-attr]
        h = self.history
        h.train_loss.append(train_l)
        h.train_acc.append(train_acc)
        h.test_acc.append(test_acc)
        h.epoch_time.append(t)
        h.num_epochs = epoch + 1
        self.seen += self.metric.count  # type: ignore[union-attr]
        self.log.end_epoch(epoch, train_l, train_acc, test_acc, t)
        self.guard.keep()
        if self.path is not None:
            self.saving = True
            self._finish()  # the saved history holds the times so far
            save_checkpoint(self.path, self._pack())
            self.saving, self.saved = False, epoch + 1

    def _pack(self) -> dict[str, Any]:
        return pack(
            net=self.net, optimizer=self.opt, scheduler=self.sched, train_iter=self.train_iter,
            history=asdict(self.history), num_epochs=self.epochs, lr=self.lr,
            examples_seen=self.seen,
        )  # fmt: skip

    def _resume(self) -> None:
        saved, self.seen = restore(
            self.state,
            self.path,
            self.net,
            self.opt,
            self.sched,
            self.train_iter,  # type: ignore[arg-type]
        )
        names = {f.name for f in fields(History)}
        self.history = History(**{k: v for k, v in saved.items() if k in names})
        self.epochs_done = self.saved = self.history.num_epochs
        if self.epochs_done < self.epochs:
            print(
                f"resuming from checkpoint {self.path}: {self.epochs_done} of {self.epochs} "
                "epochs done"
            )
        else:
            print(
                f"checkpoint {self.path}: training already finished "
                f"({_plural(self.epochs, 'epoch')}); net loaded from it"
            )
        h = self.history
        self.log.replay(h.train_loss, h.train_acc, h.test_acc)

    def _finish(self) -> None:
        """Close the progress bar; the totals of the history so far."""
        self.log.close()
        h = self.history
        h.total_time = self.earlier + time.perf_counter() - self.start
        if h.num_epochs:
            h.examples_per_sec = self.seen / sum(h.epoch_time)

    def _where(self) -> tuple[int, str]:
        """The epoch (1-based) the run was in and what it was doing."""
        m = self.metric
        if m is None:
            return self.epochs_done + 1, "before its first step"
        if self.saving:
            return m.epoch + 1, "while saving its checkpoint"
        if m.steps == self.num_batches:
            return m.epoch + 1, "while evaluating"
        return m.epoch + 1, f"after step {m.steps}/{self.num_batches}"

    def _interrupt_line(self) -> str:
        epoch, where = self._where()
        done = _plural(self.history.num_epochs, "completed epoch")
        if self.path is None:
            resume = "pass checkpoint=PATH to make a run resumable"
        elif self.saved:
            resume = (
                f"to resume after epoch {self.saved}, call again with checkpoint={str(self.path)!r}"
            )
        else:
            resume = "no epoch was completed, so calling again starts over"
        return (
            f"interrupted in epoch {epoch}/{self.epochs} {where}: net keeps its current weights; "
            f"the history of {done} is the exception's .history; {resume}"
        )

    def _divergence_error(self, exc: _Diverged) -> DivergenceError:
        epoch = self.metric.epoch  # type: ignore[union-attr]
        at = f", step {exc.step}/{self.num_batches}" if exc.step is not None else ""
        kept = f"the end of epoch {epoch}" if epoch else "their state before training"
        new_path = " (with a new checkpoint= path)" if self.path is not None else ""
        return DivergenceError(
            f"training diverged: {exc.what} in epoch {epoch + 1}/{self.epochs}{at} with "
            f"lr={self.lr}. The net and optimizer were reset to {kept}. Try a lower learning "
            f"rate, e.g. lr={self.lr / 10:g}{new_path}",
            epoch + 1,
            exc.step,
            self.history,
        )


def _capped_epochs(num_epochs: int, prof: Profile) -> int:
    if prof.max_epochs is not None and num_epochs > prof.max_epochs:
        print(
            f"profile {prof.name}: {prof.max_epochs} of {num_epochs} epochs; "
            "set D2L_PROFILE=full for the book's run"
        )
        return prof.max_epochs
    return num_epochs


def _seed(seed: int, train_iter: Iterable) -> None:
    """Seed torch's RNG and restart the training loader's shuffle from ``seed``."""
    torch.manual_seed(seed)
    generator = getattr(train_iter, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed)


def _labels_of(data_iter: Iterable) -> torch.Tensor | None:
    """All labels of a loader's dataset, when it exposes them (no iteration, no RNG draw)."""
    dataset = getattr(data_iter, "dataset", None)
    for name in ("labels", "targets"):
        labels = getattr(dataset, name, None)
        if isinstance(labels, torch.Tensor) and labels.numel() and not labels.is_floating_point():
            return labels
    return None


def _check_outputs(net: nn.Module, train_iter: Iterable, test_iter: Iterable) -> int | None:
    """Run the net on two test images and check that every label has an output.

    One tiny forward pass in eval mode, without gradients, where the net's parameters are: it
    changes no weight or statistic and draws from no shuffling generator (the test loader does
    not shuffle), so a wrong last layer or input size fails before anything else happens.

    Returns:
        The number of classes ``C`` of the net's logits ``(B, C)``, or ``None`` for other outputs.
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
        return None  # not (B, num_classes) logits: nothing to compare the labels with
    num_classes = y_hat.shape[1]
    train_labels, test_labels = _labels_of(train_iter), _labels_of(test_iter)
    if train_labels is not None:
        _check_labels("train_iter", train_labels, num_classes)
    _check_labels("test_iter", y if test_labels is None else test_labels, num_classes)
    return num_classes


def _check_labels(name: str, labels: torch.Tensor, num_classes: int) -> None:
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} has labels {lo}..{hi}, but net outputs {num_classes} class scores, so "
            f"labels must be 0..{num_classes - 1}; give the net's last layer {hi + 1} outputs "
            "or fix the labels"
        )
