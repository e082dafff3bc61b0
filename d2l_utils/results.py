"""The results table of ``make run``: one row per trained model."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from torch import nn

from d2l_utils.measure import count_params
from d2l_utils.train import History

__all__ = ["record_result"]


def record_result(model: str, net: nn.Module, history: History, **extra: Any) -> dict[str, Any]:
    """Return a row describing a trained model; when ``D2L_RESULTS`` names a file, append it there.

    ``make run`` sets ``D2L_RESULTS`` (and ``D2L_NOTEBOOK``) while it executes the notebooks and
    turns the rows into ``build/results.md``.

    Raises:
        ValueError: for the history of an interrupted run (``history.interrupted``), which is not
            a result: the row would report epochs that were never trained.
    """
    if history.interrupted:
        raise ValueError(
            f"the run of {model!r} was interrupted after {history.num_epochs} of its epochs; an "
            "interrupted run is not recorded as a result (train it to the end, e.g. resume it "
            "with checkpoint=)"
        )
    row: dict[str, Any] = {
        "notebook": os.environ.get("D2L_NOTEBOOK", ""),
        "model": model,
        "parameters": count_params(net),
        "epochs": history.num_epochs,
        "train_acc": round(history.train_acc[-1], 4) if history.train_acc else None,
        "test_acc": round(history.test_acc[-1], 4) if history.test_acc else None,
        "examples_per_sec": (
            round(history.examples_per_sec, 1) if math.isfinite(history.examples_per_sec) else None
        ),
        "time_s": round(history.total_time, 1),
        "device": history.device,
        "profile": history.profile,
        **extra,
    }
    path = os.environ.get("D2L_RESULTS")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row
