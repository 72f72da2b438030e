"""The Compress view: build a pipeline, launch it as a background job, watch its variants arrive as one table and one
plot; through AppTest and in a real browser at a projector's and a laptop's size."""

import os
import re
import sys
import time

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")
from browser import ARGS, CHROMIUM, free_port, need_browser, start_server, stop_server  # noqa: E402
from conftest import ARTIFACTS, ROOT, kdw  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from workbench.store.runs import RunStore  # noqa: E402

TIMEOUT = 120


def _cnn_run(runs_dir):
    """A digits CNN distilled from the shipped teacher, with its scratch twin (a reference on the plot)."""
    kdw("distill", "--dataset", "digits", "--teacher", "digits-cnn", "--model", "cnn", "--depth", "2", "--width", "16",
        "--epochs", "3", "--batch-size", "64", "--no-profile", "--runs-dir", str(runs_dir))
    return next(r for r in RunStore(runs_dir).list() if r.config["kind"] == "kd")


def _wait_variants(run, names, timeout: float = 400) -> dict:
    """Poll until every named variant is done (a failure or the deadline ends it); returns them by name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {v["name"]: v for v in run.variants()}
        if any(v["state"] == "failed" for v in found.values()):
            break
        if all(found.get(n, {}).get("state") == "done" for n in names):
            return found
        time.sleep(0.5)
    raise AssertionError([(v["name"], v["state"], v["error"]) for v in run.variants()])


def test_the_compress_view_says_what_to_do_without_a_run(runs_dir):
    at = AppTest.from_string("from workbench.app.compress import page\npage()", default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "No finished run yet" in at.info[0].value


@pytest.mark.slow
def test_the_compress_view_launches_a_pipeline_and_shows_every_step(runs_dir):
    run = _cnn_run(runs_dir)
    at = AppTest.from_string("from workbench.app.compress import page\npage()", default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    assert "`prune:0.5` → `heal:kd` → `ptq:int8` → `qat:int8` → `qad:int8`" in at.markdown[0].value  # the defaults
    at.selectbox(key="cz_heal").select("none").run()
    at.multiselect(key="cz_quant").set_value(["ptq", "qad"]).run()
    at.number_input(key="cz_epochs").set_value(1).run()
    assert "`prune:0.5` → `ptq:int8` → `qad:int8`" in at.markdown[0].value
    at.button(key="cz_go").click().run()
    assert not at.exception and not at.error
    _wait_variants(run, ["onnx-fp32", "prune50", "prune50+ptq-int8", "prune50+qad-int8"])
    at.run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["onnx-fp32", "prune50", "prune50+ptq-int8", "prune50+qad-int8"]
    assert list(table["artifact"])[-1] == "pruned 50% · QAD int8"
    assert table["trained = deployed %"].iloc[-1] >= 99 and table["MB"].iloc[-1] < 0.5 * table["MB"].iloc[0]
    assert len(at.get("plotly_chart")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("width, height", [(1400, 900), (1024, 768)])
def test_the_compress_view_in_a_browser(runs_dir, tmp_path, width, height):
    """Build a pipeline with the controls, launch it, and see its table and plot; nothing clipped at either size."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright
    from test_browser import CLIPPED_JS

    run = _cnn_run(runs_dir)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ, KDW_RUNS_DIR=str(runs_dir), PYTHONUNBUFFERED="1")
    url = f"http://127.0.0.1:{port}"
    proc = start_server([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
                         "--server.port", str(port), "--server.address", "127.0.0.1",
                         "--browser.gatherUsageStats", "false"], url + "/_stcore/health", tmp_path / "streamlit.log",
                        env, ROOT, timeout=180, ok=lambda body: body == b"ok")
    try:
        expect.set_options(timeout=400_000)  # polls; generous on a busy machine
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(180_000)
            page.goto(url + "/compress")
            expect(page.get_by_role("heading", name="Compress")).to_be_visible()
            expect(page.get_by_text(re.compile("^No compressed variants of this run yet"))).to_be_visible()
            box = page.get_by_label("Epochs", exact=True)
            box.fill("1")
            box.press("Enter")
            page.get_by_label("Heal", exact=True).click()
            page.get_by_role("option", name="from the labels (CE)", exact=True).click()
            expect(page.get_by_text("heal:ce", exact=True)).to_be_visible()
            page.get_by_role("button", name="Compress", exact=True).click()
            expect(page.locator('[data-testid="stProgress"]').first).to_be_visible()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            _wait_variants(run, ["prune50+heal-ce+qad-int8"])
            expect(page.locator('[data-testid="stProgress"]')).to_have_count(0)
            page.wait_for_timeout(2500)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / f"compress-{width}.png"), full_page=True)
            problems = page.evaluate(CLIPPED_JS)
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / f"compress-plot-{width}.png"))
            if width == 1400:  # issue 37, item 12: the Compress fields and the Deploy panel's survive a page switch
                page.get_by_role("link", name="Compare").click()
                expect(page.get_by_role("heading", name="Compare")).to_be_visible()
                deploy_int8 = page.get_by_label("int8", exact=True)
                deploy_int8.scroll_into_view_if_needed()
                deploy_int8.uncheck(force=True)
                page.wait_for_timeout(1500)
                page.get_by_role("link", name="Compress").click()
                expect(page.get_by_role("heading", name="Compress")).to_be_visible()
                page.wait_for_timeout(1500)
                assert page.get_by_label("Epochs", exact=True).input_value() == "1", "Compress after a page switch"
                expect(page.get_by_text("heal:ce", exact=True)).to_be_visible()
                page.get_by_role("link", name="Compare").click()
                expect(page.get_by_role("heading", name="Compare")).to_be_visible()
                page.wait_for_timeout(1500)
                assert not page.get_by_label("int8", exact=True).is_checked(), "the Deploy panel after a page switch"
            browser.close()
    finally:
        stop_server(proc)
    assert not problems, problems
