"""The job runner: queued subprocesses that run one at a time, cancel, and survive crashes honestly."""

import os
import signal
import subprocess
import sys
import time

import pytest

from workbench.errors import friendly_error
from workbench.jobs.queue import LocalQueueRunner
from workbench.models.zoo import ModelConfig
from workbench.train.loop import TrainConfig

pytestmark = pytest.mark.slow

TINY = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=16), epochs=2,
                   batch_size=64, teacher="digits-cnn", profile=False)


def _wait_state(runner, run_id, states, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = runner.status(run_id)
        if st["state"] in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{run_id} never reached {states}: {runner.status(run_id)}")


def test_submitted_jobs_run_one_after_another_in_one_warm_worker(store):
    runner = LocalQueueRunner(store)
    a = runner.submit(TINY.to_dict(), prefix="a")
    b = runner.submit({**TINY.to_dict(), "seed": 1}, prefix="b")
    sa, sb = runner.wait(a, 180), runner.wait(b, 180)
    assert sa["state"] == "done" and sb["state"] == "done", (sa, sb)
    assert sa["pid"] != os.getpid() and sa["pid"] == sb["pid"]  # the worker's process, imported once
    assert sb["started"] >= sa["finished"] - 0.5  # never at the same time
    assert len(store.get(a).metrics()) == 2 and store.get(b).summary["test"]["accuracy"] > 0.3


def test_process_isolation_runs_each_job_in_its_own_process(store, monkeypatch):
    monkeypatch.setenv("KDW_JOB_ISOLATION", "process")
    runner = LocalQueueRunner(store)
    a = runner.submit(TINY.to_dict(), prefix="a")
    b = runner.submit({**TINY.to_dict(), "seed": 1}, prefix="b")
    sa, sb = runner.wait(a, 180), runner.wait(b, 180)
    assert sa["state"] == "done" and sb["state"] == "done" and sa["pid"] != sb["pid"]


def test_cancel_a_running_job_marks_it_cancelled_and_keeps_its_metrics(store):
    runner = LocalQueueRunner(store)
    rid = runner.submit({**TINY.to_dict(), "epochs": 400}, prefix="long")
    _wait_state(runner, rid, ("running",))
    run = store.get(rid)
    deadline = time.monotonic() + 60
    while not run.metrics() and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.cancel(rid)
    st = _wait_state(runner, rid, ("cancelled", "failed", "done"), 60)
    assert st["state"] == "cancelled"
    assert len(run.metrics()) >= 1


def test_cancel_a_queued_job_before_it_starts(store):
    runner = LocalQueueRunner(store)
    first = runner.submit({**TINY.to_dict(), "epochs": 400}, prefix="first")
    second = runner.submit(TINY.to_dict(), prefix="second")
    _wait_state(runner, first, ("running",))
    assert runner.status(second)["state"] == "queued"
    runner.cancel(second)
    runner.cancel(first)
    assert _wait_state(runner, second, ("cancelled",))["state"] == "cancelled"
    _wait_state(runner, first, ("cancelled",))


def test_a_killed_job_reads_failed_never_running(store):
    runner = LocalQueueRunner(store)
    rid = runner.submit({**TINY.to_dict(), "epochs": 400}, prefix="killed")
    st = _wait_state(runner, rid, ("running",))
    os.kill(st["pid"], signal.SIGKILL)
    st = _wait_state(runner, rid, ("failed",), 30)
    assert "before finishing" in st["error"] or "ended without finishing" in st["error"]


def test_a_failing_job_records_a_readable_error(store):
    runner = LocalQueueRunner(store)
    rid = runner.submit({**TINY.to_dict(), "teacher": "no-such-teacher"})
    st = runner.wait(rid, 120)
    assert st["state"] == "failed" and "unknown teacher 'no-such-teacher'" in st["error"]
    assert "Traceback" not in st["error"]
    assert (store.get(rid).path / "traceback.txt").is_file()  # the details, for developers


def test_submit_validates_before_touching_the_store(store):
    runner = LocalQueueRunner(store)
    with pytest.raises(ValueError, match="temperature"):
        runner.submit({**TINY.to_dict(), "method_params": {"temperature": -1}})
    assert store.list() == []


def test_friendly_error_is_one_line():
    assert friendly_error(ValueError("bad thing\nmore detail")) == "bad thing"
    assert friendly_error(KeyError("x")) == "KeyError: 'x'"


def test_the_app_the_cli_and_the_widgets_import_without_fcntl(tmp_path):
    """Windows has no fcntl: block it, and everything a user imports must still import (the queue lock is filelock)."""
    code = ("import sys; sys.modules['fcntl'] = None\n"
            "import workbench.cli.main, workbench.app.train, workbench.app.compare, workbench.notebook.widgets, workbench.jobs.queue\n"
            "from workbench.evaluate.metrics import OtherCpuLoad\n"
            "with OtherCpuLoad() as load: sum(range(10000))\n"
            "print('ok', load.fraction is None or 0 <= load.fraction <= 1)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok True"


def test_worker_subprocesses_never_import_from_the_callers_folder(tmp_path, store):
    """A ./workbench/__main__.py planted in the working directory must not run as the job."""
    from workbench.jobs.spawn import Command
    from workbench.jobs.spawn import trusted_cwd as _trusted_cwd

    planted = tmp_path / "workbench"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text("print('PLANTED')\n")
    proc = subprocess.run(Command(("--help",)).to_argv(), capture_output=True, text=True, timeout=60, cwd=tmp_path
                          if sys.version_info >= (3, 11) else _trusted_cwd())
    assert "PLANTED" not in proc.stdout and "usage: kdw" in proc.stdout
