"""Hardening: one broken file never breaks the store, jobs never signal a stranger, and every bad number is a
sentence. Each test here failed before the fix it covers (docs/reliability.md lists them)."""

import json
import os
import resource
import socket
import subprocess
import sys
import time

import pytest
from conftest import kdw

from workbench.errors import ModelError, RunStoreError
from workbench.jobs.queue import LocalQueueRunner, ensure_worker_for_queue, execute_run, fail_stale_runs, run_job
from workbench.models.zoo import ModelConfig, build_model, load_checkpoint
from workbench.store.runs import RunStore, process_identity
from workbench.train.loop import TrainConfig

TINY = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                   batch_size=64, teacher="digits-cnn", profile=False)


def _done_run(store, run_id=None):
    run = store.create(TINY.record(), run_id=run_id)
    assert execute_run(run, store) == "done"
    return run


# ---------------------------------------------------------------------------
# 1. a process id is not an identity

def test_a_reused_pid_is_neither_running_nor_signalled(store):
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = store.create(TINY.record())
        ident = process_identity(stranger.pid)
        # the job that had this pid started long before the process that has it now
        run.set_status("running", pid=stranger.pid, host=socket.gethostname(), pid_started=ident["pid_started"] - 3600)
        st = run.status()
        assert st["state"] == "failed" and "ended without finishing" in st["error"]
        LocalQueueRunner(store).cancel(run.run_id)
        time.sleep(0.3)
        assert stranger.poll() is None  # still alive: never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_a_pid_without_its_start_time_is_never_signalled(store):
    """status.json without pid_started (an old or edited store): the run reads as lost, and kdw cancel signals
    nobody."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = store.create(TINY.record())
        run.set_status("running", pid=stranger.pid, host=socket.gethostname())
        assert run.status()["state"] == "failed"
        LocalQueueRunner(store).cancel(run.run_id)
        time.sleep(0.3)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_the_real_job_process_still_reads_as_running(store):
    run = store.create(TINY.record())
    run.set_status("running", **process_identity())
    assert run.status()["state"] == "running"


def test_a_status_from_another_host_goes_stale_without_heartbeat(store):
    run = store.create(TINY.record())
    run.set_status("running", pid=1, host="elsewhere", pid_started=1.0)
    assert run.status()["state"] == "running"  # fresh: trusted for a while
    st = json.loads((run.path / "status.json").read_text())
    st["updated"] = time.time() - 3600
    (run.path / "status.json").write_text(json.dumps(st))
    st = run.status()
    assert st["state"] == "failed" and "no sign of life from host elsewhere" in st["error"]
    assert "requested" not in LocalQueueRunner(store).cancel(run.run_id)  # nothing left to stop


@pytest.mark.slow
def test_cancel_reaches_a_job_through_the_run_folder(store):
    """A cancel request is a file the job checks, so it works without a signal (another host, a stranger's pid)."""
    run = store.create(TrainConfig(**{**TINY.to_dict(), "epochs": 200}).record())
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "job", run.run_id, "--runs-dir", str(store.root)])
    deadline = time.monotonic() + 60
    while run.state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    run.request_cancel()
    assert proc.wait(60) == 1
    assert run.state == "cancelled"


# ---------------------------------------------------------------------------
# 3. a forged upload cannot exhaust memory

def test_a_small_file_claiming_a_huge_model_is_refused_before_building_it():
    from safetensors.torch import save

    small = build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10)
    forged = save({k: v.contiguous() for k, v in small.state_dict().items()},
                  metadata={"kdw_model": json.dumps({"family": "mlp", "depth": 1, "width": 30000}),
                            "kdw_input_shape": "[1, 8, 8]", "kdw_num_classes": "10"})
    assert len(forged) < 5000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ModelError, match=r"body.1.weight: expected \(30000, 64\), found \(8, 64\)"):
        load_checkpoint(forged)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # < 100 MB, not gigabytes


def test_checkpoint_size_is_capped(monkeypatch, tmp_path):
    from workbench.models import zoo as models

    path = tmp_path / "big.safetensors"
    models.save_checkpoint(build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10), path)
    monkeypatch.setattr(models, "MAX_CHECKPOINT_BYTES", 100)
    with pytest.raises(ModelError, match="over the .* limit"):
        load_checkpoint(path)


def test_a_metadata_value_of_the_wrong_type_names_the_key_and_the_file(tmp_path):
    from safetensors.torch import save_file

    m = build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 10)
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path),
              metadata={"kdw_model": json.dumps({"family": "mlp", "depth": 1, "width": 8}),
                        "kdw_input_shape": "[1, 8, 8]", "kdw_num_classes": "ten"})
    with pytest.raises(ModelError, match=f"kdw_num_classes of {path} must be a whole number.*'ten'"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------
# 4. no traceback with server paths in the browser

def test_the_app_hides_error_details_and_pins_a_streamlit_that_supports_it():
    from conftest import ROOT

    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert 'showErrorDetails = "none"' in config and 'address = "127.0.0.1"' in config
    assert 'st.set_option("client.showErrorDetails", "none")' in (ROOT / "workbench" / "app" / "entry.py").read_text()
    from workbench.cli.serve import app_command

    cmd = app_command("127.0.0.1", 8501)  # kdw app passes the toml's settings as flags: a wheel has no toml
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none" and "--server.address" in cmd
    assert '"streamlit>=1.60,<2"' in (ROOT / "pyproject.toml").read_text()


def test_kdw_apps_server_starts_through_the_warm_import_launcher(tmp_path):
    """`kdw app` runs Streamlit through workbench.app.streamlit_run (torch imported while the server starts): it
    serves, and its pages answer."""
    import urllib.request

    from browser import free_port, start_server, stop_server
    from conftest import ROOT

    from workbench.cli.serve import app_command

    port = free_port()
    cmd = app_command("127.0.0.1", port)
    assert cmd[1:4] == ["-m", "workbench.app.streamlit_run", "run"]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, url + "/_stcore/health", tmp_path / "app.log",
                        dict(os.environ, KDW_RUNS_DIR=str(tmp_path / "runs")), ROOT, timeout=120,
                        ok=lambda body: body == b"ok")
    try:
        assert b"<title>" in urllib.request.urlopen(url + "/train", timeout=10).read()
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------
# 5. one bad file never breaks the rest of the store

BROKEN = {"truncated": b'{"state": "do', "empty": b"", "null": b"null", "not utf-8": b"\xff\xfe{\x00",
          "a list": b"[1, 2]"}


@pytest.fixture
def store_with_a_broken_run(store, request):
    good = _done_run(store, "good")
    bad = _done_run(store, "bad")
    name, content = request.param
    (bad.path / name).write_bytes(content)
    return store, good, bad, name


@pytest.mark.parametrize("store_with_a_broken_run", [(f, c) for f in ("status.json", "summary.json", "config.json")
                                                     for c in BROKEN.values()], indirect=True)
def test_a_broken_file_shows_as_unreadable_and_the_rest_works(store_with_a_broken_run):
    store, good, bad, name = store_with_a_broken_run
    st = bad.status()
    assert st["state"] == "unreadable" and st["error"].startswith("unreadable: ") and str(bad.path / name) in st["error"]
    assert [r.run_id for r in store.list()] == ["bad", "good"] or [r.run_id for r in store.list()] == ["good", "bad"]
    from workbench.analysis.compare import comparison_rows
    from workbench.analysis.report import build_report

    rows = comparison_rows(store.list())
    assert [r["run_id"] for r in rows if r["role"] == "kd"] == ["good"]
    assert "Left out" in build_report(store.list())


@pytest.mark.slow
def test_the_cli_and_every_app_page_survive_a_broken_run(store):
    from streamlit.testing.v1 import AppTest

    _done_run(store, "good")
    bad = _done_run(store, "bad")
    (bad.path / "summary.json").write_bytes(b"\xff\xfe")
    (store.root / "worse").mkdir()
    (store.root / "worse" / "config.json").write_text("{")
    out = kdw("runs", "--runs-dir", str(store.root)).stdout
    assert "unreadable: not UTF-8 text" in out and "worse" in out and "unreadable: not valid JSON" in out
    assert "mlp(d=1, w=8)" in kdw("compare", "good", "--runs-dir", str(store.root)).stdout
    kdw("report", "good", "bad", "-o", str(store.root / "r.html"), "--runs-dir", str(store.root))
    for module in ("dark_knowledge", "train", "compare", "sweep"):
        at = AppTest.from_string(f"from workbench.app.{module} import page\npage()", default_timeout=120).run()
        assert not at.exception, (module, [e.value for e in at.exception])


# ---------------------------------------------------------------------------
# 6. a finished run is never run again

def test_a_done_run_whose_status_is_lost_stays_done_and_is_not_rerun(store):
    run = _done_run(store)
    rows = run.metrics()
    (run.path / "status.json").unlink()
    assert run.state == "done"
    with pytest.raises(RunStoreError, match="not queued|already has results"):
        run_job(run.run_id, store)
    assert run.metrics() == rows


def test_a_started_run_whose_status_is_lost_reads_failed(store):
    run = store.create(TINY.record())
    run.append_metrics({"epoch": 1, "val_acc": 0.5})
    (run.path / "status.json").unlink()
    st = run.status()
    assert st["state"] == "failed" and "not run again" in st["error"]


def test_a_run_that_starts_owns_its_metrics(store):
    run = store.create(TINY.record())
    run.append_metrics({"epoch": 1, "val_acc": 0.123})  # left over from somewhere else
    assert execute_run(run, store) == "done"
    assert [r["epoch"] for r in run.metrics()] == [1] and run.metrics()[0]["val_acc"] != 0.123


# ---------------------------------------------------------------------------
# 7. the queue never strands

def test_a_dead_running_job_is_written_failed_by_the_next_worker(store):
    run = store.create(TINY.record())
    run.set_status("running", pid=999999, host=socket.gethostname(), pid_started=1.0)
    assert json.loads((run.path / "status.json").read_text())["state"] == "running"
    assert fail_stale_runs(store) == [run.run_id]
    assert json.loads((run.path / "status.json").read_text())["state"] == "failed"


@pytest.mark.slow
def test_kdw_runs_restarts_a_stranded_queue(store):
    run = store.create(TINY.record())  # queued, and no worker (as after a kill -9 of the worker)
    proc = kdw("runs", "--runs-dir", str(store.root))
    assert "started one" in proc.stderr
    deadline = time.monotonic() + 120
    while run.state != "done" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert run.state == "done"
    assert not ensure_worker_for_queue(store)  # nothing queued: no worker


# ---------------------------------------------------------------------------
# 8. a burst of submits starts one worker

@pytest.mark.slow
def test_a_burst_of_submits_runs_one_worker_at_a_time(store):
    import psutil

    runner = LocalQueueRunner(store)
    ids = [runner.submit(TINY.record()) for _ in range(12)]
    peak = 0
    deadline = time.monotonic() + 240
    while any(store.get(i).state not in ("done", "failed") for i in ids) and time.monotonic() < deadline:
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if "worker" in (p.info["cmdline"] or []) and str(store.root) in " ".join(p.info["cmdline"] or [])]
        peak = max(peak, len(workers))
        time.sleep(0.05)
    assert all(store.get(i).state == "done" for i in ids)
    assert peak == 1, f"{peak} workers were alive at once"


def test_a_worker_exits_before_importing_torch_when_the_queue_is_taken(store):
    from filelock import FileLock

    store.ensure_writable()
    lock = FileLock(str(store.root / ".queue.lock"))
    lock.acquire()
    try:  # (how fast it exits is a benchmark's business: benchmarks/first_load.py; here, what it imports)
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbench", "worker", "--runs-dir",
                               str(store.root)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0
        assert " torch" not in proc.stderr
    finally:
        lock.release()


def test_kdw_help_runs_and_compare_import_no_torch(store):
    """The commands that only read the store, and the help, never load torch (python -X importtime): the parser
    describes only the command asked for, and the objective's text lives in a torch-free module."""
    run = _done_run(store)
    for argv in (["--help"], ["runs"], ["runs", "--json"], ["compare", run.run_id], ["distill", "--help"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "workbench", *argv, "--runs-dir",
                               str(store.root)] if argv != ["--help"] else
                              [sys.executable, "-X", "importtime", "-m", "workbench", "--help"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
        if argv == ["distill", "--help"]:  # a training command's options have the config's defaults: torch
            assert "torch" in imported and "--grad-clip" in proc.stdout
        else:
            assert "torch" not in imported, argv
    assert "distill" in subprocess.run([sys.executable, "-m", "workbench", "--help"], capture_output=True,
                                       text=True, timeout=60).stdout


# ---------------------------------------------------------------------------
# 9, 10. the report survives incomplete runs; writes are durable and leave nothing behind

def test_report_skips_a_run_without_summary_and_bad_metrics_lines(store):
    from workbench.analysis.report import build_report

    good = _done_run(store)
    with open(good.path / "metrics.jsonl", "ab") as f:
        f.write(b"\x00\xff binary\n[1, 2, 3]\n\"a string\"\n")
    assert [r["epoch"] for r in good.metrics()] == [1]
    half = store.create(TINY.record())
    half.set_status("done")  # done, but no summary.json
    page = build_report([good, half])
    assert "Left out" in page and half.run_id in page


def test_weights_and_new_runs_are_fsynced(store, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    run = store.create(TINY.record())
    after_create = len(calls)
    assert after_create >= 3  # config.json, status.json, and the folders
    run.save_weights(build_model(TINY.model, (1, 8, 8), 10), "best")
    assert len(calls) - after_create >= 2  # the weights file, then its folder


def test_a_failed_write_check_leaves_no_probe_file(tmp_path, monkeypatch):
    from pathlib import Path

    real = Path.write_text

    def disk_full(self, *a, **k):
        real(self, "")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    store = RunStore(tmp_path / "runs")
    with pytest.raises(RunStoreError, match="not writable"):
        store.ensure_writable()
    assert list((tmp_path / "runs").glob(".write-test-*")) == []


# ---------------------------------------------------------------------------
# 11-15. bad numbers and bad names are one sentence, before any run folder exists

FAST = ["--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "8", "--epochs", "1", "--no-profile"]


@pytest.mark.parametrize("args, message", [
    (["-T", "inf"], "temperature must be a finite number"),
    (["-T", "1e30"], "at most 100"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["--teacher", "digits-cnn,digits-cnn", "--teacher-weights", "nan", "1"], "teacher weight must be a finite"),
    (["--width", "0.5"], "width must be a whole number, got 0.5"),
    (["--model", "cnn", "--width", "0.5"], "width must be a whole number, got 0.5"),
    (["--width", "inf"], "width must be a whole number, got inf"),
    (["--labels", "inf"], "--labels must be a count"),
    (["--labels", "nan"], "--labels must be a count"),
    (["--labels", "1.5"], "--labels must be a count"),
    (["--seed", "99999999999999999999"], "seed must be a whole number in [0, 2^63)"),
    (["--dataset", "imagenet", "--no-scratch"], "unknown data set 'imagenet'"),
    (["--run-id", "../escape", "--no-scratch"], "invalid run id"),
])
def test_bad_numbers_are_one_sentence_and_create_nothing(runs_dir, args, message):
    import io
    from contextlib import redirect_stderr

    from workbench.cli.main import main

    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["distill", *FAST, *args, "--runs-dir", str(runs_dir)])
    assert code == 2 and message in err.getvalue(), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert not runs_dir.exists() or not [p for p in runs_dir.iterdir() if not p.name.startswith(".")]


def test_labels_mean_the_same_in_the_cli_and_the_app(digits):
    from workbench.cli.common import parse_labels
    from workbench.data.datasets import label_mask

    assert parse_labels("1") == 1 and int(label_mask(digits.y_train, parse_labels("1")).sum()) == 1
    assert parse_labels("5%") == parse_labels("0.05") == 0.05
    assert int(label_mask(digits.y_train, parse_labels("1.0")).sum()) == len(digits.y_train)
    with pytest.raises(ValueError, match="count"):
        TrainConfig(**{**TINY.to_dict(), "labels": 2.5})


def test_the_run_id_is_checked_before_any_data_loads(runs_dir, monkeypatch):
    from workbench.cli import train as cli
    from workbench.cli.main import build_parser
    from workbench.data import datasets as data

    monkeypatch.setattr(data, "load_dataset", lambda *a, **k: pytest.fail("loaded data before checking the id"))
    with pytest.raises(ValueError, match="invalid run id"):
        cli.cmd_train(build_parser("distill")[0].parse_args(["distill", *FAST, "--no-scratch", "--run-id", "a b",
                                                     "--runs-dir", str(runs_dir)]), "kd")


def test_cancel_of_a_finished_run_says_there_was_nothing_to_cancel(store):
    run = _done_run(store)
    assert LocalQueueRunner(store).cancel(run.run_id) == "nothing to cancel: it is done"


def test_compare_of_a_failed_run_explains(store):
    import io
    from contextlib import redirect_stderr

    from workbench.cli.main import main

    run = store.create(TINY.record(), run_id="broken")
    run.set_status("failed", error="the loss became nan")
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["compare", "broken", "--runs-dir", str(store.root)])
    assert code == 2
    assert "broken is failed: the loss became nan" in err.getvalue() and "nothing to compare" in err.getvalue()


def test_an_unknown_group_is_named(store):
    import io
    from contextlib import redirect_stderr

    from workbench.cli.main import main

    _done_run(store)
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["compare", "--group", "nope", "--runs-dir", str(store.root)]) == 2
    assert "no runs in group 'nope'" in err.getvalue()


@pytest.mark.parametrize("argv,message", [
    (["distill", "--batch-size", "0"], "batch_size must be a whole number >= 1, got 0"),
    (["distill", "--workers", "0"], "the number of workers must be at least 1, got 0"),
    (["distill", "--workers", "-1"], "the number of workers must be at least 1, got -1"),
    (["distill", "--epochs", "99999999999"], "epochs must be a whole number from 1 to 100,000"),
    (["distill", "--seeds", "100000"], "this launch makes 200,000 runs, more than 100; pass --yes"),
    (["sweep", "--temperatures", *map(str, range(1, 41)), "--alphas", "0.1", "0.5", "0.9"],
     "this sweep makes"),
    (["distill", "--model", "/etc/passwd:make"], "/etc/passwd is not a .py file"),
    (["runs", "--kind", "foo"], "invalid choice: 'foo'"),
    (["runs", "--group", "nosuch"], "no group 'nosuch'"),
])
def test_options_out_of_range_are_refused_in_one_sentence_and_make_no_run(runs_dir, argv, message):
    """The fault probe's cases that were accepted (--batch-size 0 trained at 128, --workers 0 in the foreground, 99
    billion epochs, 100,000 seeds queued 200,000 runs, a 1,000-cell sweep, a non-Python factory file) or said the
    store was empty (an unknown kind or group)."""
    extra = ["--dataset", "digits", "--no-profile"] if argv[0] in ("distill", "sweep") else []
    proc = subprocess.run([sys.executable, "-m", "workbench", *argv, *extra, "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(runs_dir.glob("*/config.json"))


def test_a_run_of_fewer_than_20_optimiser_steps_is_warned_about_in_one_sentence(runs_dir):
    """The trial's language model took 3 steps per epoch and learnt nothing, and nothing said so."""
    proc = subprocess.run([sys.executable, "-m", "workbench", "distill", "--dataset", "digits", "--epochs", "1",
                           "--batch-size", "1024", "--no-scratch", "--no-profile", "--runs-dir", str(runs_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: this run takes 1 optimiser step (1 per epoch × 1 epoch), fewer than the 20" in proc.stderr


def test_compare_names_a_finished_run_whose_summary_is_gone(store):
    """Before, `kdw compare A B` printed B's row without a word about A."""
    import json

    a = _done_run(store, "a")
    _done_run(store, "b")
    (a.path / "summary.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "workbench", "compare", "a", "b", "--json", "--runs-dir",
                           str(store.root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ids = {r["run_id"] for r in json.loads(proc.stdout)}
    assert "b" in ids and "a" not in ids
    assert "a has finished but has no summary.json to compare; left out" in proc.stderr, proc.stderr
