"""The Fashion-MNIST files on disk: find, download, verify and parse them (a learner can skip this).

:func:`d2l_utils.data.load_data` calls :func:`load_split` for each split; everything else here
exists so that a missing, damaged or misplaced file is reported clearly instead of surfacing as a
wrong-shaped tensor.

Where the files are looked for, in order:

1. the ``root=`` argument of :func:`~d2l_utils.data.load_data`;
2. the environment variable ``D2L_DATA_DIR``;
3. the default cache folder, ``$XDG_CACHE_HOME/d2l_utils/fashion-mnist``
   (``~/.cache/d2l_utils/fashion-mnist`` when ``XDG_CACHE_HOME`` is unset).

In that folder the four Zalando files (``train-images-idx3-ubyte.gz`` …, gzipped or not) may lie
directly, in ``fashion-mnist/``, or in torchvision's layout ``FashionMNIST/raw/``.  Missing files
are downloaded into the folder and checked against the published MD5 sums before they are used
(each arrives in a temporary file that is renamed only once its checksum matches, so a failed or
interrupted download leaves nothing behind); without a network the error says where it looked
and how to point ``D2L_DATA_DIR`` at a copy.  Every file's IDX header, size and labels are
checked before use, so a truncated, corrupt or swapped file is reported by name, with the fix
(:class:`DataFileError`, a ``ValueError``).  A data folder that is missing, not a folder or
unreadable is a ``FileNotFoundError`` (:class:`DatasetNotFoundError`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import numpy as np
import torch

__all__ = [
    "FILES",
    "MIRRORS",
    "ChecksumError",
    "DataAccessError",
    "DataFileError",
    "DataRootError",
    "DatasetNotFoundError",
    "FashionMNIST",
    "default_root",
    "find_files",
    "load_split",
    "read_idx",
    "resolve_root",
]


@dataclass(frozen=True)
class _FileSpec:
    kind: str  # "images" or "labels"
    count: int
    md5: str  # of the published .gz archive


FILES: dict[str, _FileSpec] = {
    "train-images-idx3-ubyte": _FileSpec("images", 60_000, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte": _FileSpec("labels", 60_000, "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte": _FileSpec("images", 10_000, "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte": _FileSpec("labels", 10_000, "bb300cfdad3c16e7a12a480ee83cd310"),
}
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_SUBDIRS = ("", "fashion-mnist", "FashionMNIST/raw")
_FIX = (
    "delete it and run again to re-download it, or set D2L_DATA_DIR to a folder that holds a good "
    "copy of the Fashion-MNIST files"
)


class DataFileError(ValueError):
    """A Fashion-MNIST file exists but is truncated, corrupt or of the wrong kind."""


class DatasetNotFoundError(FileNotFoundError):
    """The Fashion-MNIST files are not on disk and could not be downloaded."""


# The two below keep the OSError subclass Python itself would raise, and are FileNotFoundErrors
# too, so one ``except FileNotFoundError`` catches every "the data is not there" case.
class DataRootError(DatasetNotFoundError, NotADirectoryError):
    """The data folder (``root=`` or ``D2L_DATA_DIR``) names a file, not a folder."""


class DataAccessError(DatasetNotFoundError, PermissionError):
    """The data folder or a data file exists but cannot be read (permissions)."""


def default_root() -> Path:
    """The default data folder: ``$XDG_CACHE_HOME/d2l_utils/fashion-mnist``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "d2l_utils" / "fashion-mnist"


def resolve_root(root: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The data folder and what chose it (``root=``, ``D2L_DATA_DIR`` or the default).

    Raises:
        ValueError: when ``root`` is given but is not a non-empty path.
    """
    if root is not None:
        if not isinstance(root, str | os.PathLike) or not os.fspath(root):
            raise ValueError(f"root must be a folder path (str or os.PathLike), got {root!r}")
        return Path(root).expanduser(), "root="
    env = os.environ.get("D2L_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser(), "D2L_DATA_DIR"
    return default_root(), "the default cache folder"


def _check_root(root: Path, source: str) -> None:
    if root.exists() and not root.is_dir():
        raise DataRootError(
            f"{source} points to {root}, which is a file; expected a folder holding the "
            "Fashion-MNIST files (or nothing yet, to download them into)"
        )
    if root.is_dir() and not os.access(root, os.R_OK | os.X_OK):
        raise DataAccessError(
            f"{source} points to {root}, which cannot be read (permission denied); make it "
            "readable, or set D2L_DATA_DIR to a folder you can read"
        )


def find_files(root: Path) -> dict[str, Path]:
    """Map each of the four file stems to the first existing file under ``root``.

    Looks in ``root``, ``root/fashion-mnist`` and ``root/FashionMNIST/raw``, for the gzipped
    (``.gz``) and then the plain file.  Stems with no file are left out.
    """
    found: dict[str, Path] = {}
    for stem in FILES:
        for sub in _SUBDIRS:
            for name in (stem + ".gz", stem):
                path = root / sub / name
                if path.is_file():
                    found[stem] = path
                    break
            if stem in found:
                break
    return found


class ChecksumError(DataFileError):
    """A download whose bytes do not match the published checksum (it was not kept)."""


def _fetch(url: str, dest: Path, md5: str, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` only if its MD5 is ``md5``.

    The bytes go to a temporary file beside ``dest`` while their checksum is computed; the file
    is renamed to ``dest`` after the checksum matched, and deleted in every other case (a bad
    checksum, a dropped connection, an interrupt), so ``dest`` never holds unverified data.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        request = Request(url, headers={"User-Agent": "d2l_utils"})
        with os.fdopen(fd, "wb") as f, urlopen(request, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"{url} sent data with MD5 {digest.hexdigest()}, not the published {md5}; "
                "it was not kept"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _download(root: Path, stems: Sequence[str]) -> list[str]:
    """Download ``stems`` into ``root``; returns the error messages (empty on success)."""
    errors: list[str] = []
    for stem in stems:
        spec, name = FILES[stem], stem + ".gz"
        for mirror in MIRRORS:
            print(f"downloading {name} from {urlsplit(mirror).netloc} ...", flush=True)
            try:
                _fetch(mirror + name, root / name, spec.md5)
                break
            except Exception as exc:  # whatever went wrong (network, HTTP, checksum): next mirror
                errors.append(f"{mirror}{name}: {type(exc).__name__}: {exc}")
        else:
            return errors
    return []


def _locate(root: str | os.PathLike[str] | None, download: bool) -> dict[str, Path]:
    base, source = resolve_root(root)
    _check_root(base, source)
    found = find_files(base) if base.is_dir() else {}
    missing = [stem for stem in FILES if stem not in found]
    if not missing:
        return found
    errors: list[str] = []
    if download:
        try:
            base.mkdir(parents=True, exist_ok=True)
            errors = _download(base, missing)
        except OSError as exc:
            errors = [f"{type(exc).__name__}: {exc}"]
        found = find_files(base)
        missing = [stem for stem in FILES if stem not in found]
        if not missing:
            return found
    looked = ", ".join(str(base / sub) if sub else str(base) for sub in _SUBDIRS)
    why = f" The download failed ({errors[-1]})." if errors else ""
    raise DatasetNotFoundError(
        f"Fashion-MNIST files missing: {', '.join(s + '.gz' for s in missing)}. Looked in {looked} "
        f"(chosen by {source}).{why} Put the four files (gzipped or not) in one of these folders, "
        "or set D2L_DATA_DIR to a folder that holds them, e.g. "
        "`export D2L_DATA_DIR=/path/to/fashion-mnist`."
    )


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when they are gzip data (whatever the file is called)."""
    try:
        data = path.read_bytes()
    except PermissionError as exc:
        raise DataAccessError(
            f"{path} cannot be read (permission denied); make it readable, or {_FIX}"
        ) from exc
    except OSError as exc:
        raise DataFileError(f"{path} cannot be read ({exc}); {_FIX}") from exc
    if data[:2] != b"\x1f\x8b":  # not gzip: a plain IDX file, or something else read_idx reports
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataFileError(f"{path} is truncated or corrupt gzip data ({exc}); {_FIX}") from exc


def read_idx(path: str | os.PathLike[str], kind: str, count: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not) after checking its header, size and values.

    Args:
        path: the file.
        kind: ``"images"`` (expects ``(count, 28, 28)`` uint8) or ``"labels"`` (``(count,)``,
            values 0..9).
        count: the expected number of items, or ``None`` to accept any.

    Returns:
        A read-only uint8 array of shape ``(N, 28, 28)`` or ``(N,)``.

    Raises:
        DataFileError: naming the file, if anything does not match.
    """
    if kind not in _IDX_MAGIC:
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    path = Path(path)
    data = _read_bytes(path)
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{path} is truncated ({len(data)} bytes, no IDX header); {_FIX}")
    magic, *dims = struct.unpack(f">{1 + ndim}I", data[:header])
    if magic != _IDX_MAGIC[kind]:
        other = {v: k for k, v in _IDX_MAGIC.items()}.get(magic)
        if other:
            what = f"holds {other}"
        elif data.lstrip()[:1] == b"<":
            what = "holds text (an HTML or XML page?)"
        else:
            what = f"has magic number {magic:#010x}"
        raise DataFileError(
            f"{path} {what}, expected an IDX file of {kind} "
            f"(magic {_IDX_MAGIC[kind]:#010x}); {_FIX}"
        )
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataFileError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28; {_FIX}")
    if count is not None and dims[0] != count:
        raise DataFileError(f"{path} holds {dims[0]:,} {kind}, expected {count:,}; {_FIX}")
    expected = header + math.prod(dims)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DataFileError(
            f"{path} is {state}: {len(data):,} bytes, expected {expected:,}; {_FIX}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and array.size and int(array.max()) > 9:
        raise DataFileError(f"{path} holds label {int(array.max())}, expected 0..9; {_FIX}")
    return array


_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def _read_cached(path: Path, stem: str) -> np.ndarray:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        spec = FILES[stem]
        _CACHE[key] = read_idx(path, spec.kind, spec.count)
    return _CACHE[key]


class FashionMNIST(torch.utils.data.Dataset):
    """Fashion-MNIST held in memory.

    Attributes:
        images: uint8 tensor ``(N, 28, 28)``.
        labels: int64 tensor ``(N,)`` with values 0..9.
        indices: int64 tensor ``(N,)``, each image's index in the full 60,000/10,000 split.
        train: whether this is (part of) the training split.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, train: bool
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 3 or labels.shape != images.shape[:1]:
            raise ValueError("expected uint8 images (N, 28, 28) and labels (N,)")
        self.images, self.labels, self.indices, self.train = images, labels.long(), indices, train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Image ``i`` as float ``(1, 28, 28)`` in [0, 1] (as ``ToTensor``) and its label."""
        return self.images[i].unsqueeze(0).float().div_(255), int(self.labels[i])

    def subset(self, keep: torch.Tensor) -> FashionMNIST:
        """The images at positions ``keep``."""
        return FashionMNIST(self.images[keep], self.labels[keep], self.indices[keep], self.train)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"FashionMNIST({split}, {len(self):,} images)"


def load_split(root: str | os.PathLike[str] | None, train: bool, download: bool) -> FashionMNIST:
    """The whole training (60,000) or test (10,000) split, found, fetched and checked as above."""
    files = _locate(root, download)
    prefix = "train" if train else "t10k"
    images = _read_cached(files[f"{prefix}-images-idx3-ubyte"], f"{prefix}-images-idx3-ubyte")
    labels = _read_cached(files[f"{prefix}-labels-idx1-ubyte"], f"{prefix}-labels-idx1-ubyte")
    n = len(labels)
    # torch.from_numpy needs a writable array; copy once (47 MB) so the cache stays read-only.
    return FashionMNIST(
        torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)),
        torch.arange(n), train,
    )  # fmt: skip
