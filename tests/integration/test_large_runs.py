"""Large runs: data parallel with torch.distributed.run (gloo, 2 processes on the CPU), resume after a SIGKILL,
and tracking to TensorBoard and MLflow, read back; every bad input is a sentence."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import ROOT, kdw

from workbench.jobs.queue import LocalQueueRunner, check_resumable, resume_in_process
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig, train

TINY = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=32), epochs=4,
                   batch_size=64, teacher="digits-cnn", profile=False)


def _job(store: RunStore, run_id: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench", "job", run_id, "--runs-dir", str(store.root)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------------------
# data parallel

@pytest.mark.slow
def test_two_processes_reach_the_accuracy_of_one_with_the_same_global_batch(runs_dir, digits, store):
    accs = [train(TrainConfig(**{**TINY.to_dict(), "seed": s}), store=store, dataset=digits)["test"]["accuracy"]
            for s in (0, 1, 2)]
    kdw("distill", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "32", "--epochs", "4",
        "--batch-size", "64", "--no-scratch", "--no-profile", "--nproc", "2", "--run-id", "ddp",
        "--runs-dir", str(runs_dir))
    two = json.loads((runs_dir / "ddp" / "summary.json").read_text())["test"]["accuracy"]
    spread = statistics.stdev(accs)
    assert abs(two - accs[0]) <= max(2 * spread, 0.01), (two, accs)  # seed 0 on 1 and on 2 processes
    assert json.loads((runs_dir / "ddp" / "config.json").read_text())["nproc"] == 2
    assert len([json.loads(l) for l in (runs_dir / "ddp" / "metrics.jsonl").read_text().splitlines()]) == 4


def test_more_processes_than_the_machine_has_is_refused(runs_dir):
    proc = kdw("distill", "--dataset", "digits", "--nproc", str((os.cpu_count() or 1) + 1), "--runs-dir",
               str(runs_dir), check=False)
    assert proc.returncode == 2 and "asks for more processes than this machine has CPU cores" in proc.stderr


# ---------------------------------------------------------------------------
# resume

@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result_as_an_uninterrupted_one(store):
    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 8})
    whole = store.create(cfg.record(), run_id="whole")
    assert _job(store, "whole").wait(300) == 0
    killed = store.create(cfg.record(), run_id="killed")
    proc = _job(store, "killed")
    deadline = time.monotonic() + 120
    while len(killed.metrics()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.state == "failed" and 3 <= len(killed.metrics()) < 8
    proc = kdw("resume", "killed", "--runs-dir", str(store.root))
    assert "Traceback" not in proc.stderr and killed.state == "done"
    a, b = whole.metrics(), killed.metrics()
    assert [r["epoch"] for r in b] == list(range(1, 9))  # the history is whole, each epoch once
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-5)
    assert killed.summary["test"]["accuracy"] == pytest.approx(whole.summary["test"]["accuracy"], abs=1e-9)


def test_resume_refuses_a_finished_run_no_checkpoint_and_changed_options(store, digits):
    done = store.create(TINY.record(), run_id="done")
    from workbench.jobs.queue import execute_run

    assert execute_run(done, store) == "done" and done.checkpoint_path.is_file()
    with pytest.raises(ValueError, match="has finished; there is nothing to resume"):
        check_resumable(done)
    early = store.create(TINY.record(), run_id="early")
    early.set_status("failed", error="killed before its first epoch")
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        check_resumable(early)
    done.set_status("cancelled")
    with pytest.raises(ValueError, match="these differ: epochs: 4 in the run, 9 asked"):
        check_resumable(done, {"epochs": 9})
    assert resume_in_process(done, store, overrides={"epochs": 4}) == "done"  # the same options are fine


@pytest.mark.slow
def test_the_queue_resumes_a_cancelled_run(store):
    runner = LocalQueueRunner(store)
    rid = runner.submit(TrainConfig(**{**TINY.to_dict(), "epochs": 300}).record())
    run = store.get(rid)
    deadline = time.monotonic() + 120
    while len(run.metrics()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.cancel(rid)
    while run.state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.state == "cancelled"
    stopped_at = len(run.metrics())
    runner.resume(rid)
    while len(run.metrics()) <= stopped_at + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.cancel(rid)
    epochs = [r["epoch"] for r in run.metrics()]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > stopped_at


# ---------------------------------------------------------------------------
# tracking

def test_tensorboard_and_mlflow_get_params_metrics_and_artifacts(store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 3,
                         "track": ("tensorboard:" + str(tmp_path / "tb"), "mlflow:file:" + str(tmp_path / "ml"))})
    run = store.create(cfg.record(), run_id="tracked")
    from workbench.jobs.queue import execute_run

    assert execute_run(run, store) == "done"
    rows = run.metrics()
    events = EventAccumulator(str(tmp_path / "tb" / "tracked"))
    events.Reload()
    assert [e.value for e in events.Scalars("val_acc")] == pytest.approx([r["val_acc"] for r in rows])
    assert [e.value for e in events.Scalars("loss_kd")] == pytest.approx([r["loss_kd"] for r in rows])
    assert (tmp_path / "tb" / "tracked" / "artifacts" / "student.safetensors").is_file()

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:" + str(tmp_path / "ml"))
    (ml_run,) = client.search_runs([client.get_experiment_by_name("kd-workbench").experiment_id])
    assert ml_run.data.params["method_params.temperature"] == "4.0" and ml_run.info.run_name == "tracked"
    history = client.get_metric_history(ml_run.info.run_id, "loss_ce")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r["loss_ce"] for r in rows])
    assert {a.path for a in client.list_artifacts(ml_run.info.run_id)} == {"summary.json", "student.safetensors"}


def test_mlflow_defaults_to_sqlite_ends_runs_by_state_and_groups_them_under_a_parent(store, monkeypatch, tmp_path):
    """MLflow as its users expect: SQLite in the run store (or $MLFLOW_TRACKING_URI), FINISHED or FAILED, and the
    runs of one group as children of a parent run; TensorBoard closes its writer and logs add_hparams."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from workbench.jobs.queue import execute_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the job's folder: MLflow's default artifact root (./mlruns) would land here
    base = {**TINY.to_dict(), "epochs": 2, "group": "g1", "track": ("mlflow", "tensorboard")}
    ok = store.create(TrainConfig(**base).record(), run_id="ok")
    bad = store.create(TrainConfig(**{**base, "init": str(store.root / "missing.safetensors")}).record(), run_id="bad")
    assert execute_run(ok, store) == "done" and execute_run(bad, store) == "failed"
    client = MlflowClient(tracking_uri=f"sqlite:///{store.root / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("kd-workbench").experiment_id])}
    assert runs["ok"].info.status == "FINISHED" and runs["bad"].info.status == "FAILED"
    parent = runs["g1"]
    assert runs["ok"].data.tags["mlflow.parentRunId"] == runs["bad"].data.tags["mlflow.parentRunId"] == \
        parent.info.run_id
    assert parent.data.tags["kdw.kind"] == "group"
    assert runs["ok"].data.params["method_params.alpha"] == "0.9"  # params in batches, all of them
    assert not (elsewhere / "mlruns").exists()  # the artifacts live beside the database, in the run store
    assert (store.root / "mlflow-artifacts" / runs["ok"].info.run_id / "artifacts" / "summary.json").is_file()
    events = EventAccumulator(str(store.root / "tensorboard" / "ok"), size_guidance={"tensors": 0})
    events.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_end_info"} <= set(events.summary_metadata)  # HParams view
    assert "hparam/test_acc" in events.Tags()["scalars"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store.root / 'elsewhere.db'}")
    again = store.create(TrainConfig(**{**base, "group": None, "track": ("mlflow",)}).record(), run_id="env")
    assert execute_run(again, store) == "done"
    other = MlflowClient(tracking_uri=f"sqlite:///{store.root / 'elsewhere.db'}")
    (only,) = other.search_runs([other.get_experiment_by_name("kd-workbench").experiment_id])
    assert only.info.run_name == "env" and only.info.status == "FINISHED"


def test_an_unreachable_tracking_uri_warns_and_the_run_goes_on(store, caplog):
    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 2, "track": ("mlflow:http://127.0.0.1:9",)})
    run = store.create(cfg.record(), run_id="offline")
    from workbench.jobs.queue import execute_run

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "2"
    assert execute_run(run, store) == "done"
    warned = [r for r in caplog.records if r.name.startswith("workbench") and r.levelname == "WARNING"]
    assert any("tracking to mlflow" in r.getMessage() for r in warned)  # through logging, not print
    assert len(run.metrics()) == 2 and run.summary["test"]["accuracy"] > 0  # the run store is complete


def test_a_missing_tracking_package_says_how_to_install_it(monkeypatch):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "mlflow" else real(name, *a, **k))
    with pytest.raises(ValueError, match=r"--track mlflow needs the optional package mlflow: pip install -e '\.\[tracking\]'"):
        TrainConfig(**{**TINY.to_dict(), "track": ("mlflow",)})
    with pytest.raises(ValueError, match="unknown tracking target 'wandb'"):
        TrainConfig(**{**TINY.to_dict(), "track": ("wandb",)})


def test_the_settings_file_gives_a_default_target(tmp_path, monkeypatch):
    from workbench.train.tracking import default_targets

    (tmp_path / "settings.toml").write_text('track = ["tensorboard"]\n')
    monkeypatch.setenv("KDW_SETTINGS", str(tmp_path / "settings.toml"))
    assert default_targets() == ["tensorboard"]


@pytest.mark.slow
def test_two_resumes_of_one_killed_run_at_the_same_moment_train_it_once(store):
    """Before, both returned 0 and both trained: metrics.jsonl held every epoch after the kill twice. A resume now
    claims the run under the queue's lock, so the second says so (or, if the first has finished, that there is
    nothing to resume) and leaves the run alone."""
    cfg = TrainConfig(**{**TINY.to_dict(), "epochs": 30})
    killed = store.create(cfg.record(), run_id="twice")
    proc = _job(store, "twice")
    deadline = time.monotonic() + 120
    while len(killed.metrics()) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.state == "failed"
    cmd = [sys.executable, "-m", "workbench", "resume", "twice", "--runs-dir", str(store.root)]
    both = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(p.wait(300), p.stderr.read()) for p in both]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert any(why in refused for why in ("already being resumed or trained", "nothing to resume",
                                          "is running; only a failed")), refused  # whichever moment it came
    assert "Traceback" not in refused
    assert killed.state == "done" and [r["epoch"] for r in killed.metrics()] == list(range(1, 31))
