"""A real browser: `streamlit run app.py` driven by Debian's Chromium through Playwright.

It launches a tiny digits run from the Train page, sees its curve appear, opens Compare,
exports the report, and saves a screenshot of each page into tests/artifacts/.
Without Chromium the test is skipped, except under CI (CI=true), where that is a failure.
"""

import contextlib
import os
import re
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
                        env, ROOT, timeout=180, ok=lambda body: body == b"ok")
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
    expect.set_options(timeout=180_000)  # polls; generous on a busy machine
    # a small sweep, so that the Sweep page has something real to show
    kdw("sweep", "--engine", "local", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "32", "--epochs", "10",
        "--batch-size", "64", "--temperatures", "1", "4", "--alphas", "0.5", "0.9", "--seeds", "2",
        "--labels", "200", "--no-profile", "--runs-dir", str(runs_dir))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1900}, accept_downloads=True)
        page.set_default_timeout(180_000)

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
        button = page.get_by_role("button", name="Launch")
        button.scroll_into_view_if_needed()
        button.click()
        card = page.locator(".st-key-tr_launch_card")  # the press shows its job where the eye is: under the button
        expect(card).to_be_visible()
        expect(card).to_contain_text("Launched · ")
        b, c = button.bounding_box(), card.bounding_box()
        assert 0 <= c["y"] - (b["y"] + b["height"]) < 150 and abs(c["x"] - b["x"]) < 40, (b, c)
        assert c["y"] + 40 < page.viewport_size["height"] or page.evaluate("window.scrollY") >= 0
        expect(page.get_by_text("run finished: test accuracy", exact=False).first).to_be_visible(timeout=180_000)
        expect(card).to_contain_text("% test accuracy")
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
        _finished_search(runs_dir)  # the Search mode, with a finished search to show
        page.get_by_text("search", exact=True).click()
        expect(page.get_by_text("Best on validation", exact=False)).to_be_visible()
        expect(page.locator(".js-plotly-plot").nth(2)).to_be_visible()
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "search.png"), full_page=True)

        offline = browser.new_page()  # the exported report renders with no server at all
        offline.goto(report.as_uri())
        expect(offline.locator(".js-plotly-plot").first).to_be_visible()
        browser.close()


def _open_page(page, name: str) -> None:
    """Click a page's link in the top navigation, through its "N more" menu where the bar is too narrow for all."""
    link = page.get_by_role("link", name=name, exact=True).first
    if not link.is_visible():
        page.get_by_text(re.compile(r"^\d+ more$")).first.click()
        link = page.get_by_role("menuitem", name=name, exact=True).first
    link.click()


def _presenting_pass(page, server, width, problems) -> None:
    """Issue 22, item 6: every page in presentation mode at a projector's size, the sidebar open (a narrow main
    column) and closed: no clipped text or plot part, no metrics running together, no ticks on top of each other,
    and on Dark knowledge the T slider on screen together with its bars."""
    from playwright.sync_api import expect

    page.goto(server + "/dark-knowledge?dataset=digits&image=17&T=6")
    expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    page.wait_for_timeout(1500)
    page.locator('[data-testid="stExpandSidebarButton"], [data-testid="stSidebarCollapsedControl"] button').first.click()
    expect(page.locator('[data-testid="stSidebar"][data-collapsed="false"]')).to_have_count(1)
    page.get_by_text("Presentation mode", exact=True).first.click()
    page.wait_for_timeout(2500)
    for sidebar in ("open", "closed"):
        if sidebar == "closed":
            page.locator('[data-testid="stSidebar"]').hover()  # its close button shows under the pointer
            page.locator('[data-testid="stSidebarCollapseButton"] button').first.click()
            expect(page.locator('[data-testid="stSidebar"][data-collapsed="false"]')).to_have_count(0)
        for heading, mode in [("Dark knowledge", None), ("Train", None), ("Compare", None), ("Sweep", None),
                              ("Sweep", "search")]:
            if mode is None:
                _open_page(page, heading)
                expect(page.get_by_role("heading", name=heading)).to_be_visible()
            else:
                page.get_by_text(mode, exact=True).click()
                expect(page.get_by_text("Best on validation", exact=False)).to_be_visible()
            if heading != "Train":
                expect(page.locator(".js-plotly-plot").first).to_be_visible()
            page.wait_for_timeout(2500)
            where = f"presenting, sidebar {sidebar}: {heading}{' (' + mode + ')' if mode else ''}"
            assert page.locator('[data-testid="stException"]').count() == 0, where
            assert page.get_by_role("switch", name="Presentation mode").is_checked(), where  # on through the page switches
            name = f"presenting-{heading.lower().replace(' ', '-')}{'-' + mode if mode else ''}-{sidebar}-{width}"
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            found = page.evaluate(CLIPPED_JS)
            if found:
                problems[where] = found
            if heading == "Dark knowledge":
                slider = page.get_by_role("slider").first
                slider.scroll_into_view_if_needed()
                bars = page.locator(".js-plotly-plot").nth(1)
                s, b = slider.bounding_box(), bars.bounding_box()
                top, bottom = min(s["y"], b["y"]), max(s["y"] + s["height"], b["y"] + b["height"] * 0.5)
                if bottom - top > page.viewport_size["height"]:
                    problems[where + " (T slider and bars)"] = f"{bottom - top:.0f} px apart"


CLIPPED_JS = """
() => {
  const out = [];
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const sel = 'p, label, button, h1, h2, h3, [data-testid="stMetricValue"] div, [data-testid="stMetricLabel"] div,'
            + ' [data-baseweb="select"] div, .katex-display';
  const clipper = (el) => {  // the nearest box (itself included) that hides what overflows it
    for (let a = el, i = 0; a && a !== main && i < 12; a = a.parentElement, i++) {
      const st = getComputedStyle(a);
      if (['hidden', 'clip'].includes(st.overflowX) || st.textOverflow === 'ellipsis') return a;
    }
    return null;
  };
  for (const el of main.querySelectorAll(sel)) {
    if (!el.offsetParent || !el.innerText || !el.innerText.trim() || el.children.length > 0) continue;
    const box = clipper(el);
    if (!box) continue;
    const r = el.getBoundingClientRect(), b = box.getBoundingClientRect();
    if (el.scrollWidth > el.clientWidth + 2 || r.right > b.right + 2) {
      out.push('text: ' + el.innerText.trim().slice(0, 50));
    }
  }
  const overlaps = (a, b) => !(a.right <= b.left + 1 || a.left >= b.right - 1 || a.bottom <= b.top + 1
                                 || a.top >= b.bottom - 1);
  const values = [...main.querySelectorAll('[data-testid="stMetricValue"]')].filter(v => v.offsetParent);
  values.forEach((v, i) => {  // metrics that run over their column or into each other
    const r = v.getBoundingClientRect();
    const col = v.closest('[data-testid="stColumn"]');
    if (col && r.right > col.getBoundingClientRect().right + 1) out.push('metric runs over: ' + v.innerText);
    for (const w of values.slice(i + 1)) {
      if (overlaps(r, w.getBoundingClientRect())) out.push('metrics overlap: ' + v.innerText + ' / ' + w.innerText);
    }
  });
  for (const plot of main.querySelectorAll('.js-plotly-plot')) {
    for (const axis of plot.querySelectorAll('.xaxislayer-above, .yaxislayer-above')) {  // ticks on each other
      const ticks = [...axis.querySelectorAll('.xtick text, .ytick text')]  // slanted ones: their boxes overlap
        .filter(t => t.textContent.trim() && !(t.getAttribute('transform') || '').includes('rotate'));
      for (let i = 0; i + 1 < ticks.length; i++) {
        if (overlaps(ticks[i].getBoundingClientRect(), ticks[i + 1].getBoundingClientRect())) {
          out.push('ticks overlap: ' + ticks[i].textContent + ' / ' + ticks[i + 1].textContent);
        }
      }
    }
    const svg = plot.querySelector('svg.main-svg');
    if (!svg) continue;
    const box = svg.getBoundingClientRect();
    const title = plot.querySelector('.gtitle');
    const legend = plot.querySelector('.legend');
    if (title) {
      const t = title.getBoundingClientRect();
      if (t.right > box.right + 1) out.push('plot title cut: ' + title.textContent.slice(0, 50));
      if (t.top < box.top - 1) out.push('plot title cut at the top: ' + title.textContent.slice(0, 50));
      for (const area of plot.querySelectorAll('.nsewdrag')) {  // the plot area (of each subplot)
        if (overlaps(t, area.getBoundingClientRect())) out.push('title on the plot: ' + title.textContent.slice(0, 50));
      }
      for (const a of plot.querySelectorAll('.annotation-text-g')) {  // a subplot's title
        if (overlaps(t, a.getBoundingClientRect())) out.push('title on a subplot title: ' + a.textContent.slice(0, 50));
      }
      if (legend) {
        const l = legend.getBoundingClientRect();
        const overlap = !(l.right < t.left || l.left > t.right || l.bottom < t.top || l.top > t.bottom);
        if (overlap && l.width > 0) out.push('legend over title: ' + title.textContent.slice(0, 50));
      }
    }
    for (const at of plot.querySelectorAll('.g-xtitle text, .g-x2title text')) {  // a legend below, on an axis title
      if (legend && legend.getBoundingClientRect().width > 0
          && overlaps(at.getBoundingClientRect(), legend.getBoundingClientRect())) {
        out.push('legend over axis title: ' + at.textContent.slice(0, 50));
      }
    }
    for (const cb of plot.querySelectorAll('.colorbar')) {
      if (cb.getBoundingClientRect().right > box.right + 1) out.push('colour bar cut');
    }
  }
  return out;
}
"""


def _finished_search(runs_dir) -> None:
    """A finished 4-trial DKD search of β and T in the store (trials with their per-epoch metrics, the search's record), as
    `kdw search` leaves it, so that the Search mode has something to show without a minute of Ray."""
    from workbench.experiments import search
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import RunStore
    from workbench.train.loop import TrainConfig

    store = RunStore(runs_dir)
    base = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=16), epochs=3,
                       teacher="digits-cnn", method="dkd", group="search-demo")
    for beta, T, accs in ((4.58, 4.0, [0.61, 0.74, 0.80]), (7.26, 2.5, [0.58, 0.71, 0.77]), (1.9, 6.1, [0.42]),
                          (12.5, 1.3, [0.39])):
        run = store.create(base.with_params(beta=beta, temperature=T).record()
                           | {"search_values": {"beta": beta, "temperature": T}}, prefix="trial")
        for i, a in enumerate(accs):
            run.append_metrics({"epoch": i + 1, "val_acc": a, "val_loss": 1 - a, "train_loss": 1 - a})
        run.set_status("done" if len(accs) == 3 else "cancelled")
    search._write_status(store, "search-demo", state="done", method="dkd", trials=4, seeds=3,
                         best={"values": {"beta": 4.58, "temperature": 4.0}, "val_acc": 0.80}, gain=0.052, gain_std=0.011,
                         test_acc=0.81, verdict="KD helps")


def _text_teacher(runs_dir) -> bool:
    """A WordNet teacher run in the store, for the sentence mode (False where WordNet or the text extra is missing)."""
    from text_fixtures import wordnet_teacher

    try:
        wordnet_teacher(runs_dir)
    except pytest.skip.Exception:
        return False
    return True


def _lm_teacher(runs_dir, root) -> bool:
    """A tiny language-model teacher run in the store, for the next-token mode (False without the text extra)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    from text_fixtures import lm_teacher

    lm_teacher(runs_dir, root)
    return True


@pytest.mark.parametrize("width, height", [(1400, 900), (1024, 768)])
def test_every_page_opens_from_its_address_and_nothing_is_clipped(server, runs_dir, width, height, tmp_path):
    """Classroom projector and laptop sizes: each page by its own URL, no exception, no clipped text or plot part."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=180_000)  # polls; generous on a busy machine
    kdw("demo", "--fast", "--runs-dir", str(runs_dir))
    kdw("sweep", "--engine", "local", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--epochs", "3",
        "--temperatures", "2", "4", "--alphas", "0.9", "--seeds", "1", "--no-profile", "--runs-dir", str(runs_dir))
    _finished_search(runs_dir)
    text_teacher = _text_teacher(runs_dir)
    lm_teacher = _lm_teacher(runs_dir, tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(180_000)
        outside = []  # the app works offline: nothing (the tab's icon included) comes from another host
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:"))
                else None)
        problems = {}
        for path, heading in [("/dark-knowledge?dataset=digits&image=17&T=6", "Dark knowledge"), ("/train", "Train"),
                              ("/compare", "Compare"), ("/sweep", "Sweep")]:
            page.goto(server + path)
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            if heading != "Train":  # no job was launched from the Train page in this test
                expect(page.locator(".js-plotly-plot").first).to_be_visible()
            page.wait_for_timeout(2500)
            assert page.locator('[data-testid="stException"]').count() == 0, path
            name = heading.lower().replace(" ", "-")
            page.screenshot(path=str(ARTIFACTS / f"{name}-{width}.png"), full_page=True)
            found = page.evaluate(CLIPPED_JS)
            if found:
                problems[path] = found
            if heading == "Dark knowledge":  # the address carried the view
                assert page.get_by_label(re.compile("^Test image")).input_value() == "17"
                assert "T=6" in page.url and "image=17" in page.url
            sidebar_open = page.locator('[data-testid="stSidebar"][data-collapsed="false"]').count()
            assert sidebar_open == (1 if width >= 1100 else 0), f"sidebar at {width}px"
        # the Sweep page's Search mode: the form, the trials, the history and the parallel coordinates
        page.get_by_text("search", exact=True).click()
        expect(page.get_by_role("button", name="Launch search")).to_be_visible()
        expect(page.get_by_text("Best on validation", exact=False)).to_be_visible()
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_visible()
        page.wait_for_timeout(2500)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(ARTIFACTS / f"search-{width}.png"), full_page=True)
        found = page.evaluate(CLIPPED_JS)
        if found:
            problems["/sweep (search)"] = found
        if text_teacher:  # Dark knowledge's sentence mode, from its address
            page.goto(server + "/dark-knowledge?mode=text&dataset=wordnet&sentence=3&T=5")
            expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            expect(page.get_by_text(re.compile(r"^True class \w+; the teacher predicts"))).to_be_visible()
            page.wait_for_timeout(2500)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.get_by_label(re.compile("^Test sentence")).input_value() == "3"
            page.screenshot(path=str(ARTIFACTS / f"dark-knowledge-text-{width}.png"), full_page=True)
            found = page.evaluate(CLIPPED_JS)
            if found:
                problems["/dark-knowledge (sentences)"] = found
        if lm_teacher:  # Dark knowledge's next-token mode, from its address
            page.goto(server + "/dark-knowledge?mode=tokens&teacher=tl&prompt=the%20cat%20sees&T=3")
            expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
            expect(page.locator(".js-plotly-plot").first).to_be_visible()
            expect(page.get_by_text(re.compile(r"^The teacher.s most likely next token: "))).to_be_visible()
            page.wait_for_timeout(2500)
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.get_by_role("textbox", name="Prompt").input_value() == "the cat sees"
            page.screenshot(path=str(ARTIFACTS / f"dark-knowledge-tokens-{width}.png"), full_page=True)
            found = page.evaluate(CLIPPED_JS)
            if found:
                problems["/dark-knowledge (next token)"] = found
        assert page.evaluate("document.querySelector(\"link[rel='shortcut icon']\").href").startswith("data:")
        if width < 1100:  # a projector: presentation mode on every page, with the sidebar open and then closed
            _presenting_pass(page, server, width, problems)
        browser.close()
    assert not problems, problems
    assert not outside, outside


def test_the_train_sweep_and_dark_knowledge_forms_survive_an_invalid_field_a_page_switch_and_a_reload(server):
    """Issue 22, item 3: every field keeps its value through a transient invalid value in another field, a switch
    to another page and back, and a reload (a new session, from the address)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=120_000)

    def will_run(page) -> str:
        box = page.locator('[data-testid="stCaptionContainer"]', has_text="Will run:").first
        expect(box).to_be_visible()
        return box.inner_text()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(120_000)
        page.goto(server + "/train")
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        _select(page, "Data set", "digits")
        page.wait_for_timeout(800)
        _set_number(page, "Width", 24)
        _set_number(page, "Epochs", 3)
        page.wait_for_timeout(1500)
        box = page.get_by_label("Batch size", exact=True)
        box.scroll_into_view_if_needed()
        box.click()
        page.keyboard.type("32")
        page.keyboard.press("Enter")
        page.wait_for_timeout(1000)
        page.get_by_text("Also train the scratch twin").click()
        page.wait_for_timeout(800)
        lr = page.get_by_label("Learning rate", exact=True)
        lr.fill("fast")
        lr.press("Enter")
        expect(page.get_by_text("Launch is off: the learning rate must be a number", exact=False)).to_be_visible()
        lr = page.get_by_label("Learning rate", exact=True)
        lr.fill("0.01")
        lr.press("Enter")
        page.wait_for_timeout(1500)
        wanted = will_run(page)
        for part in ("mlp(d=1, w=24)", "3 epochs", "lr 0.01", "batch 32"):
            assert part in wanted, (part, wanted)
        assert "scratch" not in wanted  # the twin stayed off through the invalid learning rate
        page.get_by_role("link", name="Compare").click()
        expect(page.get_by_role("heading", name="Compare")).to_be_visible()
        page.get_by_role("link", name="Train").click()
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        page.wait_for_timeout(1500)
        assert will_run(page) == wanted, "after a page switch"
        page.reload()
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        page.wait_for_timeout(2000)
        assert will_run(page) == wanted, "after a reload"

        page.goto(server + "/sweep")
        expect(page.get_by_role("heading", name="Sweep")).to_be_visible()
        _set_number(page, "Epochs", 4)
        page.wait_for_timeout(1000)
        page.get_by_role("link", name="Train").click()
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        page.get_by_role("link", name="Sweep").click()
        expect(page.get_by_role("heading", name="Sweep")).to_be_visible()
        page.wait_for_timeout(1500)
        assert page.get_by_label("Epochs", exact=True).input_value() == "4", "Sweep after a page switch"
        page.reload()
        expect(page.get_by_role("heading", name="Sweep")).to_be_visible()
        page.wait_for_timeout(2000)
        assert page.get_by_label("Epochs", exact=True).input_value() == "4", "Sweep after a reload"

        page.goto(server + "/dark-knowledge?dataset=digits&image=23&T=6")  # Dark knowledge -> Train -> Dark knowledge
        expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
        expect(page.get_by_label(re.compile("^Test image"))).to_have_value("23")
        page.get_by_role("link", name="Train").click()
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        page.get_by_role("link", name="Dark knowledge").click()
        expect(page.get_by_role("heading", name="Dark knowledge")).to_be_visible()
        page.wait_for_timeout(1500)
        assert page.get_by_label(re.compile("^Test image")).input_value() == "23", "Dark knowledge after a page switch"
        assert "dataset=digits" in page.url and "T=6" in page.url, page.url
        browser.close()


SEARCH_FORM = ("/sweep?sw_kind=search&swr_dataset=digits&swr_epochs=1&swr_trials=2&swr_seeds=1&swr_sched=none"
               "&swr_student_width_mlp=16")  # digits, 1 epoch, 2 trials, 1 seed, no early stopping


@contextlib.contextmanager
def _busy_search_page(server, runs_dir, name):
    """A page on the Search form (from its address) while three CPU-bound processes fill the machine's cores (a
    class's laptop); afterwards every search is cancelled and its process (which ends Ray) has exited."""
    import subprocess
    import time

    from playwright.sync_api import expect, sync_playwright

    from workbench.experiments import search
    from workbench.store.runs import RunStore

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=300_000)
    store = RunStore(runs_dir)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(300_000)
            page.goto(server + SEARCH_FORM)
            expect(page.get_by_role("button", name="Launch search")).to_be_enabled()
            page.wait_for_timeout(1500)
            yield page, store
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            browser.close()
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        for g in search.searches(store):  # nothing outlives the test
            search.cancel_search(store, g)
            deadline = time.monotonic() + 120
            while _alive(search.search_status(store, g) or {}) and time.monotonic() < deadline:
                time.sleep(1)


def test_a_search_on_a_busy_machine_starts_and_its_trials_arrive(server, runs_dir):
    """Issue 22, item 1: with the machine's cores busy, Ray's start-up gets the time it needs (it gave up after
    60 s before), the page says so while it waits, and the trials arrive in the page."""
    from playwright.sync_api import expect

    from workbench.experiments import search

    with _busy_search_page(server, runs_dir, "search-busy") as (page, store):
        page.get_by_role("button", name="Launch search").click()
        expect(page.get_by_text(re.compile(r"^Starting Ray… \d+ s"))).to_be_visible()
        expect(page.get_by_text(re.compile(r"^(running|done): [12] of 2 trials done"))).to_be_visible()
        expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
        (group,) = search.searches(store)
        assert store.list(group=group), "no trial in the store"


def test_a_search_cancelled_during_rays_start_up_ends_cancelled_and_runs_no_trial(server, runs_dir):
    """Issue 22, item 1: "Cancel this search" pressed while Ray is still starting reads cancelled at once and stays
    cancelled: the search's process ends Ray's start-up and exits, and no trial ever runs."""
    import time

    from playwright.sync_api import expect

    from workbench.experiments import search

    with _busy_search_page(server, runs_dir, "search-cancelled") as (page, store):
        page.get_by_role("button", name="Launch search").click()
        expect(page.get_by_text(re.compile(r"^Starting Ray… \d+ s"))).to_be_visible()
        page.get_by_role("button", name="Cancel this search").click()
        expect(page.get_by_text("The search was cancelled", exact=False)).to_be_visible(timeout=20_000)
        (group,) = search.searches(store)
        deadline = time.monotonic() + 300
        while _alive(search.search_status(store, group) or {}) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _alive(search.search_status(store, group)), "the search's process outlived its cancel"
        assert search.search_status(store, group)["state"] == "cancelled"
        assert not store.list(group=group), "a trial ran after the cancel"
        page.wait_for_timeout(1000)
        expect(page.get_by_text("The search was cancelled before any trial finished.")).to_be_visible()  # stays so


def _alive(status: dict) -> bool:
    from workbench.store.runs import same_process

    return bool(status.get("pid")) and same_process(status)
