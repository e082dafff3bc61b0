# The course's commands.  Each creates .venv from pyproject.toml when it is missing (so on a fresh
# machine with Python 3.10+ the first command does all the set-up) and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-gpu run lab bench lint check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## make test: the README's test command (tests/ and every notebook, smoke profile, this kernel)
test: $(STAMP)
	$(BIN)/python -m pytest --nbval

## make test-gpu: only the tests marked `gpu` (CUDA); fails on a machine without a CUDA device
test-gpu: $(STAMP)
	D2L_REQUIRE_GPU=1 $(BIN)/python -m pytest -m gpu tests

## make run: execute every notebook in order under the active profile -> build/
##   (checks the data first; DOWNLOAD=1 fetches missing dataset files)
run: $(STAMP)
	$(BIN)/python scripts/run_notebooks.py $(if $(DOWNLOAD),--download)

## make check: is this machine ready? Python, torch, device, profile, data (exit 1 with the fix)
check: $(STAMP)
	$(BIN)/python -m d2l_utils.check

## make lab: JupyterLab on notebooks/
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## make bench: the course's data path and loop vs. the textbook's, side by side -> build/
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench --quick

## make lint: ruff's checks and formatting of the package, the tests, the scripts and the benchmark
lint: $(STAMP)
	$(BIN)/ruff check d2l_utils tests scripts benchmarks
	$(BIN)/ruff format --check d2l_utils tests scripts benchmarks

clean:
	rm -rf build .pytest_cache
