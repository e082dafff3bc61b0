"""Run profiles (in d2l_utils.data): which profile is active, what each one changes, and the line
that says so.

The quick and full profiles read the full dataset: those tests take ``fashion_mnist_full``
(tests/conftest.py), which finds it through ``D2L_DATA_DIR`` and skips them where there is none.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import d2l_utils as d2l
from d2l_utils.data import (
    PROFILES,
    BatchLoader,
    FashionMNIST,
    Profile,
    default_profile_name,
    get_profile,
)

FULL_RUN = "set D2L_PROFILE=full for the book's run"


def _set_gpu(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def _tiny_loaders(n: int = 16, batch_size: int = 8) -> tuple[BatchLoader, BatchLoader]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 6, 6), dtype=torch.uint8, generator=g)
    ds = FashionMNIST(images, torch.arange(n) % 2, torch.arange(n), train=True)
    return BatchLoader(ds, batch_size, shuffle=True, seed=0), BatchLoader(ds, batch_size)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 2))


def test_the_three_profiles():
    assert set(PROFILES) == {"smoke", "quick", "full"}
    full, quick, smoke = PROFILES["full"], PROFILES["quick"], PROFILES["smoke"]
    assert (full.train_limit, full.test_limit, full.max_epochs, full.max_resize) == (None,) * 4
    assert not full.use_sample
    assert (quick.train_limit, quick.test_limit, quick.max_epochs, quick.max_resize) == (
        30_720,
        None,
        4,
        32,
    )
    assert not quick.use_sample
    assert (smoke.max_epochs, smoke.max_resize, smoke.use_sample) == (1, 32, True)
    for name, prof in PROFILES.items():
        assert prof.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            prof.max_epochs = 100  # type: ignore[misc]


@pytest.mark.parametrize("name", ["smoke", "quick", "full"])
def test_str_is_one_line_naming_the_profile(name):
    text = str(PROFILES[name])
    assert "\n" not in text and text.startswith(f"profile {name}: ")
    if name == "quick":
        assert "30,720" in text and "4 epochs" in text and "32 px" in text
    if name == "smoke":
        assert "sample" in text and "1 epoch" in text and "32 px" in text


@pytest.mark.parametrize(
    "cuda, mps, expected",
    [(False, False, "quick"), (True, False, "full"), (False, True, "full"), (True, True, "full")],
)
def test_default_is_quick_without_gpu_and_full_with_one(monkeypatch, cuda, mps, expected):
    _set_gpu(monkeypatch, cuda, mps)
    monkeypatch.delenv("D2L_PROFILE", raising=False)
    assert default_profile_name() == expected
    assert get_profile() is PROFILES[expected]
    monkeypatch.setenv("D2L_PROFILE", "")  # set but empty: the default too
    assert get_profile() is PROFILES[expected]


@pytest.mark.parametrize(
    "value, name", [("smoke", "smoke"), ("full", "full"), (" Quick ", "quick")]
)
def test_d2l_profile_selects(monkeypatch, value, name):
    _set_gpu(monkeypatch, cuda=True, mps=False)  # the default would be full
    monkeypatch.setenv("D2L_PROFILE", value)
    assert get_profile() is PROFILES[name]


def test_argument_comes_before_the_environment(monkeypatch):
    monkeypatch.setenv("D2L_PROFILE", "smoke")
    assert get_profile("quick") is PROFILES["quick"]
    custom = Profile("mine", 10, 10, 2, 16, use_sample=True)
    assert get_profile(custom) is custom


def test_unknown_name_is_a_value_error_naming_it(monkeypatch):
    monkeypatch.setenv("D2L_PROFILE", "fast")
    with pytest.raises(ValueError, match="'fast'") as info:
        get_profile()
    assert "D2L_PROFILE" in str(info.value)
    for known in PROFILES:
        assert known in str(info.value)
    with pytest.raises(ValueError, match="'tiny'"):
        get_profile("tiny")
    with pytest.raises(ValueError, match="'tiny'"):
        d2l.load_data_fashion_mnist(256, profile="tiny")
    with pytest.raises(ValueError, match="'fast'"):
        d2l.load_data_fashion_mnist(256)


# --- what load_data prints and does --------------------------------------------------------------


def test_quick_load_data_line_and_stratified_subset(monkeypatch, capsys, fashion_mnist_full):
    monkeypatch.setenv("D2L_PROFILE", "quick")
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, resize=96)
    assert capsys.readouterr().out == (
        f"profile quick: 30,720 of 60,000 training images, 32 px instead of 96 px; {FULL_RUN}\n"
    )
    train, test = train_iter.dataset, test_iter.dataset
    assert len(train) == 30_720 and len(test) == 10_000
    assert torch.bincount(train.labels, minlength=10).tolist() == [3_072] * 10
    assert len(train.indices.unique()) == 30_720
    assert next(iter(test_iter))[0].shape == (256, 1, 32, 32)
    assert len(train_iter) == 30_720 // 256 == 120  # whole batches only
    # The subset is the same images every time, taken from the full split at train.indices.
    full, _ = d2l.load_data_fashion_mnist(256, profile="full")
    assert torch.equal(full.dataset.images[train.indices], train.images)
    assert torch.equal(full.dataset.labels[train.indices], train.labels)
    again, _ = d2l.load_data_fashion_mnist(256, profile="quick")
    assert torch.equal(again.dataset.indices, train.indices)


@pytest.mark.parametrize(
    "resize, change, shape",
    [
        (None, "", (28, 28)),
        (32, "", (32, 32)),
        ((96, 48), ", 32x16 px instead of 96x48 px", (32, 16)),
    ],
)
def test_quick_caps_the_image_size(capsys, resize, change, shape, fashion_mnist_full):
    _, test_iter = d2l.load_data_fashion_mnist(100, resize=resize, profile="quick")
    line = f"profile quick: 30,720 of 60,000 training images{change}; {FULL_RUN}\n"
    assert capsys.readouterr().out == line
    assert next(iter(test_iter))[0].shape == (100, 1, *shape)


def test_a_custom_profile_limits_both_splits_stratified(capsys):
    tiny = Profile(
        "tiny", train_limit=25, test_limit=50, max_epochs=1, max_resize=16, use_sample=True
    )
    train_iter, test_iter = d2l.load_data_fashion_mnist(10, resize=28, profile=tiny)
    assert capsys.readouterr().out == (
        "profile tiny: the bundled sample: 2,000 of 60,000 training and 1,000 of 10,000 test "
        "images, 25 of 2,000 training images, 50 of 1,000 test images, 16 px instead of 28 px; "
        f"{FULL_RUN}\n"
    )
    # 25 over 10 classes: 3 images of five classes, 2 of the others; 50: 5 of each.
    assert (
        sorted(torch.bincount(train_iter.dataset.labels, minlength=10).tolist())
        == [2] * 5 + [3] * 5
    )
    assert torch.bincount(test_iter.dataset.labels, minlength=10).tolist() == [5] * 10
    assert next(iter(test_iter))[0].shape == (10, 1, 16, 16)
    assert (len(train_iter), len(test_iter)) == (3, 5)


def test_full_changes_nothing_and_says_nothing(capsys, fashion_mnist_full):
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, resize=96, profile="full")
    assert capsys.readouterr().out == ""
    assert (len(train_iter.dataset), len(test_iter.dataset)) == (60_000, 10_000)
    assert next(iter(test_iter))[0].shape == (256, 1, 96, 96)


def test_smoke_needs_no_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("D2L_PROFILE", "smoke")
    train_iter, test_iter = d2l.load_data_fashion_mnist(256, resize=96)
    assert capsys.readouterr().out == (
        "profile smoke: the bundled sample: 2,000 of 60,000 training and 1,000 of 10,000 test "
        f"images, 32 px instead of 96 px; {FULL_RUN}\n"
    )
    assert (len(train_iter.dataset), len(test_iter.dataset)) == (2_000, 1_000)
    assert next(iter(train_iter))[0].shape == (256, 1, 32, 32)
    assert list(tmp_path.iterdir()) == []  # nothing looked up, created or downloaded


# --- what train_ch6 prints and does --------------------------------------------------------------


@pytest.mark.parametrize(
    "profile, asked, run, line",
    [
        ("quick", 10, 4, f"profile quick: 4 of 10 epochs; {FULL_RUN}"),
        ("smoke", 10, 1, f"profile smoke: 1 of 10 epochs; {FULL_RUN}"),
        ("smoke", 2, 1, f"profile smoke: 1 of 2 epochs; {FULL_RUN}"),
        ("quick", 3, 3, None),
        ("full", 5, 5, None),
    ],
)
def test_train_ch6_caps_epochs_and_says_so(monkeypatch, capsys, profile, asked, run, line):
    monkeypatch.setenv("D2L_PROFILE", profile)
    train_iter, test_iter = _tiny_loaders()
    history = d2l.train_ch6(_tiny_net(), train_iter, test_iter, asked, 0.1, d2l.cpu())
    lines = capsys.readouterr().out.splitlines()
    profile_lines = [x for x in lines if x.startswith("profile ")]
    assert profile_lines == ([line] if line else [])
    if line:
        assert lines[0] == line  # said before anything else
    assert history.num_epochs == run and len(history.train_loss) == run
    assert history.profile == profile
    assert len([x for x in lines if x.startswith("epoch ")]) == run


def test_train_ch6_profile_argument(monkeypatch, capsys):
    monkeypatch.setenv("D2L_PROFILE", "full")
    train_iter, test_iter = _tiny_loaders()
    history = d2l.train_ch6(_tiny_net(), train_iter, test_iter, 6, 0.1, "cpu", profile="quick")
    assert capsys.readouterr().out.splitlines()[0] == f"profile quick: 4 of 6 epochs; {FULL_RUN}"
    assert history.num_epochs == 4 and history.profile == "quick"
