"""The leaderboard page in a real headless Chromium (Debian's chromium + chromium-driver, via Selenium)."""
from __future__ import annotations

import copy
import csv
import os
from pathlib import Path

import pytest

from kdbench.report import build_leaderboard
from tests.conftest import write_records
from tests.helpers import relabel

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRED = os.environ.get("KDBENCH_REQUIRE_BROWSER") == "1"  # set by .ci/run: a missing browser fails there

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    if REQUIRED:
        raise RuntimeError("KDBENCH_REQUIRE_BROWSER=1 but /usr/bin/chromium or /usr/bin/chromedriver is missing "
                           "(apt-get install chromium chromium-driver)")
    pytest.skip("Chromium not installed (Debian packages chromium, chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")


@pytest.fixture(scope="module")
def page(real_records, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    recs = copy.deepcopy(real_records)
    recs[0]["note"] = "<script>window.__pwned = 1</script>"
    # a second dataset, so filtering has something to hide
    for r in real_records:
        recs.append(relabel(r, dataset="cifar10-jpg", pair="cifar10/resnet56-resnet20"))
    root = write_records(tmp / "results", recs)
    out = tmp / "leaderboard"
    build_leaderboard(root, out)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp / 'profile'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        driver.get((out / "index.html").as_uri())
        yield driver, out
    finally:
        driver.quit()


def _visible_rows(driver, table_id):
    from selenium.webdriver.common.by import By

    return [r for r in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr") if r.is_displayed()]


@pytest.mark.slow
def test_page_loads_without_console_errors(page):
    driver, _ = page
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    assert driver.title == "kdbench leaderboard"


def test_sorting_by_a_column_reorders_rows(page):
    from selenium.webdriver.common.by import By

    driver, _ = page
    header = driver.find_element(By.XPATH, "//table[@id='runs']//th[text()='top-1']")
    header.click()
    vals = [float(r.find_elements(By.TAG_NAME, "td")[6].text) for r in _visible_rows(driver, "runs")]
    assert vals == sorted(vals)
    header.click()
    vals = [float(r.find_elements(By.TAG_NAME, "td")[6].text) for r in _visible_rows(driver, "runs")]
    assert vals == sorted(vals, reverse=True)


def test_filtering_by_dataset_hides_the_others(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, _ = page
    total = len(_visible_rows(driver, "runs"))
    Select(driver.find_element(By.NAME, "dataset")).select_by_value("digits")
    rows = _visible_rows(driver, "runs")
    assert 0 < len(rows) < total
    assert all(r.find_elements(By.TAG_NAME, "td")[1].text == "digits" for r in rows)
    sections = driver.find_elements(By.CSS_SELECTOR, "section[data-dataset='cifar10-jpg']")
    assert sections and not any(s.is_displayed() for s in sections)
    Select(driver.find_element(By.NAME, "dataset")).select_by_value("")
    assert len(_visible_rows(driver, "runs")) == total


def test_cell_values_equal_the_csv(page):
    from selenium.webdriver.common.by import By

    driver, out = page
    with open(out / "benchmark.csv") as f:
        bench = list(csv.DictReader(f))
    digits = [r for r in bench if r["setting"].startswith("digits")]
    table = driver.find_element(By.CSS_SELECTOR, "table[id^='benchmark-digits']")
    html_rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                 for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    csv_rows = [[r["method"], r["digits/cnn_wide-cnn_small"]] for r in digits]
    assert html_rows == csv_rows


def test_record_text_is_shown_as_text_not_run(page):
    driver, _ = page
    assert driver.execute_script("return window.__pwned === undefined")
    assert "<script>window.__pwned = 1</script>" in driver.page_source.replace("&lt;", "<").replace("&gt;", ">")
