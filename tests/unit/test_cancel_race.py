"""Cancel is final: a cancel that says "cancelled before it started" and a job's start are decided under one lock,
so a run whose status says cancelled never trains (raced many times)."""

from __future__ import annotations

import threading

from workbench.jobs import queue
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig

CONFIG = TrainConfig(kind="scratch", dataset="digits", model=ModelConfig("mlp", 1, 8), epochs=1, profile=False)


def test_a_cancel_racing_the_start_never_lets_a_cancelled_run_train(tmp_path, monkeypatch):
    trained = []

    def fake_train(config, run=None, **kw):  # what matters is whether training began at all
        trained.append(run.run_id)
        return {}

    monkeypatch.setattr("workbench.train.loop.train", fake_train)
    # the job runs in this process: a cancel that finds it running would send SIGTERM to the test itself (seen on a
    # busy machine: whatever handler an earlier test left turned it into SystemExit); the race is about the lock
    signalled = []
    monkeypatch.setattr(queue.os, "kill", lambda pid, sig: signalled.append((pid, sig)))
    store = RunStore(tmp_path / "runs")
    runner = queue.LocalQueueRunner(store)
    monkeypatch.setattr(runner, "ensure_worker", lambda: None)  # this test is the worker
    outcomes = {"cancelled first": 0, "started first": 0}
    for i in range(60):
        rid = runner.submit(CONFIG.record(), run_id=f"r{i}")
        gate = threading.Barrier(2)
        said = {}

        def start():
            gate.wait()
            try:
                said["job"] = queue.run_job(rid, store)
            except Exception as e:  # cancelled before run_job even looked: it refuses a run that is not queued
                said["job"] = f"refused: {e}"

        def cancel():
            gate.wait()
            said["cancel"] = runner.cancel(rid)

        threads = [threading.Thread(target=start), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        run = store.get(rid)
        if said["cancel"] == "cancelled before it started":
            outcomes["cancelled first"] += 1
            assert rid not in trained, (rid, said)
            assert run.state == "cancelled", (rid, said, run.status())
        else:
            outcomes["started first"] += 1
            assert rid in trained and run.state in ("done", "cancelled"), (rid, said, run.status())
    assert sum(outcomes.values()) == 60
