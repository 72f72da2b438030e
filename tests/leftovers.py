"""The processes a test session must not leave behind: Ray, Streamlit, JupyterLab and Chromium.

The session marks its environment (`SESSION_VAR`) when it starts; every process it starts inherits the mark,
directly or through Ray's raylet, a Streamlit server or Playwright. At the end, `leftovers()` lists the marked
processes of those kinds that still run (a `ray stop` that left `monitor.py`, `log_monitor.py` or a `ray::`
worker behind counts), and conftest fails the session if any remain after a grace period.
"""

from __future__ import annotations

import os
import time
import uuid

import psutil

SESSION_VAR = "KDW_TEST_SESSION"
KINDS = {
    "ray": ("raylet", "gcs_server", "monitor.py", "log_monitor.py", "ray::", "default_worker.py", "dashboard",
            "runtime_env_agent", "ray/_private"),
    "streamlit": ("streamlit",),
    "jupyterlab": ("jupyter-lab", "jupyter_lab", "jupyterlab", "ipykernel_launcher"),
    "chromium": ("chromium", "chrome", "headless_shell"),
}


def mark_session() -> str:
    """Mark this process's environment (and so every child's) with a new session id; returns it."""
    os.environ[SESSION_VAR] = os.environ.get(SESSION_VAR) or uuid.uuid4().hex
    return os.environ[SESSION_VAR]


def kind_of(cmdline: str) -> str | None:
    return next((k for k, needles in KINDS.items() if any(n in cmdline for n in needles)), None)


def leftovers(session: str | None = None) -> list[tuple[psutil.Process, str, str]]:
    """(process, kind, command line) of every running process of a watched kind that carries `session`'s mark."""
    session = session or os.environ.get(SESSION_VAR)
    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "cmdline", "name"]):
        if p.info["pid"] == me:
            continue
        cmd = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
        kind = kind_of(cmd)
        if kind is None:
            continue
        try:
            if p.status() == psutil.STATUS_ZOMBIE or p.environ().get(SESSION_VAR) != session:
                continue
        except psutil.Error:
            continue
        out.append((p, kind, cmd[:200]))
    return out


def wait_for_none(session: str | None = None, grace_s: float = 30.0) -> list[tuple[psutil.Process, str, str]]:
    """Poll until no marked process is left, up to `grace_s` (processes take a moment to exit); what is left."""
    deadline = time.monotonic() + grace_s
    found = leftovers(session)
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = leftovers(session)
    return found
