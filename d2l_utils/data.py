"""The data path and the run profiles that size it.

``load_data`` returns the book's ``(train_iter, test_iter)`` for Fashion-MNIST.  How much of the
dataset it serves, and at what image size, is set by the run profile:

Run profiles: one notebook, three compute budgets
-------------------------------------------------

The course's notebooks use the book's settings (``lr, num_epochs, batch_size = 0.05, 10, 256``,
``resize=96``) in their code.  Those settings take hours on a laptop CPU, so the environment
variable ``D2L_PROFILE`` picks how much of that work is actually done:

``full``
    The book's settings, unchanged.  Default when a GPU (CUDA or Apple MPS) is present.
``quick``
    Default on a CPU.  A stratified 30,720 of the 60,000 training images (120 whole batches of
    256, so no epoch ends with a small batch), all 10,000 test images, at most 4 epochs, images
    resized to at most 32 px.  Notebooks that compare settings over several seeds pass a smaller
    budget per run (``dataclasses.replace`` of this profile, in their settings cell), so that all
    seven notebooks run in about 40 minutes on a 2-core CPU.
``smoke``
    For tests and CI.  The 2,000/1,000-image sample bundled with the package (no download), one
    epoch, images resized to at most 32 px.  Each notebook executes in well under a minute.

Whenever a profile changes what the code asked for, :func:`load_data` and
:func:`d2l_utils.train_ch6` print one line that says exactly what changed.

Batches
-------

The whole dataset is held as one ``uint8`` tensor (47 MB).  :class:`BatchLoader` builds each batch
by indexing it, converting to float and, when asked, resizing the whole batch at once; it iterates
like a ``DataLoader`` (``len``, ``batch_size``, ``dataset``) without worker processes or PIL.

Finding, downloading, checking and parsing the files is in :mod:`d2l_utils.fashion_mnist`, which
a learner can skip; its errors are importable from there and from ``d2l_utils``.  Bad arguments
(``batch_size``, ``resize``, ``root``, ``shuffle_seed``, the profile) are ``ValueError`` naming the
argument, checked by the small functions at the end of this module, which
:mod:`d2l_utils.robust` uses too.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources

import numpy as np
import torch
from torch.nn import functional as F

from d2l_utils.device import num_gpus
from d2l_utils.fashion_mnist import FashionMNIST, load_split, resolve_root

__all__ = [
    "PROFILES",
    "TEXT_LABELS",
    "BatchLoader",
    "FashionMNIST",
    "Profile",
    "capped_epochs",
    "default_profile_name",
    "get_fashion_mnist_labels",
    "get_profile",
    "integer",
    "load_data",
    "load_data_fashion_mnist",
    "load_sample",
    "num_batches",
    "positive_int",
    "positive_number",
    "resize_batch",
    "size_pair",
    "stratified_indices",
]

TEXT_LABELS = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)


# --- run profiles --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Profile:
    """A compute budget.  ``None`` in a limit means "no limit"."""

    name: str
    train_limit: int | None  # training images kept (stratified subset)
    test_limit: int | None  # test images kept (stratified subset)
    max_epochs: int | None  # epochs actually run
    max_resize: int | None  # largest image side in pixels
    use_sample: bool  # read the bundled sample instead of the full dataset

    def __str__(self) -> str:
        if self.name == "full":
            return "profile full: the book's settings, unchanged"
        parts = []
        if self.use_sample:
            parts.append("the bundled 2,000/1,000-image sample")
        if self.train_limit is not None:
            parts.append(f"at most {self.train_limit:,} training images")
        if self.test_limit is not None:
            parts.append(f"at most {self.test_limit:,} test images")
        if self.max_epochs is not None:
            parts.append(f"at most {self.max_epochs} epoch{'s' if self.max_epochs > 1 else ''}")
        if self.max_resize is not None:
            parts.append(f"images at most {self.max_resize} px")
        return f"profile {self.name}: " + ", ".join(parts)


PROFILES: dict[str, Profile] = {
    "full": Profile("full", None, None, None, None, use_sample=False),
    "quick": Profile("quick", 30_720, None, 4, 32, use_sample=False),
    "smoke": Profile("smoke", None, None, 1, 32, use_sample=True),
}


def default_profile_name() -> str:
    """``full`` when a GPU (CUDA or MPS) is present, else ``quick``."""
    return "full" if num_gpus() > 0 else "quick"


def get_profile(profile: str | Profile | None = None) -> Profile:
    """Return the profile named by ``profile``, else by ``D2L_PROFILE``, else the default.

    Raises:
        ValueError: for a name that is not ``smoke``, ``quick`` or ``full``.
    """
    if isinstance(profile, Profile):
        return profile
    given = os.environ.get("D2L_PROFILE", "") if profile is None else profile
    name = given.strip().lower() or default_profile_name()  # unset or empty: the default
    if name not in PROFILES:
        source = "D2L_PROFILE" if profile is None else "profile"
        raise ValueError(f"{source}={given!r} is not a known run profile; expected one of "
                         f"{', '.join(sorted(PROFILES))}")  # fmt: skip
    return PROFILES[name]


def capped_epochs(num_epochs: int, prof: Profile) -> int:
    """The epochs to run: ``num_epochs`` (checked), at most the profile's, with one line if cut."""
    num_epochs = positive_int(num_epochs, "num_epochs")
    if prof.max_epochs is None or num_epochs <= prof.max_epochs:
        return num_epochs
    print(f"profile {prof.name}: {prof.max_epochs} of {num_epochs} epochs; set D2L_PROFILE=full "
          "for the book's run")  # fmt: skip
    return prof.max_epochs


# --- load_data -----------------------------------------------------------------------------------


def load_data(
    batch_size: int,
    resize: int | tuple[int, int] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    profile: str | Profile | None = None,
    shuffle_seed: int | None = None,
    download: bool = True,
) -> tuple[BatchLoader, BatchLoader]:
    """Fashion-MNIST as ``(train_iter, test_iter)``, the book's ``load_data_fashion_mnist``.

    Args:
        batch_size: images per batch.
        resize: output side ``s`` (or ``(h, w)``); ``None`` keeps 28x28.
        root: data folder; else ``D2L_DATA_DIR``; else the default cache folder
            (see :mod:`d2l_utils.fashion_mnist`).
        profile: run profile name or object; else ``D2L_PROFILE``; else the device's default.
            When it changes the request (subset, smaller images), one line says so.
        shuffle_seed: seed of the training shuffle (``None``: from torch's global RNG).
        download: fetch missing files from the public mirrors.

    Returns:
        Two :class:`BatchLoader`; batches are ``(X, y)``, ``X`` float ``(B, 1, H, W)`` in [0, 1],
        ``y`` int64 ``(B,)``.
    """
    batch_size = positive_int(batch_size, "batch_size")
    size = size_pair(resize, "resize")
    if root is not None:
        resolve_root(root)  # a wrong type is reported even when the profile reads the sample
    if shuffle_seed is not None:
        shuffle_seed = integer(shuffle_seed, "shuffle_seed")
    prof = get_profile(profile)
    if prof.use_sample:
        train, test = load_sample(train=True), load_sample(train=False)
    else:
        train = load_split(root, train=True, download=download)
        test = load_split(root, train=False, download=download)

    changes = []
    if prof.use_sample:
        changes.append(
            f"the bundled sample: {len(train):,} of 60,000 training and {len(test):,} of 10,000 "
            "test images"
        )
    if prof.train_limit is not None and prof.train_limit < len(train):
        changes.append(f"{prof.train_limit:,} of {len(train):,} training images")
        train = train.subset(stratified_indices(train.labels, prof.train_limit))
    if prof.test_limit is not None and prof.test_limit < len(test):
        changes.append(f"{prof.test_limit:,} of {len(test):,} test images")
        test = test.subset(stratified_indices(test.labels, prof.test_limit))
    if size is not None and prof.max_resize is not None and max(size) > prof.max_resize:
        scale = prof.max_resize / max(size)
        new = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        changes.append(f"{_px(new)} instead of {_px(size)}")
        size = new
    if changes:
        print(f"profile {prof.name}: {', '.join(changes)}; set D2L_PROFILE=full for the book's run")
    return (
        BatchLoader(train, batch_size, shuffle=True, resize=size, seed=shuffle_seed),
        BatchLoader(test, batch_size, shuffle=False, resize=size),
    )


def _px(size: tuple[int, int]) -> str:
    return f"{size[0]} px" if size[0] == size[1] else f"{size[0]}x{size[1]} px"


load_data_fashion_mnist = load_data


# --- batches -------------------------------------------------------------------------------------


class BatchLoader:
    """Iterate over a :class:`FashionMNIST` in batches of ``(X, y)``, like a ``DataLoader``.

    ``X`` is float32 ``(B, 1, H, W)`` in [0, 1] and ``y`` int64 ``(B,)``.  Shuffling draws a new
    permutation each epoch from a generator seeded with ``seed`` (drawn from torch's global RNG
    when ``None``, so ``torch.manual_seed`` makes it repeatable); :meth:`manual_seed` restarts
    that sequence.  :meth:`to` moves the uint8 store to a device once, so batches are then built
    there.

    An epoch is :meth:`order` cut into runs of ``batch_size`` positions, each turned into a batch
    by :meth:`batch`; code that serves the batches differently (one slice per process in
    :mod:`d2l_utils.distributed`) uses the same two methods, and so the same images in the same
    order.
    """

    def __init__(
        self,
        dataset: FashionMNIST,
        batch_size: int,
        shuffle: bool = False,
        resize: tuple[int, int] | None = None,
        seed: int | None = None,
    ) -> None:
        self.dataset, self.shuffle = dataset, shuffle
        self.batch_size = positive_int(batch_size, "batch_size")
        self.resize = size_pair(resize, "resize")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = integer(seed, "seed")
        self.generator = torch.Generator().manual_seed(seed)
        self._images, self._labels = dataset.images, dataset.labels

    def to(self, device: torch.device | str) -> BatchLoader:
        """Keep the uint8 images on ``device`` (once), so batches are built there; returns self."""
        if self._images.device != torch.device(device):
            self._images = self.dataset.images.to(device)
            self._labels = self.dataset.labels.to(device)
        return self

    def __len__(self) -> int:
        return math.ceil(len(self._labels) / self.batch_size)

    def manual_seed(self, seed: int | None = None) -> BatchLoader:
        """Restart the shuffle sequence from ``seed`` (default: the loader's own); returns self."""
        self.seed = self.seed if seed is None else integer(seed, "seed")
        self.generator.manual_seed(self.seed)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shuffling generator's state (saved in checkpoints to resume exactly)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def order(self) -> torch.Tensor:
        """One epoch's dataset positions, on the CPU, in the order they are served.

        When shuffling this is a new permutation, drawn now from the loader's generator (one
        draw per epoch, so calling it starts the next epoch's order); else ``0, 1, …, N-1``,
        drawing nothing.
        """
        n = len(self._labels)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, y)`` for the images at dataset positions ``indices``, built where :meth:`to` put
        the store: ``X`` resized as the loader says, ``y`` the labels."""
        indices = indices.to(self._images.device)
        return resize_batch(self._images[indices], self.resize), self._labels[indices]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order().to(self._images.device)  # moved once, not once per batch
        for start in range(0, len(order), self.batch_size):
            yield self.batch(order[start : start + self.batch_size])

    def __repr__(self) -> str:
        size = "28x28" if self.resize is None else "x".join(map(str, self.resize))
        return (
            f"BatchLoader({self.dataset!r}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, images {size})"
        )


def resize_batch(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """uint8 images ``(B, H, W)`` to float ``(B, 1, h, w)`` in [0, 1], as ``Resize`` + ``ToTensor``.

    torchvision's ``Resize`` on a PIL image interpolates bilinearly with antialiasing and rounds
    back to uint8 before ``ToTensor`` divides by 255.  Doing the same on the whole batch at once
    gives each pixel within 1/255 of the PIL result (PIL's fixed-point arithmetic rounds a few
    pixels the other way; ``tests/test_fastpath.py`` pins that bound).
    """
    x = images.unsqueeze(1)
    if size is None or tuple(size) == tuple(x.shape[-2:]):
        return x.float().div_(255)
    x = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).div_(255)


# --- the bundled sample, subsets and class names -------------------------------------------------

SAMPLE_FILE = "fashion_mnist_sample.npz"


def load_sample(train: bool) -> FashionMNIST:
    """The stratified sample bundled with the package (200 train / 100 test images per class).

    It was cut from the real Fashion-MNIST by ``scripts/make_sample.py``; ``indices`` gives each
    image's index in the full split.  Licence: MIT (Zalando SE), see ``d2l_utils/data/README.md``.
    """
    split = "train" if train else "test"
    sample = resources.files("d2l_utils").joinpath("data", SAMPLE_FILE)
    with sample.open("rb") as f, np.load(f) as npz:
        images, labels, idx = (npz[f"{split}_{k}"] for k in ("images", "labels", "indices"))
    return FashionMNIST(
        torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(idx.astype(np.int64)), train,
    )  # fmt: skip


def stratified_indices(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Sorted positions of ``k`` items drawn with (near) equal counts per class, reproducibly."""
    if k >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    classes = labels.unique()
    per_class, extra = divmod(k, len(classes))
    keep = []
    for j, c in enumerate(classes):
        members = order[labels[order] == c]
        keep.append(members[: per_class + (1 if j < extra else 0)])
    return torch.cat(keep).sort().values


def get_fashion_mnist_labels(labels: Sequence[int] | torch.Tensor) -> list[str]:
    """Class names for numeric labels (0 = 't-shirt' … 9 = 'ankle boot')."""
    return [TEXT_LABELS[int(i)] for i in labels]


# --- argument checks (also used by d2l_utils.train) ----------------------------------------------
# Each returns the value in its plain Python type or raises a ValueError that names the argument
# and shows what was given, so a typo is reported before any work starts.


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
    if not _is_int(value) or value < 1:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def positive_number(value: object, name: str) -> float:
    """``value`` as a positive, finite ``float`` (a learning rate)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and value > 0):  # type: ignore[arg-type, operator]
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


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
    if not hasattr(data_iter, "__len__"):
        what = type(data_iter).__name__
        raise TypeError(f"{name} must have a length (a DataLoader or a BatchLoader), got {what}")
    if len(data_iter) < 1:  # type: ignore[arg-type]
        raise ValueError(f"{name} is empty (0 batches); expected a loader with at least one batch")
    return len(data_iter)  # type: ignore[arg-type]
