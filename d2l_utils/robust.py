"""What a long run needs around :func:`~d2l_utils.train.train_ch6`'s loop; a first reading can
skip this module.

:class:`Run` is built before anything changes: it checks the arguments, caps the epochs to the
run profile (saying so), reads and checks the checkpoint, checks that the net has an output for
every label, and last seeds the run (``seed=``).  Its :meth:`Run.guard` context wraps the loop,
and :meth:`Run.epoch_done` is the loop's one call per epoch:

* a run that diverges (the running loss NaN/inf or above ``EXPLOSION`` times the chance level,
  or weights that became non-finite) is put back to its last good state and raises
  :class:`DivergenceError`, naming the epoch, the step and the learning rate;
* the stop button (``KeyboardInterrupt``) finishes the history of the completed epochs, attaches
  it to the exception, prints one line saying how far the run got and how to resume, and lets
  the exception stop the cell;
* ``checkpoint=PATH`` saves the whole run after every epoch (atomically, in the package's one
  file format, :mod:`d2l_utils.checkpoint`) and resumes from the file when it exists.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from d2l_utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from d2l_utils.data import capped_epochs, get_profile, integer, num_batches, positive_number
from d2l_utils.device import device_of, eval_mode

__all__ = ["EXPLOSION", "DivergenceError", "Run", "loss_limit"]

# A cross-entropy loss this many times its chance-level value log C is a diverged run: a net that
# guesses uniformly scores log C, and no run that is still learning averages 1000 times worse.
EXPLOSION = 1000.0
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class DivergenceError(FloatingPointError):
    """Training diverged (the loss became NaN/inf or exploded, or the weights non-finite); the
    net and optimizer hold their state at the end of the last completed epoch.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        step: the batch (1-based) at which the running loss first went wrong, or ``None`` when
            only the weights were found non-finite at the end of the epoch.
        history: the completed epochs.
    """

    def __init__(self, message: str, epoch: int, step: int | None, history: Any) -> None:
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


class _Diverged(Exception):
    """Raised by :meth:`Run.epoch_done`; :meth:`Run.guard` restores the net and reports it."""

    def __init__(self, what: str, step: int | None) -> None:
        super().__init__(what)
        self.what, self.step = what, step


def loss_limit(loss_fn: nn.Module, num_classes: int | None) -> float:
    """The running mean loss above which a run has diverged: ``EXPLOSION * log C`` for a
    mean-reduced cross-entropy over ``C >= 2`` classes, else infinity (then only NaN/inf)."""
    mean_ce = isinstance(loss_fn, nn.CrossEntropyLoss) and loss_fn.reduction == "mean"
    return EXPLOSION * math.log(num_classes) if mean_ce and (num_classes or 0) >= 2 else math.inf


class Run:
    """The bookkeeping of one :func:`~d2l_utils.train.train_ch6` call, around its loop.

    Args:
        history: the run's :class:`~d2l_utils.train.History`, filled in here.
    """

    # Where the run is, for the interrupt line and the checkpoint (the loop sets the epoch's
    # running metrics).
    first_epoch = saved = seen = 0
    metric, saving = None, False

    def __init__(self, net: nn.Module, train_iter: Iterable, test_iter: Iterable, num_epochs: int,
                 lr: float, profile: Any, seed: int | None, checkpoint: Any,
                 history: Any) -> None:  # fmt: skip
        positive_number(lr, "lr")
        self.num_batches = num_batches(train_iter, "train_iter")
        num_batches(test_iter, "test_iter")
        prof = get_profile(profile)
        self.num_epochs = capped_epochs(num_epochs, prof)  # checks num_epochs too
        self.path = None if checkpoint is None else Path(checkpoint)
        self.state = self._read(net, prof.name, lr) if self.path is not None else None
        self.num_classes = _check_outputs(net, train_iter, test_iter)
        self.net, self.train_iter, self.lr, self.history = net, train_iter, lr, history
        history.profile = prof.name
        if seed is not None:  # last: a call that fails a check changes nothing
            _seed(integer(seed, "seed"), train_iter)

    @contextlib.contextmanager
    def guard(self, opt: Optimizer, sched: Any, loss: Any, log: Any, scaler: Any) -> Iterator[None]:
        """Resume from the checkpoint, run the loop, and finish the bookkeeping however it ends."""
        self.opt, self.sched, self.log, self.scaler = opt, sched, log, scaler
        self.limit = loss_limit(loss, self.num_classes)
        if self.state is not None:
            self._resume()
        self._keep()
        self.earlier, self.start = self.history.total_time, time.perf_counter()
        try:
            yield
        except (KeyboardInterrupt, _Diverged) as exc:  # the stop button; epoch_done's divergence
            raise self._stopped(exc) from None
        self._finish()

    def epoch_done(self, metric: Any, test_acc: float, t: float) -> None:
        """Check the epoch for divergence (raising ``_Diverged``, which :meth:`guard` reports):
        the running mean loss NaN/inf or above the limit after some step, or a weight that is
        non-finite.  Then record and show it, keep it as the last good state, save it to the
        checkpoint."""
        if metric.count == 0:
            epoch = self.history.num_epochs + 1
            raise ValueError(f"train_iter yielded no batches in epoch {epoch}")
        running = torch.stack(metric.step_losses).cumsum(0).cpu()  # one read from the device
        counts = torch.tensor(metric.step_sizes).cumsum(0)
        # float32's largest value bounds it, or inf would pass; NaN fails every comparison.
        ok = running <= (self.limit * counts).clamp(max=_FLOAT32_MAX)
        if not ok.all():
            raise self._loss_went_wrong(running, counts, int((~ok).nonzero()[0]))
        # Batch norm can hide exploding weights from the loss.  The largest absolute value is
        # non-finite exactly when some value is, and needs no temporary tensor.
        largest = [torch.linalg.vector_norm(t, math.inf) for t in self.net.state_dict().values()
                   if t.is_floating_point() and t.numel()]  # fmt: skip
        if largest and not torch.isfinite(torch.stack(largest)).all():
            raise _Diverged("the weights became non-finite", None)
        train_l, train_acc = metric.mean()
        self.history.add_epoch(train_l, train_acc, test_acc, t)
        self.seen += metric.count
        self.log.end_epoch(self.history.num_epochs - 1, train_l, train_acc, test_acc, t)
        self._keep()
        if self.path is not None:
            self._save()

    def _stopped(self, exc: KeyboardInterrupt | _Diverged) -> DivergenceError:
        """Finish the bookkeeping of a run that stops early.  The stop button's exception goes on
        as it is; divergence becomes the :class:`DivergenceError` that :meth:`guard` raises."""
        self.log.close()
        if isinstance(exc, KeyboardInterrupt):
            self._interrupted(exc)
            raise  # the KeyboardInterrupt being handled, unchanged (traceback, context)
        return self._diverged(exc)

    # --- Divergence -----------------------------------------------------------------------------

    def _loss_went_wrong(self, running: torch.Tensor, counts: torch.Tensor, i: int) -> _Diverged:
        mean = float(running[i]) / int(counts[i])
        what = f"the loss became {mean:.3g}"
        if math.isfinite(mean):  # exploded: say what the bound is
            what += (
                f" (over {self.limit:.0f}, {EXPLOSION:g} times the cross-entropy of a "
                f"uniform guess, {self.limit / EXPLOSION:.2f})"
            )
        return _Diverged(what, i + 1)

    def _keep(self) -> None:
        """Copy the current state (net, optimizer, scheduler) as the last good one."""
        sched = self.sched.state_dict() if self.sched is not None else None
        self.good = copy.deepcopy((self.net.state_dict(), self.opt.state_dict(), sched))

    def _restore(self) -> None:
        model, optim, schedule = self.good
        self.net.load_state_dict(model)
        self.opt.load_state_dict(optim)
        if self.sched is not None:
            self.sched.load_state_dict(schedule)

    def _diverged(self, exc: _Diverged) -> DivergenceError:
        """Put the last good state back; the error to raise."""
        self._restore()
        self._finish()
        epoch = self.history.num_epochs
        at = f", step {exc.step}/{self.num_batches}" if exc.step is not None else ""
        kept = f"the end of epoch {epoch}" if epoch else "their state before training"
        new_path = " (with a new checkpoint= path)" if self.path is not None else ""
        return DivergenceError(
            f"training diverged: {exc.what} in epoch {epoch + 1}/{self.num_epochs}{at} with "
            f"lr={self.lr}. The net and optimizer were reset to {kept}. Try a lower learning "
            f"rate, e.g. lr={self.lr / 10:g}{new_path}",
            epoch + 1,
            exc.step,
            self.history,
        )

    # --- The stop button ------------------------------------------------------------------------

    def _interrupted(self, exc: KeyboardInterrupt) -> None:
        """Finish the history, attach it to the exception, say how far the run got."""
        self.history.interrupted = True
        exc.history = self.history  # type: ignore[attr-defined]
        self._finish()
        print(self._interrupt_line(), flush=True)

    def _finish(self) -> None:
        """The totals of the history so far."""
        h = self.history
        h.total_time = self.earlier + time.perf_counter() - self.start
        h.examples_per_sec = self.seen / sum(h.epoch_time) if h.num_epochs else math.nan

    def _where(self) -> tuple[int, str]:
        """The epoch (1-based) the run was in and what it was doing."""
        done = self.history.num_epochs
        if self.metric is None:
            return done + 1, "before its first step"
        if self.saving:
            return done, "while saving its checkpoint"
        steps = len(self.metric.step_sizes)
        if steps == self.num_batches:
            return done + 1, "while evaluating"
        return done + 1, f"after step {steps}/{self.num_batches}"

    def _interrupt_line(self) -> str:
        epoch, where = self._where()
        n = self.history.num_epochs
        done = f"{n} completed epoch{'' if n == 1 else 's'}"
        if self.path is None:
            resume = "pass checkpoint=PATH to make a run resumable"
        elif self.saved:
            resume = (
                f"to resume after epoch {self.saved}, call again with checkpoint={str(self.path)!r}"
            )
        else:
            resume = "no epoch was completed, so calling again starts over"
        return (
            f"interrupted in epoch {epoch}/{self.num_epochs} {where}: net keeps its current "
            f"weights; the history of {done} is the exception's .history; {resume}"
        )

    # --- Resume ---------------------------------------------------------------------------------

    def _read(self, net: nn.Module, profile: str, lr: float) -> dict[str, Any] | None:
        """The checkpoint to resume from (``None`` when its file does not exist yet), checked to
        be this run's before anything changes."""
        if not self.path.exists():  # type: ignore[union-attr]
            return None
        state = load_checkpoint(self.path, "train_ch6", required=KEYS)
        check_resumable(state, self.path, net, profile, self.num_epochs, lr)  # type: ignore[arg-type]
        return state

    def _save(self) -> None:
        self.saving = True
        self._finish()  # the saved history holds the times so far
        save_checkpoint(self.path, self._pack(), "train_ch6")  # type: ignore[arg-type]
        self.saving, self.saved = False, self.history.num_epochs

    def _pack(self) -> dict[str, Any]:
        return pack(
            net=self.net, optimizer=self.opt, scheduler=self.sched, train_iter=self.train_iter,
            history=asdict(self.history), num_epochs=self.num_epochs, lr=self.lr,
            examples_seen=self.seen, scaler=self.scaler,
        )  # fmt: skip

    def _resume(self) -> None:
        """Load the checked checkpoint into the run and say so."""
        saved, self.seen = restore(
            self.state,
            self.path,
            self.net,
            self.opt,
            self.sched,
            self.train_iter,  # type: ignore[arg-type]
            self.scaler,
        )
        h = self.history
        for f in fields(h):
            if f.name in saved and f.name != "device":  # this run's device, not the saved one
                setattr(h, f.name, saved[f.name])
        self.first_epoch = self.saved = h.num_epochs
        if self.first_epoch < self.num_epochs:
            print(
                f"resuming from checkpoint {self.path}: {self.first_epoch} of {self.num_epochs} "
                "epochs done"
            )
        else:
            n = self.num_epochs
            print(
                f"checkpoint {self.path}: training already finished ({n} epoch"
                f"{'' if n == 1 else 's'}); net loaded from it"
            )
        if self.log.animator is not None:  # draw the restored epochs
            for e, values in enumerate(zip(h.train_loss, h.train_acc, h.test_acc, strict=True)):
                self.log.animator.add(e + 1, values)


# What every train_ch6 checkpoint holds besides the file format's header; Run checks each.
KEYS = frozenset(
    {"epoch", "num_epochs", "profile", "lr", "model_class", "model", "optimizer_class",
     "optimizer", "scheduler_class", "scheduler", "scaler", "history", "examples_seen", "rng",
     "loader"}
)  # fmt: skip
_REFIT = "pass the settings it was written with, or delete it (or pass another checkpoint= path)"


def pack(
    *, net: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, train_iter: Iterable,
    history: dict[str, Any], num_epochs: int, lr: float, examples_seen: int,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Everything a run needs to continue after its last completed epoch, as plain data.

    ``history`` is the run's history as a dict (``dataclasses.asdict``); ``num_epochs`` the
    epochs the run trains (after the profile's cap).  The training loader's shuffle state is
    kept when the loader has ``state_dict`` (a :class:`~d2l_utils.data.BatchLoader`); fp16's
    gradient scaler, when there is one, with the scale it has learnt (a fresh one would start
    high again and skip steps until it had come back down).
    """
    loader_state = getattr(train_iter, "state_dict", None)
    return {
        "epoch": history["num_epochs"],
        "num_epochs": num_epochs,
        "profile": history["profile"],
        "lr": float(lr),
        "model_class": type(net).__qualname__,
        "model": net.state_dict(),
        "optimizer_class": type(optimizer).__qualname__,
        "optimizer": optimizer.state_dict(),
        "scheduler_class": _class_name(scheduler),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "history": history,
        "examples_seen": examples_seen,
        "rng": get_rng_state(),
        "loader": loader_state() if callable(loader_state) else None,
    }


def restore(
    state: dict[str, Any], path: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: Any, train_iter: Iterable, scaler: torch.amp.GradScaler | None = None,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """Load a checked checkpoint into a run: returns its history (a dict) and examples seen.

    A gradient scaler gets the saved one's state where both exist (a run resumed on a device
    with another precision starts its scaler afresh, or has none).

    The random number generators are restored last, since loading the rest may draw from them.
    """
    net.load_state_dict(state["model"])
    fix = "build the optimizer and scheduler as when it was written, or delete it"
    ours = (type(optimizer).__qualname__, _class_name(scheduler))
    if (state["optimizer_class"], state["scheduler_class"]) != ours:
        raise CheckpointError(
            f"checkpoint {path} was written with optimizer {state['optimizer_class']} and "
            f"scheduler {state['scheduler_class']}, this call has {ours[0]} and {ours[1]}; {fix}"
        )
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {path} does not fit the optimizer ({exc}); {fix}"
        ) from exc
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if state["loader"] is not None and hasattr(train_iter, "load_state_dict"):
        train_iter.load_state_dict(state["loader"])  # the shuffle of the next epoch, exactly
    set_rng_state(state["rng"])
    return state["history"], int(state["examples_seen"])


def check_resumable(
    state: dict[str, Any], path: Path, net: nn.Module, profile: str, num_epochs: int, lr: float
) -> None:
    """Refuse a checkpoint written by a different run, before anything is changed.

    Raises:
        CheckpointError: naming the file and the setting that differs (profile, ``lr``, more
            completed epochs than ``num_epochs``, the model's class or parameter shapes).
    """
    where = f"checkpoint {path}"
    if state["profile"] != profile:
        raise CheckpointError(
            f"{where} was written under profile {state['profile']}, this run uses {profile} "
            "(the profiles train on different data; give each its own file, e.g. "
            f"f'run-{{PROFILE.name}}.pt'); {_REFIT}"
        )
    if state["lr"] != float(lr):
        raise CheckpointError(
            f"{where} was written with lr={state['lr']}, this call has lr={lr}; {_REFIT}"
        )
    if state["epoch"] > num_epochs:
        raise CheckpointError(
            f"{where} holds {state['epoch']} completed epochs, more than the {num_epochs} this "
            f"call trains; {_REFIT}"
        )
    if state["model_class"] != type(net).__qualname__:
        raise CheckpointError(
            f"{where} holds a {state['model_class']}, net is a {type(net).__qualname__}; {_REFIT}"
        )
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model"].items()}
    problems = [f"missing {k}" for k in ours if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in ours]
    problems += [f"{k} is {theirs[k]}, net has {ours[k]}" for k in ours
                 if k in theirs and ours[k] != theirs[k]]  # fmt: skip
    if problems:
        more = "; …" if len(problems) > 3 else ""
        raise CheckpointError(
            f"{where} does not fit net ({'; '.join(problems[:3])}{more}); {_REFIT}"
        )


def get_rng_state() -> dict[str, Any]:
    """The state of every global random number generator a training run may draw from.

    torch's CPU generator (init, dropout, ``randperm``), the CUDA generators when CUDA is in use,
    and Python's and NumPy's global generators (for ``augment`` functions that use them).
    Everything is a tensor or a tuple of numbers, so it loads with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if (
        state["cuda"]
        and torch.cuda.is_available()
        and torch.cuda.device_count() == len(state["cuda"])
    ):
        torch.cuda.set_rng_state_all(state["cuda"])


def _class_name(obj: object) -> str | None:
    return type(obj).__qualname__ if obj is not None else None


def _seed(seed: int, train_iter: Iterable) -> None:
    """Seed torch's generator (init, dropout and augmentation draw from it) and restart the
    training loader's shuffle from ``seed`` (a ``BatchLoader``'s, or a ``DataLoader``'s own
    generator)."""
    torch.manual_seed(seed)
    if isinstance(getattr(train_iter, "generator", None), torch.Generator):
        train_iter.generator.manual_seed(seed)


def _check_outputs(net: nn.Module, train_iter: Iterable, test_iter: Iterable) -> int | None:
    """Run the net on two test images and check that every label has an output; returns the
    number of classes ``C`` of its logits ``(B, C)`` (``None`` for other outputs).

    One tiny forward pass in eval mode, without gradients, where the net's parameters are: it
    changes no weight or statistic and draws from no shuffling generator (the test loader does
    not shuffle), so a wrong last layer or input size fails before anything else happens.  The
    labels checked are all of a loader's dataset when it exposes them (no iteration, no random
    draw), else, for the test loader, those of its first batch.
    """
    X, y = next(iter(test_iter))  # num_batches checked that there is one
    try:
        with eval_mode(net), torch.no_grad():
            y_hat = net(X[:2].to(device_of(net)))
    except Exception as exc:
        raise RuntimeError(f"before training, net failed on a test batch X of shape "
                           f"{tuple(X[:2].shape)}: {exc}") from exc  # fmt: skip
    if y_hat.dim() != 2:
        return None  # not (B, num_classes) logits: nothing to compare the labels with
    for name, loader, fallback in (("train_iter", train_iter, None), ("test_iter", test_iter, y)):
        dataset = getattr(loader, "dataset", None)
        labels = getattr(dataset, "labels", getattr(dataset, "targets", None))
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or not len(labels):
            labels = fallback
        if labels is not None and not 0 <= labels.min() <= labels.max() < y_hat.shape[1]:
            raise _label_error(name, labels, y_hat.shape[1])
    return y_hat.shape[1]


def _label_error(name: str, labels: torch.Tensor, num_classes: int) -> ValueError:
    lo, hi = int(labels.min()), int(labels.max())
    return ValueError(
        f"{name} has labels {lo}..{hi}, but net outputs {num_classes} class scores, so labels "
        f"must be 0..{num_classes - 1}; give the net's last layer {hi + 1} outputs or fix the "
        "labels"
    )
