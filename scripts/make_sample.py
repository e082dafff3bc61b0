"""Cut the stratified Fashion-MNIST sample that ships inside the package.

200 training and 100 test images per class, chosen reproducibly (seed 0) from the full dataset
and stored with their indices into it, so tests can check the sample against the full files.

    python scripts/make_sample.py /path/to/fashion-mnist  # -> d2l_utils/data/*.npz
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from d2l_utils.data import stratified_indices
from d2l_utils.fashion_mnist import FILES, find_files, read_idx


def main(root: str) -> None:
    files = find_files(Path(root))
    out = {}
    for split, prefix, per_class in (("train", "train", 200), ("test", "t10k", 100)):
        images = read_idx(
            files[f"{prefix}-images-idx3-ubyte"],
            "images",
            FILES[f"{prefix}-images-idx3-ubyte"].count,
        )
        labels = read_idx(
            files[f"{prefix}-labels-idx1-ubyte"],
            "labels",
            FILES[f"{prefix}-labels-idx1-ubyte"].count,
        )
        keep = stratified_indices(torch.from_numpy(labels.astype(np.int64)), 10 * per_class).numpy()
        out[f"{split}_images"] = images[keep]
        out[f"{split}_labels"] = labels[keep]
        out[f"{split}_indices"] = keep.astype(np.int32)
    target = (
        Path(__file__).resolve().parent.parent / "d2l_utils" / "data" / "fashion_mnist_sample.npz"
    )
    np.savez_compressed(target, **out)
    print(f"wrote {target.name}: {target.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fashion-mnist")
