"""The page in real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

`scripts/setup.sh` installs the browser where it may (root, apt-get); nothing is downloaded
at run time. Each test starts `prom3e serve` on a free loopback port, loads the page, submits
a query, reads the answers from the DOM and saves a screenshot in the test's tmp folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="prom3e serve needs the 'serve' extra (fastapi, uvicorn, httpx)")
selenium = pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[dev]')")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from prom3e.perf.serve import running_server  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium + chromium-driver are not installed "
                       "(scripts/setup.sh installs them where it runs as root with apt-get)"),
]


@pytest.fixture
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager: never download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1400", "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _ask(driver) -> str:
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "answers").get_attribute("data-ready"))
    return driver.find_element(By.ID, "answers").get_attribute("data-ready")


def _bars(driver, box: str) -> list[tuple[str, str]]:
    return [(b.find_element(By.CLASS_NAME, "name").text, b.find_element(By.CLASS_NAME, "val").text)
            for b in driver.find_elements(By.CSS_SELECTOR, f"#{box} .bar")]


def _screenshot(driver, path) -> None:
    """The whole page (beyond the viewport), through the DevTools protocol."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 20_000  # a rendered page, not a blank one
    print(f"screenshot: {path}")


def test_page_answers_an_example_query(browser, tiny_run, small_parquet, tmp_path):
    args = ["--model", str(tiny_run), "--gallery", str(small_parquet), "--prototypes", str(small_parquet),
            "--examples", str(small_parquet), "--precision", "fp32", "--threads", "1"]
    with running_server(args) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "query").get_attribute("data-ready") == "1")
        assert "prom3e" in browser.title
        banner = browser.find_element(By.ID, "banner").text
        assert "stage-1 encoders" in banner  # this run records no encoder: the page says so
        Select(browser.find_element(By.ID, "example")).select_by_value("3")
        WebDriverWait(browser, 30).until(lambda d: "true label" in d.find_element(By.ID, "example-note").text)
        checked = [c.get_attribute("id")[4:] for c in browser.find_elements(By.CSS_SELECTOR, "#modalities input")
                   if c.get_attribute("type") == "checkbox" and c.is_selected()]
        assert checked  # the example's modalities are now visible
        assert _ask(browser) == "ok", browser.find_element(By.ID, "status").text

        species = _bars(browser, "species")
        example = json.loads(urllib.request.urlopen(url + "/examples/3", timeout=30).read())
        row = {m: v for m, v in example["values"].items() if v is not None and m in checked}
        api = _post(url + "/classify", {"rows": [row], "k": 5})["results"][0]["labels"]
        assert [s[0] for s in species] == [lab["label"] for lab in api]
        assert species[0][1] == f"{100 * api[0]['probability']:.1f}%"
        sigma = _bars(browser, "sigma")
        assert 0 < len(sigma) <= 12 and all(float(v) > 0 for _, v in sigma)
        nxt = browser.find_element(By.CSS_SELECTOR, "#next .next-pick strong").text
        assert nxt and nxt not in checked
        items = browser.find_elements(By.CSS_SELECTOR, "#items table.items tbody tr")
        assert len(items) == 8
        _screenshot(browser, tmp_path / "page.png")


def test_page_with_only_the_model_says_what_is_missing(browser, tiny_run, tmp_path):
    with running_server(["--model", str(tiny_run), "--threads", "1"]) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "query").get_attribute("data-ready") == "1")
        assert not browser.find_element(By.ID, "example-row").is_displayed()
        card = browser.find_element(By.ID, "vis-image").find_element(By.XPATH, "../..")
        card.find_element(By.TAG_NAME, "summary").click()
        card.find_element(By.TAG_NAME, "textarea").send_keys(json.dumps([0.25] * 16))
        assert browser.find_element(By.ID, "vis-image").is_selected()
        assert _ask(browser) == "ok"
        assert "--prototypes" in browser.find_element(By.ID, "species").text
        assert "--gallery" in browser.find_element(By.ID, "items").text
        assert _bars(browser, "sigma") and browser.find_element(By.CSS_SELECTOR, "#next .next-pick strong").text
        _screenshot(browser, tmp_path / "page-model-only.png")


def test_page_takes_coordinates_from_the_map_and_text(browser, raw_chain, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains

    args = ["--model", str(raw_chain / "run"), "--aligner", str(raw_chain / "align"), "--prototypes",
            str(raw_chain / "aligned.parquet"), "--gallery", str(raw_chain / "aligned.parquet"),
            "--precision", "fp32", "--threads", "1"]
    with running_server(args) as url:
        browser.get(url + "/")
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "query").get_attribute("data-ready") == "1")
        assert "not" not in (browser.find_element(By.ID, "map").get_attribute("class") or "")
        assert "Click the map to set 'loc'" in browser.find_element(By.ID, "map-note").text
        # click the map where (lat 37, lon −122) is drawn (offsets from the element's centre)
        m = browser.find_element(By.ID, "map")
        w, h = m.size["width"], m.size["height"]
        lat, lon = 37.0, -122.0
        ActionChains(browser).move_to_element_with_offset(
            m, int((lon + 180) / 360 * w - w / 2), int((90 - lat) / 180 * h - h / 2)).click().perform()
        got_lat = float(browser.find_element(By.CSS_SELECTOR, "input[aria-label=latitude]").get_attribute("value"))
        got_lon = float(browser.find_element(By.CSS_SELECTOR, "input[aria-label=longitude]").get_attribute("value"))
        assert abs(got_lat - lat) < 2 and abs(got_lon - lon) < 2
        assert browser.find_element(By.ID, "vis-loc").is_selected()
        assert browser.find_element(By.ID, "marker").get_attribute("hidden") is None
        browser.find_element(By.CSS_SELECTOR, "input[aria-label='text text']").send_keys("Rosa californica")
        assert browser.find_element(By.ID, "vis-text").is_selected()
        assert _ask(browser) == "ok", browser.find_element(By.ID, "status").text
        species = _bars(browser, "species")
        api = _post(url + "/classify", {"rows": [{"loc": [got_lat, got_lon], "text": "Rosa californica"}],
                                         "k": 5})["results"][0]["labels"]
        assert len(species) == 4 and [s[0] for s in species] == [lab["label"] for lab in api]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#items table.items tbody tr")) == 8
        _screenshot(browser, tmp_path / "page-raw.png")
