"""scripts/check_site.py, the reader's check of the course site (`make site`, .ci/site.sh), on a
small hand-written site: it passes a sound one and names each kind of defect.  The real site is
checked only after it is built (.ci/site.sh), so nothing here needs jupyter-book."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_site.py"
_spec = importlib.util.spec_from_file_location("check_site", SCRIPT)
check_site = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_site)

NAMES = ["01_a", "02_b"]
PNG = "iVBORw0KGgo="  # the PNG signature, base64


def page(body: str, nav_current: str = "", prefix: str = "") -> str:
    links = "".join(
        f'<li><a href="{"#" if n == nav_current else f"{prefix}notebooks/{n}.html"}">{n}</a></li>'
        for n in NAMES
    )
    return (
        f'<html><head><script src="{prefix}_static/x.js"></script></head><body>'
        f'<nav class="bd-links bd-docs-nav"><ul>{links}</ul></nav>'
        f'<article class="bd-article"><section id="top">{body}</section></article></body></html>'
    )


@pytest.fixture
def site(tmp_path):
    """A sound site of two notebook pages, each with one figure, and its notebooks."""
    root, nbs = tmp_path / "site", tmp_path / "notebooks"
    for d in (root / "notebooks", root / "_static", root / "_images", root / "_sources/notebooks"):
        d.mkdir(parents=True)
    nbs.mkdir()
    (root / "_static" / "x.js").write_text("//")
    (root / "_images" / "fig.svg").write_text("<svg/>")
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=README.html" />')
    (root / "README.html").write_text(page('<a href="notebooks/02_b.html#s">02</a>'))
    for i, name in enumerate(NAMES):
        cell = {"cell_type": "markdown", "metadata": {}, "source": "![f](fig.svg)"}
        (nbs / f"{name}.ipynb").write_text(json.dumps({"cells": [cell]}))
        (root / "_sources/notebooks" / f"{name}.ipynb").write_text(json.dumps({"cells": [cell]}))
        img = '<img src="../_images/fig.svg">' if i else f'<img src="data:image/png;base64,{PNG}">'
        body = f'<a href="../_sources/notebooks/{name}.ipynb">.ipynb</a>{img}<p id="s"></p>'
        (root / "notebooks" / f"{name}.html").write_text(page(body, name, "../"))
    return root, sorted(nbs.glob("*.ipynb"))


def test_a_sound_site_passes(site):
    assert check_site.check_site(*site) == []


@pytest.mark.parametrize(
    ("file", "old", "new", "problem"),
    [
        ("_images/fig.svg", "<svg/>", "", "notebooks/02_b.html: missing or empty image"),
        ("notebooks/01_a.html", PNG, "", "notebooks/01_a.html: empty data: image"),
        ("README.html", "02_b.html#s", "02_b.html#t", "README.html: link to a missing anchor"),
        ("README.html", "02_b.html#s", "03_c.html", "README.html: broken link: notebooks/03_c"),
        ("index.html", "README", "START", "index.html: broken link: START.html"),
        ("README.html", "_static/x.js", "https://cdn/x.js", "README.html: script or style sheet"),
        ("notebooks/02_b.html", 'href="../notebooks/01_a.html"', "", "02_b.html: the nav"),
        ("notebooks/01_a.html", "../_sources/notebooks/01_a.ipynb", "", "01_a.html: no link to"),
        ("_sources/notebooks/01_a.ipynb", "fig", "fog", "01_a.ipynb is not the committed"),
        ("notebooks/02_b.html", "<img", "<span", "02_b.html: 0 images, its notebook has 1"),
    ],
)
def test_each_defect_is_named(site, file, old, new, problem):
    path = site[0] / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    problems = check_site.check_site(*site)
    assert len(problems) == 1 and problem in problems[0], problems


def test_no_site(tmp_path):
    assert check_site.check_site(tmp_path / "site", []) == [
        f"no site at {tmp_path / 'site'} (run `make site`)"
    ]
