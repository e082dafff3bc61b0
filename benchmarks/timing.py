"""Timing both paths on one model, taking turns, and the whole benchmark run.

Both paths train the same model, from the same initial weights, on the same images, with the same
batch size, learning rate and device, in one process and taking turns (the order alternates, and
the medians over the turns are reported), so a machine that gets busier or quieter during the run
affects both alike.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.cases import Case
from benchmarks.machine import default_peak_size, device_name, peaks, sync
from benchmarks.reference import book_evaluate, book_train_epoch
from benchmarks.textbook import BOOK_WORKERS, textbook_datasets, textbook_loader, with_transform
from d2l_utils import History, init_weights, train_ch6
from d2l_utils.data import BatchLoader, FashionMNIST, load_data, load_sample
from d2l_utils.measure import count_flops

FLOPS_CONVENTION = (
    "training FLOPs per image = 3 x forward FLOPs (torch.utils.flop_counter: convolutions and "
    "matrix multiplies, 1 multiply-add = 2 FLOPs)"
)
# When a case times a few batches, train_ch6 (which always evaluates) gets this many test images.
FEW_TEST_IMAGES = 8


@dataclass
class PathTiming:
    """The timed runs of one path for one model (lists: one entry per timed run)."""

    images: int = 0  # training images per run
    train_s: list[float] = field(default_factory=list)  # training loop, wall clock, data included
    epoch_s: list[float] = field(default_factory=list)  # training + test evaluation (epochs only)
    book_s: list[float] = field(default_factory=list)  # textbook: the book's per-batch Timer
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)

    def img_s(self) -> float:
        return self.images / statistics.median(self.train_s)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_img_s": self.img_s(),
            "train_s_median": statistics.median(self.train_s),
            **{k: v for k, v in vars(self).items() if v != []},
        }
        if self.epoch_s:
            out["epoch_s_median"] = statistics.median(self.epoch_s)
        if self.book_s:
            out["book_timer_img_s"] = self.images / statistics.median(self.book_s)
        return out


def course_epoch(
    net: nn.Module,
    train_iter: BatchLoader,
    test_iter: BatchLoader,
    lr: float,
    device: torch.device,
    options: dict[str, Any],
) -> tuple[History, float]:
    """One epoch of the course's ``train_ch6`` (its printed lines swallowed) and its wall time.

    ``options`` are extra keyword arguments of ``train_ch6`` (``compile``, ``channels_last``).
    """
    sync(device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        history = train_ch6(
            net, train_iter, test_iter, 1, lr, device,
            init=False, profile="full", plot=False, **options,
        )  # fmt: skip
    sync(device)
    return history, time.perf_counter() - start


def textbook_epoch(
    net: nn.Module,
    train_iter: torch.utils.data.DataLoader,
    test_iter: torch.utils.data.DataLoader | None,
    lr: float,
    device: torch.device,
) -> tuple[dict[str, float], float | None, float]:
    """One epoch of the book's loop, then (if ``test_iter``) its evaluation; and the wall time."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    sync(device)
    start = time.perf_counter()
    stats = book_train_epoch(net, train_iter, optimizer, nn.CrossEntropyLoss(), device)
    test_acc = book_evaluate(net, test_iter, device) if test_iter is not None else None
    sync(device)
    return stats, test_acc, time.perf_counter() - start


@dataclass
class _Turns:
    """One case's two nets and data; each method trains one path for one run."""

    case: Case
    device: torch.device
    nets: dict[str, nn.Module]
    train: FashionMNIST
    test: FashionMNIST
    tv: tuple[Any, Any]  # torchvision's train and test datasets, with the case's transform
    num_workers: int
    options: dict[str, Any]

    @property
    def limit(self) -> int | None:
        """Training images per timed run when the case times a few batches."""
        if self.case.batches is None:
            return None
        return min(self.case.batches * self.case.batch_size, len(self.train))

    def course_loaders(
        self, n: int | None, test: int | None, seed: int
    ) -> tuple[BatchLoader, BatchLoader]:
        """Loaders over the first ``n`` training and ``test`` test images (``None``: all)."""
        size = None if self.case.resize is None else (self.case.resize, self.case.resize)
        train = self.train if n is None else self.train.subset(torch.arange(n))
        few = self.test if test is None else self.test.subset(torch.arange(test))
        bs = self.case.batch_size
        return (
            BatchLoader(train, bs, shuffle=True, resize=size, seed=seed),
            BatchLoader(few, bs, shuffle=False, resize=size),
        )

    def warm_up(self, seed: int) -> None:
        """``case.warmup`` batches on each path, untimed (kernel selection, allocations)."""
        w = min(self.case.warmup * self.case.batch_size, len(self.train))
        tr, te = self.course_loaders(w, FEW_TEST_IMAGES, seed)
        course_epoch(self.nets["course"], tr, te, self.case.lr, self.device, self.options)
        bs, workers = self.case.batch_size, self.num_workers
        textbook_epoch(
            self.nets["textbook"],
            textbook_loader(self.tv[0], bs, True, workers, limit=w, seed=seed),
            textbook_loader(self.tv[1], bs, False, workers, limit=FEW_TEST_IMAGES),
            self.case.lr,
            self.device,
        )

    def course(self, t: PathTiming, seed: int) -> None:
        limit = self.limit
        tr, te = self.course_loaders(limit, None if limit is None else FEW_TEST_IMAGES, seed)
        h, wall = course_epoch(self.nets["course"], tr, te, self.case.lr, self.device, self.options)
        t.images = len(tr.dataset)
        t.train_s.append(h.epoch_time[0])
        t.train_loss.append(h.train_loss[0])
        t.train_acc.append(h.train_acc[0])
        if limit is None:
            t.epoch_s.append(wall)
            t.test_acc.append(h.test_acc[0])

    def textbook(self, t: PathTiming, seed: int) -> None:
        limit, bs, workers = self.limit, self.case.batch_size, self.num_workers
        tr = textbook_loader(self.tv[0], bs, True, workers, limit=limit, seed=seed)
        te = textbook_loader(self.tv[1], bs, False, workers) if limit is None else None
        stats, test_acc, wall = textbook_epoch(
            self.nets["textbook"], tr, te, self.case.lr, self.device
        )
        t.images = int(stats["images"])
        # A whole epoch includes the DataLoader's start; a few batches leave it out.
        t.train_s.append(stats["wall_s"] - (stats["first_batch_s"] if limit is not None else 0.0))
        t.book_s.append(stats["book_s"])
        t.train_loss.append(stats["train_loss"])
        t.train_acc.append(stats["train_acc"])
        if test_acc is not None:
            t.epoch_s.append(wall)
            t.test_acc.append(test_acc)


def run_case(
    case: Case,
    train: FashionMNIST,
    test: FashionMNIST,
    device: torch.device,
    repeats: int,
    *,
    num_workers: int = BOOK_WORKERS,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    textbook: tuple[Any, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, PathTiming]:
    """Time ``case`` on both paths, ``repeats`` times each, taking turns.

    Both nets start from the same weights (the book's xavier init under ``seed``); each path keeps
    training its own net from run to run.  Before the timed runs each path trains
    ``case.warmup`` batches (and evaluates a few images), so one-off costs such as kernel
    selection are not timed.

    Args:
        options: extra keyword arguments of the course's ``train_ch6``.
        textbook: torchvision datasets of ``train`` and ``test`` to reuse (any transform);
            by default they are made by :func:`~benchmarks.textbook.textbook_datasets`.
    """
    torch.manual_seed(seed)
    first = case.build()
    first.apply(init_weights)
    nets = {"course": first.to(device), "textbook": copy.deepcopy(first).to(device)}
    if textbook is None:
        tv = textbook_datasets(train, test, case.resize)
    else:
        tv = (with_transform(textbook[0], case.resize), with_transform(textbook[1], case.resize))
    turns = _Turns(case, device, nets, train, test, tv, num_workers, options or {})
    if case.warmup:
        turns.warm_up(seed)
    timings = {"course": PathTiming(), "textbook": PathTiming()}
    for r in range(repeats):
        for path in ("course", "textbook") if r % 2 == 0 else ("textbook", "course"):
            t = timings[path]
            getattr(turns, path)(t, seed + r)
            what = f"{t.images:,} images in {t.train_s[-1]:.2f} s"
            if t.epoch_s:
                what += f", epoch with test evaluation {t.epoch_s[-1]:.2f} s"
            log(f"  {case.name} {path:8s} run {r + 1}/{repeats}: {what}")
    return timings


def batches_text(n: int) -> str:
    return f"{n} batch{'' if n == 1 else 'es'}"


def case_result(
    case: Case,
    timings: dict[str, PathTiming],
    device: torch.device,
    peak_gflops: dict[str, float],
) -> dict[str, Any]:
    """What one case measured: both paths' summaries, the speed-ups and the fraction of peak."""
    fwd = count_flops(case.build(), (1, 1, case.side, case.side))
    train_flops = 3 * fwd
    course, book = timings["course"].summary(), timings["textbook"].summary()
    # The course path trains under bf16 autocast on CUDA: compare it with the bf16 peak there.
    on_cuda = device.type == "cuda" and "bf16" in peak_gflops
    course_peak = peak_gflops["bf16"] if on_cuda else peak_gflops["fp32"]
    result: dict[str, Any] = {
        "model": case.name,
        "input_px": case.side,
        "batch_size": case.batch_size,
        "lr": case.lr,
        "timed": "epoch" if case.batches is None else batches_text(case.batches),
        "repeats": len(timings["course"].train_s),
        "forward_flops_per_image": fwd,
        "train_flops_per_image": train_flops,
        "textbook": book,
        "course": course,
        "speedup_train": course["train_img_s"] / book["train_img_s"],
        "fraction_of_peak": {
            "textbook": book["train_img_s"] * train_flops / (peak_gflops["fp32"] * 1e9),
            "course": course["train_img_s"] * train_flops / (course_peak * 1e9),
        },
    }
    if "epoch_s_median" in course and "epoch_s_median" in book:
        result["speedup_epoch"] = book["epoch_s_median"] / course["epoch_s_median"]
    return result


def load_splits(data: str, root: str | None) -> tuple[FashionMNIST, FashionMNIST]:
    """The training and test images: the bundled ``sample`` or the ``full`` Fashion-MNIST."""
    if data == "sample":
        return load_sample(train=True), load_sample(train=False)
    # Found (or downloaded) as load_data finds it: root=, D2L_DATA_DIR, the cache folder.
    train_iter, test_iter = load_data(256, root=root, profile="full")
    return train_iter.dataset, test_iter.dataset


def run_bench(
    cases: Sequence[Case],
    device: torch.device,
    repeats: int,
    *,
    data: str = "full",
    root: str | None = None,
    num_workers: int = BOOK_WORKERS,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    peak_size: int | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time every case on both paths and return the report (as written to ``bench.json``)."""
    t0 = time.perf_counter()
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    train, test = load_splits(data, root)
    log(f"data: {len(train):,} training and {len(test):,} test images ({data})")
    peak = peaks(device, peak_size)
    log("matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()))
    textbook = textbook_datasets(train, test, None)  # read once; each case sets its transform
    timed = []
    for case in cases:
        how = "whole epochs" if case.batches is None else batches_text(case.batches)
        log(f"{case.name} at {case.side} px, batch {case.batch_size}, timed: {how}")
        kwargs = {"num_workers": num_workers, "seed": seed, "options": options}
        timed.append(
            run_case(case, train, test, device, repeats, textbook=textbook, log=log, **kwargs)
        )
    # The ceiling is the best rate the machine showed in this run: measure again at the end.
    for key, value in peaks(device, peak_size).items():
        peak[key] = max(peak[key], value)
    return {
        "command": command,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "data": data,
        "textbook_workers": num_workers,
        "repeats": repeats,
        "seed": seed,
        "course_options": options or {},
        "peak_gflops": peak,
        "peak_matmul_size": peak_size or default_peak_size(device),
        "flops_convention": FLOPS_CONVENTION,
        "load_average": {"start": load_before, "end": os.getloadavg() if load_before else None},
        "results": [
            case_result(case, t, device, peak) for case, t in zip(cases, timed, strict=True)
        ],
        "total_s": time.perf_counter() - t0,
    }
