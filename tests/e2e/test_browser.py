"""The built site in a real browser (Debian's chromium through Playwright): mind map, offline
search, rendered MathML, the BibTeX block, and no console errors or failed requests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("Debian chromium not installed: apt-get install chromium")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build the site once (strict) and serve it on 127.0.0.1 with http.server."""
    _chromium()
    site = tmp_path_factory.mktemp("browser") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def browser(site_url: str) -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


class Watched:
    """A page plus every console error, page error and failed request seen on it."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        # A request the browser aborts because the test navigated away (ERR_ABORTED) is not a
        # broken resource; a missing one shows up as an HTTP status >= 400 below.
        self.page.on(
            "requestfailed",
            lambda r: (
                "ERR_ABORTED" not in (r.failure or "")
                and self.problems.append(f"failed: {r.url} {r.failure}")
            ),
        )
        self.page.on(
            "response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}")
        )

    def open(self, url: str) -> Any:
        self.page.goto(url, wait_until="networkidle")
        return self.page


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    handle = Watched(browser)
    yield handle
    handle.page.close()
    assert handle.problems == []


def test_home_page_shows_the_mind_map(watched: Watched, site_url: str) -> None:
    page = watched.open(site_url)
    svg = page.locator("svg.kd-mindmap-svg")
    assert svg.count() == 1
    box = svg.bounding_box()
    assert box is not None and box["width"] > 400 and box["height"] > 200
    entries = page.locator("svg.kd-mindmap-svg a.kd-mm-entry")
    assert entries.count() >= 1
    assert page.locator('svg.kd-mindmap-svg a[data-entry="forward-kl"]').count() == 1
    page.locator('svg.kd-mindmap-svg a[data-entry="forward-kl"]').click()
    page.wait_for_url("**/entries/forward-kl/")


def test_search_finds_a_method_offline(watched: Watched, site_url: str) -> None:
    page = watched.open(site_url)
    box = page.locator("input.md-search__input")
    box.click()
    box.press_sequentially("forward", delay=40)  # Material listens to key events, not to fill()
    result = page.locator('.md-search-result__link[href*="entries/forward-kl/"]')
    result.first.wait_for(state="attached", timeout=15_000)
    assert result.count() >= 1


def test_method_page_renders_math_and_bibtex(watched: Watched, site_url: str) -> None:
    page = watched.open(site_url + "entries/forward-kl/")
    math = page.locator(".kd-math math").first
    box = math.bounding_box()
    assert box is not None and box["width"] > 50 and box["height"] > 10
    bibtex = page.locator("details:has(summary:text('BibTeX')) code")
    assert bibtex.first.is_visible()
    assert "@" in bibtex.first.inner_text()
    assert page.locator(".tabbed-set").first.is_visible()  # the Run it tabs
    edit = page.locator("a.md-content__button[href*='taxonomy/white-box/logits/forward-kl.yaml']")
    assert edit.count() == 1


def test_catalogue_filters_rows_and_keeps_them_in_the_address(watched: Watched, site_url: str) -> None:
    page = watched.open(site_url + "catalogue/")
    rows = page.locator(".kd-catalogue tbody tr")
    total = rows.count()
    assert total > 50
    page.select_option("select[data-filter='status']", "implemented")
    visible = page.locator(".kd-catalogue tbody tr:not([hidden])")
    implemented = visible.count()
    assert 0 < implemented < total
    assert all(row.get_attribute("data-status") == "implemented" for row in visible.all())
    assert page.locator(".kd-count").inner_text() == f"{implemented} of {total} entries"
    assert "status=implemented" in page.url
    page.select_option("select[data-filter='tag']", "mode-seeking")
    assert 0 < visible.count() < implemented
    # A shared link restores the filters.
    page.goto(site_url + "catalogue/?branch=black-box&status=planned", wait_until="networkidle")
    shown = page.locator(".kd-catalogue tbody tr:not([hidden])")
    assert shown.count() > 0
    assert all(row.get_attribute("data-branch").startswith("black-box/") for row in shown.all())
    shown.first.locator("a").click()
    page.wait_for_url("**/entries/**")


def test_statistics_page_draws_the_timeline(watched: Watched, site_url: str) -> None:
    page = watched.open(site_url + "statistics/")
    svg = page.locator("svg.kd-timeline")
    box = svg.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 100
    assert svg.locator("rect").count() >= 5
