"""Search and scale on one machine: parallel queue workers, Ray Tune searches with Optuna and early stopping,
grids on Ray, cancelling, and one clear sentence for each bad input.

Ray runs here as `ray.init(num_cpus=2, include_dashboard=False)`; every test that starts it shuts it down and
checks that no Ray process is left behind.
"""

import builtins
import os
import time

import leftovers
import psutil
import pytest
from conftest import kdw

from workbench.analysis import plots
from workbench.experiments import search
from workbench.experiments.search import start_search
from workbench.jobs.queue import (
    LocalQueueRunner,
    check_workers,
    claim,
    claim_next,
    set_workers,
    worker_slots,
    workers_setting,
)
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore, process_identity
from workbench.train.loop import TrainConfig

DIGITS = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=16), epochs=3,
                     teacher="digits-cnn", profile=False, method="dkd")


MARK = "KDW_TEST_RAY_MARK"


@pytest.fixture(autouse=True)
def _mark(monkeypatch):
    """Every process this test starts inherits a mark, so that Ray processes of anything else running on the
    machine (a benchmark) are not counted as left behind."""
    import uuid

    monkeypatch.setenv(MARK, uuid.uuid4().hex)


def _ray_processes(mark: str | None = None) -> list[psutil.Process]:
    names = leftovers.KINDS["ray"]  # monitor.py and log_monitor.py too: `ray stop` alone is no proof
    mark = mark or os.environ.get(MARK)
    out = []
    for p in psutil.process_iter(["cmdline", "name"]):
        cmd = " ".join(p.info["cmdline"] or []) + " " + (p.info["name"] or "")
        if not any(n in cmd for n in names):
            continue
        try:
            if p.environ().get(MARK) == mark:
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.fixture
def ray_local():
    """A local Ray with 2 CPUs for one test, shut down after it, with nothing left running."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    search.shutdown()
    deadline = time.monotonic() + 20
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(), [p.info["cmdline"] for p in _ray_processes()]


# ---------------------------------------------------------------------------
# parallel queue workers

def test_worker_count_defaults_to_one_per_gpu_else_one_and_is_checked(store, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert workers_setting(store) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert workers_setting(store) == 3
    with pytest.raises(ValueError, match="more than this machine has GPUs \\(3\\)"):
        check_workers(4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=f"more than this machine has CPU cores \\({os.cpu_count()}\\)"):
        check_workers(os.cpu_count() + 1)
    with pytest.raises(ValueError, match="at least 1"):
        check_workers(0)


def test_too_many_workers_is_one_sentence_from_the_cli(runs_dir):
    proc = kdw("distill", "--dataset", "digits", "--workers", "99", "--background", "--runs-dir", str(runs_dir),
               check=False)
    assert proc.returncode == 2
    assert "99 workers is more than this machine has" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_is_claimed_by_one_process_only(store):
    run = store.create(DIGITS.record())
    other = process_identity(os.getppid())  # a live process that is not this one
    assert claim(run, other)
    assert not claim(run)  # held by a live process
    assert claim_next(store) is None
    run.claim_path.write_text('{"pid": 999999999, "host": "%s"}' % other["host"])  # a claim by a dead process
    assert claim_next(store).run_id == run.run_id  # is taken over


@pytest.mark.slow
def test_two_workers_run_two_jobs_at_once(store, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    cfg = TrainConfig(kind="scratch", dataset="digits", model=ModelConfig("mlp", depth=1, width=64), epochs=30,
                      profile=False)
    set_workers(store, 2)
    runner = LocalQueueRunner(store)
    ids = [runner.submit(cfg.record()) for _ in range(2)]
    both, slots = False, set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = [store.get(i).status() for i in ids]
        if all(s["state"] == "running" for s in states):
            both = True
            slots = {s.get("worker") for s in states}
            busy = [w for w in worker_slots(store) if w["run"] is not None]
        if all(s["state"] in ("done", "failed") for s in states):
            break
        time.sleep(0.1)
    assert [store.get(i).state for i in ids] == ["done", "done"]
    assert both, "the two jobs never ran at the same time"
    assert slots == {0, 1}  # each on its own worker
    assert {w["slot"] for w in busy} == {0, 1}


# ---------------------------------------------------------------------------
# bad input: one sentence each

def test_bad_search_inputs_are_one_sentence_each():
    # out of the method's own limits: refused before Ray starts, as a single run refuses them
    with pytest.raises(ValueError, match=r"alpha=0.5:1.5 reaches 1.5, which kd refuses \(alpha must be in \[0, 1\]"):
        search.check_ranges("kd", "mlp", [search.parse_range("alpha=0.5:1.5")])
    with pytest.raises(ValueError, match="temperature=1:500 reaches 500, which kd refuses .*at most 100"):
        search.check_ranges("kd", "mlp", [search.parse_range("temperature=1:500")])
    assert search.check_ranges("kd", "mlp", [search.parse_range("temperature=1:8")])
    with pytest.raises(ValueError, match="dkd has no parameter 'gamma' to search; it can search .*beta"):
        search.check_ranges("dkd", "mlp", [search.parse_range("gamma=1:2")])
    with pytest.raises(ValueError, match="empty or inverted"):
        search.parse_range("beta=16:1")
    with pytest.raises(ValueError, match="empty or inverted"):
        search.parse_range("beta=2:2")
    with pytest.raises(ValueError, match="looks like name=low:high"):
        search.parse_range("beta")
    with pytest.raises(ValueError, match="log range of beta must be above 0"):
        search.parse_range("beta=0:4:log")
    with pytest.raises(ValueError, match="trial budget must be at least 1, got 0"):
        search.check_inputs(DIGITS, [search.parse_range("beta=1:16:log")], 0, 1, None, "asha")
    with pytest.raises(ValueError, match="time budget must be above 0 seconds"):
        search.check_inputs(DIGITS, [search.parse_range("beta=1:16:log")], 4, 1, 0, "asha")
    with pytest.raises(ValueError, match="give at least one --param-range"):
        search.check_inputs(DIGITS, [], 4, 1, None, "asha")


def test_cli_rejects_bad_search_inputs_before_starting_anything(runs_dir):
    base = ["search", "--dataset", "digits", "--model", "mlp", "--width", "16", "--method", "dkd", "--epochs", "1",
            "--runs-dir", str(runs_dir)]
    for extra, message in ((["--param-range", "gamma=1:2"], "dkd has no parameter 'gamma'"),
                           (["--param-range", "beta=16:1"], "empty or inverted"),
                           (["--param-range", "beta=1:16", "--trials", "0"], "trial budget must be at least 1"),
                           (["--param-range", "beta=1:16", "--time-budget", "0"], "time budget must be above 0"),
                           (["--param-range", "temperature=1:500"], "reaches 500, which dkd refuses")):
        proc = kdw(*base, *extra, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not list(runs_dir.glob("trial-*"))


def test_an_unreachable_address_fails_fast_with_the_address(runs_dir):
    proc = kdw("search", "--dataset", "digits", "--model", "mlp", "--width", "16", "--method", "dkd", "--epochs", "1",
               "--param-range", "beta=1:16:log", "--address", "127.0.0.1:1", "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode == 2
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in proc.stderr, proc.stderr
    assert not _ray_processes()


def test_ray_missing_names_the_install_command(monkeypatch):
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ValueError, match=r"pip install -e '\.\[search\]'"):
        search.require_ray()


# ---------------------------------------------------------------------------
# searches on Ray Tune

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The 4-trial search on digits (a local Ray with 2 CPUs), run once for the tests that read it."""
    import ray

    os.environ[MARK] = "module-search"
    store = RunStore(tmp_path_factory.mktemp("search") / "runs")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        result = search.search(DIGITS, [search.parse_range("beta=1:16:log")], 4, store, "s1", seeds=1)
    finally:
        search.shutdown()
        os.environ.pop(MARK, None)
    deadline = time.monotonic() + 30
    while _ray_processes("module-search") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes("module-search"), [p.info["cmdline"] for p in _ray_processes("module-search")]
    return store, result


@pytest.mark.slow
def test_a_four_trial_search_on_digits(searched):
    store, result = searched
    trials = [r for r in store.list(group="s1") if "search_values" in r.config]
    assert len(trials) >= 4 and len(result.trials) == len(trials)
    assert all(1 <= t["values"]["beta"] <= 16 for t in result.trials)
    assert all(r.state in ("done", "cancelled") for r in trials)
    # the best by validation accuracy, never by test accuracy
    assert result.best["val_acc"] == max(t["val_acc"] for t in result.trials)
    confirm = [store.get(r) for r in result.final_runs]
    assert sorted(r.config["kind"] for r in confirm) == ["kd", "scratch"]
    assert all(r.state == "done" and r.config.get("search_confirm") for r in confirm)
    kd = next(r for r in confirm if r.config["kind"] == "kd")
    assert kd.config["method_params"]["beta"] == pytest.approx(result.best["values"]["beta"])
    assert result.gain is not None and result.verdict
    st = search.search_status(store, "s1")
    assert st["state"] == "done" and st["final_runs"] == result.final_runs
    # the plots draw from the store
    table = search.trial_table(store, "s1")
    assert plots.caption(plots.search_history(table)) and plots.search_parallel(table).data
    assert set(search.importances(table)) == {"beta"}


@pytest.mark.slow
def test_the_sweep_page_search_mode_shows_a_search(searched, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store, result = searched
    monkeypatch.setenv("KDW_RUNS_DIR", str(store.root))
    at = AppTest.from_string("from workbench.app.sweep import page\npage()", default_timeout=120)
    at.session_state["sw_kind"] = "search"
    at.session_state["swr_method"] = "dkd"
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert at.button(key="swr_launch")  # the form
    assert at.multiselect(key="swr_params_dkd").value == ["beta"]
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == len(result.trials)
    assert len(at.get("plotly_chart")) >= 2  # history and parallel coordinates
    assert any("KD gain over scratch" in m.label for m in at.metric)
    at.number_input(key="swr_dkd_beta_lo").set_value(20.0).run()  # from 20 to 32: fine
    assert not at.error
    at.number_input(key="swr_dkd_beta_hi").set_value(10.0).run()  # inverted: one sentence, Launch off
    assert any("empty or inverted" in e.value for e in at.error)
    assert at.button(key="swr_launch").disabled


@pytest.mark.slow
def test_early_stopping_ends_a_bad_trial(store, ray_local):
    """One trial at a time, learning rates from useless to good: ASHA stops a trial that falls behind at its first
    rung, and its run reads as cancelled by the search with the epochs it finished."""
    base = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=16), epochs=3,
                       teacher="digits-cnn", profile=False, method="kd")
    result = search.search(base, [search.parse_range("lr=1e-6:3e-2:log")], 4, store, "es", seeds=0, workers=1)
    assert not result.final_runs  # seeds=0: the search alone
    stopped = [t for t in result.trials if t["state"] == "cancelled"]
    assert stopped, [(t["values"], t["val_acc"], t["epochs"]) for t in result.trials]
    for t in stopped:
        run = store.get(t["run_id"])
        assert t["epochs"] < 3 and "stopped by the search after" in run.status()["error"]
        assert len(run.metrics()) == t["epochs"]  # its epochs are kept


@pytest.mark.slow
def test_a_cancelled_search_keeps_its_finished_trials(store):
    """The app's path: prepared, started in the background, cancelled from outside; no confirmation runs."""
    base = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=16), epochs=6,
                       teacher="digits-cnn", profile=False, method="dkd")
    search.prepare_search(store, base, [search.parse_range("beta=1:16:log")], 12, "cx", seeds=1, scheduler="none")
    with pytest.raises(ValueError, match="exists already"):
        search.prepare_search(store, base, [search.parse_range("beta=1:16:log")], 12, "cx")
    start_search(store, "cx")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not any(t["state"] == "done" for t in search.trial_table(store, "cx")):
        time.sleep(0.5)
    assert search.cancel_search(store, "cx") == "cancel requested"
    while time.monotonic() < deadline and (search.search_status(store, "cx") or {}).get("state") == "running":
        time.sleep(0.5)
    st = search.search_status(store, "cx")
    assert st["state"] == "cancelled", (st.get("error"), (st.get("error_detail") or "")[-1500:])
    trials = search.trial_table(store, "cx")
    assert any(t["state"] == "done" for t in trials) and len(trials) < 12
    assert all(t["state"] in ("done", "cancelled") for t in trials)
    assert not [r for r in store.list(group="cx") if r.config.get("search_confirm")]
    deadline = time.monotonic() + 30
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes()


@pytest.mark.slow
def test_kdw_sweep_runs_its_grid_on_ray_with_two_workers(runs_dir, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    proc = kdw("sweep", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "32", "--epochs", "15",
               "--temperatures", "4", "--alphas", "0.9", "--seeds", "1", "--workers", "2", "--group", "g",
               "--no-profile", "--runs-dir", str(runs_dir))
    assert "2 runs on Ray, 2 at a time" in proc.stderr
    runs = RunStore(runs_dir).list(group="g")
    assert sorted(r.config["kind"] for r in runs) == ["kd", "scratch"] and all(r.state == "done" for r in runs)
    spans = [(r.status()["started"], r.path.joinpath("summary.json").stat().st_mtime) for r in runs]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], "the two runs did not overlap"
    assert "KD gain" in proc.stdout
    assert not _ray_processes(), [p.info["cmdline"] for p in _ray_processes()]  # kdw waited for Ray's processes


@pytest.mark.slow
def test_a_sweep_stopped_with_sigterm_cancels_what_it_queued_and_nothing_trains_it_later(runs_dir, monkeypatch):
    """Before, `kill` of a sweep on Ray left its runs queued, and the next `kdw runs` started a worker that went on
    training the stopped sweep. Now SIGTERM stops it like Ctrl-C: every run that had not started is cancelled."""
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "sweep", "--dataset", "digits", "--model", "mlp",
                             "--width", "16", "--epochs", "30", "--temperatures", "1", "2", "4", "8", "--alphas",
                             "0.5", "0.9", "--workers", "1", "--engine", "ray", "--group", "stop", "--no-profile",
                             "--runs-dir", str(runs_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = RunStore(runs_dir)
    deadline = time.monotonic() + 300
    while not any(r.state == "running" for r in store.list(group="stop")) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before any run started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(180) != 0
    states = [r.state for r in store.list(group="stop")]
    assert len(states) == 9 and "queued" not in states and "running" not in states, states
    assert states.count("cancelled") >= 7, states
    kdw("runs", "--runs-dir", str(runs_dir))  # before, this started a worker for the stranded runs
    assert not [r for r in store.list(group="stop") if r.state in ("queued", "running")]
    deadline = time.monotonic() + 60
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes()


@pytest.mark.slow
def test_search_panel_in_a_notebook(searched):
    from workbench.notebook.widgets import search_panel

    store, result = searched
    panel = search_panel("digits", store)
    assert panel.ranges.value == "beta=0.5:32:log"  # dkd's weight around its paper's value
    panel.ranges.value = "beta=16:1"
    assert panel.launch() is None and "empty or inverted" in panel.status.value
    panel.ranges.value = "gamma=1:2"
    assert panel.launch() is None and "no parameter 'gamma'" in panel.status.value
    panel.group = "s1"  # follow the finished search
    assert panel.refresh()
    assert "done: " in panel.status.value and "KD gain over scratch" in panel.status.value
    assert panel.history.data and panel.parallel.data


@pytest.mark.slow
def test_a_search_on_a_two_node_ray_cluster_with_a_shared_store(runs_dir, tmp_path, monkeypatch):
    """`--address`: a head and a second Ray worker process (`ray start`), both seeing the run store's folder."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the same on every machine (no token file needed)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).parent / "ray")
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([ray_cli, "start", f"--address=127.0.0.1:{port}", *common], check=True, capture_output=True,
                       timeout=120)
        proc = kdw("search", "--dataset", "digits", "--model", "mlp", "--width", "16", "--method", "dkd", "--epochs",
                   "2", "--param-range", "beta=1:16:log", "--trials", "2", "--seeds", "1", "--group", "c1",
                   "--address", f"127.0.0.1:{port}", "--runs-dir", str(runs_dir))
        assert "KD gain over the scratch twin" in proc.stdout
        runs = RunStore(runs_dir).list(group="c1")
        assert len(runs) == 4 and all(r.state in ("done", "cancelled") for r in runs)
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        deadline = time.monotonic() + 30
        while _ray_processes() and time.monotonic() < deadline:  # what `ray stop` left: its monitors
            for p in _ray_processes():
                try:
                    p.kill()
                except psutil.Error:
                    pass
            time.sleep(0.5)
        assert not _ray_processes(), [p.info["cmdline"] for p in _ray_processes()]


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_failed_with_its_metrics_and_the_search_goes_on(store, ray_local):
    import signal
    import threading

    base = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=64), epochs=40,
                       teacher="digits-cnn", profile=False, method="dkd")
    out = {}
    thread = threading.Thread(target=lambda: out.update(result=search.search(
        base, [search.parse_range("beta=1:16:log")], 2, store, "kill", seeds=0, workers=1, scheduler="none")))
    thread.start()
    victim, deadline = None, time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for run in store.list(group="kill"):
            st = run.status()
            if st["state"] == "running" and len(run.metrics()) >= 2:
                os.kill(int(st["pid"]), signal.SIGKILL)  # the trial's Ray worker dies mid-trial
                victim = run
                break
        time.sleep(0.2)
    thread.join(240)
    assert victim is not None and "result" in out
    st = victim.status()
    assert st["state"] == "failed" and "Ray worker died after" in st["error"], st
    assert len(victim.metrics()) >= 2  # the epochs it finished are kept
    others = [t for t in out["result"].trials if t["run_id"] != victim.run_id]
    assert len(others) == 1 and others[0]["state"] == "done"  # the search went on


def test_a_search_cancelled_before_it_starts_never_starts_ray(store):
    search.prepare_search(store, DIGITS, [search.parse_range("beta=1:16:log")], 4, "early-cancel", seeds=1)
    assert search.search_status(store, "early-cancel")["state"] == "queued"
    assert search.cancel_search(store, "early-cancel") == "cancelled"  # at once: nothing had started
    result = search.run_prepared(store, "early-cancel")
    assert result.state == "cancelled" and not result.trials
    assert search.search_status(store, "early-cancel")["state"] == "cancelled"
    assert not _ray_processes()
