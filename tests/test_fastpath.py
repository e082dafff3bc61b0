"""The fast path computes what the textbook path computes.

* :func:`d2l_utils.data.resize_batch` against torchvision's ``Resize`` + ``ToTensor`` on PIL images
  (the book's transform), on real images;
* :class:`d2l_utils.data.BatchLoader` against the book's ``DataLoader``: ``len``, ``batch_size``,
  ``dataset``, every image exactly once per epoch, seeded shuffling;
* :func:`d2l_utils.train_ch6` and :func:`d2l_utils.evaluate_accuracy_gpu`, which keep their
  metrics on the device, against the book's loop, which reads them back after every batch
  (:mod:`benchmarks.reference`, the same loop the benchmark times as the textbook path).
"""

from __future__ import annotations

import ast
import copy
import inspect
import math

import pytest
import torch
from PIL import Image
from torch import nn
from torch.testing import assert_close
from torchvision import transforms

import benchmarks.reference
import d2l_utils.plot
import d2l_utils.train
from benchmarks.reference import book_evaluate, book_train_ch6, book_transform
from d2l_utils import evaluate_accuracy_gpu, init_weights, train_ch6
from d2l_utils.data import BatchLoader, FashionMNIST, load_sample, resize_batch


@pytest.fixture(scope="module")
def sample() -> tuple[FashionMNIST, FashionMNIST]:
    return load_sample(train=True), load_sample(train=False)


def _book_transform(images: torch.Tensor, resize: int | tuple[int, int] | None) -> torch.Tensor:
    """The book's per-image pipeline: PIL image, ``Resize`` if asked, ``ToTensor``; stacked."""
    trans = book_transform(resize)
    return torch.stack([trans(Image.fromarray(a, mode="L")) for a in images.numpy()])


# --- resize_batch vs Resize + ToTensor ------------------------------------------------------------


def test_the_reference_transform_is_torchvisions_resize_then_to_tensor():
    steps = book_transform(96).transforms
    assert [type(t) for t in steps] == [transforms.Resize, transforms.ToTensor]
    assert steps[0].size == 96 and steps[0].interpolation == transforms.InterpolationMode.BILINEAR
    assert [type(t) for t in book_transform(None).transforms] == [transforms.ToTensor]


@pytest.mark.parametrize("resize", [None, 28, (28, 28)])
def test_no_resize_is_exactly_to_tensor(sample, resize):
    images = sample[0].images[:500]
    size = None if resize is None else (28, 28)
    assert_close(resize_batch(images, size), _book_transform(images, resize), rtol=0, atol=0)


# Measured on the 2,000 training images of the sample: 9.9 % to 10.3 % of the pixels differ from
# PIL's, each by exactly one grey level (PIL resamples in two passes with fixed-point weights and
# rounds to uint8 in between; resize_batch interpolates once in floating point).
MAX_DIFFERING = 0.11


@pytest.mark.parametrize(
    "resize, shape",
    [(96, (96, 96)), (32, (32, 32)), ((64, 48), (64, 48)), (14, (14, 14))],
)
def test_resize_is_within_one_grey_level_of_torchvision(sample, resize, shape):
    images = sample[0].images[:400]
    reference = _book_transform(images, resize)
    ours = resize_batch(images, shape)
    assert ours.shape == reference.shape == (400, 1, *shape) and ours.dtype == torch.float32
    assert_close(ours, reference, rtol=0, atol=1 / 255 + 1e-6)
    differing = (ours != reference).float().mean().item()
    assert differing <= MAX_DIFFERING
    # Both are whole grey levels over 255, so the loader's batches are still images in [0, 1].
    assert_close(ours * 255, (ours * 255).round(), rtol=0, atol=1e-4)


def test_resize_of_one_batch_equals_resizing_each_image(sample):
    images = sample[1].images[:64]
    one_by_one = torch.cat([resize_batch(images[i : i + 1], (96, 96)) for i in range(64)])
    assert_close(resize_batch(images, (96, 96)), one_by_one, rtol=0, atol=0)


# --- BatchLoader vs DataLoader ----------------------------------------------------------------


def _numbered(n: int) -> FashionMNIST:
    """``n`` images that carry their own index in pixels (0, 0) and (0, 1); label = index % 10."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    idx = torch.arange(n)
    images[:, 0, 0], images[:, 0, 1] = idx % 256, idx // 256
    return FashionMNIST(images, idx % 10, idx, train=True)


def _indices(X: torch.Tensor) -> torch.Tensor:
    pixels = (X[:, 0, 0, :2] * 255).round().long()
    return pixels[:, 0] + 256 * pixels[:, 1]


def _epoch(loader: BatchLoader) -> tuple[torch.Tensor, list[int]]:
    """The order in which one epoch visits the images, and the batch sizes."""
    order, sizes = [], []
    for X, y in loader:
        assert X.dtype == torch.float32 and X.shape[1:] == (1, 28, 28)
        assert y.dtype == torch.int64
        i = _indices(X)
        assert torch.equal(y, i % 10)  # each label travels with its image
        order.append(i)
        sizes.append(len(y))
    return torch.cat(order), sizes


def test_loader_has_dataloaders_len_batch_size_and_dataset():
    data = _numbered(1000)
    ours = BatchLoader(data, 64, shuffle=True, seed=0)
    book = torch.utils.data.DataLoader(data, 64, shuffle=True)
    assert len(ours) == len(book) == math.ceil(1000 / 64)
    assert ours.batch_size == book.batch_size == 64
    assert ours.dataset is data
    _, sizes = _epoch(ours)
    assert sizes == [64] * 15 + [1000 - 15 * 64]


def test_unshuffled_batches_equal_a_dataloader_over_the_same_dataset(sample):
    test = sample[1]
    ours = list(BatchLoader(test, 128, shuffle=False))
    book = list(torch.utils.data.DataLoader(test, 128, shuffle=False))
    assert len(ours) == len(book)
    for (X, y), (Xb, yb) in zip(ours, book, strict=True):
        assert_close(X, Xb, rtol=0, atol=0)
        assert_close(y, yb, rtol=0, atol=0)


def test_every_image_exactly_once_per_epoch_in_a_new_seeded_order():
    data = _numbered(1000)
    loader = BatchLoader(data, 64, shuffle=True, seed=7)
    first, second = _epoch(loader)[0], _epoch(loader)[0]
    for order in (first, second):
        assert torch.equal(order.sort().values, torch.arange(1000))
    assert not torch.equal(first, second)  # a new permutation each epoch
    assert not torch.equal(first, torch.arange(1000))
    again = BatchLoader(data, 64, shuffle=True, seed=7)
    assert torch.equal(_epoch(again)[0], first)  # the same seed repeats every epoch's order
    assert torch.equal(_epoch(again)[0], second)
    assert not torch.equal(_epoch(BatchLoader(data, 64, shuffle=True, seed=8))[0], first)
    assert torch.equal(_epoch(BatchLoader(data, 64, shuffle=False))[0], torch.arange(1000))
    # Without a seed, torch.manual_seed makes the order repeatable, as with a DataLoader.
    orders = []
    for _ in range(2):
        torch.manual_seed(3)
        orders.append(_epoch(BatchLoader(data, 64, shuffle=True))[0])
    assert torch.equal(orders[0], orders[1])


def test_resizing_loader_serves_the_resized_images_in_the_same_order(sample):
    train = sample[0]
    plain = BatchLoader(train, 100, shuffle=True, seed=1)
    resized = BatchLoader(train, 100, shuffle=True, seed=1, resize=(32, 32))
    for (X, y), (Xr, yr) in zip(plain, resized, strict=True):
        assert torch.equal(y, yr) and Xr.shape == (len(y), 1, 32, 32)
        uint8 = (X[:, 0] * 255).round().to(torch.uint8)
        assert_close(Xr, resize_batch(uint8, (32, 32)), rtol=0, atol=0)


# --- train_ch6 vs the book's per-batch synchronising loop -----------------------------------------


def _small_net() -> nn.Sequential:
    """A small conv net with batch norm (train/eval differ), so every metric path is exercised."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, stride=2),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 12, kernel_size=3, stride=2),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 5 * 5, 10),
    )


class _Recorder:
    """Stands in for the Animator and records the points ``train_ch6`` plots."""

    points: list[tuple[float, tuple]] = []

    def __init__(self, **kwargs: object) -> None:
        pass

    def add(self, x: float, y: tuple) -> None:
        _Recorder.points.append((x, y))


def _twins(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    net = _small_net()
    net.apply(init_weights)
    return net, copy.deepcopy(net)


def test_metrics_and_plot_points_equal_the_per_batch_synchronising_loop(sample, monkeypatch):
    train, test = sample[0].subset(torch.arange(0, 2000, 2)), sample[1]
    # Pretend to be in Jupyter so that train_ch6 also produces its five plot points per epoch.
    # Patched in both modules: the epoch log looks these names up in whichever of them holds it.
    for module in (d2l_utils.train, d2l_utils.plot):
        monkeypatch.setattr(module, "in_notebook", lambda: True, raising=False)
        monkeypatch.setattr(module, "Animator", _Recorder, raising=False)
    _Recorder.points = []
    ours, book = _twins()
    epochs, lr = 2, 0.3
    # The same seed gives both loops the same batches; contiguous memory format in both, so both
    # run the same kernels in the same order and train bit-identical nets.
    history = train_ch6(
        ours, BatchLoader(train, 50, shuffle=True, seed=5), BatchLoader(test, 256), epochs, lr,
        "cpu", init=False, profile="full", channels_last=False,
    )  # fmt: skip
    book_points: list[tuple[float, float, float]] = []
    reference = book_train_ch6(
        book, BatchLoader(train, 50, shuffle=True, seed=5), BatchLoader(test, 256), epochs, lr,
        torch.device("cpu"), init=False, on_batch=lambda *p: book_points.append(p),
    )  # fmt: skip

    for name, value in ours.state_dict().items():
        assert_close(value, book.state_dict()[name], rtol=0, atol=0)
    # Accuracies are counts of correct predictions over the same counts: exactly equal.
    assert history.train_acc == reference["train_acc"]
    assert history.test_acc == reference["test_acc"]
    # The loss is a sum over 20 batches of float32 values; train_ch6 adds them in float32 on the
    # device, the book in Python's float64.  Each float32 addition rounds by at most 2**-24 of
    # the running sum (all terms are positive), so the two differ by at most 20 * 2**-24 relative.
    rtol = math.ceil(len(train) / 50) * 2**-24
    assert_close(history.train_loss, reference["train_loss"], rtol=rtol, atol=0)

    batch_points = [(x, y[0], y[1]) for x, y in _Recorder.points if y[2] is None]
    epoch_points = [(x, y[2]) for x, y in _Recorder.points if y[2] is not None]
    assert len(batch_points) == len(book_points) == epochs * 5  # after batches 4, 8, ..., 20
    for (x, loss, acc), (bx, bloss, bacc) in zip(batch_points, book_points, strict=True):
        assert x == bx and acc == bacc
        assert_close(loss, bloss, rtol=rtol, atol=0)
    assert epoch_points == [(e + 1, a) for e, a in enumerate(reference["test_acc"])]


def test_evaluate_accuracy_equals_the_per_batch_synchronising_evaluation(sample):
    ours, book = _twins(seed=1)
    # Train a few steps so the BN statistics are not their initial values and eval mode matters.
    opt = torch.optim.SGD(ours.parameters(), lr=0.3)
    for X, y in list(BatchLoader(sample[0], 200, shuffle=True, seed=2))[:3]:
        opt.zero_grad()
        nn.functional.cross_entropy(ours(X), y).backward()
        opt.step()
    book.load_state_dict(ours.state_dict())
    for batch_size in (1000, 256, 7):
        acc = evaluate_accuracy_gpu(ours, BatchLoader(sample[1], batch_size), "cpu")
        assert acc == book_evaluate(book, BatchLoader(sample[1], batch_size), torch.device("cpu"))
    assert ours.training  # evaluation leaves the net in the mode it found it in


def test_channels_last_computes_the_same_step(sample):
    """What train_ch6 changes for conv nets (memory format) changes no result beyond rounding."""
    ours, book = _twins(seed=2)
    ours.to(memory_format=torch.channels_last)
    X, y = next(iter(BatchLoader(sample[0], 64, shuffle=True, seed=0)))
    outputs = []
    for net, x in ((ours, X.contiguous(memory_format=torch.channels_last)), (book, X.contiguous())):
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        outputs.append((loss, [p.grad for p in net.parameters()]))
    assert_close(outputs[0][0], outputs[1][0])
    for g_ours, g_book in zip(outputs[0][1], outputs[1][1], strict=True):
        assert_close(g_ours, g_book)


def test_the_reference_loop_shares_no_code_with_the_loop_it_checks():
    """An oracle importing train_ch6's helpers (init, accuracy, Accumulator) could share a bug."""
    tree = ast.parse(inspect.getsource(benchmarks.reference))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(name.startswith("d2l_utils") for name in imported), imported
