"""The same training on both paths, to full length, to compare the test accuracy they reach."""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.cases import BOOK_SETTINGS, LABELS, MODELS
from benchmarks.machine import device_name
from benchmarks.reference import book_train_ch6
from benchmarks.textbook import BOOK_WORKERS, textbook_datasets, textbook_loader
from benchmarks.timing import load_splits
from d2l_utils import init_weights, train_ch6
from d2l_utils.data import BatchLoader

BATCH_SIZE = 256  # the book's


def _one_seed(
    model: str, seed: int, epochs: int, device: torch.device, data: tuple, num_workers: int
) -> dict[str, Any]:
    """Both paths from the same weights under ``seed``; their histories and times."""
    resize, lr = BOOK_SETTINGS[model]
    size = None if resize is None else (resize, resize)
    train, test, tv_train, tv_test = data
    torch.manual_seed(seed)
    net = MODELS[model]()
    net.apply(init_weights)
    twin = copy.deepcopy(net)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        h = train_ch6(
            net, BatchLoader(train, BATCH_SIZE, shuffle=True, resize=size, seed=seed),
            BatchLoader(test, BATCH_SIZE, resize=size), epochs, lr, device,
            init=False, profile="full", plot=False,
        )  # fmt: skip
    course = {
        "train_loss": h.train_loss, "train_acc": h.train_acc, "test_acc": h.test_acc,
        "time_s": time.perf_counter() - start,
    }  # fmt: skip
    start = time.perf_counter()
    ref = book_train_ch6(
        twin, textbook_loader(tv_train, BATCH_SIZE, True, num_workers, seed=seed),
        textbook_loader(tv_test, BATCH_SIZE, False, num_workers), epochs, lr, device, init=False,
    )  # fmt: skip
    textbook = {**ref, "time_s": time.perf_counter() - start}
    return {"seed": seed, "course": course, "textbook": textbook}


def compare_accuracy(
    model: str,
    epochs: int,
    seeds: Sequence[int],
    device: torch.device,
    *,
    data: str = "full",
    root: str | None = None,
    num_workers: int = BOOK_WORKERS,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``model`` with the book's settings on both paths, once per seed.

    For each seed both paths start from the same weights (the book's xavier init under that
    seed) and shuffle with that seed; they still see the batches in different orders (the
    DataLoader and the BatchLoader draw their permutations differently), so the spread over seeds
    within a path is the run-to-run noise the difference between the paths is compared with.
    """
    resize, lr = BOOK_SETTINGS[model]
    t0 = time.perf_counter()
    train, test = load_splits(data, root)
    splits = (train, test, *textbook_datasets(train, test, resize))
    runs = []
    for seed in seeds:
        run = _one_seed(model, seed, epochs, device, splits, num_workers)
        runs.append(run)
        book, course = run["textbook"], run["course"]
        log(
            f"seed {seed}: test acc textbook {book['test_acc'][-1]:.4f} "
            f"({book['time_s']:.0f} s), course {course['test_acc'][-1]:.4f} "
            f"({course['time_s']:.0f} s)"
        )
    final = {p: [r[p]["test_acc"][-1] for r in runs] for p in ("textbook", "course")}
    return {
        "command": command,
        "model": LABELS[model],
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "data": data,
        "epochs": epochs,
        "lr": lr,
        "batch_size": BATCH_SIZE,
        "input_px": 28 if resize is None else resize,
        "runs": runs,
        "final_test_acc": final,
        "mean": {p: statistics.fmean(v) for p, v in final.items()},
        "stdev": {p: statistics.stdev(v) if len(v) > 1 else 0.0 for p, v in final.items()},
        "total_s": time.perf_counter() - t0,
    }
