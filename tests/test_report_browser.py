"""The report page in a real browser (issue #21): headless Chromium through chromedriver (Debian's chromium and
chromium-driver packages; `.ci/run` installs them when missing). Skipped, loudly, only where neither exists."""
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fer_bench.report import write_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="NO BROWSER: the report's browser test needs Chromium and chromedriver (apt-get install chromium "
           "chromium-driver); .ci/run installs them when it can.")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1300,2000",
                 "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)   # no driver download: the system's
    yield driver
    driver.quit()


def _open(browser, page: Path, screenshot: Path) -> dict:
    browser.get(page.resolve().as_uri())
    state = browser.execute_script("""
        const images = Array.from(document.images);
        return {broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
                images: images.length,
                tables: Array.from(document.querySelectorAll('section.table-section table')).map(
                    t => t.querySelectorAll('tbody tr, tr').length),
                cells: document.querySelectorAll('#cells tbody tr').length,
                text: document.body.innerText};""")
    # lazy images below the fold: scroll through the page, then ask again
    browser.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager');")
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    state["broken"] = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))).then(
            () => done(Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.getAttribute('src'))));""")
    state["errors"] = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    browser.save_screenshot(str(screenshot))
    return state


def test_a_runs_report_shows_every_table_figure_and_accuracy(tmp_path, browser):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "fer_bench.cli", "run", "--methods", "majority,baseline", "--seeds", "0,1",
                    "--profile", "test", "--dataset", "synthetic:size=32,n_train=240,n_val=60,n_test=90",
                    "--out", str(run), "--device", "cpu"], check=True, capture_output=True, cwd=ROOT, timeout=600)
    page = run / "report.html"
    assert page.is_file()
    state = _open(browser, page, tmp_path / "run_report.png")
    assert state["errors"] == [] and state["broken"] == [] and state["images"] >= 5
    summary = pd.read_csv(run / "summary.csv")
    points = summary[summary["metric"] == "accuracy"]
    assert state["tables"][0] == len(points) + 1                           # header + one row per grid point
    for row in points.itertuples():
        assert f"{100 * row.mean:.2f} ± {100 * row.std:.2f}" in state["text"]
    assert state["cells"] == 4
    assert (tmp_path / "run_report.png").stat().st_size > 10_000


def test_committed_benchmark_and_acceptance_reports_pass_in_the_browser(tmp_path, browser):
    results = tmp_path / "results"
    for name in ("qcs", "acceptance"):
        shutil.copytree(ROOT / "results" / name, results / name)
    bench = write_report(ROOT / "benchmarks" / "qcs.yaml", results)
    state = _open(browser, bench, tmp_path / "qcs_report.png")
    assert state["errors"] == [] and state["broken"] == []
    assert len(state["tables"]) >= 5 and "56.30 ± 5.63 (n=3)*" in state["text"]    # Table 3 with its mark
    run = write_report(results / "acceptance")
    state = _open(browser, run, tmp_path / "acceptance_report.png")
    assert state["errors"] == [] and state["broken"] == [] and state["images"] > 40
    accuracy = pd.read_csv(results / "acceptance" / "summary.csv").query("metric == 'accuracy'")
    for row in accuracy.itertuples():
        assert f"{100 * row.mean:.2f} ± {100 * row.std:.2f}" in state["text"]
