"""A real browser: `streamlit run app.py` driven by Debian's Chromium through Playwright.

It launches a tiny digits run from the Train page, sees its curve appear, opens Compare,
exports the report, and saves a screenshot of each page into tests/artifacts/.
Without Chromium the test is skipped, except under CI (CI=true), where that is a failure.
"""

import os
import sys

import pytest

from browser import ARGS, CHROMIUM, free_port, need_browser, start_server, stop_server
from conftest import ARTIFACTS, ROOT, kdw

pytestmark = pytest.mark.slow


@pytest.fixture
def server(runs_dir, tmp_path):
    need_browser()
    port = free_port()
    env = dict(os.environ, KDW_RUNS_DIR=str(runs_dir), PYTHONUNBUFFERED="1")
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                         "true", "--server.port", str(port), "--server.address", "127.0.0.1",
                         "--browser.gatherUsageStats", "false"], url + "/_stcore/health", tmp_path / "streamlit.log",
                        env, ROOT, timeout=60, ok=lambda body: body == b"ok")
    yield url
    stop_server(proc)


def _select(page, label: str, option: str):
    box = page.get_by_label(label, exact=True)
    box.click()
    page.get_by_role("option", name=option, exact=True).click()


def _set_number(page, label: str, value):
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def test_browser_launch_watch_compare_and_export(server, runs_dir):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    # a small sweep, so that the Sweep page has something real to show
    kdw("sweep", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "32", "--epochs", "10",
        "--batch-size", "64", "--temperatures", "1", "4", "--alphas", "0.5", "0.9", "--seeds", "2",
        "--labels", "200", "--no-profile", "--runs-dir", str(runs_dir))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900}, accept_downloads=True)
        page.set_default_timeout(60_000)

        page.goto(server + "/")  # the default page lives at the root
        expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "dark-knowledge.png"), full_page=True)

        page.goto(server + "/train")
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        _select(page, "Data set", "digits")
        page.wait_for_timeout(500)
        _set_number(page, "Width", 16)
        _set_number(page, "Epochs", 3)
        _select(page, "Batch size", "32")
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Launch").click()
        expect(page.get_by_text("Finished.", exact=False)).to_be_visible(timeout=180_000)
        curves = page.locator(".js-plotly-plot")
        expect(curves.last).to_be_visible()
        assert page.get_by_text("validation accuracy").count() >= 1  # the live curve's panel
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

        page.goto(server + "/compare")
        expect(page.get_by_role("heading", name="Compare")).to_be_visible()
        expect(page.get_by_text("Export report")).to_be_visible()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)
        with page.expect_download(timeout=120_000) as dl:
            page.get_by_role("button", name="Export report").click()
        report = ARTIFACTS / "report.html"
        dl.value.save_as(str(report))
        text = report.read_text(encoding="utf-8")
        assert "KD Workbench report" in text and "Environment" in text and "torch" in text
        assert "<script src=" not in text and len(text) > 1_000_000  # plotly.js is inside: opens offline

        page.goto(server + "/sweep")
        expect(page.get_by_role("heading", name="Sweep")).to_be_visible()
        expect(page.locator(".js-plotly-plot").first).to_be_visible()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "sweep.png"), full_page=True)

        offline = browser.new_page()  # the exported report renders with no server at all
        offline.goto(report.as_uri())
        expect(offline.locator(".js-plotly-plot").first).to_be_visible()
        browser.close()
