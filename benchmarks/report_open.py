"""How long the offline HTML report takes to open in a browser, on a quiet and on a busy machine (issue 22, item 8).

    python benchmarks/report_open.py [--hogs 6] [--repeats 3]

Makes a run store with `kdw demo --fast` in a temporary folder, writes its report with `kdw report`, and opens the
file in Debian's Chromium (Playwright, no download) --repeats times: to the parsed page, and to every chart drawn.
Then the same with --hogs CPU-bound processes running (a busy laptop). Prints a Markdown table for
docs/performance.md, with the file's size and how much of it is Plotly's own script (embedded, so that the report
opens offline).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
KDW = [str(Path(sys.executable).with_name("kdw"))]  # the venv's console script


def open_times(browser, report: Path, repeats: int) -> tuple[list[float], list[float]]:
    parsed, drawn = [], []
    charts = report.read_text().count("Plotly.newPlot")
    for _ in range(repeats):
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        t0 = time.monotonic()
        page.goto(report.as_uri(), wait_until="domcontentloaded")
        parsed.append(time.monotonic() - t0)
        page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}",
                               timeout=300_000)
        drawn.append(time.monotonic() - t0)
        page.close()
    return parsed, drawn


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--hogs", type=int, default=6, help="CPU-bound processes for the busy measurement")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store, report = Path(tmp) / "runs", Path(tmp) / "report.html"
        subprocess.run([*KDW, "demo", "--fast", "--runs-dir", str(store)], check=True, capture_output=True)
        runs = sorted(p.name for p in store.iterdir() if p.is_dir() and not p.name.startswith("."))
        subprocess.run([*KDW, "report", *runs, "--runs-dir", str(store), "-o", str(report)], check=True,
                       capture_output=True)
        text = report.read_text()
        script = max((len(s) for s in re.findall(r"<script[^>]*>(.*?)</script>", text, flags=re.S)), default=0)
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            rows.append(("quiet", *open_times(browser, report, args.repeats)))
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
            try:
                time.sleep(1.0)
                rows.append((f"{args.hogs} CPU-bound processes on {os.cpu_count()} cores",
                             *open_times(browser, report, args.repeats)))
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
            browser.close()
    print(f"report of {len(runs)} runs: {len(text) / 1e6:.1f} MB, of which Plotly's script {script / 1e6:.1f} MB, "
          f"{text.count('Plotly.newPlot')} charts")
    print("\n| machine | page parsed, s (median) | every chart drawn, s (median, max) |\n|---|---|---|")
    for name, parsed, drawn in rows:
        print(f"| {name} | {statistics.median(parsed):.2f} | {statistics.median(drawn):.2f}, {max(drawn):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
