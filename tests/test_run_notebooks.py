"""scripts/run_notebooks.py (``make run``): the data check before anything runs, one line per
notebook, and a failure told in one readable line with the partly executed notebook kept."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook

from d2l_utils.data import PROFILES
from d2l_utils.fashion_mnist import FILES, default_root

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "run_notebooks.py"
_spec = importlib.util.spec_from_file_location("run_notebooks", SCRIPT)
run_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_notebooks)

ALL_FILES = [f"{stem}.gz" for stem in FILES]


# --- the data check -------------------------------------------------------------------------------


def test_smoke_needs_no_data(monkeypatch, tmp_path):
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path / "nothing"))
    assert run_notebooks.missing_data(PROFILES["smoke"]) is None


@pytest.mark.parametrize("name", ["quick", "full"])
def test_missing_files_are_one_line_naming_the_folder_and_the_fixes(monkeypatch, tmp_path, name):
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path))
    line = run_notebooks.missing_data(PROFILES[name])
    assert "\n" not in line
    assert line.startswith(f"profile {name} needs the full Fashion-MNIST dataset")
    assert f"missing in D2L_DATA_DIR={tmp_path}: all 4 files." in line
    assert "Set D2L_DATA_DIR" in line and "make run DOWNLOAD=1" in line
    assert "D2L_PROFILE=smoke" in line
    # Some files there (in one of load_data's layouts): only the others are named.
    (tmp_path / "fashion-mnist").mkdir()
    for name_ in ALL_FILES[:2]:
        (tmp_path / "fashion-mnist" / name_).write_bytes(b"")
    line = run_notebooks.missing_data(PROFILES[name])
    assert f": {ALL_FILES[2]}, {ALL_FILES[3]}." in line
    for name_ in ALL_FILES[2:]:
        (tmp_path / name_).write_bytes(b"")
    assert run_notebooks.missing_data(PROFILES[name]) is None


def test_without_d2l_data_dir_the_default_folder_is_checked(monkeypatch):
    monkeypatch.delenv("D2L_DATA_DIR", raising=False)
    line = run_notebooks.missing_data(PROFILES["quick"])
    assert f"missing in {default_root()} (D2L_DATA_DIR unset): all 4 files." in line


def test_no_notebook_starts_when_data_is_missing(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("D2L_PROFILE", "quick")
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path))
    build = tmp_path / "build"
    rc = run_notebooks.main([str(tmp_path / "never-read.ipynb"), "--build", str(build)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and not build.exists()
    assert err.count("\n") == 1 and err.startswith("run_notebooks: profile quick needs the full")


def test_download_offline_fails_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("D2L_DATA_DIR", str(tmp_path))
    line = run_notebooks.check_data(PROFILES["quick"], download=True)
    assert line.startswith("the download failed: DatasetNotFoundError: Fashion-MNIST files missing")
    assert "network disabled in tests" in line and "\n" not in line
    assert "downloading train-images-idx3-ubyte.gz" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# --- failures -------------------------------------------------------------------------------------


def test_a_cell_error_is_its_name_and_message_without_colours():
    traceback = (
        "\x1b[0;31m---------------------------------------------------------------------------"
        "\x1b[0m\n\x1b[0;31mValueError\x1b[0m                                Traceback\n"
        "Cell \x1b[0;32mIn[2], line 1\x1b[0m\n\x1b[0;31mValueError\x1b[0m: the \x1b[1mdata\x1b[0m"
    )
    exc = CellExecutionError(traceback, "ValueError", "the \x1b[1mdata\x1b[0m is bad")
    assert run_notebooks.describe_failure(exc) == "ValueError: the data is bad"
    exc = CellExecutionError(traceback, "KeyboardInterrupt", "")
    assert run_notebooks.describe_failure(exc) == "KeyboardInterrupt"


def test_other_failures_are_their_type_and_first_line():
    exc = DeadKernelError("Kernel died\nwith more detail below")
    assert run_notebooks.describe_failure(exc) == "DeadKernelError: Kernel died"


def _notebook(path: Path, *sources: str) -> Path:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb = new_notebook(metadata={"kernelspec": kernelspec})
    nb.cells = [new_code_cell(source) for source in sources]
    nbformat.write(nb, path)
    return path


def test_one_line_per_notebook_and_a_readable_failure(tmp_path):
    (tmp_path / "course").mkdir()
    # record_result's way: a row appended to the file D2L_RESULTS names.
    ok = _notebook(
        tmp_path / "course" / "01_ok.ipynb",
        "import os\nopen(os.environ['D2L_RESULTS'], 'a').close()\nprint('fine')",
    )
    bad = _notebook(
        tmp_path / "course" / "02_bad.ipynb",
        "print('before')",
        "raise ValueError('the data is bad')",
        "print('never')",
    )
    build = tmp_path / "build"  # given relative to the working folder, not the notebooks'
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(ok), str(bad), "--build", "build"],
        cwd=tmp_path,
        env={**os.environ, "D2L_PROFILE": "smoke"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("profile smoke: ") and lines[0].endswith("; 2 notebook(s)")
    assert re.fullmatch(r"\[1/2\] 01_ok\.ipynb \.\.\. ok in \d+ s -> build/01_ok\.ipynb", lines[1])
    assert re.fullmatch(
        r"\[2/2\] 02_bad\.ipynb \.\.\. FAILED after \d+ s: ValueError: the data is bad", lines[2]
    )
    assert lines[3:] == ["partly executed notebook: build/02_bad.ipynb"]
    assert (build / "results.jsonl").is_file()
    everything = proc.stdout + proc.stderr
    assert "\x1b" not in everything and "[IPKernelApp]" not in everything
    assert "Traceback" not in everything
    # What ran is kept: the first cell's output and the error, the third cell not run.
    cells = nbformat.read(build / "02_bad.ipynb", as_version=4).cells
    assert cells[0].outputs[0].text == "before\n"
    assert cells[1].outputs[0].output_type == "error" and cells[1].outputs[0].ename == "ValueError"
    assert cells[2].outputs == [] and cells[2].execution_count is None
    assert nbformat.read(bad, as_version=4).cells[0].outputs == []  # the source is untouched
