"""``python -m d2l_utils.check``: one line per item, exit 1 with the fix in the line when the
profile's needs are not met."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch

from d2l_utils import check
from d2l_utils.fashion_mnist import FILES

ROOT = Path(__file__).resolve().parent.parent
DATA = os.environ.get("D2L_DATA_DIR", "")


def run_check(**env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "d2l_utils.check"], capture_output=True, text=True, env=full_env,
        timeout=120,
    )  # fmt: skip


def test_the_floors_are_the_ones_pyproject_declares():
    text = (ROOT / "pyproject.toml").read_text()
    declared = {
        name: tuple(int(x) for x in version.split(".")[:2])
        for name, version in re.findall(r'"(python|torch|torchvision)>=([\d.]+)"', text)
    }
    (python,) = re.findall(r'requires-python = ">=([\d.]+)"', text)
    declared["python"] = tuple(int(x) for x in python.split("."))
    assert declared == check.FLOORS


def test_the_quick_times_are_those_of_the_committed_runs():
    for number, minutes in check.QUICK_MINUTES.items():
        (path,) = (ROOT / "notebooks").glob(f"{number}_*.ipynb")
        stamps = [
            c["metadata"]["execution"]
            for c in json.loads(path.read_text())["cells"]
            if c["cell_type"] == "code" and "execution" in c["metadata"]
        ]
        start = datetime.fromisoformat(stamps[0]["iopub.execute_input"])
        end = datetime.fromisoformat(stamps[-1]["shell.execute_reply"])
        assert abs((end - start).total_seconds() / 60 - minutes) < 0.06, path.name


@pytest.mark.skipif(not DATA, reason="needs the full Fashion-MNIST copy (D2L_DATA_DIR)")
def test_passes_with_the_data_copy_under_quick():
    result = run_check(D2L_PROFILE="quick", D2L_DATA_DIR=DATA)
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    assert len(lines) == 7 and not any(line.startswith("FAIL") for line in lines)
    assert "4 files read and checked" in lines[5] and "profile quick" in lines[4]
    assert lines[3].startswith("ok    device cpu") or "cuda" in lines[3]


def lines_of_check(monkeypatch, **env: str) -> tuple[int, list[str]]:
    """The check run in this process (as ``main`` runs it) under ``env``; (status, lines)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lines: list[str] = []
    return check.check(lines.append), lines


def test_smoke_needs_no_data_copy(monkeypatch, tmp_path):
    status, lines = lines_of_check(monkeypatch, D2L_PROFILE="smoke", D2L_DATA_DIR=str(tmp_path))
    assert status == 0, lines
    assert "the bundled sample" in lines[5]


def test_fails_in_one_line_without_the_data(tmp_path):
    result = run_check(D2L_PROFILE="quick", D2L_DATA_DIR=str(tmp_path))
    assert result.returncode == 1
    (fail,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert "4 files missing" in fail and str(tmp_path) in fail
    assert "fix: export D2L_DATA_DIR" in fail
    assert "Traceback" not in result.stdout + result.stderr


def test_fails_on_a_file_that_is_not_an_idx_file(monkeypatch, tmp_path):
    for stem in FILES:
        with gzip.open(tmp_path / f"{stem}.gz", "wb") as f:
            f.write(b"not the data")
    status, lines = lines_of_check(monkeypatch, D2L_PROFILE="quick", D2L_DATA_DIR=str(tmp_path))
    assert status == 1
    (fail,) = [line for line in lines if line.startswith("FAIL")]
    assert fail.startswith("FAIL  data: train-images-idx3-ubyte.gz: ") and "fix: " in fail


@pytest.mark.skipif(not DATA, reason="needs the full Fashion-MNIST copy (D2L_DATA_DIR)")
def test_fails_on_a_damaged_uncompressed_file(monkeypatch, tmp_path):
    for stem in FILES:
        src = Path(DATA) / f"{stem}.gz"
        shutil.copy(src, tmp_path / src.name)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00" * 8)
    status, lines = lines_of_check(monkeypatch, D2L_PROFILE="quick", D2L_DATA_DIR=str(tmp_path))
    assert status == 1
    assert lines[5].startswith("FAIL  data: t10k-labels-idx1-ubyte:")


def test_fails_on_an_unknown_profile(monkeypatch):
    status, lines = lines_of_check(monkeypatch, D2L_PROFILE="fast")
    assert status == 1
    (fail,) = [line for line in lines if line.startswith("FAIL")]
    assert "'fast'" in fail and "fix: export D2L_PROFILE" in fail


def test_fails_below_a_declared_floor(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.3.1+cpu")
    lines = []
    assert check.check(lines.append) == 1
    assert lines[1] == (
        "FAIL  torch 2.3.1+cpu: the course needs torch >= 2.4; fix: pip install -U 'torch>=2.4'"
    )
    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    lines.clear()
    check.check(lines.append)
    assert lines[1] == "ok    torch 2.14.1+cu130"
