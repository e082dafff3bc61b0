"""Execute the course's notebooks in order and collect their results.

    python scripts/run_notebooks.py                     # all -> build/*.ipynb, build/results.md
    python scripts/run_notebooks.py --inplace NB.ipynb  # refresh a notebook's committed outputs
    python scripts/run_notebooks.py --download          # fetch the dataset first if it is missing

The active run profile applies (``D2L_PROFILE``; quick on a CPU, full on a GPU).  Before any
notebook starts, the data the profile needs is checked (quick and full read the full
Fashion-MNIST files; smoke only the bundled sample): if it is missing, one line says what and how
to fix it, and nothing runs.  Then one line per notebook: its name, status and time.  On a
failure: the exception's name and message (no terminal colours), and where the partly executed
notebook was written (``build/``).  The kernels' own log lines (e.g. ipykernel's transport
warnings) go to ``build/<notebook>.kernel.log``, not the terminal.  Each trained model's row
(``d2l_utils.results.record_result``) goes to ``build/results.jsonl``; the table is written to
``build/results.md`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = [
    ("notebook", "notebook"),
    ("model", "model"),
    ("parameters", "parameters"),
    ("epochs", "epochs"),
    ("test_acc", "test acc"),
    ("examples_per_sec", "examples/s"),
    ("time_s", "time (s)"),
    ("device", "device"),
    ("profile", "profile"),
]
# Terminal control sequences (colours, cursor moves): IPython colours its tracebacks with them.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# Kernel log lines that are noise for this use (the kernel listens on this machine only).
KERNEL_NOISE = re.compile(r"Kernel is running over TCP without encryption|^\s*$")


class NotebookFailed(Exception):
    """A notebook raised; ``partial`` is the partly executed notebook that was written."""

    def __init__(self, cause: BaseException, partial: Path, elapsed: float) -> None:
        super().__init__(describe_failure(cause))
        self.cause, self.partial, self.elapsed = cause, partial, elapsed


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def describe_failure(exc: BaseException) -> str:
    """``Name: message`` of what failed, without colour codes.

    For an exception raised in a cell (nbclient's ``CellExecutionError``) that is the cell's
    exception, from ``ename``/``evalue``, not the coloured traceback nbclient's message holds.
    For anything else (a timeout, a dead kernel) the first line of its message.
    """
    if hasattr(exc, "ename") and hasattr(exc, "evalue"):
        name = strip_ansi(str(exc.ename)).strip() or type(exc).__name__
        lines = strip_ansi(str(exc.evalue)).splitlines()
    else:
        name = type(exc).__name__
        lines = strip_ansi(str(exc)).splitlines()[:1]
    message = " ".join(line.strip() for line in lines if line.strip())
    return f"{name}: {message}" if message else name


def shown(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (shorter, no home folder)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def missing_data(profile) -> str | None:
    """One line saying which data files the profile needs and lacks, and how to fix it; ``None``
    when nothing is missing.  The same places as ``load_data`` looks (``D2L_DATA_DIR``, else the
    default cache folder)."""
    if profile.use_sample:
        return None
    from d2l_utils.fashion_mnist import FILES, default_root, find_files

    env = os.environ.get("D2L_DATA_DIR", "").strip()
    root, source = (Path(env).expanduser(), "D2L_DATA_DIR") if env else (default_root(), "default")
    found = find_files(root) if root.is_dir() else {}
    missing = [f"{stem}.gz" for stem in FILES if stem not in found]
    if not missing:
        return None
    what = "all 4 files" if len(missing) == len(FILES) else ", ".join(missing)
    where = f"D2L_DATA_DIR={root}" if source == "D2L_DATA_DIR" else f"{root} (D2L_DATA_DIR unset)"
    return (
        f"profile {profile.name} needs the full Fashion-MNIST dataset, missing in {where}: "
        f"{what}. Set D2L_DATA_DIR to a folder that holds them, or allow the download (30 MB) "
        "with `make run DOWNLOAD=1` (run_notebooks.py --download), or use D2L_PROFILE=smoke"
    )


def kernel_messages(log: Path) -> list[str]:
    """The kernel's log lines worth showing (none of the known noise)."""
    if not log.is_file():
        return []
    text = strip_ansi(log.read_text(encoding="utf-8", errors="replace"))
    return [line for line in text.splitlines() if not KERNEL_NOISE.search(line)]


def execute(path: Path, out: Path, timeout: int, build: Path) -> float:
    """Run ``path`` top to bottom in a fresh kernel and write the executed notebook to ``out``.

    The kernel's stderr (its own log, not the cells' output) goes to
    ``build/<name>.kernel.log``.  If a cell fails, the notebook as far as it ran is written to
    ``build/<name>.ipynb`` (never over the source, even with ``--inplace``) and
    :class:`NotebookFailed` is raised.
    """
    nb = nbformat.read(path, as_version=4)
    os.environ["D2L_NOTEBOOK"] = path.name
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    log, partial = build / f"{path.stem}.kernel.log", build / path.name
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as stderr:
        try:
            client.execute(stderr=stderr)
        except Exception as exc:  # any failure: keep what ran, then report
            nbformat.write(nb, partial)
            raise NotebookFailed(exc, partial, time.perf_counter() - start) from exc
    elapsed = time.perf_counter() - start
    nbformat.write(nb, out)
    return elapsed


def fetch_data() -> str | None:
    """Download the missing dataset files (``load_data`` does, checking each); an error line
    or ``None``."""
    from d2l_utils.data import load_data

    try:
        load_data(256, profile="full")
    except Exception as exc:  # any failure is reported as one line, not a traceback
        return describe_failure(exc)
    return None


def write_table(rows: list[dict], target: Path) -> None:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key, "")
            if key == "parameters" and isinstance(value, int):
                value = f"{value:,}"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")


def check_data(profile, download: bool) -> str | None:
    """``None`` when the profile's data is there (after downloading it, if allowed), else the
    one line to print."""
    problem = missing_data(profile)
    if problem is None or not download:
        return problem
    failed = fetch_data()
    return f"the download failed: {failed}" if failed else missing_data(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument(
        "--inplace", action="store_true", help="write outputs back into the notebook"
    )
    parser.add_argument("--build", type=Path, default=ROOT / "build")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument(
        "--download", action="store_true", help="download missing dataset files first"
    )
    args = parser.parse_args(argv)
    args.build = args.build.resolve()  # the kernels run in the notebooks' folder, not here

    from d2l_utils.data import get_profile

    try:
        profile = get_profile()
    except ValueError as exc:
        print(f"run_notebooks: {exc}", file=sys.stderr)
        return 2
    problem = check_data(profile, args.download)
    if problem:
        print(f"run_notebooks: {problem}", file=sys.stderr)
        return 1

    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    args.build.mkdir(parents=True, exist_ok=True)
    results = args.build / "results.jsonl"
    if not args.inplace:
        results.unlink(missing_ok=True)
    os.environ["D2L_RESULTS"] = str(results)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    print(f"{profile}; {len(notebooks)} notebook(s)", flush=True)
    for i, nb in enumerate(notebooks, 1):
        out = nb if args.inplace else args.build / nb.name
        print(f"[{i}/{len(notebooks)}] {nb.name} ...", end=" ", flush=True)
        try:
            elapsed = execute(nb.resolve(), out, args.timeout, args.build)
        except NotebookFailed as failed:
            print(f"FAILED after {failed.elapsed:.0f} s: {failed}", flush=True)
            print(f"partly executed notebook: {shown(failed.partial)}", flush=True)
            log = args.build / f"{nb.stem}.kernel.log"
            if kernel_messages(log):
                print(f"kernel log: {shown(log)}", flush=True)
            return 1
        print(f"ok in {elapsed:.0f} s -> {shown(out)}", flush=True)
    if results.exists() and not args.inplace:
        rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
        write_table(rows, args.build / "results.md")
        print(f"results: {len(rows)} model(s) in {shown(args.build / 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
