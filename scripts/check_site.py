"""Check the built course site (build/site/, `make site`) as a reader would find it.

    python scripts/check_site.py [SITE]   # exit 1 with one line per problem

Standard library only.  For every HTML page of the site:

* every image (``<img src>``) is a non-empty local file or a ``data:`` URI that decodes to
  something non-empty; scripts and style sheets are local too (the site works offline);
* every link to a local file (``href``, the landing page's redirect) resolves, and its
  ``#fragment`` is an id of the target page;
* the navigation lists the seven notebook pages in the order of notebooks/*.ipynb.

And for each notebook page: it shows at least as many images as its notebook has (figures in
markdown cells, plots in outputs), and its download button links to the committed .ipynb.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")


class Page(HTMLParser):
    """The ids, links, images and main-navigation links of one HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []  # href of <a>, <link>; redirect targets
        self.resources: list[str] = []  # src of <script>, <link rel=stylesheet> href
        self.images: list[str] = []  # src of <img> inside the page's article
        self.all_images: list[str] = []
        self.nav: list[str] = []  # hrefs in the main (left) navigation
        self._open: list[tuple[str, str]] = []  # open elements: (tag, "nav", "article" or "")
        self.feed(text)

    def _inside(self, marker: str) -> bool:
        return any(m == marker for _, m in self._open)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag not in VOID:
            marker = ""
            if tag == "nav" and "bd-docs-nav" in a.get("class", ""):
                marker = "nav"
            elif tag == "article":
                marker = "article"
            self._open.append((tag, marker))
        self._handle(tag, a)

    def handle_startendtag(self, tag, attrs):
        self._handle(tag, {k: v or "" for k, v in attrs})

    def handle_endtag(self, tag):
        # Close up to the innermost open element of this name (HTML allows omitted end tags).
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                break

    def _handle(self, tag, a):
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
            if self._inside("nav"):
                self.nav.append(a["href"])
        elif tag == "link" and "href" in a:
            rel = a.get("rel", "")
            (self.resources if "stylesheet" in rel else self.links).append(a["href"])
        elif tag == "script" and a.get("src"):
            self.resources.append(a["src"])
        elif tag == "img":
            self.all_images.append(a.get("src", ""))
            if self._inside("article"):
                self.images.append(a.get("src", ""))
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            match = re.search(r"url=(.+)", a.get("content", ""), re.I)
            if match:
                self.links.append(match.group(1).strip())


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}


def data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=False)
        except binascii.Error:
            return b""
    return unquote(payload).encode()


def local_target(page: Path, url: str) -> tuple[Path, str] | None:
    """The file and fragment a URL points to, or None for an external or non-file URL."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc:
        return None
    path = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if path.is_dir():
        path = path / "index.html"
    return path, unquote(parts.fragment)


def expected_images(notebook: Path) -> int:
    """Figures in the notebook's markdown cells plus image outputs of its code cells."""
    count = 0
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            count += len(re.findall(r"!\[[^\]]*\]\([^)]+\)", source)) + source.count("<img")
        for output in cell.get("outputs", []):
            count += any(t in output.get("data", {}) for t in IMAGE_TYPES)
    return count


def check_image(page: Path, src: str, site: Path, problems: list[str]) -> None:
    where = page.relative_to(site)
    if src.startswith("data:"):
        if not data_uri_bytes(src):
            problems.append(f"{where}: empty data: image")
        return
    target = local_target(page, src)
    if target is None:
        problems.append(f"{where}: image from the network: {src}")
    elif not target[0].is_file() or target[0].stat().st_size == 0:
        problems.append(f"{where}: missing or empty image: {src}")


def check_links(site: Path, pages: dict[Path, Page], problems: list[str]) -> None:
    ids_of: dict[Path, set[str]] = {path: page.ids for path, page in pages.items()}
    for path, page in pages.items():
        where = path.relative_to(site)
        for src in page.all_images:
            check_image(path, src, site, problems)
        for url in page.resources:
            target = local_target(path, url)
            if target is None:
                problems.append(f"{where}: script or style sheet from the network: {url}")
            elif not target[0].is_file():
                problems.append(f"{where}: missing script or style sheet: {url}")
        for url in page.links:
            target = local_target(path, url)
            if target is None:
                continue
            file, fragment = target
            if not file.is_file():
                problems.append(f"{where}: broken link: {url}")
            elif fragment and file.suffix == ".html":
                if file not in ids_of:
                    ids_of[file] = Page(file.read_text(encoding="utf-8")).ids
                if fragment not in ids_of[file]:
                    problems.append(f"{where}: link to a missing anchor: {url}")


def check_notebook_pages(site: Path, pages: dict[Path, Page], notebooks: list[Path]) -> list[str]:
    problems = []
    order = [f"notebooks/{nb.stem}.html" for nb in notebooks]
    for path, page in pages.items():
        if not page.nav and path.name in ("index.html", "genindex.html", "search.html"):
            continue  # the landing redirect; the index and the search page
        nav = [local_target(path, href) for href in page.nav]
        listed = [t[0].relative_to(site).as_posix() for t in nav if t and t[0].is_relative_to(site)]
        if [p for p in listed if p in order] != order:
            problems.append(f"{path.relative_to(site)}: the navigation does not list {order}")
    for nb in notebooks:
        html = site / "notebooks" / f"{nb.stem}.html"
        if html not in pages:
            problems.append(f"missing notebook page: {html.relative_to(site)}")
            continue
        page, want, where = pages[html], expected_images(nb), html.relative_to(site)
        if len(page.images) < want:
            problems.append(f"{where}: {len(page.images)} images, its notebook has {want}")
        source = site / "_sources" / "notebooks" / nb.name
        if not any(urlsplit(h).path.endswith(f"_sources/notebooks/{nb.name}") for h in page.links):
            problems.append(f"{where}: no link to {nb.name}")
        elif not source.is_file() or source.read_bytes() != nb.read_bytes():
            problems.append(f"{where}: {source.name} is not the committed notebook")
    return problems


def site_pages(site: Path) -> list[Path]:
    """The site's own HTML pages (not those of the theme or of MathJax under _static/)."""
    return [p for p in sorted(site.rglob("*.html")) if p.relative_to(site).parts[0][0] != "_"]


def check_site(site: Path, notebooks: list[Path]) -> list[str]:
    """Every problem found in the site, one line each (empty: the site is fine)."""
    site = site.resolve()
    if not (site / "index.html").is_file():
        return [f"no site at {site} (run `make site`)"]
    pages = {p: Page(p.read_text(encoding="utf-8")) for p in site_pages(site)}
    problems: list[str] = []
    check_links(site, pages, problems)
    problems += check_notebook_pages(site, pages, notebooks)
    return list(dict.fromkeys(problems))  # a link repeated on a page: one line


def main() -> int:
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "site"
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    problems = check_site(site, notebooks)
    for line in problems:
        print(line)
    pages = len(site_pages(site)) if site.is_dir() else 0
    print(f"site check: {len(problems)} problems, {pages} pages, {len(notebooks)} notebooks")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
