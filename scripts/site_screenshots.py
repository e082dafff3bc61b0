"""Screenshots of the course site's notebook pages in headless Chromium -> build/site-screenshots/.

    python scripts/site_screenshots.py  # after `make site`; needs chromium (apt install chromium)

For each notebook page: its top (``NN_name-top.png``, 1280 x 4000 px) and each of its images
near the top of the window (``NN_name-img1.png``, ... 1280 x 1600 px), so that a reader can see
every figure and plot as a browser shows it, formulas typeset by MathJax included.  Headless
Chromium's screenshot does not follow a scroll, so for the image shots a copy of the page drops
the article's content above the cell or paragraph that holds the image.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "site"
OUT = ROOT / "build" / "site-screenshots"
# Where an image's context starts: its notebook cell (not cell_input/cell_output), its paragraph.
HOLDERS = ['<div class="cell ', "<section", "<p>", "<figure"]
BROWSERS = ["chromium", "chromium-browser", "google-chrome"]


def screenshot(browser: str, url: str, png: Path, height: int) -> None:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += ["--virtual-time-budget=8000", f"--window-size=1280,{height}"]
    cmd += [f"--screenshot={png}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not png.is_file():
        raise RuntimeError(f"no screenshot of {url}")


def main() -> int:
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("no Chromium found: apt-get install chromium", file=sys.stderr)
        return 1
    if not (SITE / "index.html").is_file():
        print("no site: run `make site` first", file=sys.stderr)
        return 1
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(SITE, site)
        for page in sorted((site / "notebooks").glob("*.html")):
            html = page.read_text(encoding="utf-8")
            screenshot(browser, page.as_uri(), OUT / f"{page.stem}-top.png", 4000)
            article = html.index(">", html.index("<article")) + 1
            images = [m.start() for m in re.finditer(r"<img ", html)]
            for k, start in enumerate(images, 1):
                cut = max(html.rfind(tag, article, start) for tag in HOLDERS)
                shot = page.with_name(f"{page.stem}-img{k}.html")
                shot.write_text(html[:article] + html[max(cut, article) :], encoding="utf-8")
                screenshot(browser, shot.as_uri(), OUT / f"{page.stem}-img{k}.png", 1600)
            print(f"{page.stem}: top and {len(images)} images")
    print(f"screenshots: {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
