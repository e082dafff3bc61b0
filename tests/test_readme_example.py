"""The README's promises, run as a reader would: its commands, its example, the lines it quotes.

Two tests run a fresh Python (started together with the module, a few seconds each): the
foundation issue's "Done when" command, and code written the way the book's chapters write it.
The "Done when" command and the quick profile's lines read the full dataset: they skip where
there is no copy (``D2L_DATA_DIR``, see tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import d2l_utils as d2l
from d2l_utils.data import BatchLoader, FashionMNIST

README = Path(__file__).resolve().parent.parent / "README.md"
DONE_WHEN = (
    'python -c "import d2l_utils as d2l; print(d2l.load_data_fashion_mnist(256, resize=96))"'
)
LOSS_LINE = re.compile(r"^loss \d\.\d{3}, train acc \d\.\d{3}, test acc \d\.\d{3}$")


def speed_line(device: torch.device) -> re.Pattern[str]:
    return re.compile(rf"^[\d.]+ examples/sec on {re.escape(str(device))}$")


# Written as the book's chapters write it: its concise softmax regression net (cheaper than LeNet
# to run in a fresh interpreter), loaded and trained with the calls its CNN chapters make.
BOOK_CHAPTER = """
import torch
from torch import nn
import d2l_utils as d2l

net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

batch_size = 256
train_iter, test_iter = d2l.load_data_fashion_mnist(batch_size)

lr, num_epochs = 0.1, 10
d2l.train_ch6(net, train_iter, test_iter, num_epochs, lr, d2l.try_gpu())
"""


@pytest.fixture(scope="module")
def fresh_runs(tmp_path_factory, fashion_mnist_full_or_none):
    """The fresh interpreters, started together when the module starts (they mostly wait on
    imports, so they overlap with each other and with the in-process tests).  The "Done when"
    command needs the full copy and is started only where there is one."""
    home = tmp_path_factory.mktemp("fresh")
    runs = {}
    if fashion_mnist_full_or_none is not None:
        # The command as written, from outside the repository: the installed package.
        runs["done_when"] = (
            DONE_WHEN.removeprefix('python -c "').removesuffix('"'),
            {"D2L_PROFILE": "full", "D2L_DATA_DIR": str(fashion_mnist_full_or_none)},
        )
    runs |= {
        # No data files anywhere: the smoke profile trains on the bundled sample.
        "book": (
            BOOK_CHAPTER,
            {
                "D2L_PROFILE": "smoke",
                "D2L_DATA_DIR": str(home / "no-data"),
                "XDG_CACHE_HOME": str(home / "no-cache"),
            },
        ),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=home,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (code, env) in runs.items()
    }
    yield procs, home
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def _start_early(fresh_runs):
    """Start both interpreters before this module's first test."""


def finished(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def _readme_block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(capsys, monkeypatch):
    monkeypatch.setenv("D2L_PROFILE", "smoke")
    code = _readme_block("## Using the package with the book's code")
    assert "d2l.train_ch6(" in code
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    namespace = {"net": net}
    exec(textwrap.dedent(code), namespace)
    history = namespace["history"]
    assert history.num_epochs == 1 and 0.0 <= history.test_acc[-1] <= 1.0
    X, _ = next(iter(namespace["train_iter"]))
    assert X.shape == (256, 1, 32, 32)  # resize=96 under smoke: 32 px
    lines = capsys.readouterr().out.splitlines()
    assert LOSS_LINE.match(lines[-2]) and speed_line(d2l.try_gpu()).match(lines[-1])


def test_profile_lines_quoted_in_the_readme_are_the_printed_ones(capsys, fashion_mnist_full):
    quoted = [
        line
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("profile quick:")
    ]
    assert len(quoted) == 2
    d2l.load_data_fashion_mnist(256, resize=96, profile="quick")
    images = torch.randint(0, 256, (8, 6, 6), dtype=torch.uint8)
    data = FashionMNIST(images, torch.arange(8) % 2, torch.arange(8), train=True)
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    d2l.train_ch6(tiny, BatchLoader(data, 4), BatchLoader(data, 4), 10, 0.05, profile="quick")
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("profile quick:")]
    assert printed == quoted


# --- the fresh interpreters (started with the module, collected last) ----------------------------


def test_done_when_command_prints_the_two_full_loaders(fresh_runs, fashion_mnist_full):
    assert DONE_WHEN in README.read_text(encoding="utf-8")
    out = finished(fresh_runs[0]["done_when"]).strip()  # profile full: no profile line either
    train, test = re.fullmatch(r"\((BatchLoader\(.*\)), (BatchLoader\(.*\))\)", out).groups()
    for text, split, n, shuffle in (
        (train, "train", "60,000", True),
        (test, "test", "10,000", False),
    ):
        assert f"FashionMNIST({split}, {n} images)" in text
        assert "batch_size=256" in text and f"shuffle={shuffle}" in text and "96x96" in text


def test_book_chapter_code_runs_unchanged_under_smoke(fresh_runs):
    procs, home = fresh_runs
    lines = finished(procs["book"]).splitlines()
    assert lines[:3] == [
        "profile smoke: the bundled sample: 2,000 of 60,000 training and 1,000 of 10,000 test "
        "images; set D2L_PROFILE=full for the book's run",
        "profile smoke: 1 of 10 epochs; set D2L_PROFILE=full for the book's run",
        f"training on {d2l.try_gpu()}",
    ]
    assert re.fullmatch(r"epoch 1/1: loss \d\.\d{3}, .* \([\d.]+ s\)", lines[3]), lines[3]
    assert LOSS_LINE.match(lines[-2]), lines[-2]
    assert speed_line(d2l.try_gpu()).match(lines[-1]), lines[-1]
    assert not (home / "no-data").exists() and not (home / "no-cache").exists()
