"""What every test in tests/ runs under: offline, in a throw-away home, and told where the full
dataset is (or skipped, with the reason, where it is not).

* ``isolated_machine`` (autouse, once per test module): ``HOME``, ``XDG_CACHE_HOME``,
  ``XDG_CONFIG_HOME``, ``XDG_DATA_HOME``, ``TORCH_HOME``, ``MPLCONFIGDIR``, ``IPYTHONDIR`` and
  ``JUPYTER_*`` point into a temporary folder, proxies are unset, and a socket may connect to
  this machine only (tests serve downloads from ``127.0.0.1``).  Module scope, so that the
  module-scoped fixtures which start processes or read files run inside it too; tests that
  change an environment variable with ``monkeypatch`` get this module's value back afterwards.
* ``fashion_mnist_full``: the folder of the full Fashion-MNIST copy (``D2L_DATA_DIR``).  Where
  there is none, the test is skipped with one reason naming ``D2L_DATA_DIR``; with
  ``D2L_REQUIRE_DATA=1`` (CI) it fails instead, so a missing copy cannot hide tests there.
* ``gpu`` marker: tests that need CUDA.  Without a CUDA device they are deselected (not skipped)
  and the summary says in one line how many were not run and why; ``make test-gpu`` runs only
  them and fails where there is no CUDA device.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

FULL_FILES = tuple(
    f"{stem}.gz"
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
)
NO_FULL_COPY = (
    "needs the full Fashion-MNIST copy: set D2L_DATA_DIR to a folder holding its four .gz files"
)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
PROXY_VARIABLES = (
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
)
GPU_NOT_RUN = "no CUDA device; run `make test-gpu` on a GPU machine"


# --- no network, no real home ---------------------------------------------------------------------


class NetworkDisabledError(ConnectionRefusedError):
    """A test tried to reach another machine.  An ``OSError``, as a machine without a network
    gives, so the code under test takes its real offline path."""


def _is_loopback(host: object) -> bool:
    host = host.decode() if isinstance(host, bytes) else host
    return host in LOOPBACK_HOSTS or (isinstance(host, str) and host.startswith("127."))


def _guarded_socket_calls(mp: pytest.MonkeyPatch) -> None:
    """Guard the socket layer itself, not one download function, so the guard holds whatever
    client the code uses (urllib, http.client, asyncio)."""
    connect, connect_ex, getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def check(sock: socket.socket, address: object) -> None:
        # IP sockets have (host, port, ...) addresses; Unix sockets (a path) stay on this machine.
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise NetworkDisabledError(f"network disabled in tests (connect to {address[0]})")

    def local_connect(sock, address):
        check(sock, address)
        return connect(sock, address)

    def local_connect_ex(sock, address):
        check(sock, address)
        return connect_ex(sock, address)

    def local_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"network disabled in tests ({host})")
        return getaddrinfo(host, *args, **kwargs)

    mp.setattr(socket.socket, "connect", local_connect)
    mp.setattr(socket.socket, "connect_ex", local_connect_ex)
    mp.setattr(socket, "getaddrinfo", local_getaddrinfo)


def _home_variables(home: Path, shared: Path) -> dict[str, str]:
    """Every variable through which the code, torch, matplotlib or Jupyter find a home folder."""
    return {
        "HOME": str(home),
        "USERPROFILE": str(home),  # what os.path.expanduser reads on Windows
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "TORCH_HOME": str(home / ".cache" / "torch"),
        "IPYTHONDIR": str(home / ".ipython"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local" / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local" / "share" / "jupyter" / "runtime"),
        # Shared by the whole session: matplotlib builds its font cache there once, not per module.
        "MPLCONFIGDIR": str(shared / "matplotlib"),
    }


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("session-home")


@pytest.fixture(scope="module", autouse=True)
def isolated_machine(
    tmp_path_factory: pytest.TempPathFactory, _session_home: Path
) -> Iterator[Path]:
    """Offline, with a fresh temporary home folder for each test module (returned)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _home_variables(home, _session_home).items():
            mp.setenv(name, value)
        for name in PROXY_VARIABLES:
            mp.delenv(name, raising=False)
        _guarded_socket_calls(mp)
        yield home


# --- the full dataset -----------------------------------------------------------------------------


def full_copy() -> tuple[Path | None, str]:
    """(folder of the full copy, "") where ``D2L_DATA_DIR`` holds the four files, else
    (None, why not).  An empty ``D2L_DATA_DIR`` means: no copy (root conftest.py sets it only
    when it is unset)."""
    value = os.environ.get("D2L_DATA_DIR", "").strip()
    if not value:
        return None, f"{NO_FULL_COPY} (D2L_DATA_DIR is not set)"
    folder = Path(value).expanduser()
    missing = [name for name in FULL_FILES if not (folder / name).is_file()]
    if missing:
        return None, f"{NO_FULL_COPY} ({len(missing)} of them missing in D2L_DATA_DIR)"
    return folder, ""


@pytest.fixture(scope="session")
def fashion_mnist_full() -> Path:
    """The folder of the full Fashion-MNIST copy; skips the test where there is none, fails it
    where ``D2L_REQUIRE_DATA=1`` (CI)."""
    folder, why = full_copy()
    if folder is not None:
        return folder
    if os.environ.get("D2L_REQUIRE_DATA", "").strip() == "1":
        pytest.fail(f"D2L_REQUIRE_DATA=1, and this test {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def fashion_mnist_full_or_none() -> Path | None:
    """The full copy's folder or ``None``, for fixtures that start work before a test decides."""
    return full_copy()[0]


# --- GPU tests ------------------------------------------------------------------------------------


_GPU_NOT_RUN = pytest.StashKey[int]()  # how many gpu tests were deselected


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("D2L_REQUIRE_GPU", "").strip() == "1" and not _cuda_available():
        raise pytest.UsageError("make test-gpu: no CUDA device on this machine; run it on a GPU")
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu or _cuda_available():
        return
    config.hook.pytest_deselected(items=gpu)
    items[:] = [item for item in items if not item.get_closest_marker("gpu")]
    config.stash[_GPU_NOT_RUN] = len(gpu)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    count = config.stash.get(_GPU_NOT_RUN, 0)
    if count:
        terminalreporter.write_line(f"{count} GPU test(s) not run: {GPU_NOT_RUN}", yellow=True)
