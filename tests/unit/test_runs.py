"""The run store: layout, atomic JSON, validated ids, status of dead processes, torn metrics."""

import json
import os
import subprocess
import sys

import pytest

from workbench.errors import RunStoreError
from workbench.io import atomic_write_json
from workbench.store.runs import RunStore, new_run_id, process_identity, validate_run_id


def test_create_writes_config_with_schema_version_and_queued_status(store):
    run = store.create({"kind": "kd", "dataset": "digits"}, run_id="my-run_1.0")
    assert run.path == store.root / "my-run_1.0"
    assert run.config["schema_version"] == 2 and run.config["run_id"] == "my-run_1.0"
    assert run.status()["state"] == "queued"
    assert [r.run_id for r in store.list()] == ["my-run_1.0"]


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", ".", ".hidden", "", "x" * 65, "a b", "runs\\x", "ü"])
def test_run_ids_with_paths_or_odd_characters_are_refused(store, bad):
    with pytest.raises(ValueError, match="invalid run id"):
        validate_run_id(bad)
    with pytest.raises(ValueError, match="invalid run id"):
        store.create({"kind": "kd"}, run_id=bad)
    assert not (store.root.parent / "evil").exists()


def test_generated_run_ids_are_valid_and_distinct():
    ids = {new_run_id("kd") for _ in range(50)}
    assert len(ids) == 50 and all(validate_run_id(i) for i in ids)


def test_duplicate_run_id_is_an_error_and_loses_nothing(store):
    run = store.create({"kind": "kd", "note": "first"}, run_id="same")
    with pytest.raises(RunStoreError, match="already exists"):
        store.create({"kind": "kd", "note": "second"}, run_id="same")
    assert run.config["note"] == "first"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_status_of_a_running_run_whose_process_died_reads_failed(store):
    run = store.create({"kind": "kd"})
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run.set_status("running", pid=proc.pid, host=os.uname().nodename)
    st = run.status()
    assert st["state"] == "failed" and "ended without finishing" in st["error"]
    run.set_status("running", pid=os.getpid(), host=os.uname().nodename)
    assert run.state == "failed"  # a pid without its start time names no process for sure: read as lost
    run.set_status("running", **process_identity())
    assert run.state == "running"


def test_metrics_reader_skips_a_torn_last_line(store):
    run = store.create({"kind": "kd"})
    run.append_metrics({"epoch": 1, "val_acc": 0.5})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_a')  # a writer killed mid-line
    assert run.metrics() == [{"epoch": 1, "val_acc": 0.5}]


def test_unwritable_runs_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunStoreError, match="not writable.*KDW_RUNS_DIR"):
        RunStore(blocker / "runs").create({"kind": "kd"})


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_runs_folder_is_a_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunStoreError, match="not writable"):
            RunStore(ro).create({"kind": "kd"})
    finally:
        ro.chmod(0o700)


def test_get_unknown_run_says_how_to_list(store):
    with pytest.raises(RunStoreError, match="kdw runs"):
        store.get("nope")


def test_list_filters_by_kind_and_group_and_ignores_hidden_folders(store):
    store.create({"kind": "kd", "group": "g"})
    store.create({"kind": "scratch", "group": "g"})
    store.create({"kind": "teacher"})
    (store.root / ".cache").mkdir()
    assert len(store.list()) == 3
    assert [r.config["kind"] for r in store.list(group="g", kind="kd")] == ["kd"]
