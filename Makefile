# The course's commands.  Each creates .venv from pyproject.toml when it is missing (so on a fresh
# machine with Python 3.10+ the first command does all the set-up) and reuses it afterwards.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test test-gpu run lab bench lint check wheel student site site-screenshots clean

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

## make wheel: the package as a wheel -> build/dist/ (what a notebook service installs: see README)
wheel: $(STAMP)
	$(BIN)/python -m pip wheel --quiet --no-deps -w build/dist .

## make check: is this machine ready? Python, torch, device, profile, data (exit 1 with the fix)
check: $(STAMP)
	$(BIN)/python -m d2l_utils.check

## make lab: JupyterLab on notebooks/
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## make student: the notebooks without their solutions, a check cell per value exercise
##   -> build/student/ (CHECK=1 also executes them, smoke profile: every error must be YourTurn)
student: $(STAMP)
	$(BIN)/python scripts/student.py $(if $(CHECK),--check)

## make bench: the course's data path and loop vs. the textbook's, side by side -> build/
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench --quick

## make lint: ruff's checks and formatting of the package, the tests, the scripts and the benchmark
lint: $(STAMP)
	$(BIN)/ruff check d2l_utils tests scripts benchmarks
	$(BIN)/ruff format --check d2l_utils tests scripts benchmarks

## make site: the course site -> build/site/index.html: the README, then the notebooks with their
##   committed outputs (nothing runs); its own .venv-site with the `site` extra only (no torch)
SITE_BIN := .venv-site/bin
$(SITE_BIN)/.installed: pyproject.toml
	@test -x $(SITE_BIN)/python || $(PYTHON) -m venv .venv-site
	$(SITE_BIN)/python -m pip install --quiet --upgrade pip "tomli; python_version < '3.11'"
	$(SITE_BIN)/python scripts/build_site.py --requirements > .venv-site/requirements.txt
	$(SITE_BIN)/python -m pip install --quiet -r .venv-site/requirements.txt
	@touch $@
site: $(SITE_BIN)/.installed
	$(SITE_BIN)/python scripts/build_site.py
	$(SITE_BIN)/python scripts/check_site.py

## make site-screenshots: each notebook page in headless Chromium -> build/site-screenshots/
##   (after `make site`; needs `apt-get install chromium`)
site-screenshots:
	$(SITE_BIN)/python scripts/site_screenshots.py

clean:
	rm -rf build .pytest_cache
