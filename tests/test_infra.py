"""The test suite's own machinery (tests/conftest.py): offline, a throw-away home, the full data
copy skipped or required, and GPU tests reported as not run where there is no CUDA device."""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from d2l_utils.fashion_mnist import FILES, default_root

TESTS = Path(__file__).resolve().parent


# --- no network -----------------------------------------------------------------------------------


@pytest.mark.parametrize("address", [("192.0.2.1", 80), ("8.8.8.8", 53), ("2001:db8::1", 443)])
def test_a_connection_to_another_machine_is_refused_before_it_is_made(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)  # a real attempt at 192.0.2.1 (TEST-NET) would hang until this
        # An OSError, as a machine without a network raises, so code takes its offline path.
        with pytest.raises(OSError, match=f"network disabled in tests.*{address[0]}") as info:
            sock.connect(address)
        assert type(info.value).__name__ == "NetworkDisabledError"
        with pytest.raises(OSError, match="network disabled in tests"):
            sock.connect_ex(address)


def test_name_lookups_and_urllib_fail_as_offline():
    with pytest.raises(socket.gaierror, match="network disabled in tests"):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(urllib.error.URLError, match="network disabled in tests"):
        urllib.request.urlopen("https://example.com/", timeout=30)
    for name in ("http_proxy", "https_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        assert name not in os.environ  # a proxy on this machine would be a way out


def test_this_machine_can_still_be_reached():
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def echo():
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(16).upper())

        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        with socket.create_connection(("localhost", port), timeout=30) as client:
            client.sendall(b"ping")
            assert client.recv(16) == b"PING"
        thread.join(timeout=30)


# --- no real home ---------------------------------------------------------------------------------


def test_home_and_caches_are_temporary_folders(isolated_machine, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    assert isolated_machine.is_relative_to(base)
    assert Path.home() == isolated_machine and Path(os.path.expanduser("~")) == isolated_machine
    assert default_root() == isolated_machine / ".cache" / "d2l_utils" / "fashion-mnist"
    assert Path(torch.hub.get_dir()).is_relative_to(isolated_machine)
    for name in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME", "MPLCONFIGDIR", "IPYTHONDIR"):
        assert Path(os.environ[name]).is_relative_to(base), name


def test_a_monkeypatched_variable_gets_the_temporary_value_back(monkeypatch, isolated_machine):
    monkeypatch.setenv("HOME", "/somewhere/else")
    monkeypatch.undo()
    assert os.environ["HOME"] == str(isolated_machine)


# --- the full data copy and the gpu marker, in a pytest run of their own -------------------------

INNER_TESTS = """
import pytest

def test_needs_the_copy(fashion_mnist_full):
    assert (fashion_mnist_full / "train-images-idx3-ubyte.gz").is_file()

def test_needs_nothing():
    pass

@pytest.mark.gpu
def test_needs_cuda():
    import torch
    assert torch.cuda.is_available()
"""
INNER_INI = """[pytest]
addopts = -rfEs --strict-markers -p no:cacheprovider
markers =
    gpu: needs CUDA
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    """Runs pytest, in this process, on a small test file with this suite's conftest.py; returns
    (exit code, output)."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    (pytester.path / "test_inner.py").write_text(INNER_TESTS)
    pytester.makeini(INNER_INI)

    def run(**env: str) -> tuple[int, str]:
        for name in ("D2L_REQUIRE_DATA", "D2L_REQUIRE_GPU"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        result = pytester.runpytest_inprocess("test_inner.py")
        return int(result.ret), "\n".join(result.outlines + result.errlines)

    return run


def test_without_the_copy_its_tests_skip_naming_d2l_data_dir(inner, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for value, why in (
        ("", "D2L_DATA_DIR is not set"),
        (str(empty), "4 of them missing in D2L_DATA_DIR"),
    ):
        rc, out = inner(D2L_DATA_DIR=value)
        assert rc == 0, out
        reason = (
            "needs the full Fashion-MNIST copy: set D2L_DATA_DIR to a folder holding its four .gz "
            f"files ({why})"
        )
        assert f"SKIPPED [1] test_inner.py:4: {reason}" in out, out
        if not torch.cuda.is_available():
            assert "1 passed, 1 skipped, 1 deselected" in out, out
            line = "1 GPU test(s) not run: no CUDA device; run `make test-gpu` on a GPU machine"
            assert line in out.splitlines(), out


def test_with_d2l_require_data_a_missing_copy_fails(inner):
    rc, out = inner(D2L_DATA_DIR="", D2L_REQUIRE_DATA="1")
    assert rc == 1, out
    assert "ERROR test_inner.py::test_needs_the_copy" in out and "skipped" not in out, out
    assert "D2L_REQUIRE_DATA=1, and this test needs the full Fashion-MNIST copy" in out


def test_with_the_copy_its_tests_run(inner, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (f"{stem}.gz" for stem in FILES):
        (copy / name).write_bytes(b"")  # only their presence is checked here
    rc, out = inner(D2L_DATA_DIR=str(copy), D2L_REQUIRE_DATA="1")
    assert rc == 0, out
    assert "2 passed" in out and "skipped" not in out, out


def test_make_test_gpu_fails_without_cuda_and_runs_them_with_it(inner):
    rc, out = inner(D2L_REQUIRE_GPU="1", D2L_DATA_DIR="")
    if torch.cuda.is_available():
        assert rc == 0 and "test_needs_cuda" not in out and "deselected" not in out, out
    else:
        assert rc == pytest.ExitCode.USAGE_ERROR, out
        assert "no CUDA device on this machine" in out
