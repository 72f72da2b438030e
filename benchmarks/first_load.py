"""How long the app takes to be usable, and what an idle tab costs the server (issue 22, item 7).

    python benchmarks/first_load.py [--idle-s 20]

Starts `kdw app` on a free port with an empty run store, opens Debian's Chromium (Playwright, no download) and
measures, for a cold server (its first page ever) and then for a fresh tab on the warm server: the time to the
"Dark knowledge" heading and to its first chart. Then it leaves one tab open on each page and samples the server
process's CPU (psutil, children included) for --idle-s seconds, and times a press of Launch on the Train page until
its job's card shows under the button. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 120) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                return time.monotonic() - t0
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the app did not start")


def cpu_share(proc: psutil.Process, seconds: float) -> float:
    """The server's CPU use (it and its children) over `seconds`, as a share of one core."""
    procs = [proc, *proc.children(recursive=True)]
    before = sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running())
    time.sleep(seconds)
    after = sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running())
    return (after - before) / seconds


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--idle-s", type=float, default=20.0)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    runs = tempfile.mkdtemp(prefix="kdw-first-load-")
    t_start = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "workbench", "app", "--host", "127.0.0.1", "--port", str(port)],
                              env=dict(os.environ, KDW_RUNS_DIR=runs), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        healthy = wait_healthy(url)
        rows.append(("server answers its health check", healthy))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for label in ("cold server: first page", "warm server: a fresh tab"):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.monotonic()
                page.goto(url + "/dark-knowledge?dataset=digits")
                page.get_by_role("heading", name="Dark knowledge").wait_for(timeout=180_000)
                heading = time.monotonic() - t0
                page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
                chart = time.monotonic() - t0
                rows.append((f"{label}: heading", heading))
                rows.append((f"{label}: first chart", chart))
                page.close()
            shares = {}
            for path in ("/dark-knowledge?dataset=digits", "/train", "/compare", "/sweep"):
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url + path)
                page.wait_for_timeout(8000)  # settled
                shares[path.split("?")[0]] = cpu_share(psutil.Process(server.pid), args.idle_s)
                page.close()
            # a press of Launch: the time until its job's card shows under the button (digits, 1 epoch)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + "/train")
            page.get_by_role("heading", name="Train").wait_for(timeout=180_000)
            page.get_by_label("Data set", exact=True).click()
            page.get_by_role("option", name="digits", exact=True).click()
            page.wait_for_timeout(3000)
            epochs = page.get_by_label("Epochs", exact=True)
            epochs.fill("1")
            epochs.press("Enter")
            page.wait_for_timeout(3000)
            button = page.get_by_role("button", name="Launch")
            button.scroll_into_view_if_needed()
            t0 = time.monotonic()
            button.click()
            page.locator(".st-key-tr_launch_card").wait_for(timeout=60_000)
            rows.append(("Train: Launch pressed → its job's card under the button", time.monotonic() - t0))
            page.get_by_text("done: ", exact=False).first.wait_for(timeout=300_000)
            page.close()
            browser.close()
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    print(f"# kdw app, empty store, {os.cpu_count()} cores, Chromium headless; started {time.monotonic() - t_start:.0f} s ago\n")
    print("| measurement | seconds |\n|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.1f} |")
    print("\n| one idle tab open on | server CPU (share of one core) |\n|---|---|")
    for path, share in shares.items():
        print(f"| {path} | {100 * share:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
