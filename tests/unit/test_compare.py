"""The comparison table's honesty checks: CPU timings taken while the machine was busy are flagged."""

import os
import subprocess
import sys
import time

import pytest

from workbench.analysis.compare import format_table, timing_warning
from workbench.evaluate import BUSY_LIMIT
from workbench.evaluate.metrics import OtherCpuLoad


def _row(role, model, busy, seed=0):
    return {"role": role, "model": model, "seed": seed, "cpu_busy": busy, "test_acc": 0.9, "test_acc_last": 0.9,
            "latency_ms": 0.1, "throughput": 1000.0, "device": "cpu", "threads": 2}


def test_quiet_rows_carry_no_warning():
    rows = [_row("teacher", "cnn", 0.0, None), _row("kd", "mlp", BUSY_LIMIT - 0.01), _row("scratch", "mlp", None)]
    assert timing_warning(rows) is None
    assert "warning" not in format_table(rows)


def test_busy_rows_are_named_with_the_worst_load():
    rows = [_row("teacher", "cnn(d=1, w=32)", 0.9, None), _row("kd", "mlp(d=1, w=64)", 0.4), _row("scratch", "mlp", 0)]
    msg = timing_warning(rows)
    assert "teacher cnn(d=1, w=32)" in msg and "kd mlp(d=1, w=64) (seed 0)" in msg and "scratch" not in msg
    assert "90%" in msg and "kdw profile" in msg
    assert "* warning: Latency and throughput of" in format_table(rows)


@pytest.mark.slow  # it measures the machine's load: on a machine busy with other work, its margins are thin
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_other_cpu_load_sees_a_busy_neighbour_and_not_itself():
    with OtherCpuLoad() as own:  # this process spinning is not "other" load
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:
            pass
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        with OtherCpuLoad() as other:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    cores = os.cpu_count() or 1
    assert other.fraction is not None and other.fraction > 0.6 / cores  # one busy core out of `cores`
    assert own.fraction is not None and own.fraction <= other.fraction + 0.05  # its own spinning is not counted
