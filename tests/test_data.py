"""d2l_utils.data and d2l_utils.fashion_mnist: batches, the IDX reader, where the files are found,
and the documented errors.

Fixtures are written here from the bundled sample (IDX files with a header built from the format's
description, not by the package), and the full copy at ``D2L_DATA_DIR`` (set by conftest.py) is
read with an independent parser, so every comparison is against data the package did not produce.
Bad input is here too: every argument of ``load_data`` that can be wrong, and every way a data
file or a download can be damaged.  The tests run offline (tests/conftest.py): downloads are
served from this machine, and the tests that need the full copy skip without it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import math
import os
import re
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.testing import assert_close
from torchvision import transforms

import d2l_utils as d2l
import d2l_utils.fashion_mnist
from d2l_utils.data import BatchLoader, load_sample, resize_batch
from d2l_utils.fashion_mnist import (
    FILES,
    DataAccessError,
    DataFileError,
    DataRootError,
    DatasetNotFoundError,
    default_root,
    find_files,
    read_idx,
)

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
LAYOUTS = ("", "fashion-mnist", "FashionMNIST/raw")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: two zero bytes, type code 0x08 (unsigned byte), the number of dimensions,
    each dimension as a big-endian uint32, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


IMAGES, LABELS = 0x803, 0x801  # IDX magic numbers: unsigned bytes, 3 and 1 dimensions


def _idx(magic: int, dims: tuple[int, ...], payload: bytes = b"") -> bytes:
    """An IDX header with any magic number and dimensions, then ``payload`` (which may not
    match them: for damaged files)."""
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped when ``path`` ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, compresslevel=1) if path.suffix == ".gz" else data)
    return path


def parse_idx_gz(path: Path) -> np.ndarray:
    """Independent reader for the published files: header of 4 + 4 * ndim bytes, then uint8."""
    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def link_files(folder: Path, sources: dict[str, Path]) -> Path:
    """Symlink each source file into ``folder`` under its own name."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sources.values():
        (folder / src.name).symlink_to(src)
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def mirror(tmp_path):
    """A download mirror on this machine: returns (url, folder it serves)."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(scope="module")
def full_arrays(fashion_mnist_full) -> dict[str, np.ndarray]:
    return {s: parse_idx_gz(fashion_mnist_full / f"{s}.gz") for s in STEMS}


@pytest.fixture(scope="module")
def sample():
    return load_sample(train=True), load_sample(train=False)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory, sample) -> dict[str, Path]:
    """Full-sized, uncompressed IDX files made by repeating the sample (30x train, 10x test)."""
    train, test = sample
    folder = tmp_path_factory.mktemp("tiled")
    arrays = {
        "train-images-idx3-ubyte": np.tile(train.images.numpy(), (30, 1, 1)),
        "train-labels-idx1-ubyte": np.tile(train.labels.numpy().astype(np.uint8), 30),
        "t10k-images-idx3-ubyte": np.tile(test.images.numpy(), (10, 1, 1)),
        "t10k-labels-idx1-ubyte": np.tile(test.labels.numpy().astype(np.uint8), 10),
    }
    return {stem: write_idx(folder / stem, a) for stem, a in arrays.items()}


def tiled_expected(sample) -> tuple[torch.Tensor, torch.Tensor]:
    train, test = sample
    return train.images.repeat(30, 1, 1), test.images.repeat(10, 1, 1)


# --- the loader's batches ------------------------------------------------------------------------


def test_batches_shapes_dtypes_ranges_and_len(sample):
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, profile="smoke")
    assert (len(train_iter), len(test_iter)) == (math.ceil(2000 / 256), math.ceil(1000 / 256))
    assert train_iter.batch_size == test_iter.batch_size == 256
    for it, n in ((train_iter, 2000), (test_iter, 1000)):
        ds = it.dataset
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, 28, 28)
        assert ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
        sizes = []
        for X, y in it:
            assert X.dtype == torch.float32 and X.shape[1:] == (1, 28, 28)
            assert y.dtype == torch.int64 and y.shape == X.shape[:1]
            assert X.min() >= 0.0 and X.max() <= 1.0
            assert y.min() >= 0 and y.max() <= 9
            sizes.append(len(y))
        assert len(sizes) == len(it)
        assert sizes == [256] * (len(it) - 1) + [n - 256 * (len(it) - 1)]


def test_unshuffled_batches_are_the_images_over_255_in_order(sample):
    _, test_iter = d2l.load_data_fashion_mnist(300, profile="smoke")
    X = torch.cat([X for X, _ in test_iter])
    y = torch.cat([y for _, y in test_iter])
    assert_close(y, sample[1].labels, rtol=0, atol=0)
    assert_close(X, sample[1].images.unsqueeze(1).float() / 255, rtol=0, atol=0)
    # The same tensors as torchvision's ToTensor on the PIL images (the book's pipeline).
    pil = [Image.fromarray(a) for a in sample[1].images[:50].numpy()]
    reference = torch.stack([transforms.ToTensor()(img) for img in pil])
    assert_close(X[:50], reference, rtol=0, atol=0)


def _records(X: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    pixels = (X * 255).round().to(torch.uint8).flatten(1).numpy()
    return sorted(p.tobytes() + bytes([int(c)]) for p, c in zip(pixels, y, strict=True))


def test_training_batches_are_a_new_permutation_each_epoch_and_seedable(sample):
    train_iter, _ = d2l.load_data_fashion_mnist(500, profile="smoke", shuffle_seed=3)
    expected = _records(sample[0].images.unsqueeze(1).float() / 255, sample[0].labels)
    epochs = []
    for _ in range(2):
        batches = list(train_iter)
        X, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        assert _records(X, y) == expected  # every (image, label) pair exactly once
        epochs.append(y)
    assert not torch.equal(epochs[0], epochs[1])
    again, _ = d2l.load_data_fashion_mnist(500, profile="smoke", shuffle_seed=3)
    assert torch.equal(torch.cat([y for _, y in again]), epochs[0])
    other, _ = d2l.load_data_fashion_mnist(500, profile="smoke", shuffle_seed=4)
    assert not torch.equal(torch.cat([y for _, y in other]), epochs[0])
    # Without shuffle_seed, torch.manual_seed makes the order repeatable.
    orders = []
    for _ in range(2):
        torch.manual_seed(11)
        it, _ = d2l.load_data_fashion_mnist(500, profile="smoke")
        orders.append(torch.cat([y for _, y in it]))
    assert torch.equal(orders[0], orders[1])


@pytest.mark.parametrize("resize", [None, 20])
def test_an_epoch_is_one_permutation_from_the_seed_cut_into_batches(sample, resize):
    # Written from the documented behaviour, not the code: each shuffled epoch is one
    # torch.randperm from a generator seeded with ``seed``, cut into runs of batch_size, each
    # batch the images at those positions over 255 (resized as resize_batch does).
    train = sample[0]
    size = None if resize is None else (resize, resize)
    loader = BatchLoader(train, 300, shuffle=True, resize=size, seed=5)
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        perm = torch.randperm(len(train), generator=g)
        batches = list(loader)
        assert len(batches) == len(loader) == 7
        for i, (X, y) in enumerate(batches):
            idx = perm[300 * i : 300 * (i + 1)]
            assert torch.equal(y, train.labels[idx])
            if resize is None:
                assert torch.equal(X, train.images[idx].unsqueeze(1).float() / 255)
            else:
                assert torch.equal(X, resize_batch(train.images[idx], size))
    # order() is the next epoch's permutation (the same draw __iter__ makes) and batch() builds
    # the batch of any positions, so a loader driven by hand serves the same batches.
    perm = torch.randperm(len(train), generator=g)
    assert torch.equal(loader.order(), perm)
    again = BatchLoader(train, 300, shuffle=True, resize=size, seed=5)
    first = next(iter(again))
    X, y = again.manual_seed().batch(again.order()[:300])
    assert torch.equal(X, first[0]) and torch.equal(y, first[1])


def test_an_unshuffled_epoch_is_in_order_and_draws_nothing(sample):
    loader = BatchLoader(sample[1], 256)
    state = loader.generator.get_state()
    assert torch.equal(loader.order(), torch.arange(1000))
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, sample[1].labels)
    assert torch.equal(loader.generator.get_state(), state)  # the shuffle sequence is untouched


@pytest.mark.parametrize(
    "resize, shape", [(20, (20, 20)), ((24, 12), (24, 12)), ([16, 24], (16, 24)), (28, (28, 28))]
)
def test_resize_matches_torchvision_resize_on_pil(sample, resize, shape):
    _, test_iter = d2l.load_data_fashion_mnist(64, resize=resize, profile="smoke")
    X, _ = next(iter(test_iter))
    assert X.shape == (64, 1, *shape) and X.dtype == torch.float32
    book = transforms.Compose([transforms.Resize(resize), transforms.ToTensor()])
    reference = torch.stack([book(Image.fromarray(a)) for a in sample[1].images[:64].numpy()])
    # The documented contract (data.resize_batch): every pixel within one grey level of PIL's,
    # whose fixed-point arithmetic rounds some pixels the other way.
    assert_close(X, reference, rtol=0, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("bad", [0, -1, 2.5, 256.0, True, "256", None])
def test_invalid_batch_size_is_a_value_error(bad):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        d2l.load_data_fashion_mnist(bad, profile="smoke")


@pytest.mark.parametrize(
    "bad", [0, -5, 2.0, 2.5, "32", (32,), (32, 0), [32, 32, 3], (32.0, 32), True]
)
def test_invalid_resize_is_a_value_error(bad):
    with pytest.raises(ValueError, match="resize must be a positive int or a pair"):
        d2l.load_data_fashion_mnist(8, resize=bad, profile="smoke")


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_invalid_shuffle_seed_is_a_value_error(seed):
    with pytest.raises(ValueError, match="shuffle_seed must be an int"):
        d2l.load_data_fashion_mnist(8, profile="smoke", shuffle_seed=seed)


def test_text_labels_match_torchvision_classes():
    # torchvision names the classes 'T-shirt/top', 'Trouser', ...; the book uses the lower-case
    # first word of each.
    book = [c.split("/")[0].lower() for c in torchvision.datasets.FashionMNIST.classes]
    assert d2l.get_fashion_mnist_labels(range(10)) == book
    names = d2l.get_fashion_mnist_labels(torch.tensor([9, 0, 5]))
    assert names == ["ankle boot", "t-shirt", "sandal"]
    assert d2l.get_fashion_mnist_labels([]) == []


# --- the bundled sample and the full files -------------------------------------------------------


def test_sample_is_stratified(sample):
    for ds, n_full, per_class in ((sample[0], 60_000, 200), (sample[1], 10_000, 100)):
        assert torch.bincount(ds.labels, minlength=10).tolist() == [per_class] * 10
        assert len(ds.indices.unique()) == len(ds)
        assert ds.indices.min() >= 0 and ds.indices.max() < n_full


def test_sample_and_full_files_give_identical_images(sample, fashion_mnist_full, full_arrays):
    for ds, prefix in ((sample[0], "train"), (sample[1], "t10k")):
        idx = ds.indices.numpy()
        images = full_arrays[f"{prefix}-images-idx3-ubyte"]
        labels = full_arrays[f"{prefix}-labels-idx1-ubyte"]
        assert np.array_equal(ds.images.numpy(), images[idx])
        assert np.array_equal(ds.labels.numpy(), labels[idx].astype(np.int64))
    # And through the loader reading the full files (profile full).
    train_iter, test_iter = d2l.load_data_fashion_mnist(
        256, root=fashion_mnist_full, profile="full"
    )
    for it, ds in ((train_iter, sample[0]), (test_iter, sample[1])):
        assert torch.equal(it.dataset.images[ds.indices], ds.images)
        assert torch.equal(it.dataset.labels[ds.indices], ds.labels)


def test_published_md5_sums_match_the_label_files(fashion_mnist_full):
    # The shared copy's label archives are the published bytes (its image archives were
    # re-compressed, so only the labels can be checked against the published MD5 sums here).
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        digest = hashlib.md5((fashion_mnist_full / f"{stem}.gz").read_bytes()).hexdigest()
        assert FILES[stem].md5 == digest, stem


def test_full_files_read_like_an_independent_parser(fashion_mnist_full, full_arrays):
    train_iter, test_iter = d2l.load_data_fashion_mnist(
        1000, root=fashion_mnist_full, profile="full"
    )
    assert len(train_iter.dataset) == 60_000 and len(test_iter.dataset) == 10_000
    for it, prefix in ((train_iter, "train"), (test_iter, "t10k")):
        assert np.array_equal(it.dataset.images.numpy(), full_arrays[f"{prefix}-images-idx3-ubyte"])
        labels = full_arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64)
        assert np.array_equal(it.dataset.labels.numpy(), labels)
        assert torch.bincount(it.dataset.labels).tolist() == [len(labels) // 10] * 10


# --- read_idx ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_exactly(tmp_path, sample, suffix):
    images, labels = sample[0].images.numpy(), sample[0].labels.numpy().astype(np.uint8)
    img = read_idx(write_idx(tmp_path / f"img{suffix}", images), "images", 2000)
    lab = read_idx(write_idx(tmp_path / f"lab{suffix}", labels), "labels")
    assert img.dtype == np.uint8 and img.shape == (2000, 28, 28)
    assert lab.dtype == np.uint8 and lab.shape == (2000,)
    assert np.array_equal(img, images) and np.array_equal(lab, labels)


def _flip_crc(gz: bytes) -> bytes:
    """Flip one bit of a gzip member's stored CRC-32 (its last 8 bytes are CRC-32, size)."""
    return gz[:-8] + bytes([gz[-8] ^ 1]) + gz[-7:]


def _broken_files(sample) -> dict[str, tuple[str, bytes, str]]:
    """name -> (kind, file bytes, what the error must say)."""
    images, labels = sample[1].images.numpy()[:20], sample[1].labels.numpy()[:20].astype(np.uint8)
    good_img, good_lab = idx_bytes(images), idx_bytes(labels)
    bad_label = labels.copy()
    bad_label[7] = 10
    return {
        "empty": ("images", b"", "truncated"),
        "header cut": ("images", good_img[:10], "truncated"),
        "data cut": ("images", good_img[:-1], "truncated"),
        "too long": ("labels", good_lab + b"\x00", "longer than its header says"),
        "labels as images": ("images", good_lab, "holds labels"),
        "images as labels": ("labels", good_img, "holds images"),
        "not idx": ("labels", b"PK\x03\x04" + bytes(100), "magic number"),
        "32x32 images": ("images", idx_bytes(np.zeros((3, 32, 32), np.uint8)), "32x32"),
        "label 10": ("labels", idx_bytes(bad_label), "label 10"),
        "gzip cut": ("images", gzip.compress(good_img)[:-30], "truncated or corrupt"),
        "gzip bad crc": ("images", _flip_crc(gzip.compress(good_img)), "corrupt"),
    }


BROKEN = (
    "empty",
    "header cut",
    "data cut",
    "too long",
    "labels as images",
    "images as labels",
    "not idx",
    "32x32 images",
    "label 10",
    "gzip cut",
    "gzip bad crc",
)


@pytest.mark.parametrize("case", BROKEN)
def test_read_idx_reports_broken_files_by_name(tmp_path, sample, case):
    kind, data, says = _broken_files(sample)[case]
    name = "some-file.gz" if case.startswith("gzip") else "some-file"
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataFileError, match=says) as info:
        read_idx(path, kind)
    assert name in str(info.value) and "D2L_DATA_DIR" in str(info.value)  # the file and the fix


def test_every_broken_case_is_tested_and_is_caught_as_a_value_error(tmp_path, sample):
    assert set(BROKEN) == set(_broken_files(sample))
    # A damaged file is a bad value: code that guards load_data with ``except ValueError`` gets it.
    for stem in FILES:
        (tmp_path / f"{stem}.gz").write_bytes(b"unused")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is truncated"):
        d2l.load_data_fashion_mnist(8, root=tmp_path, profile="full", download=False)


def test_read_idx_checks_the_count(tmp_path, sample):
    path = write_idx(tmp_path / "labels", sample[1].labels.numpy().astype(np.uint8))
    with pytest.raises(DataFileError, match="holds 1,000 labels, expected 10,000"):
        read_idx(path, "labels", 10_000)


def test_idx_files_are_read_whatever_their_compression_and_name(tmp_path):
    raw = _idx(LABELS, (4,), bytes([3, 1, 4, 1]))
    for name, content in [("a.gz", raw), ("b", gzip.compress(raw)), ("c.gz", gzip.compress(raw))]:
        (tmp_path / name).write_bytes(content)
        assert read_idx(tmp_path / name, "labels").tolist() == [3, 1, 4, 1]


def test_unreadable_data_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(_idx(LABELS, (1,), b"\x00"))
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataAccessError, match=re.escape(f"{path} cannot be read (permission")):
        read_idx(path, "labels")


# --- where the files are found -------------------------------------------------------------------


def test_find_files_prefers_gzip_and_the_first_layout(tmp_path):
    for sub in LAYOUTS:
        for stem in STEMS:
            (tmp_path / sub).mkdir(parents=True, exist_ok=True)
            (tmp_path / sub / stem).touch()
    (tmp_path / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").touch()
    found = find_files(tmp_path)
    assert found["train-images-idx3-ubyte"] == tmp_path / "train-images-idx3-ubyte"
    assert found["t10k-images-idx3-ubyte"] == tmp_path / "t10k-images-idx3-ubyte"
    for stem in STEMS:
        (tmp_path / stem).unlink()
    found = find_files(tmp_path)
    assert found["t10k-images-idx3-ubyte"] == tmp_path / "fashion-mnist/t10k-images-idx3-ubyte.gz"
    assert found["t10k-labels-idx1-ubyte"] == tmp_path / "fashion-mnist/t10k-labels-idx1-ubyte"
    assert find_files(tmp_path / "nowhere") == {}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_uncompressed_files_in_each_layout(tmp_path, tiled, sample, layout):
    link_files(tmp_path / layout, tiled)
    assert find_files(tmp_path) == {s: tmp_path / layout / s for s in STEMS}
    train_iter, test_iter = d2l.load_data_fashion_mnist(1000, root=tmp_path, profile="full")
    train_images, test_images = tiled_expected(sample)
    assert torch.equal(train_iter.dataset.images, train_images)
    assert torch.equal(test_iter.dataset.images, test_images)
    assert torch.equal(train_iter.dataset.labels, sample[0].labels.repeat(30))


@pytest.mark.parametrize("layout", ["", "FashionMNIST/raw"])
def test_gzipped_files_in_each_layout(tmp_path, fashion_mnist_full, full_arrays, layout):
    link_files(tmp_path / layout, {s: fashion_mnist_full / f"{s}.gz" for s in STEMS})
    assert find_files(tmp_path) == {s: tmp_path / layout / f"{s}.gz" for s in STEMS}
    train_iter, test_iter = d2l.load_data_fashion_mnist(1000, root=tmp_path, profile="full")
    assert np.array_equal(train_iter.dataset.images.numpy(), full_arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test_iter.dataset.images.numpy(), full_arrays["t10k-images-idx3-ubyte"])


def test_root_argument_comes_before_d2l_data_dir(tmp_path, tiled, sample, monkeypatch):
    good, empty = link_files(tmp_path / "good", tiled), tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("D2L_DATA_DIR", str(empty))
    train_iter, _ = d2l.load_data_fashion_mnist(1000, root=good, profile="full")
    assert torch.equal(train_iter.dataset.images, tiled_expected(sample)[0])
    monkeypatch.setenv("D2L_DATA_DIR", str(good))
    with pytest.raises(DatasetNotFoundError, match="root=") as info:
        d2l.load_data_fashion_mnist(1000, root=empty, profile="full")
    assert str(empty) in str(info.value) and str(good) not in str(info.value)
    train_iter, _ = d2l.load_data_fashion_mnist(1000, profile="full")  # no root: D2L_DATA_DIR
    assert len(train_iter.dataset) == 60_000


def test_d2l_data_dir_comes_before_the_cache_folder(tmp_path, tiled, monkeypatch):
    cache, empty = tmp_path / "cache", tmp_path / "empty"
    link_files(cache / "d2l_utils" / "fashion-mnist", tiled)
    empty.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("D2L_DATA_DIR", str(empty))
    with pytest.raises(DatasetNotFoundError, match="D2L_DATA_DIR") as info:
        d2l.load_data_fashion_mnist(1000, profile="full")
    assert str(empty) in str(info.value) and str(cache) not in str(info.value)
    monkeypatch.delenv("D2L_DATA_DIR")
    train_iter, _ = d2l.load_data_fashion_mnist(1000, profile="full")
    assert len(train_iter.dataset) == 60_000


def test_default_root_follows_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "d2l_utils" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "d2l_utils" / "fashion-mnist"


def test_root_that_is_a_file_is_named(tmp_path, monkeypatch):
    file = tmp_path / "fashion.zip"
    file.write_bytes(b"PK")
    match = re.escape(f"root= points to {file}, which is a file")
    # Caught by its own class, by what Python would raise (NotADirectoryError), and by the one
    # "the data is not there" clause (FileNotFoundError).
    for caught_by in (DataRootError, NotADirectoryError, FileNotFoundError):
        with pytest.raises(caught_by, match=match):
            d2l.load_data_fashion_mnist(8, root=file, profile="full")
    monkeypatch.setenv("D2L_DATA_DIR", str(file))
    with pytest.raises(DataRootError, match=r"D2L_DATA_DIR points to .*, which is a file"):
        d2l.load_data_fashion_mnist(8, profile="full")


@pytest.mark.parametrize("root", [123, "", b"/data"])
def test_root_that_is_not_a_path_is_named(root):
    with pytest.raises(ValueError, match="root must be a folder path"):
        d2l.load_data_fashion_mnist(8, root=root, profile="full")


def test_unreadable_root_is_named(tmp_path, monkeypatch):
    # Tests may run as root, who reads anything: every folder is made unreadable instead.
    monkeypatch.setattr(d2l_utils.fashion_mnist.os, "access", lambda path, mode: False)
    match = re.escape(f"{tmp_path}, which cannot be read")
    # Caught by its own class, by what Python would raise (PermissionError), and by the one
    # "the data is not there" clause (FileNotFoundError).
    for caught_by in (DataAccessError, PermissionError, FileNotFoundError):
        with pytest.raises(caught_by, match=match):
            d2l.load_data_fashion_mnist(8, root=tmp_path, profile="full", download=False)


# --- offline, downloads --------------------------------------------------------------------------


def test_offline_without_data_names_folders_files_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        d2l.load_data_fashion_mnist(256, profile="full")
    message = str(info.value)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    for sub in LAYOUTS:
        assert str(tmp_path / sub if sub else tmp_path) in message
    assert "D2L_DATA_DIR" in message and "network disabled in tests" in message
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert list(tmp_path.iterdir()) == []  # nothing half-downloaded left behind


def test_offline_error_lists_only_the_missing_files(tmp_path, fashion_mnist_full):
    link_files(tmp_path, {s: fashion_mnist_full / f"{s}.gz" for s in STEMS if "labels" in s})
    with pytest.raises(DatasetNotFoundError) as info:
        d2l.load_data_fashion_mnist(256, root=tmp_path, profile="full")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert "labels-idx1-ubyte" not in message


def test_download_false_never_connects_and_names_the_files_and_the_fix(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(socket.socket, "connect", fail)
    monkeypatch.setattr(socket, "getaddrinfo", fail)
    (tmp_path / "data_batch_1").write_bytes(b"CIFAR")  # the wrong dataset
    with pytest.raises(DatasetNotFoundError) as info:
        d2l.load_data_fashion_mnist(256, root=tmp_path, profile="full", download=False)
    message = str(info.value)
    for stem in STEMS:
        assert f"{stem}.gz" in message
    assert str(tmp_path) in message and "D2L_DATA_DIR" in message


def test_missing_files_are_downloaded_and_checked(
    tmp_path, fashion_mnist_full, full_arrays, mirror, monkeypatch
):
    # The shared copy's label archives are the published bytes, so a mirror can serve them;
    # the first mirror serves damaged bytes, which must be refused on their checksum.
    url, served = mirror
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        (served / "good").mkdir(exist_ok=True)
        (served / "good" / f"{stem}.gz").symlink_to(fashion_mnist_full / f"{stem}.gz")
        (served / "bad").mkdir(exist_ok=True)
        (served / "bad" / f"{stem}.gz").write_bytes(
            (fashion_mnist_full / f"{stem}.gz").read_bytes()[:-1]
        )
    monkeypatch.setattr(d2l_utils.fashion_mnist, "MIRRORS", (url + "bad/", url + "good/"))
    root = tmp_path / "root"
    link_files(root, {s: fashion_mnist_full / f"{s}.gz" for s in STEMS if "images" in s})
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, root=root, profile="full")
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for stem in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        assert (root / f"{stem}.gz").read_bytes() == (
            fashion_mnist_full / f"{stem}.gz"
        ).read_bytes()
    labels = full_arrays["t10k-labels-idx1-ubyte"].astype(np.int64)
    assert np.array_equal(test_iter.dataset.labels.numpy(), labels)


def test_download_with_a_wrong_checksum_is_not_kept(tmp_path, mirror, monkeypatch, capsys):
    url, served = mirror
    for folder in (served, served / "again"):
        folder.mkdir(exist_ok=True)
        for stem in STEMS:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(b"<html>moved</html>"))
    monkeypatch.setattr(d2l_utils.fashion_mnist, "MIRRORS", (url, url + "again/"))
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError, match=r"MD5 [0-9a-f]{32}, not the published") as info:
        d2l.load_data_fashion_mnist(256, root=root, profile="full")
    assert FILES["train-images-idx3-ubyte"].md5 in str(info.value)
    assert "D2L_DATA_DIR" in str(info.value)
    tried = [line for line in capsys.readouterr().out.splitlines() if "downloading" in line]
    assert len(tried) == 2  # both mirrors were tried for the first file, then it gave up
    assert list(root.iterdir()) == []  # no bad file, no partial file


class _Response(io.BytesIO):
    """What urlopen returns, serving ``payload`` (optionally failing after ``fail_after``
    bytes, as a dropped connection does)."""

    def __init__(self, payload: bytes, fail_after: int | None = None) -> None:
        super().__init__(payload)
        self.fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(min(size, self.fail_after or size) if size > 0 else size)


def _serve(monkeypatch, make_response: Callable[[], _Response]) -> list[str]:
    """Replace the package's urlopen; returns the list of URLs it is asked for."""
    urls: list[str] = []

    def urlopen(request, timeout=None):
        urls.append(request.full_url)
        return make_response()

    monkeypatch.setattr(d2l_utils.fashion_mnist, "urlopen", urlopen)
    return urls


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    _serve(monkeypatch, lambda: _Response(os.urandom(3 << 20), fail_after=1 << 20))
    with pytest.raises(DatasetNotFoundError, match="ConnectionResetError"):
        d2l.load_data_fashion_mnist(8, root=tmp_path, profile="full")
    assert list(tmp_path.iterdir()) == []


def test_download_with_the_right_checksum_is_kept(tmp_path, monkeypatch):
    payload = gzip.compress(_idx(LABELS, (3,), bytes([0, 1, 2])))
    stem = "t10k-labels-idx1-ubyte"
    spec = FILES[stem]
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(FILES, stem, type(spec)(spec.kind, 3, md5))
    urls = _serve(monkeypatch, lambda: _Response(payload))
    assert d2l_utils.fashion_mnist._download(tmp_path, [stem]) == []
    assert urls == [d2l_utils.fashion_mnist.MIRRORS[0] + stem + ".gz"]
    assert (tmp_path / f"{stem}.gz").read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == [f"{stem}.gz"]


# --- broken files through the loader -------------------------------------------------------------


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _label_11(labels_idx: bytes) -> bytes:
    return labels_idx[:8] + labels_idx[8:].replace(b"\x09", b"\x0b", 1)


@pytest.mark.parametrize(
    "name, make, says",
    [
        ("train-labels-idx1-ubyte", _cut, "truncated"),
        ("train-labels-idx1-ubyte.gz", lambda d: _cut(gzip.compress(d)), "truncated or corrupt"),
        ("train-labels-idx1-ubyte.gz", lambda d: _flip_crc(gzip.compress(d)), "corrupt"),
        ("train-labels-idx1-ubyte", _label_11, "label 11"),
        ("train-labels-idx1-ubyte", lambda d: idx_bytes(np.zeros(10_000, np.uint8)), "10,000"),
    ],
    ids=["truncated", "truncated gzip", "corrupt gzip", "bad label", "test labels in place"],
)
def test_loader_reports_a_broken_file_by_name(tmp_path, tiled, name, make, says):
    link_files(tmp_path, {s: p for s, p in tiled.items() if s != "train-labels-idx1-ubyte"})
    (tmp_path / name).write_bytes(make(tiled["train-labels-idx1-ubyte"].read_bytes()))
    with pytest.raises(DataFileError, match=says) as info:
        d2l.load_data_fashion_mnist(256, root=tmp_path, profile="full")
    assert name in str(info.value) and "D2L_DATA_DIR" in str(info.value)


def _gz_images(dims: tuple[int, ...], n_bytes: int = 0) -> bytes:
    return gzip.compress(_idx(IMAGES, dims, bytes(n_bytes)))


TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
DAMAGED_TRAIN_IMAGES = {
    "swapped": (gzip.compress(_idx(LABELS, (60_000,), bytes(60_000))), "holds labels, expected"),
    "truncated": (
        _gz_images((60_000, 28, 28), 5000),
        "is truncated: 5,016 bytes, expected 47,040,016",
    ),
    "truncated-gzip": (_gz_images((60_000, 28, 28), 5000)[:-20], "truncated or corrupt gzip data"),
    "wrong-size": (_gz_images((60_000, 32, 32)), "holds 32x32 images, expected 28x28"),
    "wrong-count": (_gz_images((1000, 28, 28), 784_000), "holds 1,000 images, expected 60,000"),
    "html": (gzip.compress(b"<!DOCTYPE html><html>Rate limit</html>"), r"holds text \(an HTML"),
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(64), "has magic number 0x89504e47"),
    "empty": (b"", r"is truncated \(0 bytes, no IDX header\)"),
    "corrupt-gzip": (b"\x1f\x8b\x08\x00" + bytes(range(96)), "is truncated or corrupt gzip data"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_TRAIN_IMAGES))
def test_damaged_image_file_is_named_with_the_fix(tmp_path, damage):
    content, message = DAMAGED_TRAIN_IMAGES[damage]
    for stem in FILES:  # the other three are never read: the first file read is bad
        (tmp_path / f"{stem}.gz").write_bytes(b"unused")
    (tmp_path / TRAIN_IMAGES).write_bytes(content)
    with pytest.raises(DataFileError, match=message) as info:
        d2l.load_data_fashion_mnist(8, root=tmp_path, profile="full", download=False)
    text = str(info.value)
    assert str(tmp_path / TRAIN_IMAGES) in text
    assert "delete it and run again to re-download it" in text and "D2L_DATA_DIR" in text
