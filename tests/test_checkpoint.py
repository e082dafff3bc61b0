"""d2l_utils.checkpoint: the package's one file format (header, kinds, one checking reader),
atomic writes, safe reads; train_ch6's state (pack / check / restore) and
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
import d2l_utils.robust
from d2l_utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from d2l_utils.robust import check_resumable, pack, restore
from d2l_utils.train import History, train_ch6


def _read(path: Path) -> dict:
    """A train_ch6 checkpoint's state, as train_ch6 reads it."""
    return load_checkpoint(path, "train_ch6", required=d2l_utils.robust.KEYS)


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
    save_checkpoint(path, _packed(net, opt, sched, train_iter), "train_ch6")
    draws = torch.rand(3)  # what the global generator gives after the save

    state = _read(path)
    assert set(state) == d2l_utils.robust.KEYS
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
    assert _read(path)["epoch"] == 1  # the last completed epoch is on disk
    epoch_1 = path.read_bytes()

    again = _cnn()  # the caller's code builds a new net, optimizer and loaders, then resumes
    resumed = _resume_run(again, sample_loaders(seed=99), checkpoint=path)
    assert "resuming from checkpoint" in capsys.readouterr().out
    _assert_equal_states(_copy(again), _copy(whole))
    assert (resumed.train_loss, resumed.train_acc, resumed.test_acc) == (
        expected.train_loss, expected.train_acc, expected.test_acc,
    )  # fmt: skip
    assert resumed.num_epochs == 2 and not resumed.interrupted
    assert _read(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.pt"]  # no temporary files

    # The comparison is sharp: a resume that skips restoring the RNGs ends elsewhere.
    path.write_bytes(epoch_1)
    monkeypatch.setattr(d2l_utils.robust, "set_rng_state", lambda state: None)
    careless = _cnn()
    _resume_run(careless, sample_loaders(), checkpoint=path)
    with pytest.raises(AssertionError):
        _assert_equal_states(_copy(careless), _copy(whole))


def test_an_fp16_run_resumes_with_the_scale_its_gradient_scaler_had_learnt(tmp_path, monkeypatch):
    # fp16 as on a GPU without bf16, here on the CPU, with a scaler whose scale moves at every
    # step (it doubles, and halves on an overflow): a fresh scaler would differ after a resume.
    scalers = []

    def grad_scaler(device, dtype):
        scalers.append(torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1))
        return scalers[-1]

    monkeypatch.setattr(d2l_utils.train, "amp_dtype", lambda device, amp: torch.float16)
    monkeypatch.setattr(d2l_utils.train, "grad_scaler", grad_scaler)

    def run(net: nn.Module, **kwargs) -> dict:  # the scaler's state at the end
        _train(net, sample_loaders(), num_epochs=2, init=False, plot=False, **kwargs)
        return scalers[-1].state_dict()

    torch.manual_seed(0)
    start = _copy(mlp())
    nets = [mlp() for _ in range(3)]
    for net in nets:
        net.load_state_dict(start)
    whole, first, again = nets
    expected = run(whole)
    path = tmp_path / "run.pt"
    handle = _interrupt_at(first, N_BATCHES + 1)
    with pytest.raises(KeyboardInterrupt):
        run(first, checkpoint=path)
    handle.remove()
    assert _read(path)["scaler"]["scale"] != 2.0**10  # it moved in epoch 1
    epoch_1 = path.read_bytes()
    assert run(again, checkpoint=path) == expected
    _assert_equal_states(_copy(again), _copy(whole))

    # The comparison is sharp: resumed with a fresh scaler, the run ends with another scale.
    path.write_bytes(epoch_1)
    restore = d2l_utils.robust.restore
    monkeypatch.setattr(d2l_utils.robust, "restore", lambda *args: restore(*args[:6]))
    careless = mlp()
    careless.load_state_dict(start)
    assert run(careless, checkpoint=path) != expected


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
    assert first.num_epochs == 1 and _read(path)["num_epochs"] == 1
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
    assert _read(path)["epoch"] == 1


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


def _header(state: dict, kind: str = "train_ch6") -> dict:
    """What save_checkpoint writes, written by hand."""
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "kind": kind, "state": state}


def _bad_checkpoints(good: bytes) -> dict[str, Callable[[Path], None]]:
    def save(obj):
        return lambda p: torch.save(obj, p)

    return {
        "truncated": lambda p: p.write_bytes(good[: len(good) // 2]),
        "last byte missing": lambda p: p.write_bytes(good[:-1]),
        "empty": lambda p: p.write_bytes(b""),
        "garbage": lambda p: p.write_bytes(bytes(range(256)) * 16),
        "flipped bytes": lambda p: p.write_bytes(good[:100] + bytes(200) + good[300:]),
        "code in the pickle": save(_header({"x": _Payload()})),
        "a bare state_dict": save(mlp().state_dict()),
        "another version": save({**_header({}), "version": 99}),
        "another kind": save({**_header({}), "kind": "model"}),
        "keys missing": save(_header({"epoch": 1})),
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
        check_resumable(_read(path), path, wider, "full", 3, 0.1)
    assert "1.weight is (32, 784), net has (64, 784)" in str(info.value)
    assert "1.bias is (32,), net has (64,)" in str(info.value)
    assert "; …" in str(info.value)  # four parameters differ, three are named


def test_checkpoint_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        _train(mlp(), sample_loaders(), num_epochs=1, checkpoint=tmp_path)


def test_save_checkpoint_replaces_atomically_and_reads_back(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.arange(3)}, "model")
    assert save_checkpoint(path, {"a": torch.arange(4)}, "model") == path
    assert_close(load_checkpoint(path, "model")["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    with pytest.raises(pickle.UnpicklingError):
        save_checkpoint(path, {"a": _Payload()}, "model")  # could never be loaded: not written
    assert_close(load_checkpoint(path, "model")["a"], torch.arange(4))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# --- the format itself: the header, the kinds, one reader -----------------------------------


def test_the_file_is_a_header_and_the_state(tmp_path):
    path = save_checkpoint(tmp_path / "d.pt", {"step": 3}, "distributed")
    raw = torch.load(path, weights_only=True)
    assert raw == {"format": "d2l_utils", "version": 1, "kind": "distributed", "state": {"step": 3}}
    assert load_checkpoint(path, "distributed", required=["step"]) == {"step": 3}


def test_unknown_kinds_are_a_programming_error(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'weights'"):
        save_checkpoint(tmp_path / "c.pt", {}, "weights")
    with pytest.raises(ValueError, match="unknown kind 'weights'"):
        load_checkpoint(tmp_path / "c.pt", "weights")


class _Custom:
    """A class of the caller's: plain pickle stores it, weights_only refuses it."""


def _bad_files() -> dict[str, tuple[Callable[[Path], object], str]]:
    def save(obj):
        return lambda p: torch.save(obj, p)

    def text(data: bytes):
        return lambda p: p.write_bytes(data)

    return {
        "missing": (lambda p: None, "does not exist"),
        "folder": (lambda p: p.mkdir(), "is a folder"),
        "text": (text(b"epoch 3\nloss 0.5\n"), "is not a file written by torch.save"),
        "empty": (text(b""), "is not a file written by torch.save"),
        "plain pickle": (lambda p: p.write_bytes(pickle.dumps({"a": 1})), "torch.save"),
        "custom object": (save(_header({"x": _Custom()})), "test_checkpoint._Custom, which is "
                          "not plain data"),
        "code": (save(_header({"x": _Payload()})), "_side_effect, which is not plain data"),
        "a tensor": (save(torch.ones(2)), "not a d2l_utils file (it holds a Tensor)"),
        "state_dict": (save(nn.Linear(2, 2).state_dict()), "it holds a bare state_dict"),
        "old format": (save({"format": "d2l_utils.train_ch6 checkpoint", "version": 1}),
                       "format 'd2l_utils.train_ch6 checkpoint'"),
        "version": (save({**_header({}), "version": 2}), "2, this d2l_utils reads version 1"),
        "kind": (save(_header({}, "model")), "is a model file (d2l_utils.predict.save_model), "
                 "not a train_ch6 checkpoint"),
        "no state": (save({**_header({}), "state": [1]}), "holds no state dict"),
        "keys": (save(_header({"epoch": 1})), "lacks examples_seen, history, loader"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_bad_files()))
def test_the_reader_refuses_a_bad_file_in_one_line_naming_it(tmp_path, case):
    write, message = _bad_files()[case]
    path = tmp_path / "run.pt"
    write(path)
    _RAN.clear()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "train_ch6", required=d2l_utils.robust.KEYS)
    text = str(info.value)
    assert text.startswith(f"checkpoint {path} ") and "\n" not in text
    assert message in text
    assert not _RAN  # the pickled code never ran
    if case not in ("missing", "folder"):
        assert text.endswith("delete it to start over, or pass another checkpoint= path")


def test_each_kind_has_its_own_words(tmp_path):
    path = save_checkpoint(tmp_path / "run.pt", {}, "train_ch6")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "model")
    assert str(info.value) == (
        f"model file {path} is a train_ch6 checkpoint, not a model file "
        "(d2l_utils.predict.save_model); pass a file written by d2l_utils.predict.save_model"
    )
