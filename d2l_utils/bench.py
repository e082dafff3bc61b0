"""The course's data path and training loop against the textbook's, timed side by side.

    python -m d2l_utils.bench            # LeNet-BN at 28 px, ResNet-18 and DenseNet at 96 px
    python -m d2l_utils.bench --quick    # the same, in under 2 minutes on a 2-core CPU

Both paths train the same model, from the same initial weights, on the same images, with the same
batch size, learning rate and device, in one process and taking turns (the order alternates, and
the medians over the turns are reported), so a machine that gets busier or quieter during the run
affects both alike:

``textbook``
    torchvision's ``FashionMNIST`` with ``Resize``/``ToTensor`` transforms, ``DataLoader`` with the
    book's 4 worker processes, and the book's ``train_ch6`` loop, which copies the loss and the
    number of correct predictions to the host after every batch.
``course``
    :class:`d2l_utils.data.BatchLoader` (the loader :func:`d2l_utils.load_data` returns: uint8
    images in memory, each batch indexed, converted and resized at once) and
    :func:`d2l_utils.train_ch6`.

What is reported, for each model:

* training images/s of each path: images over the wall-clock time of the training loop, data
  included (the book's own ``examples/sec`` counts only the time inside each batch's step; it is
  kept in the JSON as ``book_timer_img_s``), and the ratio course/textbook;
* for models timed over whole epochs: the end-to-end epoch time, training plus test evaluation;
* the fraction of the machine's matrix-multiply rate that training reaches: images/s x training
  FLOPs per image / peak FLOP/s.  Training FLOPs per image are 3x the forward FLOPs counted by
  ``torch.utils.flop_counter`` (convolutions and matrix multiplies, 1 multiply-add = 2 FLOPs);
  the peak is the best of several square ``torch.mm`` in float32 (and in bfloat16 on CUDA, where
  the course path trains under bf16 autocast), measured at the start and the end of the run.

The results go to ``build/bench.json`` and ``build/bench.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from d2l_utils.data import BatchLoader, FashionMNIST, load_data, load_sample
from d2l_utils.measure import count_flops
from d2l_utils.train import History, accuracy, init_weights, train_ch6

__all__ = [
    "Case",
    "PathTiming",
    "book_evaluate",
    "book_train_ch6",
    "book_train_epoch",
    "compare_accuracy",
    "default_cases",
    "device_name",
    "main",
    "matmul_peak",
    "run_bench",
    "run_case",
    "textbook_datasets",
    "textbook_loader",
    "to_markdown",
    "write_idx",
]

# The book's get_dataloader_workers(): 4 processes, whatever the machine.
BOOK_WORKERS = 4
FLOPS_CONVENTION = (
    "training FLOPs per image = 3 x forward FLOPs (torch.utils.flop_counter: convolutions and "
    "matrix multiplies, 1 multiply-add = 2 FLOPs)"
)


# --------------------------------------------------------------------------------------------
# What is timed
# --------------------------------------------------------------------------------------------


def _lenet_bn() -> nn.Module:
    from d2l_utils.lenet import lenet_bn

    return lenet_bn()


def _resnet18() -> nn.Module:
    from d2l_utils.resnet import resnet18

    return resnet18(num_classes=10, in_channels=1)


def _densenet() -> nn.Module:
    from d2l_utils.densenet import densenet

    return densenet()


@dataclass(frozen=True)
class Case:
    """One model to time, with the book's settings for it.

    ``batches=None`` times whole epochs: the full training set, then the test set is evaluated,
    so the end-to-end epoch time is measured.  An integer times that many training batches (drawn
    from the first ``batches * batch_size`` training images) and skips the evaluation; the
    textbook's one-off start of each epoch (forking its workers, waiting for the first batch),
    which a whole epoch amortises, is then left out of its time.  ``warmup`` batches are
    trained on each path, untimed, before the timed runs.
    """

    name: str
    build: Callable[[], nn.Module]
    resize: int | None  # image side in pixels; None keeps 28 px
    lr: float
    batch_size: int = 256
    batches: int | None = None
    warmup: int = 2

    @property
    def side(self) -> int:
        return 28 if self.resize is None else self.resize


MODELS: dict[str, Callable[[], nn.Module]] = {
    "lenet_bn": _lenet_bn,
    "resnet18": _resnet18,
    "densenet": _densenet,
}
LABELS = {"lenet_bn": "LeNet-BN", "resnet18": "ResNet-18", "densenet": "DenseNet"}
# The book's settings: (resize, lr) with batch size 256.
BOOK_SETTINGS = {"lenet_bn": (None, 1.0), "resnet18": (96, 0.05), "densenet": (96, 0.1)}


def default_cases(
    quick: bool,
    device: torch.device,
    models: Sequence[str] = tuple(MODELS),
    batch_size: int | None = None,
    batches: int | None = None,
) -> list[Case]:
    """The models to time and how long.

    LeNet-BN is always timed over whole epochs (its target is the end-to-end epoch).  ResNet-18
    and DenseNet at 96 px take minutes per epoch on a CPU, so there they are timed over a few
    batches; with ``quick``, one batch per run and no separate warm-up (the median of the runs
    leaves out the cold first one).  On a GPU every model is timed over whole epochs.
    """
    cases = []
    for key in models:
        resize, lr = BOOK_SETTINGS[key]
        whole_epochs = key == "lenet_bn" or device.type != "cpu"
        n = None if whole_epochs else (1 if quick else 4)
        n = n if batches is None else batches
        warmup = 0 if quick and n is not None else (2 if n is None else 1)
        cases.append(
            Case(
                LABELS[key],
                MODELS[key],
                resize,
                lr,
                batch_size=batch_size or 256,
                batches=n,
                warmup=warmup,
            )  # fmt: skip
        )
    return cases


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


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    """Wait for the device, so that a clock read afterwards includes all queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    """A readable name of the device, e.g. ``NVIDIA H100 80GB HBM3`` or ``AMD EPYC, 2 cores``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def matmul_peak(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None, repeats: int = 5
) -> float:
    """Best rate of an ``n x n`` matrix multiply, in GFLOP/s (``2 n^3`` FLOPs each).

    ``n`` defaults to 2048 on a CPU and 8192 on a GPU (large enough to keep either busy).  Each
    timing repeats the multiply for at least ~50 ms, between device synchronisations.
    """
    n = n or (2048 if device.type == "cpu" else 8192)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)  # warm-up: library initialisation, kernel selection
    _sync(device)
    t = time.perf_counter()
    torch.mm(a, b, out=c)
    _sync(device)
    inner = max(1, int(0.05 / max(time.perf_counter() - t, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b, out=c)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return 2 * n**3 / best / 1e9


# --------------------------------------------------------------------------------------------
# The textbook path: torchvision dataset + DataLoader, and the book's loop
# --------------------------------------------------------------------------------------------


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (labels ``(N,)`` or images ``(N, 28, 28)``)."""
    array = data.to(torch.uint8).cpu().contiguous().numpy()
    magic = 0x800 | array.ndim  # 0x08: unsigned bytes; low byte: number of dimensions
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.tobytes())


def textbook_datasets(
    train: FashionMNIST, test: FashionMNIST, resize: int | None
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """torchvision's ``FashionMNIST`` holding exactly ``train``'s and ``test``'s images.

    The images are written in torchvision's layout (``FashionMNIST/raw/*-ubyte``) to a temporary
    folder and read back by torchvision, offline; its dataset keeps them in memory, so the folder
    is removed before returning.  Transforms are the book's: ``Resize(resize)`` if asked, then
    ``ToTensor``, applied to one PIL image at a time.
    """
    from torchvision import datasets

    trans = book_transform(resize)
    with tempfile.TemporaryDirectory(prefix="d2l_bench_") as root:
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, split in (("train", train), ("t10k", test)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", split.images)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", split.labels)
        out = tuple(
            datasets.FashionMNIST(root, train=is_train, transform=trans, download=False)
            for is_train in (True, False)
        )
    return out  # type: ignore[return-value]


def book_transform(resize: int | None) -> Callable[[Any], torch.Tensor]:
    """The book's per-image transform: ``Resize(resize)`` if asked, then ``ToTensor``."""
    from torchvision import transforms

    steps: list[Any] = [transforms.ToTensor()]
    if resize is not None:
        steps.insert(0, transforms.Resize(resize))
    return transforms.Compose(steps)


def _with_transform(dataset: Any, resize: int | None) -> Any:
    """A shallow copy of a torchvision dataset (sharing its images) with the book's transform."""
    out = copy.copy(dataset)
    out.transform = book_transform(resize)
    return out


def textbook_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = BOOK_WORKERS,
    limit: int | None = None,
    seed: int = 0,
) -> torch.utils.data.DataLoader:
    """The book's ``DataLoader`` over ``dataset`` (its first ``limit`` items, if given)."""
    if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
        dataset = torch.utils.data.Subset(dataset, range(limit))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def book_evaluate(net: nn.Module, data_iter: Iterable, device: torch.device) -> float:
    """The book's ``evaluate_accuracy_gpu``: eval mode, one host copy per batch."""
    net.eval()
    correct = count = 0.0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += accuracy(net(X), y)
            count += y.numel()
    return correct / count


def book_train_epoch(
    net: nn.Module,
    train_iter: Iterable,
    optimizer: torch.optim.Optimizer,
    loss: nn.Module,
    device: torch.device,
    on_batch: Callable[[int, float, float], None] | None = None,
) -> dict[str, float]:
    """One epoch of the book's ``train_ch6`` loop.

    Every batch ends by turning the summed loss and the number of correct predictions into
    Python floats (the book's ``Accumulator.add``), which waits for the device each time.

    Args:
        on_batch: called as ``on_batch(i, mean loss so far, accuracy so far)`` after batch ``i``.

    Returns:
        ``train_loss``, ``train_acc``, ``images``, ``wall_s`` (the whole loop, data included),
        ``first_batch_s`` (from the start of the loop until the first batch is there: for a
        DataLoader with workers, their start) and ``book_s`` (the book's Timer: only the time
        from receiving a batch to its metrics).
    """
    net.train()
    loss_sum = correct = count = 0.0
    book_s = first_batch_s = 0.0
    start = time.perf_counter()
    for i, (X, y) in enumerate(train_iter):
        t = time.perf_counter()
        if i == 0:
            first_batch_s = t - start
        optimizer.zero_grad()
        X, y = X.to(device), y.to(device)
        y_hat = net(X)
        batch_loss = loss(y_hat, y)
        batch_loss.backward()
        optimizer.step()
        with torch.no_grad():
            loss_sum += float(batch_loss * X.shape[0])
            correct += accuracy(y_hat, y)
            count += X.shape[0]
        book_s += time.perf_counter() - t
        if on_batch is not None:
            on_batch(i, loss_sum / count, correct / count)
    _sync(device)
    wall = time.perf_counter() - start
    return {
        "train_loss": loss_sum / count,
        "train_acc": correct / count,
        "images": count,
        "wall_s": wall,
        "first_batch_s": first_batch_s,
        "book_s": book_s,
    }


def book_train_ch6(
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable,
    num_epochs: int,
    lr: float,
    device: torch.device,
    init: bool = True,
    on_batch: Callable[[float, float, float], None] | None = None,
) -> dict[str, list[float]]:
    """The book's ``train_ch6`` (xavier init, SGD, cross-entropy), per-batch synchronising.

    Args:
        on_batch: called as ``on_batch(x, loss, acc)`` at the book's five plot points per epoch,
            ``x = epoch + (i + 1) / num_batches``.

    Returns:
        Lists, one entry per epoch: ``train_loss``, ``train_acc``, ``test_acc``.
    """
    if init:
        net.apply(init_weights)
    net.to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    loss = nn.CrossEntropyLoss()
    num_batches = len(train_iter)  # type: ignore[arg-type]
    history: dict[str, list[float]] = {"train_loss": [], "train_acc": [], "test_acc": []}
    for epoch in range(num_epochs):

        def plot_point(i: int, lo: float, acc: float, epoch: int = epoch) -> None:
            # The book's animator gets a point every num_batches // 5 batches and at the end.
            if on_batch is not None and (
                (i + 1) % max(num_batches // 5, 1) == 0 or i == num_batches - 1
            ):
                on_batch(epoch + (i + 1) / num_batches, lo, acc)

        stats = book_train_epoch(net, train_iter, optimizer, loss, device, plot_point)
        history["train_loss"].append(stats["train_loss"])
        history["train_acc"].append(stats["train_acc"])
        history["test_acc"].append(book_evaluate(net, test_iter, device))
    return history


# --------------------------------------------------------------------------------------------
# Running one model
# --------------------------------------------------------------------------------------------


def _course_run(
    net: nn.Module,
    train_iter: BatchLoader,
    test_iter: BatchLoader,
    lr: float,
    device: torch.device,
    options: dict[str, Any],
) -> tuple[History, float]:
    """One epoch of the course's ``train_ch6`` (its printed lines swallowed); wall time too.

    ``options`` are extra keyword arguments of ``train_ch6`` (``compile``, ``channels_last``).
    """
    _sync(device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        history = train_ch6(
            net, train_iter, test_iter, 1, lr, device,
            init=False, profile="full", plot=False, **options,
        )  # fmt: skip
    _sync(device)
    return history, time.perf_counter() - start


def _textbook_run(
    net: nn.Module,
    train_iter: Iterable,
    test_iter: Iterable | None,
    lr: float,
    device: torch.device,
) -> tuple[dict[str, float], float | None, float]:
    """One epoch of the book's loop, then (if ``test_iter``) its evaluation; wall time too."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    _sync(device)
    start = time.perf_counter()
    stats = book_train_epoch(net, train_iter, optimizer, nn.CrossEntropyLoss(), device)
    test_acc = book_evaluate(net, test_iter, device) if test_iter is not None else None
    _sync(device)
    return stats, test_acc, time.perf_counter() - start


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
            by default they are made by :func:`textbook_datasets`.
    """
    options = options or {}
    torch.manual_seed(seed)
    first = case.build()
    first.apply(init_weights)
    nets = {"course": first.to(device), "textbook": copy.deepcopy(first).to(device)}
    size = None if case.resize is None else (case.resize, case.resize)
    bs = case.batch_size
    limit = None if case.batches is None else min(case.batches * bs, len(train))
    course_train = train if limit is None else train.subset(torch.arange(limit))
    if textbook is None:
        tv_train, tv_test = textbook_datasets(train, test, case.resize)
    else:
        tv_train, tv_test = (_with_transform(d, case.resize) for d in textbook)

    def course_loaders(
        data: FashionMNIST, evaluate: int | None, seed: int
    ) -> tuple[BatchLoader, BatchLoader]:
        # train_ch6 always evaluates; when the case skips evaluation it gets a handful of images.
        few = test if evaluate is None else test.subset(torch.arange(min(evaluate, len(test))))
        return (
            BatchLoader(data, bs, shuffle=True, resize=size, seed=seed),
            BatchLoader(few, bs, shuffle=False, resize=size),
        )

    if case.warmup:  # untimed
        w = min(case.warmup * bs, len(train))
        warm_train, warm_test = course_loaders(train.subset(torch.arange(w)), 8, seed)
        _course_run(nets["course"], warm_train, warm_test, case.lr, device, options)
        _textbook_run(
            nets["textbook"],
            textbook_loader(tv_train, bs, True, num_workers, limit=w, seed=seed),
            textbook_loader(tv_test, bs, False, num_workers, limit=8),
            case.lr,
            device,
        )

    timings = {"course": PathTiming(), "textbook": PathTiming()}
    for r in range(repeats):
        order = ("course", "textbook") if r % 2 == 0 else ("textbook", "course")
        for path in order:
            t = timings[path]
            if path == "course":
                tr, te = course_loaders(course_train, None if limit is None else 8, seed + r)
                h, wall = _course_run(nets["course"], tr, te, case.lr, device, options)
                t.images = len(tr.dataset)
                t.train_s.append(h.epoch_time[0])
                t.train_loss.append(h.train_loss[0])
                t.train_acc.append(h.train_acc[0])
                if limit is None:
                    t.epoch_s.append(wall)
                    t.test_acc.append(h.test_acc[0])
            else:
                tr_tv = textbook_loader(tv_train, bs, True, num_workers, limit=limit, seed=seed + r)
                te_tv = textbook_loader(tv_test, bs, False, num_workers) if limit is None else None
                stats, test_acc, wall = _textbook_run(
                    nets["textbook"], tr_tv, te_tv, case.lr, device
                )
                t.images = int(stats["images"])
                # A whole epoch includes the DataLoader's start; a few batches leave it out.
                start = stats["first_batch_s"] if limit is not None else 0.0
                t.train_s.append(stats["wall_s"] - start)
                t.book_s.append(stats["book_s"])
                t.train_loss.append(stats["train_loss"])
                t.train_acc.append(stats["train_acc"])
                if test_acc is not None:
                    t.epoch_s.append(wall)
                    t.test_acc.append(test_acc)
            what = f"{t.images:,} images in {t.train_s[-1]:.2f} s"
            if t.epoch_s:
                what += f", epoch with test evaluation {t.epoch_s[-1]:.2f} s"
            log(f"  {case.name} {path:8s} run {r + 1}/{repeats}: {what}")
    return timings


def _batches(n: int) -> str:
    return f"{n} batch{'' if n == 1 else 'es'}"


def _case_result(
    case: Case,
    timings: dict[str, PathTiming],
    device: torch.device,
    peaks: dict[str, float],
) -> dict[str, Any]:
    fwd = count_flops(case.build(), (1, 1, case.side, case.side))
    train_flops = 3 * fwd
    course, book = timings["course"].summary(), timings["textbook"].summary()
    # The course path trains under bf16 autocast on CUDA: compare it with the bf16 peak there.
    course_peak = peaks["bf16"] if device.type == "cuda" and "bf16" in peaks else peaks["fp32"]
    result: dict[str, Any] = {
        "model": case.name,
        "input_px": case.side,
        "batch_size": case.batch_size,
        "lr": case.lr,
        "timed": "epoch" if case.batches is None else _batches(case.batches),
        "repeats": len(timings["course"].train_s),
        "forward_flops_per_image": fwd,
        "train_flops_per_image": train_flops,
        "textbook": book,
        "course": course,
        "speedup_train": course["train_img_s"] / book["train_img_s"],
        "fraction_of_peak": {
            "textbook": book["train_img_s"] * train_flops / (peaks["fp32"] * 1e9),
            "course": course["train_img_s"] * train_flops / (course_peak * 1e9),
        },
    }
    if "epoch_s_median" in course and "epoch_s_median" in book:
        result["speedup_epoch"] = book["epoch_s_median"] / course["epoch_s_median"]
    return result


# --------------------------------------------------------------------------------------------
# The whole run and its report
# --------------------------------------------------------------------------------------------


def _load_splits(data: str, root: str | None) -> tuple[FashionMNIST, FashionMNIST]:
    if data == "sample":
        return load_sample(train=True), load_sample(train=False)
    # Found (or downloaded) as load_data finds it: root=, D2L_DATA_DIR, the cache folder.
    train_iter, test_iter = load_data(256, root=root, profile="full")
    return train_iter.dataset, test_iter.dataset


def _peaks(device: torch.device, n: int | None) -> dict[str, float]:
    peaks = {"fp32": matmul_peak(device, torch.float32, n)}
    if device.type == "cuda":
        peaks["bf16"] = matmul_peak(device, torch.bfloat16, n)
    return peaks


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
    train, test = _load_splits(data, root)
    log(f"data: {len(train):,} training and {len(test):,} test images ({data})")
    peaks = _peaks(device, peak_size)
    log("matmul peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    textbook = textbook_datasets(train, test, None)  # read once; each case sets its transform
    timed = []
    for case in cases:
        log(f"{case.name} at {case.side} px, batch {case.batch_size}, timed: "
            f"{'whole epochs' if case.batches is None else _batches(case.batches)}")  # fmt: skip
        timed.append(
            run_case(
                case,
                train,
                test,
                device,
                repeats,
                num_workers=num_workers,
                seed=seed,
                options=options,
                textbook=textbook,
                log=log,
            )  # fmt: skip
        )
    # The ceiling is the best rate the machine showed in this run: measure again at the end.
    for key, value in _peaks(device, peak_size).items():
        peaks[key] = max(peaks[key], value)
    results = [
        _case_result(case, timings, device, peaks)
        for case, timings in zip(cases, timed, strict=True)
    ]
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
        "peak_gflops": peaks,
        "peak_matmul_size": peak_size or (2048 if device.type == "cpu" else 8192),
        "flops_convention": FLOPS_CONVENTION,
        "load_average": {"start": load_before, "end": os.getloadavg() if load_before else None},
        "results": results,
        "total_s": time.perf_counter() - t0,
    }


# --------------------------------------------------------------------------------------------
# Accuracy: the same training on both paths, to full length
# --------------------------------------------------------------------------------------------


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
    size = None if resize is None else (resize, resize)
    bs = 256
    t0 = time.perf_counter()
    train, test = _load_splits(data, root)
    tv_train, tv_test = textbook_datasets(train, test, resize)
    runs = []
    for seed in seeds:
        torch.manual_seed(seed)
        net = MODELS[model]()
        net.apply(init_weights)
        twin = copy.deepcopy(net)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            h = train_ch6(
                net, BatchLoader(train, bs, shuffle=True, resize=size, seed=seed),
                BatchLoader(test, bs, resize=size), epochs, lr, device,
                init=False, profile="full", plot=False,
            )  # fmt: skip
        course = {
            "train_loss": h.train_loss, "train_acc": h.train_acc, "test_acc": h.test_acc,
            "time_s": time.perf_counter() - start,
        }  # fmt: skip
        start = time.perf_counter()
        ref = book_train_ch6(
            twin, textbook_loader(tv_train, bs, True, num_workers, seed=seed),
            textbook_loader(tv_test, bs, False, num_workers), epochs, lr, device, init=False,
        )  # fmt: skip
        textbook = {**ref, "time_s": time.perf_counter() - start}
        runs.append({"seed": seed, "course": course, "textbook": textbook})
        log(
            f"seed {seed}: test acc textbook {textbook['test_acc'][-1]:.4f} "
            f"({textbook['time_s']:.0f} s), course {course['test_acc'][-1]:.4f} "
            f"({course['time_s']:.0f} s)"
        )
    final = {p: [r[p]["test_acc"][-1] for r in runs] for p in ("textbook", "course")}
    spread = {p: statistics.stdev(v) if len(v) > 1 else 0.0 for p, v in final.items()}
    return {
        "command": command,
        "model": LABELS[model],
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "data": data,
        "epochs": epochs,
        "lr": lr,
        "batch_size": bs,
        "input_px": 28 if resize is None else resize,
        "runs": runs,
        "final_test_acc": final,
        "mean": {p: statistics.fmean(v) for p, v in final.items()},
        "stdev": spread,
        "total_s": time.perf_counter() - t0,
    }


def accuracy_markdown(report: dict[str, Any]) -> str:
    """The accuracy comparison as a markdown table."""
    lines = [
        f"{report['model']} trained with the book's settings ({report['epochs']} epochs, "
        f"lr {report['lr']}, batch {report['batch_size']}, {report['input_px']} px, "
        f"{report['data']} data) on **{report['device_name']}**, with "
        f"`{report['command'] or 'python -m d2l_utils.bench --accuracy'}`. For each seed both "
        "paths start from the same weights.",
        "",
        "| seed | textbook test acc | course test acc | course − textbook |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        a, b = r["textbook"]["test_acc"][-1], r["course"]["test_acc"][-1]
        lines.append(f"| {r['seed']} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
    m, sd = report["mean"], report["stdev"]
    lines.append(
        f"| mean ± sd | {m['textbook']:.4f} ± {sd['textbook']:.4f} "
        f"| {m['course']:.4f} ± {sd['course']:.4f} | {m['course'] - m['textbook']:+.4f} |"
    )
    return "\n".join(lines) + "\n"


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _options_text(options: dict[str, Any] | None) -> str:
    if not options:
        return " (its defaults)"
    return " with " + ", ".join(f"`{k}={v}`" for k, v in options.items())


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table with a heading that names the machine and the command."""
    peaks = ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in report["peak_gflops"].items())
    lines = [
        f"Measured on **{report['device_name']}** ({report['device']}), torch {report['torch']}, "
        f"with `{report['command'] or 'python -m d2l_utils.bench'}`; "
        f"matrix-multiply peak measured in the same run: {peaks}.",
        "",
        "| model | input | batch | timed | textbook img/s | course img/s | speed-up "
        "| textbook epoch | course epoch | epoch speed-up | GFLOP/img (train) "
        "| % of matmul peak (textbook → course) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        book, course = r["textbook"], r["course"]
        epoch = ["—", "—", "—"]
        if "speedup_epoch" in r:
            epoch = [
                f"{book['epoch_s_median']:.1f} s",
                f"{course['epoch_s_median']:.1f} s",
                f"**{r['speedup_epoch']:.2f}×**",
            ]
        frac = r["fraction_of_peak"]
        lines.append(
            f"| {r['model']} | {r['input_px']} px | {r['batch_size']} | {r['timed']} "
            f"| {_fmt_rate(book['train_img_s'])} | {_fmt_rate(course['train_img_s'])} "
            f"| **{r['speedup_train']:.2f}×** | {' | '.join(epoch)} "
            f"| {r['train_flops_per_image'] / 1e9:.3g} "
            f"| {100 * frac['textbook']:.0f} % → {100 * frac['course']:.0f} % |"
        )
    lines += [
        "",
        f"img/s: training images per second of wall-clock time, data loading included (median "
        f"of {report['repeats']} runs per path, the paths taking turns). Epoch: training plus "
        "test evaluation. Textbook: torchvision `FashionMNIST` + `Resize`/`ToTensor`, "
        f"`DataLoader(num_workers={report['textbook_workers']})`, the book's per-batch "
        "synchronising loop. Course: `d2l_utils.load_data` + `d2l_utils.train_ch6`"
        f"{_options_text(report.get('course_options'))}. "
        f"% of matmul peak: img/s × training FLOPs per image / peak; {report['flops_convention']}.",
    ]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` to ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m d2l_utils.bench",
        description="Time the course's data path and train_ch6 against the textbook's.",
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer runs: under 2 minutes on 2 CPU cores"
    )
    p.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, of {', '.join(MODELS)} (default: all; lenet_bn with --accuracy)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per path (the median is reported)"
    )
    p.add_argument("--batches", type=int, default=None, help="batches per run for every model")
    p.add_argument("--batch-size", type=int, default=None, help="default: the book's 256")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument(
        "--data",
        choices=("full", "sample"),
        default="full",
        help="full Fashion-MNIST (D2L_DATA_DIR or --root) or the bundled sample",
    )
    p.add_argument("--root", default=None, help="folder with the Fashion-MNIST files")
    p.add_argument("--workers", type=int, default=BOOK_WORKERS, help="textbook DataLoader workers")
    p.add_argument("--compile", action="store_true", help="course path with torch.compile")
    p.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="course path's memory format (auto: train_ch6's own choice)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peak-size", type=int, default=None, help="matmul side for the peak (2048 CPU, 8192 GPU)"
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="instead of timing: train to the end on both paths and compare test accuracy",
    )
    p.add_argument("--epochs", type=int, default=10, help="with --accuracy (the book's 10)")
    p.add_argument("--seeds", default="0,1,2", help="with --accuracy, comma-separated")
    p.add_argument("--out", type=Path, default=Path("build"), help="folder for bench.json/.md")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = "lenet_bn" if args.accuracy else ",".join(MODELS)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    return args


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """train_ch6 options of the course path that differ from its defaults."""
    options: dict[str, Any] = {}
    if args.compile:
        options["compile"] = True
    if args.channels_last != "auto":
        options["channels_last"] = args.channels_last == "on"
    return options


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    # The textbook path uses the book's 4 workers on purpose, whatever the machine has.
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    command = " ".join(["python -m d2l_utils.bench", *(sys.argv[1:] if argv is None else argv)])
    print(f"device: {device_name(device)}")
    if args.accuracy:
        args.out.mkdir(parents=True, exist_ok=True)
        for model in args.models.split(","):
            report = compare_accuracy(
                model, args.epochs, [int(s) for s in args.seeds.split(",")], device,
                data=args.data, root=args.root, num_workers=args.workers, command=command,
            )  # fmt: skip
            stem = args.out / f"bench_accuracy_{model}"
            stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
            stem.with_suffix(".md").write_text(accuracy_markdown(report))
            print()
            print(accuracy_markdown(report))
            print(f"written: {stem}.json, {stem}.md ({report['total_s']:.0f} s)")
        return 0
    cases = default_cases(args.quick, device, args.models.split(","), args.batch_size, args.batches)
    repeats = args.repeats
    report = run_bench(
        cases, device, repeats,
        data=args.data, root=args.root, num_workers=args.workers, seed=args.seed,
        options=_options(args), peak_size=args.peak_size, command=command,
    )  # fmt: skip
    json_path, md_path = write_report(report, args.out)
    print()
    print(to_markdown(report))
    print(f"written: {json_path}, {md_path} ({report['total_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
