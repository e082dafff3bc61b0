"""Checkpoints of :func:`d2l_utils.train.train_ch6`: written atomically, read safely.

The format belongs to this module alone: :func:`pack` gathers a run's state, :func:`save_checkpoint`
writes it, :func:`load_checkpoint` reads it, :func:`check_resumable` refuses a file written by a
different run (before anything changes) and :func:`restore` puts the state back.

A checkpoint is one file written with ``torch.save`` after every completed epoch.  It holds plain
data only (tensors, numbers, strings, lists, dicts), so it is read back with
``torch.load(..., weights_only=True)``, which cannot run code hidden in a file.

Writing goes to a temporary file in the same folder, which is flushed to disk and read back
before ``os.replace`` renames it over the old checkpoint.  A rename within one folder is atomic,
so a crash, a full disk or an interrupt at any moment leaves either the old checkpoint or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "check_resumable",
    "get_rng_state",
    "load_checkpoint",
    "pack",
    "read_if_present",
    "restore",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "d2l_utils.train_ch6 checkpoint"
VERSION = 1
# What every checkpoint of this format holds; train_ch6 checks the meaning of each.
KEYS = frozenset(
    {"format", "version", "epoch", "num_epochs", "profile", "lr", "model_class", "model",
     "optimizer_class", "optimizer", "scheduler_class", "scheduler", "history", "examples_seen",
     "rng", "loader"}
)  # fmt: skip
_START_OVER = "delete it to start over, or pass another checkpoint= path"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, corrupt, or written by another run."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically; the previous file survives any failure.

    The data go to a temporary file beside ``path`` (same file system, so the final rename is
    atomic), are flushed to disk and read back with ``weights_only=True`` (so a file that could
    not be resumed from is never written), and only then replace ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        torch.load(tmp, map_location="cpu", weights_only=True)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, onto the CPU).

    Raises:
        CheckpointError: naming the file, if it is a folder, cannot be unpickled safely, is
            truncated or corrupt, or is not a checkpoint of this format and version.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint={str(path)!r} is a folder; expected a file path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason[:200]}); it is "
            f"truncated, corrupt or not a train_ch6 checkpoint: {_START_OVER}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        what = "a dict without the format key" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a train_ch6 checkpoint (it holds {what}; a model's "
            f"state_dict alone cannot resume training): {_START_OVER}"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')!r}, this d2l_utils "
            f"reads version {VERSION}: {_START_OVER}"
        )
    missing = sorted(KEYS - state.keys())
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: {_START_OVER}")
    return state


def get_rng_state() -> dict[str, Any]:
    """The state of every global random number generator a training run may draw from.

    torch's CPU generator (init, dropout, ``randperm``), the CUDA generators when CUDA is in use,
    and Python's and NumPy's global generators (for ``augment`` functions that use them).
    Everything is a tensor or a tuple of numbers, so it loads with ``weights_only=True``.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


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


def read_if_present(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if the file exists, else ``None`` (a run that starts afresh)."""
    if path is None or not Path(path).exists():
        return None
    return load_checkpoint(path)  # a folder, a corrupt or foreign file: CheckpointError


def _class_name(obj: object) -> str | None:
    return type(obj).__qualname__ if obj is not None else None


def pack(
    *,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_iter: Iterable,
    history: dict[str, Any],
    num_epochs: int,
    lr: float,
    examples_seen: int,
) -> dict[str, Any]:
    """Everything a run needs to continue after its last completed epoch, as plain data.

    ``history`` is the run's history as a dict (``dataclasses.asdict``); ``num_epochs`` the
    epochs the run trains (after the profile's cap).  The training loader's shuffle state is
    kept when the loader has ``state_dict`` (a :class:`~d2l_utils.data.BatchLoader`).
    """
    loader_state = getattr(train_iter, "state_dict", None)
    return {
        "format": FORMAT,
        "version": VERSION,
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
        "history": history,
        "examples_seen": examples_seen,
        "rng": get_rng_state(),
        "loader": loader_state() if callable(loader_state) else None,
    }


_REFIT = "pass the settings it was written with, or delete it (or pass another checkpoint= path)"


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
    _check_shapes(state["model"], net, where)


def _check_shapes(saved: dict[str, torch.Tensor], net: nn.Module, where: str) -> None:
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in saved.items()}
    if ours == theirs:
        return
    problems = [f"missing {k}" for k in ours if k not in theirs]
    problems += [f"unexpected {k}" for k in theirs if k not in ours]
    problems += [
        f"{k} is {theirs[k]}, net has {ours[k]}"
        for k in ours
        if k in theirs and ours[k] != theirs[k]
    ]
    more = "; …" if len(problems) > 3 else ""
    raise CheckpointError(f"{where} does not fit net ({'; '.join(problems[:3])}{more}); {_REFIT}")


def restore(
    state: dict[str, Any],
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_iter: Iterable,
) -> tuple[dict[str, Any], int]:
    """Load a checked checkpoint into a run: returns its history (a dict) and examples seen.

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
    if state["loader"] is not None and hasattr(train_iter, "load_state_dict"):
        train_iter.load_state_dict(state["loader"])  # the shuffle of the next epoch, exactly
    set_rng_state(state["rng"])
    return state["history"], int(state["examples_seen"])
