"""The course's data path and training loop against the textbook's, timed side by side.

    python -m benchmarks.bench            # LeNet-BN at 28 px, ResNet-18 and DenseNet at 96 px
    python -m benchmarks.bench --quick    # the same, in under 2 minutes on a 2-core CPU
    python -m benchmarks.bench --accuracy # train to the end on both paths, compare test accuracy

Run from the repository root (``make bench`` runs the quick form).  The two paths:

``textbook``
    torchvision's ``FashionMNIST`` with ``Resize``/``ToTensor`` transforms, ``DataLoader`` with the
    book's 4 worker processes, and the book's loop (:mod:`benchmarks.reference`), which copies the
    loss and the number of correct predictions to the host after every batch.
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

The results go to ``build/bench.json`` and ``build/bench.md`` (``--accuracy``:
``build/bench_accuracy_<model>.json`` and ``.md``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy import compare_accuracy
from benchmarks.cases import MODELS, default_cases
from benchmarks.machine import device_name
from benchmarks.report import PROG, accuracy_markdown, to_markdown, write_report
from benchmarks.textbook import BOOK_WORKERS
from benchmarks.timing import run_bench


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; ``--models`` is checked against :data:`~benchmarks.cases.MODELS`."""
    p = argparse.ArgumentParser(
        prog=PROG, description="Time the course's data path and train_ch6 against the textbook's."
    )
    p.add_argument("--quick", action="store_true", help="fewer runs: under 2 minutes on 2 CPUs")
    p.add_argument(
        "--models",
        default=None,
        help=f"comma-separated, of {', '.join(MODELS)} (default: all; lenet_bn with --accuracy)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
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
    p.add_argument("--out", type=Path, default=Path("build"), help="folder for the results")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = "lenet_bn" if args.accuracy else ",".join(MODELS)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(MODELS)}")
    return args


def course_options(args: argparse.Namespace) -> dict[str, Any]:
    """``train_ch6`` options of the course path that differ from its defaults."""
    options: dict[str, Any] = {}
    if args.compile:
        options["compile"] = True
    if args.channels_last != "auto":
        options["channels_last"] = args.channels_last == "on"
    return options


def _accuracy(args: argparse.Namespace, device: torch.device, command: str) -> None:
    for model in args.models.split(","):
        report = compare_accuracy(
            model, args.epochs, [int(s) for s in args.seeds.split(",")], device,
            data=args.data, root=args.root, num_workers=args.workers, command=command,
        )  # fmt: skip
        json_path, md_path = write_report(report, args.out, f"bench_accuracy_{model}")
        print()
        print(accuracy_markdown(report))
        print(f"written: {json_path}, {md_path} ({report['total_s']:.0f} s)")


def _timing(args: argparse.Namespace, device: torch.device, command: str) -> None:
    cases = default_cases(args.quick, device, args.models.split(","), args.batch_size, args.batches)
    report = run_bench(
        cases, device, args.repeats,
        data=args.data, root=args.root, num_workers=args.workers, seed=args.seed,
        options=course_options(args), peak_size=args.peak_size, command=command,
    )  # fmt: skip
    json_path, md_path = write_report(report, args.out)
    print()
    print(to_markdown(report))
    print(f"written: {json_path}, {md_path} ({report['total_s']:.0f} s in all)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The textbook path uses the book's 4 workers on purpose, whatever the machine has.
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    if args.device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    command = " ".join([PROG, *(sys.argv[1:] if argv is None else argv)])
    print(f"device: {device_name(device)}")
    (_accuracy if args.accuracy else _timing)(args, device, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
