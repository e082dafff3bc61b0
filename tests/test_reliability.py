"""Reliability of the data and training helpers (issue 6).

Training runs: an interrupt from inside a batch, divergence forced by a huge learning rate,
checkpoints (a crash during the save, corrupt and incompatible files, exact resume) and seeded
repeatability.  Bad input: every argument of ``load_data`` and ``train_ch6`` that can be wrong,
and every way a data file or a download can be damaged.

Everything runs on the CPU with tiny nets and a 250/100-image slice of the bundled sample.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import d2l_utils.checkpoint as ckpt
from d2l_utils import data
from d2l_utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from d2l_utils.data import (
    BatchLoader,
    DataAccessError,
    DataFileError,
    DataRootError,
    DatasetNotFoundError,
    FashionMNIST,
    load_data,
    load_sample,
    read_idx,
)
from d2l_utils.train import DivergenceError, History, evaluate_accuracy_gpu, init_weights, train_ch6

BATCH, N_BATCHES = 50, 5  # 250 training images


def _loaders(seed: int = 1) -> tuple[BatchLoader, BatchLoader]:
    train = load_sample(train=True).subset(torch.arange(0, 2000, 8))  # 250 images, all classes
    test = load_sample(train=False).subset(torch.arange(0, 1000, 10))  # 100 images
    return BatchLoader(train, BATCH, shuffle=True, seed=seed), BatchLoader(test, BATCH)


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10)
    )


def _cnn() -> nn.Sequential:
    """Convolution (channels_last), batch norm (buffers) and dropout (RNG): all a resume needs."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 7 * 7, 10),
    )  # fmt: skip


def _copy(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


def _interrupt_at(net: nn.Module, n: int, training: bool = True):
    """Raise KeyboardInterrupt (as Ctrl-C would) inside the ``n``-th forward pass of a full batch
    in training mode (or in eval mode: during evaluation)."""
    calls = [0]

    def hook(module: nn.Module, args: tuple) -> None:
        if module.training == training and args[0].shape[0] == BATCH:
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt

    return net.register_forward_pre_hook(hook)


def _seeded_init(net: nn.Module) -> None:
    for m in net.modules():
        if type(m) in (nn.Linear, nn.Conv2d):
            m.reset_parameters()
    net.apply(init_weights)


def _book_loop(net: nn.Module, train_iter: BatchLoader, lr: float, seed: int, steps: int) -> list:
    """The book's training loop written out plainly; the losses of the first ``steps`` batches.

    It starts as ``train_ch6(seed=...)`` documents: seeded RNG, linear and convolutional layers
    re-drawn whole (PyTorch's init), the book's xavier init, the loader's shuffle restarted.
    """
    torch.manual_seed(seed)
    train_iter.generator.manual_seed(seed)
    _seeded_init(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses: list[float] = []
    while len(losses) < steps:
        net.train()
        for X, y in train_iter:
            loss = nn.functional.cross_entropy(net(X), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


def _train(net: nn.Module, loaders, num_epochs: int = 3, lr: float = 0.1, **kwargs) -> History:
    kwargs = {"seed": 0, "profile": "full", **kwargs}
    return train_ch6(net, *loaders, num_epochs, lr, "cpu", **kwargs)


# --- interrupts ---------------------------------------------------------------------------------


def test_interrupt_inside_a_batch_stops_there_and_returns_the_history(capsys):
    net, loaders = _mlp(), _loaders()
    handle = _interrupt_at(net, N_BATCHES + 3)  # the 3rd batch of epoch 2
    history = _train(net, loaders, num_epochs=3)
    handle.remove()

    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if "interrupt" in line]
    assert lines == [
        "interrupted in epoch 2/3 after step 2/5: net keeps its current weights; returning the "
        "history of 1 completed epoch"
    ]
    assert "Traceback" not in out.out + out.err
    assert history.interrupted and history.num_epochs == 1
    assert len(history.train_loss) == len(history.test_acc) == len(history.epoch_time) == 1
    assert history.examples_per_sec > 0 and history.total_time > 0

    # The weights are those after exactly N_BATCHES + 2 steps of the book's plain loop.
    reference = _mlp()
    _book_loop(reference, _loaders()[0], lr=0.1, seed=0, steps=N_BATCHES + 2)
    _assert_equal_states(_copy(net), _copy(reference))
    assert net.training
    assert 0.0 <= evaluate_accuracy_gpu(net, loaders[1]) <= 1.0  # still usable


def test_interrupt_during_evaluation_leaves_the_net_in_training_mode(capsys):
    net, loaders = _mlp(), _loaders()
    handle = _interrupt_at(net, 1, training=False)  # the first full test batch of epoch 1
    history = _train(net, loaders, num_epochs=2)
    handle.remove()
    assert "interrupted in epoch 1/2 while evaluating" in capsys.readouterr().out
    assert history.interrupted and history.num_epochs == 0 and history.test_acc == []
    assert net.training


# --- divergence ---------------------------------------------------------------------------------


def test_huge_learning_rate_stops_with_epoch_and_step_and_restores_the_weights():
    lr = 1e30
    reference = _mlp()
    losses = _book_loop(reference, _loaders()[0], lr=lr, seed=0, steps=N_BATCHES)
    first_bad = next(i + 1 for i, v in enumerate(losses) if not math.isfinite(v))

    net, loaders = _mlp(), _loaders()
    start = _mlp()  # the weights train_ch6 starts from
    torch.manual_seed(0)
    _seeded_init(start)
    with pytest.raises(DivergenceError) as info:
        _train(net, loaders, num_epochs=3, lr=lr)
    err = info.value
    assert (err.epoch, err.step) == (1, first_bad)
    assert f"epoch 1/3, step {first_bad}/{N_BATCHES}" in str(err)
    assert "lower learning rate" in str(err) and "lr=1e+29" in str(err)
    assert err.history.num_epochs == 0
    _assert_equal_states(_copy(net), _copy(start))


def test_divergence_in_a_later_epoch_keeps_the_last_completed_epoch(tmp_path):
    path = tmp_path / "run.pt"

    def explode(opt):  # the learning rate jumps by 1e30 at the first step of epoch 2
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < N_BATCHES else 1e30)

    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(DivergenceError, match=r"in epoch 2/3, step \d/5") as info:
        _train(net, _loaders(), num_epochs=3, optimizer=opt, scheduler=explode, checkpoint=path)
    assert info.value.epoch == 2 and info.value.history.num_epochs == 1
    saved = load_checkpoint(path)  # written after epoch 1, never with the diverged state
    assert saved["epoch"] == 1
    _assert_equal_states(_copy(net), saved["model"])
    momentum = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(torch.isfinite(m).all() for m in momentum)
    assert_close(momentum, [saved["optimizer"]["state"][i]["momentum_buffer"] for i in range(4)])


def test_non_finite_weights_with_a_finite_loss_are_divergence_too():
    # Batch norm hides exploding conv weights from the loss (its running variance overflows),
    # so only the end-of-epoch check of the weights and buffers catches this run.
    net = _cnn()
    with pytest.raises(DivergenceError, match="weights became non-finite") as info:
        _train(net, _loaders(), num_epochs=2, lr=1e30)
    assert info.value.step is None
    assert all(torch.isfinite(v).all() for v in net.state_dict().values() if v.is_floating_point())


# --- checkpoints --------------------------------------------------------------------------------


def _augment(X: torch.Tensor) -> torch.Tensor:
    """Random horizontal flips, drawn from torch's global RNG (which a resume must restore)."""
    flip = torch.rand(X.shape[0], 1, 1, 1) < 0.5
    return torch.where(flip, X.flip(-1), X)


def _resume_run(net: nn.Module, loaders, **kwargs) -> History:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    return _train(
        net, loaders, num_epochs=2, optimizer=opt, augment=_augment,
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.7), **kwargs,
    )  # fmt: skip


def test_interrupted_and_resumed_run_ends_with_exactly_the_uninterrupted_weights(
    tmp_path, capsys, monkeypatch
):
    whole = _cnn()
    expected = _resume_run(whole, _loaders())

    path = tmp_path / "ckpt" / "run.pt"  # the folder is created
    first = _cnn()
    handle = _interrupt_at(first, N_BATCHES + 3)
    partial = _resume_run(first, _loaders(), checkpoint=path)
    handle.remove()
    assert partial.interrupted and partial.num_epochs == 1
    assert "to resume after epoch 1" in capsys.readouterr().out
    epoch_1 = path.read_bytes()

    again = _cnn()  # the caller's code builds a new net, optimizer and loaders, then resumes
    resumed = _resume_run(again, _loaders(seed=99), checkpoint=path)
    assert "resuming from checkpoint" in capsys.readouterr().out
    _assert_equal_states(_copy(again), _copy(whole))
    assert (resumed.train_loss, resumed.train_acc, resumed.test_acc) == (
        expected.train_loss, expected.train_acc, expected.test_acc,
    )  # fmt: skip
    assert resumed.num_epochs == 2 and not resumed.interrupted
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.pt"]  # no temporary files

    # The comparison is sharp: a resume that skips restoring the RNGs ends elsewhere.
    path.write_bytes(epoch_1)
    monkeypatch.setattr("d2l_utils.train.set_rng_state", lambda state: None)
    careless = _cnn()
    _resume_run(careless, _loaders(), checkpoint=path)
    with pytest.raises(AssertionError):
        _assert_equal_states(_copy(careless), _copy(whole))


def _no_step(*args, **kwargs):
    raise AssertionError("a training step ran")


def test_checkpoint_of_a_finished_run_loads_and_trains_nothing(tmp_path, capsys):
    # Under the smoke profile 5 epochs are capped to 1: the checkpoint counts against the cap.
    path = tmp_path / "run.pt"
    net = _mlp()
    first = train_ch6(net, *_loaders(), 5, 0.1, "cpu", seed=0, profile="smoke", checkpoint=path)
    assert first.num_epochs == 1 and load_checkpoint(path)["num_epochs"] == 1
    before = path.read_bytes()

    again = _mlp()
    opt = torch.optim.SGD(again.parameters(), lr=0.1)
    opt.step = _no_step  # any training step would fail
    second = train_ch6(
        again, *_loaders(), 5, 0.1, "cpu", seed=0, profile="smoke", checkpoint=path, optimizer=opt
    )
    assert "training already finished (1 epoch); net loaded from it" in capsys.readouterr().out
    _assert_equal_states(_copy(again), _copy(net))
    assert second.test_acc == first.test_acc and second.num_epochs == 1
    assert path.read_bytes() == before


def test_crash_during_a_save_never_destroys_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    _train(_mlp(), _loaders(), num_epochs=1, checkpoint=path)
    good = path.read_bytes()
    real_save = torch.save
    seen_during_save = []

    def crash(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half of the new file...
        seen_during_save.append(path.read_bytes() == good)  # ...while the old one is intact
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        _train(_mlp(), _loaders(), num_epochs=2, checkpoint=path)
    assert seen_during_save == [True]
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_interrupt_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.pt"
    _train(_mlp(), _loaders(), num_epochs=1, checkpoint=path)
    good = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", interrupted)
    history = _train(_mlp(), _loaders(), num_epochs=2, checkpoint=path)
    assert "interrupted in epoch 2/2 while saving its checkpoint" in capsys.readouterr().out
    assert history.num_epochs == 2 and history.interrupted
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_checkpoints_are_loaded_with_weights_only(tmp_path, monkeypatch, two_epochs):
    path = tmp_path / "run.pt"
    path.write_bytes(two_epochs)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _train(_mlp(), _loaders(), num_epochs=3, checkpoint=path)  # loads, trains, saves, reads back
    assert len(calls) == 2 and all(c is True for c in calls)


_RAN = []


def _side_effect() -> int:
    _RAN.append(True)
    return 0


class _Payload:
    """Unpickling this object runs code: a weights_only load must refuse it."""

    def __reduce__(self) -> tuple[Callable[[], int], tuple]:
        return _side_effect, ()


def _bad_checkpoints(good: bytes) -> dict[str, Callable[[Path], None]]:
    def save(obj):
        return lambda p: torch.save(obj, p)

    return {
        "truncated": lambda p: p.write_bytes(good[: len(good) // 2]),
        "last byte missing": lambda p: p.write_bytes(good[:-1]),
        "empty": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(bytes(range(256)) * 16),
        "flipped bytes": lambda p: p.write_bytes(good[:100] + bytes(200) + good[300:]),
        "code in the pickle": save({"format": ckpt.FORMAT, "x": _Payload()}),
        "a bare state_dict": save(_mlp().state_dict()),
        "another version": save({"format": ckpt.FORMAT, "version": 99}),
        "keys missing": save({"format": ckpt.FORMAT, "version": ckpt.VERSION}),
    }


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> bytes:
    """The bytes of a good checkpoint: _mlp() trained for 2 epochs, lr 0.1, profile full."""
    path = tmp_path_factory.mktemp("good") / "run.pt"
    _train(_mlp(), _loaders(), num_epochs=2, checkpoint=path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", list(_bad_checkpoints(b"")))
def test_corrupt_checkpoint_is_a_clear_error_and_is_left_alone(tmp_path, damage, two_epochs):
    path = tmp_path / "bad.pt"
    _bad_checkpoints(two_epochs)[damage](path)
    before = path.read_bytes()
    net = _mlp()
    untouched = _copy(net)
    _RAN.clear()
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        _train(net, _loaders(), num_epochs=2, checkpoint=path)
    assert "delete it" in str(info.value)
    assert not _RAN  # the pickled code never ran
    assert path.read_bytes() == before  # neither ignored nor overwritten
    _assert_equal_states(_copy(net), untouched)  # refused before anything changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"net": nn.Sequential(nn.Flatten(), nn.Linear(784, 10))}, "does not fit net"),
        ({"net": nn.Linear(784, 10)}, "holds a Sequential, net is a Linear"),
        ({"profile": "quick"}, "written under profile full, this run uses quick"),
        ({"lr": 0.05}, "written with lr=0.1, this call has lr=0.05"),
        ({"num_epochs": 1}, "holds 2 completed epochs, more than the 1"),
        ({"optimizer": lambda ps: torch.optim.Adam(ps)}, "optimizer SGD .* this call has Adam"),
    ],
)
def test_incompatible_checkpoint_is_refused(tmp_path, change, message, two_epochs):
    path = tmp_path / "run.pt"
    path.write_bytes(two_epochs)
    before = path.read_bytes()
    args = {"net": _mlp(), "num_epochs": 3, "lr": 0.1, **change}
    with pytest.raises(CheckpointError, match=message):
        _train(args.pop("net"), _loaders(), **args, checkpoint=path)
    assert path.read_bytes() == before


def test_checkpoint_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        _train(_mlp(), _loaders(), num_epochs=1, checkpoint=tmp_path)


def test_save_checkpoint_replaces_atomically_and_reads_back(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.arange(3)})
    save_checkpoint(path, {"a": torch.arange(4)})
    assert_close(torch.load(path, weights_only=True)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    with pytest.raises(pickle.UnpicklingError):
        save_checkpoint(path, {"a": _Payload()})  # could never be loaded back: not written
    assert_close(torch.load(path, weights_only=True)["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# --- reproducibility ----------------------------------------------------------------------------


def test_same_seed_gives_identical_runs_even_on_the_same_net_and_loaders():
    loaders, net = _loaders(), _mlp()
    first = _train(net, loaders, num_epochs=1, seed=3)
    weights = _copy(net)
    second = _train(net, loaders, num_epochs=1, seed=3)  # re-running the training cell
    third = _train(_mlp(), _loaders(seed=42), num_epochs=1, seed=3)  # a new session's objects
    for h in (second, third):
        assert (h.train_loss, h.train_acc, h.test_acc) == (
            first.train_loss, first.train_acc, first.test_acc,
        )  # fmt: skip
    _assert_equal_states(_copy(net), weights)
    other = _train(_mlp(), loaders, num_epochs=1, seed=4)
    assert other.train_loss != first.train_loss


def test_same_seed_repeats_a_fresh_net_with_batch_norm_and_channels_last():
    runs = [_train(_cnn(), _loaders(), num_epochs=1, seed=5) for _ in range(2)]
    assert runs[0].train_loss == runs[1].train_loss and runs[0].test_acc == runs[1].test_acc


def test_load_data_shuffle_seed_repeats_the_batch_order():
    def labels(seed):
        train_iter, _ = load_data(100, profile="smoke", shuffle_seed=seed)
        return [torch.cat([y for _, y in train_iter]) for _ in range(2)]  # two epochs

    a, b, c = labels(7), labels(7), labels(8)
    assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])  # a new permutation each epoch


# --- train_ch6: bad arguments -------------------------------------------------------------------


class _NoStep(torch.optim.SGD):
    def step(self, closure=None):
        _no_step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_epochs": 0}, "num_epochs must be a positive int, got 0"),
        ({"num_epochs": -2}, "num_epochs must be a positive int"),
        ({"num_epochs": 2.5}, "num_epochs must be a positive int, got 2.5"),
        ({"num_epochs": True}, "num_epochs must be a positive int"),
        ({"num_epochs": "3"}, "num_epochs must be a positive int"),
        ({"lr": 0}, "lr must be a positive finite number, got 0"),
        ({"lr": -0.1}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"lr": float("inf")}, "lr must be a positive finite number, got inf"),
        ({"lr": "0.1"}, "lr must be a positive finite number"),
        ({"lr": None}, "lr must be a positive finite number"),
        ({"seed": "0"}, "seed must be an int"),
    ],
)
def test_train_ch6_rejects_bad_arguments_before_training(kwargs, message):
    net = _mlp()
    untouched = _copy(net)
    args = {"num_epochs": 1, "lr": 0.1, **kwargs}
    opt = _NoStep(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=message):
        train_ch6(net, *_loaders(), args["num_epochs"], args["lr"], "cpu", optimizer=opt,
                  seed=args.get("seed"))  # fmt: skip
    _assert_equal_states(_copy(net), untouched)


def _empty() -> FashionMNIST:
    return load_sample(train=False).subset(torch.arange(0))


@pytest.mark.parametrize(
    ("which", "loader", "message"),
    [
        ("train", lambda: BatchLoader(_empty(), 8), "train_iter is empty"),
        ("test", lambda: BatchLoader(_empty(), 8), "test_iter is empty"),
        ("train", lambda: [], "train_iter is empty"),
    ],
)
def test_train_ch6_rejects_an_empty_loader(which, loader, message):
    train_iter, test_iter = _loaders()
    if which == "train":
        train_iter = loader()
    else:
        test_iter = loader()
    with pytest.raises(ValueError, match=message):
        train_ch6(_mlp(), train_iter, test_iter, 1, 0.1, "cpu")


def test_train_ch6_rejects_labels_the_net_has_no_output_for():
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))  # 5 classes, Fashion-MNIST has 10
    untouched = _copy(net)
    opt = _NoStep(net.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"train_iter has labels 0..9, but net outputs 5 class"):
        train_ch6(net, *_loaders(), 1, 0.1, "cpu", optimizer=opt)
    _assert_equal_states(_copy(net), untouched)  # not even the init ran

    train_iter, test_iter = _loaders()
    test = test_iter.dataset
    negative = FashionMNIST(test.images, test.labels - 1, test.indices, train=False)
    with pytest.raises(ValueError, match=r"test_iter has labels -1..8"):
        train_ch6(_mlp(), train_iter, BatchLoader(negative, BATCH), 1, 0.1, "cpu")


def test_train_ch6_reports_a_net_that_cannot_take_the_images():
    net = nn.Sequential(nn.Flatten(), nn.Linear(96 * 96, 10))  # built for 96 px, given 28 px
    with pytest.raises(RuntimeError, match=r"before training, net failed on a test batch X of"):
        train_ch6(net, *_loaders(), 1, 0.1, "cpu")


# --- load_data: bad arguments -------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "256", None, True, 256.0])
def test_load_data_rejects_a_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match=r"batch_size must be a positive int"):
        load_data(batch_size, profile="smoke")


@pytest.mark.parametrize(
    "resize", [0, -96, 2.5, "96", (96,), (96, 0), [96, 96, 3], True, (96.0, 96)]
)
def test_load_data_rejects_a_bad_resize(resize):
    with pytest.raises(ValueError, match=r"resize must be a positive int or a pair"):
        load_data(8, resize=resize, profile="smoke")


@pytest.mark.parametrize(
    ("resize", "shape"), [(20, (20, 20)), ((16, 24), (16, 24)), ([8, 8], (8, 8))]
)
def test_load_data_accepts_an_int_or_a_pair(resize, shape):
    X, _ = next(iter(load_data(8, resize=resize, profile="smoke")[0]))
    assert X.shape == (8, 1, *shape)


@pytest.mark.parametrize("seed", ["1", 1.5, True])
def test_load_data_rejects_a_bad_shuffle_seed(seed):
    with pytest.raises(ValueError, match="shuffle_seed must be an int"):
        load_data(8, profile="smoke", shuffle_seed=seed)


def test_unknown_profile_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("D2L_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"D2L_PROFILE='fast' is not a known run profile.*smoke"):
        load_data(8)
    with pytest.raises(ValueError, match=r"profile='fast' is not a known run profile"):
        train_ch6(_mlp(), *_loaders(), 1, 0.1, "cpu", profile="fast")


def test_root_that_is_a_file_is_named(tmp_path, monkeypatch):
    file = tmp_path / "fashion.zip"
    file.write_bytes(b"PK")
    match = re.escape(f"root= points to {file}, which is a file")
    with pytest.raises(FileNotFoundError, match=match) as info:
        load_data(8, root=file, profile="full")
    assert isinstance(info.value, DataRootError | NotADirectoryError)
    monkeypatch.setenv("D2L_DATA_DIR", str(file))
    with pytest.raises(FileNotFoundError, match=r"D2L_DATA_DIR points to .*, which is a file"):
        load_data(8, profile="full")


@pytest.mark.parametrize("root", [123, "", b"/data"])
def test_root_that_is_not_a_path_is_named(root):
    with pytest.raises(ValueError, match="root must be a folder path"):
        load_data(8, root=root, profile="full")


def test_unreadable_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)  # tests may run as root
    match = re.escape(f"{tmp_path}, which cannot be read")
    with pytest.raises(FileNotFoundError, match=match) as info:
        load_data(8, root=tmp_path, profile="full", download=False)
    assert isinstance(info.value, DataAccessError | PermissionError)


def test_root_without_the_files_names_them_and_the_fix(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"CIFAR")  # the wrong dataset
    with pytest.raises(DatasetNotFoundError) as info:
        load_data(8, root=tmp_path, profile="full", download=False)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str(tmp_path) in message and "D2L_DATA_DIR" in message


# --- data files ---------------------------------------------------------------------------------


def _idx(magic: int, dims: tuple[int, ...], payload: bytes = b"") -> bytes:
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload


IMAGES, LABELS = 0x803, 0x801
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"


def _gz_images(dims: tuple[int, ...], n_bytes: int = 0) -> bytes:
    return gzip.compress(_idx(IMAGES, dims, bytes(n_bytes)))


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
def test_damaged_data_file_is_named_with_the_fix(tmp_path, damage):
    content, message = DAMAGED_TRAIN_IMAGES[damage]
    for stem in data.FILES:  # the other three are never read: the first file read is bad
        (tmp_path / f"{stem}.gz").write_bytes(b"unused")
    (tmp_path / TRAIN_IMAGES).write_bytes(content)
    with pytest.raises(DataFileError, match=message) as info:
        load_data(8, root=tmp_path, profile="full", download=False)
    text = str(info.value)
    assert str(tmp_path / TRAIN_IMAGES) in text
    assert "delete it and run again to re-download it" in text and "D2L_DATA_DIR" in text
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("content", "count", "message"),
    [
        (_idx(IMAGES, (60_000, 28, 28)), 60_000, "holds images, expected an IDX file of labels"),
        (_idx(LABELS, (3,), bytes([1, 2, 12])), None, "holds label 12, expected 0..9"),
        (_idx(LABELS, (3,), bytes([1, 2, 3, 4])), None, "longer than its header says: 12 bytes"),
        (_idx(LABELS, (10_000,), bytes(10_000)), 60_000, "holds 10,000 labels, expected 60,000"),
    ],
    ids=["swapped", "label-out-of-range", "too-long", "test-file-for-train"],
)
def test_damaged_label_file_is_named(tmp_path, content, count, message):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=message) as info:
        read_idx(path, "labels", count)
    assert str(path) in str(info.value) and "D2L_DATA_DIR" in str(info.value)


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
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path} cannot be read (permission")):
        read_idx(path, "labels")


# --- downloads ----------------------------------------------------------------------------------


class _Response(io.BytesIO):
    """What urlopen returns, serving ``payload`` (optionally failing after the first chunk)."""

    def __init__(self, payload: bytes, fail_after: int | None = None) -> None:
        super().__init__(payload)
        self.fail_after = fail_after

    def read(self, size: int = -1) -> bytes:
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().read(min(size, self.fail_after or size) if size > 0 else size)


def _serve(monkeypatch, make_response: Callable[[], _Response]) -> list[str]:
    urls: list[str] = []

    def urlopen(request, timeout=None):
        urls.append(request.full_url)
        return make_response()

    monkeypatch.setattr(data, "urlopen", urlopen)
    return urls


def test_download_with_a_wrong_checksum_is_rejected_and_not_kept(tmp_path, monkeypatch):
    urls = _serve(monkeypatch, lambda: _Response(gzip.compress(b"<html>moved</html>")))
    root = tmp_path / "new"
    with pytest.raises(DatasetNotFoundError, match=r"MD5 [0-9a-f]{32}, not the published") as info:
        load_data(8, root=root, profile="full")
    assert len(urls) == len(data.MIRRORS)  # every mirror was tried for the first file
    assert data.FILES["train-images-idx3-ubyte"].md5 in str(info.value)
    assert list(root.iterdir()) == []  # no bad file, no partial file


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    _serve(monkeypatch, lambda: _Response(os.urandom(3 << 20), fail_after=1 << 20))
    with pytest.raises(DatasetNotFoundError, match="ConnectionResetError"):
        load_data(8, root=tmp_path, profile="full")
    assert list(tmp_path.iterdir()) == []


def test_download_with_the_right_checksum_is_kept(tmp_path, monkeypatch):
    payload = gzip.compress(_idx(LABELS, (3,), bytes([0, 1, 2])))
    stem = "t10k-labels-idx1-ubyte"
    spec = data.FILES[stem]
    md5 = hashlib.md5(payload).hexdigest()
    monkeypatch.setitem(data.FILES, stem, type(spec)(spec.kind, 3, md5))
    urls = _serve(monkeypatch, lambda: _Response(payload))
    assert data._download(tmp_path, [stem]) == []
    assert urls == [data.MIRRORS[0] + stem + ".gz"]
    assert (tmp_path / f"{stem}.gz").read_bytes() == payload
    assert [p.name for p in tmp_path.iterdir()] == [f"{stem}.gz"]
