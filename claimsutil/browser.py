"""Open the front page in a real browser (headless Chromium) and check what a reader would see.

    python -m claimsutil.browser reports/index.html --screenshot reports/frontpage.png

Checks: every image loaded with a non-zero natural size; every link points at something (a file that exists
for the page's relative links, an element id for `#anchors`); the page prints (a PDF of at least one page,
what "print to PDF" in the browser makes). Writes a screenshot at a laptop's window size. Exit status 1 when
an image or link is broken, 2 when no browser is installed (the message says what to install).

The browser is Debian's `chromium` with its `chromium-driver` (`apt-get install chromium chromium-driver`),
driven through Selenium (the `dev` extra). `make report-check` runs this on the study's front page.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
LAPTOP = (1366, 900)  # window size of the screenshot (a common laptop screen, less the browser's bars)
INSTALL_HINT = "install Debian's chromium and chromium-driver packages: apt-get install chromium chromium-driver"


class BrowserMissing(RuntimeError):
    """No headless Chromium (or its driver) on this machine."""


@dataclass
class PageCheck:
    """What the browser saw on one page."""

    images: list[tuple[str, int, int]]  # src, naturalWidth, naturalHeight
    links: list[str]  # every href as the browser resolved it
    broken_images: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    external_links: list[str] = field(default_factory=list)  # http(s): not followed (the check runs offline)
    tables: int = 0
    pdf_pages: int = 0
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.broken_images and not self.broken_links and self.pdf_pages >= 1


def find_browser() -> tuple[str, str]:
    """(browser binary, chromedriver binary), or BrowserMissing saying what to install."""
    browser = os.environ.get("CHROMIUM") or next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = os.environ.get("CHROMEDRIVER") or next((shutil.which(d) for d in DRIVERS if shutil.which(d)), None)
    if not browser or not driver:
        missing = " and ".join(n for n, p in (("a Chromium browser", browser), ("chromedriver", driver)) if not p)
        raise BrowserMissing(f"no {missing} found on PATH: {INSTALL_HINT}")
    return browser, driver


def _driver(window: tuple[int, int]):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:  # the dev extra is not installed
        raise BrowserMissing(f"selenium is not installed ({e}): pip install -e '.[dev]'") from e
    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    size = f"--window-size={window[0]},{window[1]}"
    for arg in ("--headless=new", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", size,
                "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def _link_problem(href: str, page: Path, ids: set[str]) -> str | None:
    """Why HREF (as the browser resolved it on PAGE) is broken, or None."""
    parts = urlsplit(href)
    if parts.scheme == "file":
        target = Path(unquote(parts.path))
        if not target.exists():
            return f"{href}: no such file"
        if target.resolve() == page.resolve() and parts.fragment and parts.fragment not in ids:
            return f"{href}: no element with id '{parts.fragment}'"
        return None
    if parts.scheme in ("http", "https", "mailto"):
        return None
    return f"{href}: unexpected link scheme '{parts.scheme}'"


def _count_pdf_pages(pdf: bytes) -> int:
    return pdf.count(b"/Type /Page") - pdf.count(b"/Type /Pages") if pdf.startswith(b"%PDF") else 0


def check_page(page: str | Path, screenshot: str | Path | None = None, window: tuple[int, int] = LAPTOP,
               timeout_s: float = 60.0) -> PageCheck:  # fmt: skip
    """Open PAGE (a local HTML file) in headless Chromium, wait for every image, and check images and links;
    print it to PDF; save a SCREENSHOT of the top of the page at WINDOW size."""
    from selenium.webdriver.common.print_page_options import PrintOptions

    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such page (run the study first: make study)")
    driver = _driver(window)
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + timeout_s
        while not driver.execute_script(
            "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
        ):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        script = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth, i.naturalHeight])"
        images = [tuple(x) for x in driver.execute_script(script)]
        links = list(driver.execute_script("return Array.from(document.links).map(a => a.href)"))
        ids = set(driver.execute_script("return Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        tables = int(driver.execute_script("return document.querySelectorAll('table').length"))
        check = PageCheck(images=images, links=links, tables=tables)
        check.broken_images = [src for src, w, h in images if not (w and h)]
        for href in links:
            problem = _link_problem(href, page, ids)
            if problem:
                check.broken_links.append(problem)
            elif urlsplit(href).scheme in ("http", "https"):
                check.external_links.append(href)
        check.pdf_pages = _count_pdf_pages(base64.b64decode(driver.print_page(PrintOptions())))
        if screenshot is not None:
            driver.execute_script("window.scrollTo(0, 0)")
            path = Path(screenshot)
            path.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(path))
            check.screenshot = path
        return check
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("page", nargs="?", default="reports/index.html")
    parser.add_argument("--screenshot", default=None, help="PNG of the top of the page at a laptop's size")
    args = parser.parse_args(argv)
    try:
        check = check_page(args.page, args.screenshot)
    except (BrowserMissing, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.page}: {len(check.images)} images, {len(check.broken_images)} broken; {len(check.links)} links, "
          f"{len(check.broken_links)} broken ({len(check.external_links)} external, not followed); "
          f"{check.tables} tables; printed to {check.pdf_pages} PDF pages")  # fmt: skip
    for problem in check.broken_images:
        print(f"  image not loaded: {problem}")
    for problem in check.broken_links:
        print(f"  broken link: {problem}")
    if check.screenshot:
        print(f"screenshot: {check.screenshot}")
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
