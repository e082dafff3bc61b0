#!/usr/bin/env bash
# The course site, from a clean clone: `make site` makes .venv-site with the `site` extra only
# (jupyter-book 1.x, no torch), builds build/site/ from the README and the committed notebooks
# without running them (every Sphinx warning is an error), and checks it with scripts/check_site.py
# as a reader would: pages, images, links and anchors, the navigation, a download link per
# notebook.  The screenshots (`make site-screenshots`, headless Chromium) are not part of it.
set -euo pipefail
cd "$(dirname "$0")/.."
make site
