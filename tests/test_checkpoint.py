"""d2l_utils.checkpoint: the file format (pack / check / restore), atomic writes, safe reads, and
``train_ch6(checkpoint=...)``: exact resume after an interrupt, refusal of foreign files.

Everything runs on the CPU with tiny nets and a 250/100-image slice of the bundled sample.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from tiny import BATCH, N_BATCHES, mlp, sample_loaders
from torch import nn
from torch.testing import assert_close

import d2l_utils.checkpoint as ckpt
from d2l_utils.checkpoint import (
    CheckpointError,
    check_resumable,
    load_checkpoint,
    pack,
    read_if_present,
    restore,
    save_checkpoint,
)
from d2l_utils.train import History, train_ch6


def _cnn() -> nn.Sequential:
    """Convolution, batch norm (buffers) and dropout (RNG): all a resume has to restore."""
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


def _interrupt_at(net: nn.Module, n: int):
    """Raise KeyboardInterrupt (as Ctrl-C would) in the ``n``-th training forward pass."""
    calls = [0]

    def hook(module: nn.Module, args: tuple) -> None:
        if module.training and args[0].shape[0] == BATCH:
            calls[0] += 1
            if calls[0] == n:
                raise KeyboardInterrupt

    return net.register_forward_pre_hook(hook)


def _train(net: nn.Module, loaders, num_epochs: int = 3, lr: float = 0.1, **kwargs) -> History:
    kwargs = {"seed": 0, "profile": "full", **kwargs}
    return train_ch6(net, *loaders, num_epochs, lr, "cpu", **kwargs)


# --- the format: pack, check, restore -----------------------------------------------------------


def _packed(net: nn.Module, opt, sched, train_iter, epochs_done: int = 1) -> dict:
    history = History(train_loss=[1.0] * epochs_done, profile="full", num_epochs=epochs_done)
    return pack(
        net=net, optimizer=opt, scheduler=sched, train_iter=train_iter,
        history=asdict(history), num_epochs=3, lr=0.1, examples_seen=250 * epochs_done,
    )  # fmt: skip


def test_pack_then_restore_round_trips_every_part(tmp_path):
    torch.manual_seed(0)
    net, (train_iter, _) = mlp(), sample_loaders()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for X, y in train_iter:  # one epoch: momentum buffers, a scheduler count, a shuffle state
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
        sched.step()
    path = tmp_path / "c.pt"
    save_checkpoint(path, _packed(net, opt, sched, train_iter))
    draws = torch.rand(3)  # what the global generator gives after the save

    state = load_checkpoint(path)
    assert set(state) == ckpt.KEYS and state["format"] == ckpt.FORMAT
    new_net, (new_train, _) = mlp(), sample_loaders(seed=99)
    new_opt = torch.optim.SGD(new_net.parameters(), lr=0.1, momentum=0.9)
    new_sched = torch.optim.lr_scheduler.StepLR(new_opt, step_size=2, gamma=0.5)
    check_resumable(state, path, new_net, "full", 3, 0.1)
    history, seen = restore(state, path, new_net, new_opt, new_sched, new_train)
    assert (history["num_epochs"], history["train_loss"], seen) == (1, [1.0], 250)
    _assert_equal_states(_copy(new_net), _copy(net))
    momentum = [opt.state[p]["momentum_buffer"] for p in net.parameters()]
    assert_close([new_opt.state[p]["momentum_buffer"] for p in new_net.parameters()], momentum)
    assert new_sched.state_dict() == sched.state_dict()
    assert_close(torch.cat([y for _, y in new_train]), torch.cat([y for _, y in train_iter]))
    assert_close(torch.rand(3), draws)  # the generator is back where it was when packed


def test_read_if_present():
    assert read_if_present(None) is None
    assert read_if_present(Path("/nonexistent/run.pt")) is None


def test_restore_refuses_another_optimizer_and_leaves_the_optimizer_alone(tmp_path):
    net = mlp()
    state = _packed(net, torch.optim.SGD(net.parameters(), lr=0.1), None, sample_loaders()[0])
    adam = torch.optim.Adam(net.parameters())
    before = adam.state_dict()
    with pytest.raises(CheckpointError, match="optimizer SGD and scheduler None, this call has "):
        restore(state, tmp_path / "c.pt", net, adam, None, sample_loaders()[0])
    assert adam.state_dict() == before


# --- train_ch6(checkpoint=...) ------------------------------------------------------------------


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
    expected = _resume_run(whole, sample_loaders())

    path = tmp_path / "ckpt" / "run.pt"  # the folder is created
    first = _cnn()
    handle = _interrupt_at(first, N_BATCHES + 3)
    with pytest.raises(KeyboardInterrupt) as info:
        _resume_run(first, sample_loaders(), checkpoint=path)
    handle.remove()
    partial = info.value.history
    assert partial.interrupted and partial.num_epochs == 1
    line = f"to resume after epoch 1, call again with checkpoint={str(path)!r}"
    assert line in capsys.readouterr().out
    assert load_checkpoint(path)["epoch"] == 1  # the last completed epoch is on disk
    epoch_1 = path.read_bytes()

    again = _cnn()  # the caller's code builds a new net, optimizer and loaders, then resumes
    resumed = _resume_run(again, sample_loaders(seed=99), checkpoint=path)
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
    monkeypatch.setattr(ckpt, "set_rng_state", lambda state: None)
    careless = _cnn()
    _resume_run(careless, sample_loaders(), checkpoint=path)
    with pytest.raises(AssertionError):
        _assert_equal_states(_copy(careless), _copy(whole))


def test_interrupt_in_the_first_epoch_says_there_is_nothing_to_resume(tmp_path, capsys):
    path = tmp_path / "run.pt"
    net = mlp()
    handle = _interrupt_at(net, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(net, sample_loaders(), num_epochs=2, checkpoint=path)
    handle.remove()
    assert "no epoch was completed, so calling again starts over" in capsys.readouterr().out
    assert not path.exists()


def _no_step(*args, **kwargs):
    raise AssertionError("a training step ran")


def test_checkpoint_of_a_finished_run_loads_and_trains_nothing(tmp_path, capsys):
    # Under the smoke profile 5 epochs are capped to 1: the checkpoint counts against the cap.
    path = tmp_path / "run.pt"
    net = mlp()
    first = train_ch6(
        net, *sample_loaders(), 5, 0.1, "cpu", seed=0, profile="smoke", checkpoint=path
    )
    assert first.num_epochs == 1 and load_checkpoint(path)["num_epochs"] == 1
    before = path.read_bytes()
    capsys.readouterr()

    again = mlp()
    opt = torch.optim.SGD(again.parameters(), lr=0.1)
    opt.step = _no_step  # any training step would fail
    second = train_ch6(
        again,
        *sample_loaders(),
        5,
        0.1,
        "cpu",
        seed=0,
        profile="smoke",
        checkpoint=path,
        optimizer=opt,
    )
    lines = capsys.readouterr().out.splitlines()
    assert "training already finished (1 epoch); net loaded from it" in lines[2]
    h = first
    assert lines[-2] == (
        f"loss {h.train_loss[-1]:.3f}, train acc {h.train_acc[-1]:.3f}, "
        f"test acc {h.test_acc[-1]:.3f}"
    )
    _assert_equal_states(_copy(again), _copy(net))
    assert second.test_acc == first.test_acc and second.num_epochs == 1
    assert path.read_bytes() == before


def test_crash_during_a_save_never_destroys_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    _train(mlp(), sample_loaders(), num_epochs=1, checkpoint=path)
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
        _train(mlp(), sample_loaders(), num_epochs=2, checkpoint=path)
    assert seen_during_save == [True]
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    assert load_checkpoint(path)["epoch"] == 1


def test_interrupt_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    path = tmp_path / "run.pt"
    _train(mlp(), sample_loaders(), num_epochs=1, checkpoint=path)
    good = path.read_bytes()

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        _train(mlp(), sample_loaders(), num_epochs=2, checkpoint=path)
    # The second call resumed after epoch 1 (the first call's), trained epoch 2, then stopped.
    out = capsys.readouterr().out
    assert "interrupted in epoch 2/2 while saving its checkpoint" in out
    assert f"to resume after epoch 1, call again with checkpoint={str(path)!r}" in out
    assert info.value.history.num_epochs == 2 and info.value.history.interrupted
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> bytes:
    """The bytes of a good checkpoint: mlp() trained for 2 epochs, lr 0.1, profile full."""
    path = tmp_path_factory.mktemp("good") / "run.pt"
    _train(mlp(), sample_loaders(), num_epochs=2, checkpoint=path)
    return path.read_bytes()


def test_checkpoints_are_loaded_with_weights_only(tmp_path, monkeypatch, two_epochs):
    path = tmp_path / "run.pt"
    path.write_bytes(two_epochs)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _train(
        mlp(), sample_loaders(), num_epochs=3, checkpoint=path
    )  # loads, trains, saves, reads back
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
        "a bare state_dict": save(mlp().state_dict()),
        "another version": save({"format": ckpt.FORMAT, "version": 99}),
        "keys missing": save({"format": ckpt.FORMAT, "version": ckpt.VERSION}),
    }


@pytest.mark.parametrize("damage", list(_bad_checkpoints(b"")))
def test_corrupt_checkpoint_is_a_clear_error_and_is_left_alone(tmp_path, damage, two_epochs):
    path = tmp_path / "bad.pt"
    _bad_checkpoints(two_epochs)[damage](path)
    before = path.read_bytes()
    net = mlp()
    untouched = _copy(net)
    _RAN.clear()
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        _train(net, sample_loaders(), num_epochs=2, checkpoint=path)
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
    args = {"net": mlp(), "num_epochs": 3, "lr": 0.1, **change}
    with pytest.raises(CheckpointError, match=message):
        _train(args.pop("net"), sample_loaders(), **args, checkpoint=path)
    assert path.read_bytes() == before


def test_shape_mismatch_names_the_first_differences(tmp_path, two_epochs):
    path = tmp_path / "run.pt"
    path.write_bytes(two_epochs)
    wider = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 12)
    )
    with pytest.raises(CheckpointError) as info:
        check_resumable(load_checkpoint(path), path, wider, "full", 3, 0.1)
    assert "1.weight is (32, 784), net has (64, 784)" in str(info.value)
    assert "1.bias is (32,), net has (64,)" in str(info.value)
    assert "; …" in str(info.value)  # four parameters differ, three are named


def test_checkpoint_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        _train(mlp(), sample_loaders(), num_epochs=1, checkpoint=tmp_path)


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
