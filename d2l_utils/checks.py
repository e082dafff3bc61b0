"""Argument checks shared by :mod:`d2l_utils.data` and :mod:`d2l_utils.train`.

Each check either returns the value in its plain Python type or raises a ``ValueError`` that
names the argument and shows what was given, so a typo is reported before any work starts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

__all__ = ["integer", "num_batches", "positive_int", "positive_number", "size_pair"]


def _is_int(value: object) -> bool:
    # bool is an Integral too, but num_epochs=True is a mistake, not 1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def integer(value: object, name: str) -> int:
    """``value`` as an ``int`` (NumPy integers accepted)."""
    if not _is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def positive_int(value: object, name: str) -> int:
    """``value`` as an ``int`` of at least 1."""
    if not _is_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)  # type: ignore[call-overload]


def positive_number(value: object, name: str) -> float:
    """``value`` as a positive, finite ``float`` (a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return float(value)


def size_pair(value: object, name: str) -> tuple[int, int] | None:
    """An image size ``s`` or ``(h, w)`` as ``(h, w)``; ``None`` stays ``None``."""
    if value is None:
        return None
    pair = (value, value) if _is_int(value) else value
    if (
        isinstance(pair, Sequence) and len(pair) == 2 and all(_is_int(v) and v > 0 for v in pair)  # type: ignore[operator]
    ):
        return (int(pair[0]), int(pair[1]))
    raise ValueError(f"{name} must be a positive int or a pair (height, width), got {value!r}")


def num_batches(data_iter: Iterable, name: str) -> int:
    """The number of batches of a loader, which must have a length and at least one batch."""
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
