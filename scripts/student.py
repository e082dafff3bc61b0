"""Write the student edition of the notebooks: the exercises without their solutions.

    python scripts/student.py            # notebooks/*.ipynb -> build/student/*.ipynb
    python scripts/student.py --check    # ... then execute each one (smoke profile) and verify

The edition is generated from the full one, never kept by hand, so the two cannot drift.  For
each notebook it keeps everything up to the ``## Exercises`` heading and the exercises themselves
(a markdown cell that also holds the ``## Solutions`` heading is cut there), then, from the
solutions, only:

* the cells tagged ``exercise-check``, each of the form ::

      from d2l_utils.exercises import check

      # what the answer is
      answer = <the solution's value>
      check("03.1", answer)

  with the value replaced by ``...`` (``answer = ...  # your answer``): the learner fills it in and
  runs the check, which says "your turn" until then, "right" or a hint afterwards;
* the cells tagged ``student-keep`` (clean-up cells that remove a notebook's temporary files).

Exercises without a value to check (explanations, experiments) get no cell: their text is the
prompt.  All outputs are cleared, the lesson's as well: the learner runs the notebook, and its
results are theirs (a rerun under another profile or on another machine differs anyway).

``--check`` executes every student notebook under ``D2L_PROFILE=smoke`` with nbclient (errors
allowed, in a temporary copy of the folder; the executed notebooks go to
``build/student-executed/``) and fails unless every error is a ``YourTurn`` shown as its one line
and every ``exercise-check`` cell raised one.  It prints how long that took.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CHECK_TAG, KEEP_TAG = "exercise-check", "student-keep"
# The one assignment a check cell may hold, and its check call: `answer = <value>`,
# `check("NN.N", answer)`.
ASSIGNMENT = re.compile(r"^answer = .+$")
CHECK_CALL = re.compile(r'^check\("(\d\d\.\d+)", answer\)$')
STUB = "answer = ...  # your answer"


def tags(cell: nbformat.NotebookNode) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def stub(cell: nbformat.NotebookNode) -> tuple[str, nbformat.NotebookNode]:
    """The exercise id of a check cell and the cell with its value replaced by ``...``."""
    lines = cell.source.splitlines()
    assignments = [i for i, line in enumerate(lines) if ASSIGNMENT.match(line)]
    calls = [m.group(1) for line in lines if (m := CHECK_CALL.match(line))]
    if len(assignments) != 1 or len(calls) != 1 or not CHECK_CALL.match(lines[-1]):
        raise ValueError(
            f"cell {cell.get('id')}: an {CHECK_TAG} cell holds one line `answer = <value>` "
            f'and ends with `check("NN.N", answer)`:\n{cell.source}'
        )
    lines[assignments[0]] = STUB
    out = copy.deepcopy(cell)
    out.source = "\n".join(lines)
    return calls[0], out


def clear(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    cell = copy.deepcopy(cell)
    cell.get("metadata", {}).pop("execution", None)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return cell


def student_edition(nb: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The student edition of ``nb`` and the exercise ids it checks, in order."""
    starts = [i for i, c in enumerate(nb.cells) if "## Exercises" in c.source]
    if not starts:
        raise ValueError("no '## Exercises' heading")
    start = starts[-1]
    exercises = clear(nb.cells[start])
    exercises.source = exercises.source.split("## Solutions")[0].rstrip()
    cells, ids = [clear(c) for c in nb.cells[:start]] + [exercises], []
    for cell in nb.cells[start + 1 :]:
        if CHECK_TAG in tags(cell):
            exercise, cell = stub(cell)
            ids.append(exercise)
            cells.append(clear(cell))
        elif KEEP_TAG in tags(cell):
            cells.append(clear(cell))
    student = copy.deepcopy(nb)
    student.cells = cells
    return student, ids


def write_edition(source: Path, out: Path) -> dict[str, list[str]]:
    """Write ``out/<name>.ipynb`` for every notebook in ``source``; the check ids per notebook."""
    out.mkdir(parents=True, exist_ok=True)
    checked = {}
    for path in sorted(source.glob("*.ipynb")):
        student, ids = student_edition(nbformat.read(path, as_version=4))
        nbformat.validate(student)
        nbformat.write(student, out / path.name)
        checked[path.name] = ids
        print(f"{path.name}: {len(ids)} checked exercise(s) {', '.join(ids)}".rstrip())
    return checked


def verify(path: Path, expected: list[str], executed: Path) -> list[str]:
    """Execute ``path`` (errors allowed) and write it to ``executed``; the problems found."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=1800,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    with open(path.with_suffix(".kernel.log"), "w", encoding="utf-8") as stderr:
        client.execute(stderr=stderr)
    nbformat.write(nb, executed)  # for a look when something is wrong
    return problems(nb, expected)


def problems(nb: nbformat.NotebookNode, expected: list[str]) -> list[str]:
    """What is wrong with an executed student notebook: errors other than a one-line
    ``YourTurn``, and ``YourTurn`` raised for other exercises than ``expected``."""
    found, your_turn = [], []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.output_type != "error":
                continue
            if output.ename != "YourTurn":
                found.append(f"cell {index}: {output.ename}: {output.evalue}")
            elif output.traceback != [output.evalue]:
                found.append(f"cell {index}: YourTurn shown as more than its one line")
            else:
                your_turn.append(output.evalue.split(":")[0].removeprefix("Exercise "))
    if your_turn != expected:
        found.append(f"YourTurn raised for {your_turn}, expected for {expected}")
    return found


def check_edition(edition: Path, checked: dict[str, list[str]], executed: Path) -> bool:
    """Execute every notebook of ``edition`` in a temporary copy; write them to ``executed``."""
    executed.mkdir(parents=True, exist_ok=True)
    os.environ["D2L_PROFILE"] = "smoke"
    os.environ.setdefault("MPLBACKEND", "Agg")
    start, ok = time.perf_counter(), True
    with tempfile.TemporaryDirectory(prefix="d2l-student-") as tmp:
        work = Path(tmp) / "student"
        shutil.copytree(edition, work)
        for name, expected in checked.items():
            began = time.perf_counter()
            found = verify(work / name, expected, executed / name)
            status = "ok" if not found else "FAILED"
            print(f"{name}: {status} ({time.perf_counter() - began:.0f} s)", flush=True)
            for problem in found:
                print(f"  {problem}")
            ok = ok and not found
    print(f"student edition executed in {time.perf_counter() - start:.0f} s (smoke profile)")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "student")
    parser.add_argument("--check", action="store_true", help="execute and verify the edition")
    args = parser.parse_args(argv)
    checked = write_edition(args.source, args.out)
    executed = args.out.parent / f"{args.out.name}-executed"
    if args.check and not check_edition(args.out, checked, executed):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
