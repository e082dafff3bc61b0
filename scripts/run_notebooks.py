"""Execute the course's notebooks in order and collect their results.

    python scripts/run_notebooks.py                     # all -> build/*.ipynb, build/results.md
    python scripts/run_notebooks.py --inplace NB.ipynb  # refresh a notebook's committed outputs

The active run profile applies (``D2L_PROFILE``; quick on a CPU, full on a GPU).  Each trained
model's row (``d2l_utils.record_result``) goes to ``build/results.jsonl``; the table is written
to ``build/results.md`` at the end.
"""

from __future__ import annotations

import argparse
import json
import os
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


def execute(path: Path, out: Path, timeout: int) -> float:
    """Run ``path`` top to bottom in a fresh kernel and write the executed notebook to ``out``."""
    nb = nbformat.read(path, as_version=4)
    os.environ["D2L_NOTEBOOK"] = path.name
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    nbformat.write(nb, out)
    return elapsed


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument(
        "--inplace", action="store_true", help="write outputs back into the notebook"
    )
    parser.add_argument("--build", type=Path, default=ROOT / "build")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args(argv)

    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    args.build.mkdir(parents=True, exist_ok=True)
    results = args.build / "results.jsonl"
    if not args.inplace:
        results.unlink(missing_ok=True)
    os.environ["D2L_RESULTS"] = str(results)
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    from d2l_utils.profiles import get_profile

    print(f"{get_profile()}; {len(notebooks)} notebook(s)", flush=True)
    for i, nb in enumerate(notebooks, 1):
        out = nb if args.inplace else args.build / nb.name
        print(f"[{i}/{len(notebooks)}] {nb.name} ...", end=" ", flush=True)
        try:
            elapsed = execute(nb.resolve(), out, args.timeout)
        except Exception as exc:  # noqa: BLE001 - report which notebook failed, then stop
            print(f"FAILED: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
            return 1
        print(f"done in {elapsed:.0f} s -> {out.name}", flush=True)
    if results.exists() and not args.inplace:
        rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
        write_table(rows, args.build / "results.md")
        print(f"results: {len(rows)} model(s) in build/results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
