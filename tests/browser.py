"""Helpers shared by the real-browser tests: Debian's Chromium through Playwright, free ports, servers."""

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("KDW_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]


def need_browser():
    """Skip without Playwright or Chromium, except under CI (CI=true), where that is a failure."""
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run under CI: missing {', '.join(missing)}")
        pytest.skip(f"missing {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cmd: list[str], url: str, log_path: Path, env: dict, cwd, timeout: float = 90.0,
                 ok=lambda body: True) -> subprocess.Popen:
    """Start a web server and wait until `url` answers (and `ok(body)` holds); fails with its log otherwise."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if ok(urllib.request.urlopen(url, timeout=2).read()):
                return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise AssertionError(f"{cmd[:4]} did not start:\n" + log_path.read_text())


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
