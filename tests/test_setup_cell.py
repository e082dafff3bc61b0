"""The first code cell of every notebook: the same few lines, and they find the package anywhere.

The cell runs before ``d2l_utils`` can be imported, so it lives in the notebooks, not the package;
here it is run as the kernel would run it, with ``find_spec`` and ``pip`` stood in for.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_code_cell(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code")


SETUP = first_code_cell(NOTEBOOKS[0]).source


def test_every_notebook_starts_with_the_same_setup_cell():
    assert SETUP.startswith("# Setup, the same first cell in every notebook")
    for path in NOTEBOOKS:
        cell = first_code_cell(path)
        assert cell.source == SETUP, f"{path.name}: its first code cell is not the setup cell"
        assert not cell.outputs, f"{path.name}: the setup cell printed something where installed"
    assert len(SETUP.splitlines()) <= 20  # "a few lines"


@pytest.fixture
def kernel(monkeypatch):
    """Runs the setup cell in ``folder`` as if ``d2l_utils`` were not installed; returns the pip
    commands it ran (none run for real) and the ``sys.path`` entries it added."""
    pip_calls: list[list[str]] = []
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "d2l_utils" else real_find_spec(name, *args)

    def run(cmd, check=False):
        pip_calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    def execute(folder: Path):
        monkeypatch.chdir(folder)
        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(subprocess, "run", run)
        before = list(sys.path)
        monkeypatch.setattr(sys, "path", list(sys.path))
        exec(compile(SETUP, "setup cell", "exec"), {})
        return pip_calls, [p for p in sys.path if p not in before]

    return execute


def test_installed_means_nothing_to_do(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    exec(compile(SETUP, "setup cell", "exec"), {})
    assert calls == []


def test_inside_the_course_folder_installs_it_from_there(kernel, tmp_path):
    course = tmp_path / "course"
    (course / "d2l_utils").mkdir(parents=True)
    (course / "d2l_utils" / "__init__.py").write_text("")
    (course / "notebooks").mkdir()
    calls, added = kernel(course / "notebooks")
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", "-e", str(course)]]
    assert added == [str(course)]  # importable in this kernel without a restart


def test_beside_the_wheel_installs_the_wheel(kernel, tmp_path):
    for version in ("0.1.0", "0.2.0"):
        (tmp_path / f"d2l_utils-{version}-py3-none-any.whl").write_bytes(b"")
    calls, added = kernel(tmp_path)
    wheel = str(tmp_path / "d2l_utils-0.2.0-py3-none-any.whl")
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet", wheel]]
    assert added == []


def test_anywhere_else_one_sentence_says_what_to_do(kernel, tmp_path):
    with pytest.raises(ModuleNotFoundError) as err:
        kernel(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "d2l_utils is not installed" in message
    assert "make wheel" in message and "%pip install" in message
