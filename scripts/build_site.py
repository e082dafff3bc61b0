"""Build the course site, build/site/, from README.md and the committed notebooks.

    python scripts/build_site.py                 # -> build/site/index.html (`make site`)
    python scripts/build_site.py --requirements  # print the `site` extra of pyproject.toml

Runs in the site's own environment (`make site` makes .venv-site with the `site` extra only: the
site needs jupyter-book, not torch).  Nothing is executed: each notebook is shown with the outputs
it was committed with.  The sources are staged in build/site-src/ beside the book's configuration
(site/_config.yml, site/_toc.yml), with two changes jupyter-book 1.x needs:

* markdown-cell attachments (``![...](attachment:NAME)``) are written out as files and linked
  (MyST-NB does not render attachments: executablebooks/MyST-NB#492);
* MathJax comes from the jupyter-server-mathjax package, so that formulas render offline.

Every warning of the build is an error.  Each notebook page's download button links to the
notebook itself: the committed .ipynb, copied unchanged.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "build" / "site-src"
OUT = ROOT / "build" / "site"
PAGES = ["README.md", "CONTRIBUTING.md"]


def site_requirements() -> list[str]:
    """The `site` optional dependencies declared in pyproject.toml."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]["site"]


def extract_attachments(nb_path: Path) -> int:
    """Write the markdown-cell attachments of a staged notebook to files and link them."""
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    folder = Path("_attachments") / nb_path.stem
    count = 0
    for cell in nb["cells"]:
        attachments = cell.pop("attachments", None) or {}
        source = "".join(cell["source"])
        for name, bundle in attachments.items():
            mime, data = next(iter(bundle.items()))
            data = "".join(data) if isinstance(data, list) else data
            # Binary images are base64; an SVG may also be stored as its XML text.
            raw = data.encode() if data.lstrip().startswith("<") else base64.b64decode(data)
            target = nb_path.parent / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            source = source.replace(f"attachment:{name}", (folder / name).as_posix())
            count += 1
        cell["source"] = source
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return count


def stage() -> None:
    """Copy the configuration, the pages, the notebooks and their figures to build/site-src/."""
    shutil.rmtree(SRC, ignore_errors=True)
    (SRC / "notebooks").mkdir(parents=True)
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy2(ROOT / "site" / name, SRC / name)
    for name in PAGES:
        shutil.copy2(ROOT / name, SRC / name)
    if (ROOT / "notebooks" / "figures").is_dir():
        shutil.copytree(ROOT / "notebooks" / "figures", SRC / "notebooks" / "figures")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(nb, SRC / "notebooks" / nb.name)
        extract_attachments(SRC / "notebooks" / nb.name)
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or spec.origin is None:
        sys.exit("jupyter-server-mathjax is missing: install the `site` extra (make site)")
    shutil.copytree(Path(spec.origin).parent / "static", SRC / "_mathjax" / "mathjax")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", action="store_true", help="print the `site` extra")
    if parser.parse_args().requirements:
        print("\n".join(site_requirements()))
        return 0
    stage()
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jupyter_book), "build", str(SRC), "--warningiserror", "--keep-going", "--quiet"]
    if subprocess.run(cmd, cwd=ROOT).returncode != 0:
        print("site build failed (every warning counts): see the messages above", file=sys.stderr)
        return 1
    html = SRC / "_build" / "html"
    # The download button serves the notebook as committed, not the staged copy.
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        shutil.copy2(nb, html / "_sources" / "notebooks" / nb.name)
    shutil.rmtree(OUT, ignore_errors=True)
    shutil.copytree(html, OUT)
    print(f"site: {OUT.relative_to(ROOT)}/index.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
