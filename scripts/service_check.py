"""Do the notebooks run on a notebook service, away from this repository?

    python scripts/service_check.py            # build/service/: wheel, fresh venv, seven runs
    python scripts/service_check.py --keep     # ... and keep the venv (about 6 GB) afterwards

What a learner on a hosted Jupyter gets, reproduced here:

1. the package is built as a wheel (``pip wheel``) and the wheel is checked to carry what the
   notebooks need: the bundled data sample, notebook 07's training script, the ``d2l-predict``
   command;
2. a fresh virtual environment gets that wheel (its dependencies from the package index) and a
   Jupyter kernel, nothing from this checkout;
3. each notebook is copied *alone* into an empty folder, with its own empty ``HOME`` and no
   ``D2L_DATA_DIR``, and executed top to bottom with nbclient under the ``smoke`` profile.

It fails (exit 1) if a notebook raises, naming the cell.  Each notebook's time is printed.  The
venv (a CUDA build of torch: about 6 GB) is removed at the end unless ``--keep`` is given, so that
the CI steps after this one have the disk back.  The notebooks' first cell (the setup cell) finds
the installed package and does nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "service"
# What the wheel must carry besides the modules: the notebooks read these from the package.
WHEEL_MUST_HOLD = ["d2l_utils/data/fashion_mnist_sample.npz", "d2l_utils/distributed.py"]


def quiet(command: list[str]) -> None:
    """Runs ``command``; its output is shown only if it fails."""
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{run.stdout[-3000:]}{run.stderr[-3000:]}")


def build_wheel() -> Path:
    dist = WORK / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    quiet([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(ROOT)])
    (wheel,) = dist.glob("d2l_utils-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        commands = z.read(entry_points).decode()
    missing = [n for n in WHEEL_MUST_HOLD if n not in names]
    if missing or "d2l-predict" not in commands:
        raise SystemExit(f"the wheel lacks {missing or 'the d2l-predict command'}")
    print(f"wheel: {wheel.name}, {len(names)} files, with the data sample and d2l-predict")
    return wheel


def fresh_venv(wheel: Path) -> Path:
    env_dir = WORK / "venv"
    shutil.rmtree(env_dir, ignore_errors=True)
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # ipykernel and nbclient are what a notebook service provides; the rest comes with the wheel.
    quiet([str(python), "-m", "pip", "install", str(wheel), "ipykernel", "nbclient"])
    return python


def execute(notebook: Path) -> None:
    """In the service's venv: run ``notebook`` (alone in its folder) top to bottom."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3")
    client.execute(cwd=str(notebook.parent))
    setup = next(c for c in nb.cells if c.cell_type == "code")
    if setup.outputs:
        raise SystemExit(f"{notebook.name}: the setup cell printed {setup.outputs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep build/service/venv afterwards")
    parser.add_argument("--execute", type=Path, help=argparse.SUPPRESS)  # the inner role
    args = parser.parse_args()
    if args.execute:
        execute(args.execute)
        return 0

    start = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    python = fresh_venv(build_wheel())
    print(f"fresh venv with the wheel: {time.perf_counter() - start:.0f} s")
    try:
        failed = run_all(python)
    finally:
        if not args.keep:
            shutil.rmtree(WORK / "venv", ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def run_all(python: Path) -> list[str]:
    """Each notebook alone in an empty folder with an empty HOME; returns the ones that failed."""
    failed = []
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        with tempfile.TemporaryDirectory(prefix="service-") as tmp:
            folder, home = Path(tmp, "work"), Path(tmp, "home")
            folder.mkdir(), home.mkdir()
            shutil.copy(notebook, folder)
            env = {k: v for k, v in os.environ.items() if not k.startswith("D2L_")}
            env.update(D2L_PROFILE="smoke", HOME=str(home), PYTHONNOUSERSITE="1")
            env["PATH"] = f"{python.parent}{os.pathsep}{env['PATH']}"
            t0 = time.perf_counter()
            inner = [str(python), __file__, "--execute", str(folder / notebook.name)]
            run = subprocess.run(inner, cwd=folder, env=env, capture_output=True, text=True)
            status = "ok" if run.returncode == 0 else "FAILED"
            print(f"{notebook.name:<45} {status:<7}{time.perf_counter() - t0:6.0f} s", flush=True)
            if run.returncode:
                print(run.stderr[-3000:])
                failed.append(notebook.name)
    return failed


if __name__ == "__main__":
    sys.exit(main())
