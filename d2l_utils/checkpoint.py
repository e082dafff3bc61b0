"""The package's one file format: every file d2l_utils writes with ``torch.save``.

A file holds a small header and the caller's state::

    {"format": "d2l_utils", "version": 1, "kind": "model", "state": {...}}

``kind`` says what the state is: ``"train_ch6"`` (a run of :func:`d2l_utils.train.train_ch6`,
to resume), ``"model"`` (:func:`d2l_utils.predict.save_model`'s file, for ``d2l-predict``) or
``"distributed"`` (a run of :mod:`d2l_utils.distributed`).  :func:`save_checkpoint` writes a file,
:func:`load_checkpoint` is the one reader: it refuses anything but a file of this format, version
and kind with the keys the caller needs, with one :class:`CheckpointError` line that names the
file, what is wrong with it and what to do.

The state holds plain data only (tensors, numbers, strings, lists, dicts), so a file is read with
``torch.load(..., weights_only=True)``, which cannot run code hidden in a file from an untrusted
source (a full unpickler runs whatever the file tells it to).

Writing goes to a temporary file in the same folder, which is flushed to disk and read back
before ``os.replace`` renames it over the old file.  A rename within one folder is atomic, so a
crash, a full disk or an interrupt at any moment leaves either the old file or the new one, never
half of one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "KINDS",
    "VERSION",
    "CheckpointError",
    "load_checkpoint",
    "save_checkpoint",
    # train_ch6 resume, moving to d2l_utils.robust
]

FORMAT = "d2l_utils"
VERSION = 1
# Each kind of file: what the messages call it, what it is, and what to do about a bad one.
KINDS = {
    "train_ch6": (
        "checkpoint", "a train_ch6 checkpoint",
        "delete it to start over, or pass another checkpoint= path",
    ),
    "model": (
        "model file", "a model file (d2l_utils.predict.save_model)",
        "pass a file written by d2l_utils.predict.save_model",
    ),
    "distributed": (
        "checkpoint", "a d2l_utils.distributed checkpoint",
        "delete it to start over, or pass another --checkpoint path",
    ),
}  # fmt: skip


class CheckpointError(ValueError):
    """A file that cannot be used: missing, truncated, corrupt, or of another format or kind."""


def _check_kind(kind: str) -> tuple[str, str, str]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return KINDS[kind]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any], kind: str) -> Path:
    """Write ``state`` as a file of ``kind`` atomically; the previous file survives any failure.

    The data go to a temporary file beside ``path`` (same file system, so the final rename is
    atomic), are flushed to disk and read back with ``weights_only=True`` (so a file that could
    not be loaded is never written), and only then replace ``path``.
    """
    _check_kind(kind)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, "kind": kind, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        torch.load(tmp, map_location="cpu", weights_only=True)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


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


def load_checkpoint(
    path: str | os.PathLike[str], kind: str, required: Collection[str] = ()
) -> dict[str, Any]:
    """The state of a file of ``kind`` written by :func:`save_checkpoint`, on the CPU.

    Read with ``weights_only=True``: plain data only, so loading runs no code from the file.

    Raises:
        CheckpointError: one line naming the file, what is wrong and what to do, if it is a
            folder or missing, cannot be read (truncated, corrupt, not plain data), or is not a
            file of this format, version and kind, or its state lacks a ``required`` key.
    """
    noun, _, fix = _check_kind(kind)
    path = Path(path)
    where = f"{noun} {path}"
    if path.is_dir():
        raise CheckpointError(f"{where} is a folder; expected a file")
    if not path.exists():
        raise CheckpointError(f"{where} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about old pickles: the error says enough
            warnings.simplefilter("ignore")
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"{where} {_unreadable(path, exc)}; {fix}") from exc
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a d2l_utils file (it holds {_what(saved)}); {fix}")
    if saved.get("version") != VERSION:
        raise CheckpointError(
            f"{where} has format version {saved.get('version')!r}, this d2l_utils reads "
            f"version {VERSION}; {fix}"
        )
    if saved.get("kind") != kind:
        other = KINDS.get(saved.get("kind"), (None, f"of kind {saved.get('kind')!r}"))[1]
        raise CheckpointError(f"{where} is {other}, not {KINDS[kind][1]}; {fix}")
    state = saved.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} holds no state dict; {fix}")
    missing = sorted(set(required) - state.keys())
    if missing:
        raise CheckpointError(f"{where} lacks {', '.join(missing)}; {fix}")
    return state


def _unreadable(path: Path, exc: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in a few words."""
    if isinstance(exc, OSError):  # no permission, an I/O error: the file may be fine
        return f"cannot be read ({exc.strerror or exc})"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return "is not a file written by torch.save, or was cut short"
    if isinstance(exc, pickle.UnpicklingError):  # weights_only met something else
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        return (
            f"holds {unsafe[1] if unsafe else 'an object'}, which is not plain data (tensors, "
            "numbers, strings, lists, dicts): not loaded, since unpickling it could run code"
        )
    # torch's messages run to paragraphs; their first sentence names the problem.
    first = re.split(r"\.\s|\n", str(exc).strip(), maxsplit=1)[0]
    return f"is damaged ({type(exc).__name__}: {first[:150]})"


def _what(saved: object) -> str:
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__}"
    if "format" in saved:
        return f"format {saved['format']!r}"
    if saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        return "a bare state_dict"
    return "a dict without the d2l_utils header"
