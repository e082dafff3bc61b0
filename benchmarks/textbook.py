"""The textbook's data path: torchvision's ``FashionMNIST`` read through a ``DataLoader``.

The book's loop that consumes it is :mod:`benchmarks.reference`.
"""

from __future__ import annotations

import copy
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets

from benchmarks.reference import book_transform
from d2l_utils.data import FashionMNIST

# The book's get_dataloader_workers(): 4 processes, whatever the machine.
BOOK_WORKERS = 4


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (labels ``(N,)`` or images ``(N, 28, 28)``)."""
    array = data.to(torch.uint8).cpu().contiguous().numpy()
    magic = 0x800 | array.ndim  # 0x08: unsigned bytes; low byte: number of dimensions
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(header + array.tobytes())


def textbook_datasets(
    train: FashionMNIST, test: FashionMNIST, resize: int | None
) -> tuple[datasets.FashionMNIST, datasets.FashionMNIST]:
    """torchvision's ``FashionMNIST`` holding exactly ``train``'s and ``test``'s images.

    The images are written in torchvision's layout (``FashionMNIST/raw/*-ubyte``) to a temporary
    folder and read back by torchvision, offline; its dataset keeps them in memory, so the folder
    is removed before returning.  The transform is the book's (:func:`book_transform`), applied
    to one PIL image at a time.
    """
    with tempfile.TemporaryDirectory(prefix="d2l_bench_") as root:
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, split in (("train", train), ("t10k", test)):
            write_idx(raw / f"{prefix}-images-idx3-ubyte", split.images)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", split.labels)
        tv_train, tv_test = (
            datasets.FashionMNIST(
                root, train=is_train, transform=book_transform(resize), download=False
            )
            for is_train in (True, False)
        )
    return tv_train, tv_test


def with_transform(dataset: Any, resize: int | None) -> Any:
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
