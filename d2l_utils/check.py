"""Is this machine ready for the course?  ``python -m d2l_utils.check`` (or ``make check``).

One line per item: Python, torch, torchvision, the device training will use, the run profile, the
Fashion-MNIST files the profile needs, and how long the quick run took where it was measured.
A line that starts with ``FAIL`` names what is missing and how to fix it; the exit status is then
1, else 0.  Nothing is downloaded and nothing is trained.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from d2l_utils.data import PROFILES, get_profile, load_sample
from d2l_utils.device import amp_dtype, num_gpus, try_gpu
from d2l_utils.fashion_mnist import FILES, find_files, read_idx, resolve_root

__all__ = ["FLOORS", "QUICK_MINUTES", "check", "main"]

# The oldest versions pyproject.toml allows (tests/test_check.py keeps the two in step).
FLOORS = {"python": (3, 10), "torch": (2, 4), "torchvision": (0, 19)}
# Minutes each notebook took under `quick` in its committed run, on a 2-core CPU with no GPU
# (tests/test_check.py recomputes them from the notebooks' own timestamps).
QUICK_MINUTES = {
    "01": 3.76,
    "02": 0.27,
    "03": 28.00,
    "04": 21.32,
    "05": 4.72,
    "06": 8.85,
    "07": 2.69,
}
_PROFILE_MEANING = {
    "smoke": "what the tests run: the bundled sample, seconds per notebook, numbers mean nothing",
    "quick": "the CPU run: budgets sized for a 2-core CPU, the stored notebooks' numbers",
    "full": "the book's settings: meant for a GPU",
}


def _version(text: str) -> tuple[int, ...]:
    """``"2.14.1+cu130"`` -> ``(2, 14)``: the major and minor numbers."""
    parts = text.split("+")[0].split(".")
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts[:2])


def _floor(name: str, version: str) -> str:
    floor = FLOORS[name]
    line = f"{name} {version}"
    if _version(version) >= floor:
        return f"ok    {line}"
    wanted = ".".join(map(str, floor))
    fix = f"pip install -U '{name}>={wanted}'"
    return f"FAIL  {line}: the course needs {name} >= {wanted}; fix: {fix}"


def device_line() -> str:
    """Where ``train_ch6`` will train by default, and in which precision."""
    device = try_gpu()
    if device.type == "cuda":
        dtype = amp_dtype(device)
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16 with a gradient scaler"}.get(
            dtype, "fp32"
        )
        name = torch.cuda.get_device_name(device)
        return f"ok    device {device} ({name}, {num_gpus()} GPU(s)), mixed precision {precision}"
    if device.type == "mps":
        return "ok    device mps (Apple GPU), fp32"
    return f"ok    device cpu, {torch.get_num_threads()} threads, fp32 (no GPU found)"


def profile_line() -> tuple[str, str | None]:
    """The active profile's line, and its name (``None`` when ``D2L_PROFILE`` is invalid)."""
    try:
        profile = get_profile()
    except ValueError as exc:
        names = ", ".join(sorted(PROFILES))
        return f"FAIL  {exc}; fix: export D2L_PROFILE to one of {names}, or unset it", None
    return f"ok    {profile} -- {_PROFILE_MEANING[profile.name]}", profile.name


def _verify(path: Path, stem: str) -> str | None:
    """``None`` when the file parses as the IDX file it should be (magic number, item count and
    size, as ``load_data`` checks it), else what is wrong."""
    spec = FILES[stem]
    try:
        read_idx(path, spec.kind, spec.count)
    except (OSError, ValueError) as exc:
        return f"{path.name}: {exc}"
    return None


def data_line(profile: str | None) -> str:
    """Where the data the profile needs is, and whether it verifies."""
    if profile == "smoke" or profile is None:
        sample = load_sample(train=True)
        return f"ok    data: the bundled sample ({len(sample):,} training images), nothing to fetch"
    root, source = resolve_root(None)
    found = find_files(root) if root.is_dir() else {}
    missing = [f"{stem}.gz" for stem in FILES if stem not in found]
    if missing:
        return (
            f"FAIL  data: profile {profile} needs the full Fashion-MNIST; {len(missing)} of 4 "
            f"files missing in {root} (chosen by {source}); fix: export D2L_DATA_DIR=<folder "
            "with the four .gz files>, or let the first notebook download them (30 MB, "
            "`make run DOWNLOAD=1`)"
        )
    problems = [p for stem, path in found.items() if (p := _verify(path, stem))]
    if problems:
        return f"FAIL  data: {problems[0]}; fix: delete it (it is downloaded again) or replace it"
    where = f"{root} (chosen by {source})"
    return f"ok    data: the full Fashion-MNIST in {where}, 4 files read and checked"


def time_line() -> str:
    total = sum(QUICK_MINUTES.values())
    each = ", ".join(f"{k} {v:.0f}" for k, v in QUICK_MINUTES.items())
    return (
        f"info  the quick run took {total:.0f} min for all seven notebooks on a 2-core CPU "
        f"(minutes each: {each}); this machine: {os.cpu_count()} CPUs"
        + (", and a GPU: use the full profile" if num_gpus() else "")
    )


def check(print_line: Callable[[str], None] = print) -> int:
    """Print every line; 1 if any line failed, else 0."""
    python = platform.python_version()
    profile, name = profile_line()
    lines = [
        _floor("python", python),
        _floor("torch", torch.__version__),
        _floor("torchvision", torchvision.__version__),
        device_line(),
        profile,
        data_line(name),
        time_line(),
    ]
    for line in lines:
        print_line(line)
    return int(any(line.startswith("FAIL") for line in lines))


def main() -> int:
    return check()


if __name__ == "__main__":
    sys.exit(main())
