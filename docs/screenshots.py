"""Remake the README's screenshots of the HTML report, from the demo, in headless Chromium.

    python docs/screenshots.py [--chromium /usr/bin/chromium] [--driver /usr/bin/chromedriver]

Runs ``dsaudit demo`` into a temporary folder, writes the report the README describes
(``report notmnist@v2 --against notmnist@v1 --max-leakage 0.05 --fail-on conflicts --html``)
and saves two 1100-pixel-wide pictures: the top of the page (docs/report-html.png) and the
pixshift-v1 near pairs across splits (docs/report-html-pairs.png). Needs selenium (the test
extra) and a Chromium with its driver (Debian: chromium, chromium-driver); downloads nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from catalog import api
from catalog.report_render import to_html

DOCS = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--driver", default="/usr/bin/chromedriver")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = api.run_demo(Path(tmp))
        page = Path(tmp) / "report.html"
        report = api.report(
            run.catalog,
            "notmnist@v2",
            against=["notmnist@v1"],
            pictures=True,
            max_leakage=0.05,
            fail_on=["conflicts"],
        )
        page.write_text(to_html(report), encoding="utf-8")
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
            options.add_argument(flag)
        options.binary_location = args.chromium
        driver = webdriver.Chrome(service=Service(args.driver), options=options)
        try:
            driver.set_window_size(1100, 1050)
            driver.get(page.as_uri())
            driver.save_screenshot(str(DOCS / "report-html.png"))
            driver.set_window_size(1100, 720)
            driver.execute_script(
                "const h = Array.from(document.querySelectorAll('h3')).find("
                "e => e.textContent.startsWith('Near pairs across splits: pixshift-v1'));"
                "h.scrollIntoView();"
            )
            driver.save_screenshot(str(DOCS / "report-html-pairs.png"))
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
