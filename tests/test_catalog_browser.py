"""`modelctl catalog` in a real headless browser: Debian's Chromium driven by Selenium.

The site is served from a local http.server on 127.0.0.1 that records every requested path, so a
request for anything outside the catalog (a CDN, a font, another folder) would show. Screenshots
go to build/catalog-screenshots/ for a human to look at.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from scripts.modelctl.cli import main
from tests.conftest import MANIFESTS, ROOT

CHROMIUM = "/usr/bin/chromium"
# Debian's driver, named explicitly: Selenium Manager would try to download one.
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "build" / "catalog-screenshots"
GRAFANA = "https://grafana.example.com"
REPO = "https://github.com/acme/model-serving"
PHONE_WIDTH = 390


class RecordingServer(ThreadingHTTPServer):
    def __init__(self, directory: Path):
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(SimpleHTTPRequestHandler):
    server: RecordingServer

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.paths.append(unquote(urlsplit(self.path).path))
        super().do_GET()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("catalog") / "site"
    assert main(["--root", str(ROOT), "catalog", "--out", str(out), "--grafana-url", GRAFANA, "--repo-url", REPO]) == 0
    return out


@pytest.fixture(scope="module")
def server(site):
    server = RecordingServer(site)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def driver():
    for tool in (CHROMIUM, CHROMEDRIVER):
        if not Path(tool).is_file():
            pytest.fail(f"{tool} is missing: `apt-get install chromium chromium-driver` (`make test` does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield browser
    browser.quit()


def pages(site: Path) -> list[str]:
    return sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))


def open_page(driver, server, page: str) -> list[dict]:
    """Load `page`; the browser's console entries of this load."""
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(f"{server.url}/{page}")
    driver.execute_script("return document.readyState")
    return driver.get_log("browser")


def test_every_page_loads_without_a_console_error_or_a_request_outside_the_site(site, server, driver):
    expected = {"index.html"} | {f"models/{m.name}.html" for m in MANIFESTS}
    assert set(pages(site)) == expected
    for page in sorted(expected):
        server.paths.clear()
        log = open_page(driver, server, page)
        problems = [entry for entry in log if entry["level"] in ("SEVERE", "WARNING")]
        assert not problems, f"{page}: {problems}"
        # Only this server was asked (a request elsewhere would not even reach it: the Resource
        # Timing list holds every fetch the page made, whatever its host).
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
        for url in resources:
            assert url.startswith(server.url + "/"), f"{page} requested {url}"
        for path in server.paths:
            assert (site / path.lstrip("/")).is_file(), f"{page} requested {path}, which the site lacks"
        assert driver.execute_script("return document.documentElement.lang") == "en"
        for landmark in ("header", "nav", "main"):
            assert driver.find_elements("css selector", landmark), f"{page} lacks <{landmark}>"
        assert driver.find_element("css selector", "a.skip").get_attribute("href").endswith("#main")


def test_every_link_resolves_to_a_file_of_the_site_or_an_external_link_the_catalog_makes(site, server, driver):
    allowed = (f"{GRAFANA}/d/model-serving-", f"{REPO}/commits/main/models/", "mailto:")
    checked = 0
    for page in pages(site):
        open_page(driver, server, page)
        hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]'), a => a.href)")
        for href in hrefs:
            checked += 1
            if href.startswith(server.url + "/"):
                target = site / unquote(urlsplit(href).path).lstrip("/")
                assert target.is_file(), f"{page}: {href} is not in the site"
            else:
                assert href.startswith(allowed), f"{page}: unexpected external link {href}"
    # Each model page links its dashboard and its manifest's history.
    for manifest in MANIFESTS:
        text = (site / "models" / f"{manifest.name}.html").read_text()
        assert f'href="{GRAFANA}/d/model-serving-{manifest.name}"' in text
        assert f'href="{REPO}/commits/main/models/{manifest.name}.yaml"' in text
    assert checked > 20


def test_the_filter_shows_the_rows_matching_name_or_owner(server, driver):
    from selenium.webdriver.common.by import By

    open_page(driver, server, "index.html")

    def visible() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#models tbody tr")
        return [row.find_element(By.CSS_SELECTOR, "th").text for row in rows if row.is_displayed()]

    assert visible() == sorted(m.name for m in MANIFESTS)
    box = driver.find_element(By.ID, "filter")
    box.send_keys("iris")
    assert visible() == ["iris"]
    box.clear()
    box.send_keys("PRICING")  # an owner, typed in capitals
    assert visible() == ["taxi-fare"]
    assert driver.find_element(By.ID, "filter-count").text == f"1 of {len(MANIFESTS)} models shown"
    box.clear()
    box.send_keys("nothing-like-this")
    assert visible() == []
    box.clear()
    box.send_keys(" ")
    assert len(visible()) == len(MANIFESTS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    box.clear()
    driver.save_screenshot(str(SCREENSHOTS / "index.png"))


def test_each_chart_has_one_point_per_version(server, driver):
    from selenium.webdriver.common.by import By

    for manifest in MANIFESTS:
        open_page(driver, server, f"models/{manifest.name}.html")
        charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
        metrics = {name for version in manifest.versions.values() for name in version.metrics}
        assert len(charts) == len(metrics)
        for chart in charts:
            assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) == len(manifest.versions)
            assert chart.get_attribute("role") == "img"
            assert chart.find_element(By.CSS_SELECTOR, "title").get_attribute("textContent")
            assert chart.find_element(By.CSS_SELECTOR, "desc").get_attribute("textContent")


def test_screenshots_of_a_model_page_on_a_desktop_and_on_a_phone(server, driver):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        for name, width in (("iris-desktop", 1280), ("iris-phone", PHONE_WIDTH)):
            driver.set_window_size(width, 900)
            open_page(driver, server, "models/iris.html")
            # Readable on a phone: nothing wider than the viewport but the scrollable table and code boxes.
            overflow = driver.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{name}: the page is {overflow}px wider than the viewport"
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(height + 150, 6000))
            driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        driver.set_window_size(PHONE_WIDTH, 900)
        open_page(driver, server, "index.html")
        driver.save_screenshot(str(SCREENSHOTS / "index-phone.png"))
    finally:
        driver.set_window_size(1280, 900)
    assert (SCREENSHOTS / "iris-phone.png").stat().st_size > 1000
