#!/usr/bin/env bash
# CI: the oldest versions pyproject.toml allows.  Installs, in a venv of its own (.venv-floors),
# every runtime dependency at exactly its declared floor ("torch>=2.4" -> "torch==2.4", i.e.
# 2.4.0), read from pyproject.toml so that the two cannot drift apart, with the package and its
# [dev] extras (the test tools, at whatever versions pip picks); runs tests/ there, then executes
# every notebook top to bottom under the smoke profile (scripts/run_notebooks.py -> build/floors/).
#
# The notebooks are executed, not compared: their stored outputs (losses, timings, printed
# tensors) come from the current torch and may legitimately differ in the last digits under an
# older one.  The floors' promise is that the package works there and that no notebook fails.
#
# From a clean machine: downloads ~2.7 GB of wheels (torch with its CUDA libraries) from the
# package index, installed without pip's cache (which would hold a second copy) into a venv of
# ~5.5 GB that is removed when the step ends (CI's disk also holds .venv and is not large;
# KEEP_FLOORS_VENV=1 keeps it, to look into a failure).  About
# 5 minutes on a 2-core CPU: ~2 to install, ~1 for tests/, ~2 for the notebooks.  Exit code:
# pip's, pytest's or run_notebooks.py's (124: pytest or the notebooks ran past 25 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

if [ -z "${D2L_DATA_DIR:-}" ] && [ -d ../shared/data/fashion-mnist ]; then  # as .ci/run does
    export D2L_DATA_DIR="$(cd ../shared/data/fashion-mnist && pwd)"
    export D2L_REQUIRE_DATA=1
fi

VENV=.venv-floors
rm -rf "$VENV"
[ -n "${KEEP_FLOORS_VENV:-}" ] || trap 'rm -rf "$VENV"' EXIT
python3 -m venv "$VENV"
PY=$VENV/bin/python
export PIP_NO_CACHE_DIR=1
$PY -m pip install --quiet --upgrade pip

# "name>=X" -> "name==X" for every entry of [project] dependencies (markers kept).
mapfile -t floors < <($PY - <<'EOF'
import re
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    if not re.match(r"^[A-Za-z0-9_.-]+\s*>=\s*[0-9][0-9.]*\s*(;.*)?$", dep):
        sys.exit(f"floors.sh: {dep!r} is not of the form 'name>=version': no floor to test")
    print(re.sub(r"\s*>=\s*", "==", dep, count=1))
EOF
)
echo "floors: ${floors[*]}"
$PY -m pip install --quiet -e '.[dev]' "${floors[@]}"
$PY - <<'EOF'
import matplotlib, numpy, torch, torchvision, tqdm  # noqa: E401

for m in (torch, torchvision, numpy, matplotlib, tqdm):
    print(f"{m.__name__} {m.__version__}")
EOF
echo "floors: installed in $((SECONDS - start)) s"

# A hang (as a deadlocked process group once did here) fails the step instead of the whole CI.
timeout --kill-after=30 1500 $PY -m pytest tests -q
echo "floors: tests/ done in $((SECONDS - start)) s"
D2L_PROFILE=smoke timeout --kill-after=30 1500 $PY scripts/run_notebooks.py --build build/floors
echo "floors: done in $((SECONDS - start)) s"
