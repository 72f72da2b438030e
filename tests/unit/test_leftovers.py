"""The session-wide check finds a watched process that the suite started, and only that."""

import subprocess
import sys

import leftovers


def test_a_marked_process_of_a_watched_kind_is_found_until_it_exits():
    # a stand-in whose command line names streamlit: it inherits the session's mark like any child
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "streamlit", "run"])
    try:
        found = [(p.pid, kind) for p, kind, _ in leftovers.leftovers()]
        assert (proc.pid, "streamlit") in found
        assert not any(p.pid == proc.pid for p, _, _ in leftovers.leftovers("another-session"))
    finally:
        proc.kill()
        proc.wait()
    assert not any(p.pid == proc.pid for p, _, _ in leftovers.wait_for_none(grace_s=5))


def test_the_watched_kinds_include_rays_monitors():
    assert leftovers.kind_of("/usr/bin/python .../ray/autoscaler/_private/monitor.py --logs-dir") == "ray"
    assert leftovers.kind_of("python -u .../ray/_private/log_monitor.py") == "ray"
    assert leftovers.kind_of("ray::ImplicitFunc.train") == "ray"
    assert leftovers.kind_of("/usr/lib/chromium/chromium --headless") == "chromium"
    assert leftovers.kind_of("python -m workbench job r1") is None
