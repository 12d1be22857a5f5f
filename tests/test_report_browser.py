"""The HTML report in a real browser: headless Chromium loads the file, with no network.

Checks: no console message of level SEVERE, every <img> decoded (``complete`` and a natural
width), the sorting script runs, hostile labels stay text, and a screenshot can be taken.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
Python's selenium (the test extra). Skipped when they are missing, except under ``CI=true``,
where a missing browser is a failure: CI must prove the page works.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from catalog import api
from catalog.demo import DemoRun
from catalog.report_render import to_html
from tests.test_report import _hostile_catalog

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None
)
# Flags that keep Chromium from reaching for the network (updates, sync, metrics, QUIC probes).
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--window-size=1280,1600",
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Python's selenium is not installed (pip install '.[test]')"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "headless Chromium is not installed (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must test the HTML report in a browser, but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager never runs, so nothing is downloaded.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _load(browser: Any, page: Path) -> dict[str, int]:
    browser.get(page.as_uri())
    browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
        ".then(() => done(true));"
    )
    counts: dict[str, int] = browser.execute_script(
        "const images = Array.from(document.images);"
        "return {images: images.length,"
        " decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,"
        " scripts: document.scripts.length};"
    )
    return counts


def _severe(browser: Any) -> list[dict[str, Any]]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_demo_report_opens_with_its_pictures(
    browser: Any, demo_run: DemoRun, tmp_path: Path
) -> None:
    page = tmp_path / "report.html"
    report = api.report(
        str(demo_run.catalog), "notmnist@v2", against=["notmnist@v1"], pictures=True
    )
    page.write_text(to_html(report), encoding="utf-8")
    counts = _load(browser, page)
    assert counts["images"] >= 50 and counts["decoded"] == counts["images"], counts
    assert browser.title == "dsaudit report: notmnist@v2"
    # The sorting script works: sort the splits table by items, largest first after two clicks.
    header = browser.find_element("xpath", "//section[@id='summary']//table[2]//th[2]")
    header.click()
    header.click()
    first = browser.find_element("xpath", "//section[@id='summary']//table[2]/tbody/tr[1]/td[1]")
    assert first.text == "notmnist@v2:train"
    assert _severe(browser) == []
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_hostile_labels_stay_text_in_the_browser(browser: Any, tmp_path: Path) -> None:
    db, _path = _hostile_catalog(tmp_path)
    page = tmp_path / "hostile.html"
    page.write_text(to_html(api.report(db, "h<i>", pictures=True)), encoding="utf-8")
    counts = _load(browser, page)  # an alert() would interrupt this with an exception
    assert counts["scripts"] == 1 and counts["decoded"] == counts["images"] > 0
    body = browser.find_element("tag name", "body").text
    assert '<script>alert("x")</script>' in body  # shown as text, not run
    assert _severe(browser) == []
