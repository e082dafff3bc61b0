"""pytest set-up shared by tests/ and the notebooks run by ``pytest --nbval``.

Every test and every notebook runs under the ``smoke`` profile, so a bare ``pytest --nbval`` is
the README's test command: the bundled data sample, one epoch, small images.  Set here, before any
kernel starts, the notebooks' kernels inherit it.
"""

import os
from pathlib import Path

os.environ["D2L_PROFILE"] = "smoke"
os.environ.setdefault("MPLBACKEND", "Agg")
# The full dataset, where the machine has a copy beside the project (development machines and
# CI do); tests that need it are told where it is through this variable, and skip without it
# (tests/conftest.py).  Set but empty, D2L_DATA_DIR means "no copy": `D2L_DATA_DIR= pytest`
# runs the suite as on a learner's machine.
_shared = Path(__file__).resolve().parent.parent / "shared" / "data" / "fashion-mnist"
if "D2L_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["D2L_DATA_DIR"] = str(_shared)

# tests/test_infra.py runs tests/conftest.py in pytest sessions of its own, in this process.
pytest_plugins = ["pytester"]
