"""The notebooks' shape: attached figures, short code cells, no CI scaffolding in the lesson.

These are the rules CONTRIBUTING.md states for a notebook, checked on every committed notebook.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_CODE_LINES = 32  # "about 30 lines at most"
NBVAL_TAGS = {"nbval-ignore-output", "nbval-skip", "nbval-raises-exception", "nbval-check-output"}
LOCAL_IMAGE = re.compile(r"!\[[^\]]*\]\((?!https?://)([^)\s]+)\)")
PROFILE_BRANCH = re.compile(r"^\s*(?:el)?if\b[^\n]*(?:PROFILE\.name|\bSMOKE\b)", re.MULTILINE)


def cells(kind: str):
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == kind:
                yield path.name, index, cell


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7


def test_every_image_travels_with_its_notebook_and_every_svg_parses():
    # A notebook opened on its own (a notebook service, a download) must show its figures: each
    # image is a cell attachment, not a file beside the notebook.
    shown = 0
    for name, index, cell in cells("markdown"):
        attachments = cell.get("attachments", {})
        for target in LOCAL_IMAGE.findall(cell.source):
            assert target.startswith("attachment:"), f"{name} [{index}] links the file {target}"
            bundle = attachments.get(target.removeprefix("attachment:"))
            assert bundle, f"{name} [{index}] shows {target}, which it does not attach"
            shown += 1
            if target.endswith(".svg"):
                root = ET.fromstring(base64.b64decode(bundle["image/svg+xml"]))
                assert root.tag.endswith("svg"), f"{target} is not an SVG document"
                assert root.get("viewBox") or root.get("width"), f"{target} has no size"
        unused = set(attachments) - {
            t.removeprefix("attachment:") for t in LOCAL_IMAGE.findall(cell.source)
        }
        assert not unused, f"{name} [{index}] attaches images it does not show: {unused}"
    assert shown >= 3  # the residual block, ResNet-18 and the dense block


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_code_cells_are_short(path):
    nb = nbformat.read(path, as_version=4)
    long = {
        i: len(c.source.splitlines())
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and len(c.source.splitlines()) > MAX_CODE_LINES
    }
    assert not long, f"code cells over {MAX_CODE_LINES} lines (cell: lines): {long}"


def test_no_profile_branches_or_nbval_comments_in_code():
    for name, index, cell in cells("code"):
        assert not PROFILE_BRANCH.search(cell.source), (
            f"{name} [{index}] branches on the profile; budgets belong in the settings cell"
        )
        assert "NBVAL_" not in cell.source, f"{name} [{index}]: use nbval cell tags, not comments"
        unknown = set(cell.metadata.get("tags", [])) - NBVAL_TAGS
        assert not {t for t in unknown if t.startswith("nbval")}, f"{name} [{index}]: {unknown}"
