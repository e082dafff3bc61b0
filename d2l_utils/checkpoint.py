"""Checkpoints of :func:`d2l_utils.train.train_ch6`: written atomically, read safely.

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
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
