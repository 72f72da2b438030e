"""Trust boundaries and the faults just outside the documented ones: code named by a checkpoint, wrong-typed
store fields, relative paths in background jobs, a full disk, exports that die, manifests that point outside
their folder, damaged checkpoints and leftovers. Each test failed before its fix (docs/reliability.md)."""

import os

import pytest
import torch
from conftest import kdw

from workbench.errors import ModelError, WorkbenchError
from workbench.models.zoo import build_model, load_checkpoint, parse_model, save_checkpoint
from workbench.train.teachers import load_teacher

FACTORY = '''
from pathlib import Path
from torch import nn

Path(__file__).with_suffix(".ran").write_text("the factory ran")

def make(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

class Net(nn.Module):
    def __init__(self, num_classes, input_shape):
        super().__init__()
        self.fc = nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

def takes_anything(*args, **kwargs):
    raise AssertionError("never called")
'''


@pytest.fixture
def factory_checkpoint(tmp_path):
    """A teacher checkpoint whose metadata names a factory file; the file leaves a mark when it runs."""
    code = tmp_path / "f.py"
    code.write_text(FACTORY)
    model = build_model(parse_model(f"{code}:make"), (1, 8, 8), 10)
    path = tmp_path / "copy.safetensors"
    save_checkpoint(model, path)
    code.with_suffix(".ran").unlink()
    return path, code.with_suffix(".ran")


# ---------------------------------------------------------------------------
# 1. a checkpoint never names code to run unless the user trusts it

def test_a_checkpoint_naming_a_factory_is_refused_without_trust_and_its_code_never_runs(factory_checkpoint, store):
    path, mark = factory_checkpoint
    with pytest.raises(ModelError, match=r"names a model built by code .*would run that code; pass --trust-factory"):
        load_teacher(str(path), store)
    with pytest.raises(ModelError, match="would run that code"):
        load_checkpoint(path)
    assert not mark.exists()
    teacher = load_teacher(str(path), store, trust_factory=True)
    assert mark.exists() and teacher.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_kdw_distill_refuses_a_factory_checkpoint_and_runs_it_with_trust_factory(factory_checkpoint, runs_dir):
    path, mark = factory_checkpoint
    base = ("distill", "--dataset", "digits", "--teacher", str(path), "--epochs", "1", "--no-scratch",
            "--no-profile", "--runs-dir", str(runs_dir))
    refused = kdw(*base, check=False)
    assert refused.returncode != 0 and "--trust-factory" in refused.stderr and "Traceback" not in refused.stderr
    assert not mark.exists() and not any(runs_dir.glob("kd-*"))
    kdw(*base, "--trust-factory")
    assert mark.exists()


@pytest.mark.parametrize("spec, message", [
    ("os:system", "is a builtin_function_or_method, not a model factory"),
    ("subprocess:run", "is not a model factory: it takes no num_classes or input_shape argument"),
    ("collections:OrderedDict", "is a class but not a torch.nn.Module"),
    ("FILE:takes_anything", "takes no num_classes or input_shape argument"),
])
def test_a_callable_that_is_not_a_model_factory_is_never_called(spec, message, tmp_path):
    code = tmp_path / "f.py"
    code.write_text(FACTORY)
    with pytest.raises(ModelError, match=message):
        build_model(parse_model(spec.replace("FILE", str(code))), (1, 8, 8), 10)


def test_a_factory_class_that_is_a_module_is_a_factory(tmp_path):
    code = tmp_path / "f.py"
    code.write_text(FACTORY)
    assert build_model(parse_model(f"{code}:Net"), (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


# ---------------------------------------------------------------------------
# 2. a field of the wrong type makes its run unreadable, never the store

def _leaves(obj, prefix=()):
    """Every field of a JSON object, as key paths (into nested objects, not into lists)."""
    for k, v in obj.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _kind(v):
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A store with a finished distilled run and its scratch twin (the template each case copies)."""
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import RunStore
    from workbench.train.loop import TrainConfig

    store = RunStore(tmp_path_factory.mktemp("pristine"))
    base = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=2,
                       batch_size=64, teacher="digits-cnn", group="g")
    for run_id, cfg in (("scratch", base.__class__(**{**base.__dict__, "kind": "scratch", "method": None,
                                                      "method_params": {}})), ("kd", base)):
        run = store.create(cfg.record(), run_id=run_id)
        assert execute_run(run, store) == "done"
    return store.root


def _fields(root):
    """(run, file, key path) for every field of every JSON file and of the first metrics line."""
    import json

    out = []
    for run in ("kd", "scratch"):
        for name in ("config.json", "status.json", "summary.json"):
            obj = json.loads((root / run / name).read_text())
            out += [(run, name, p) for p in _leaves(obj)]
        row = json.loads((root / run / "metrics.jsonl").read_text().splitlines()[0])
        out += [(run, "metrics.jsonl", p) for p in _leaves(row)]
    return out


WRONG = ["yesterday", "0.9", ["x"], {"a": 1}, True, 7, -1.5, None, [], ""]


def _damage(root, dest, run, name, path, value):
    """A copy of the store at `root` with one field of one file set to `value`."""
    import json
    import shutil

    shutil.copytree(root, dest)
    f = dest / run / name
    if name == "metrics.jsonl":
        lines = f.read_text().splitlines()
        row = json.loads(lines[0])
        _set(row, path, value)
        f.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n")
    else:
        obj = json.loads(f.read_text())
        _set(obj, path, value)
        f.write_text(json.dumps(obj))
    return dest


def _views_survive(root, capsys):
    """kdw runs, compare, report and the comparison rows work on the store; every error is one sentence."""
    import json

    from workbench.analysis.compare import comparison_rows
    from workbench.analysis.report import build_report
    from workbench.cli.main import main
    from workbench.store.runs import RunStore

    store = RunStore(root)
    runs = store.list()
    assert sorted(r.run_id for r in runs) == ["kd", "scratch"]  # a damaged run is listed, never dropped
    assert len(comparison_rows(runs)) <= 3  # the two runs and their teacher, the unreadable left out
    assert build_report(runs).rstrip().endswith("</html>")
    for s in (store.list(kind="kd"), store.list(group="g"), store.list(state="done")):
        assert all(isinstance(r.info(), dict) for r in s)
    for argv in (["runs"], ["runs", "--json"], ["runs", "--group", "g"], ["compare", "kd", "scratch"],
                 ["compare", "--aggregate", "--group", "g"], ["report", "kd", "scratch", "-o", str(root / "r.html")]):
        try:  # KDW_DEBUG: an error reaches here as itself, so a crash (TypeError, KeyError) is not a sentence
            code = main([*argv, "--runs-dir", str(root)])
        except WorkbenchError as e:
            code = None  # a sentence on purpose: "run kd is unreadable: field created holds a str …"
            assert str(e) and "\n" not in str(e).strip()
        out = capsys.readouterr().out
        if argv == ["runs", "--json"]:  # both runs, each with its state or why it is unreadable
            assert code == 0 and {r["run_id"] for r in json.loads(out)} == {"kd", "scratch"}
        if argv[0] == "report" and code == 0:
            assert (root / "r.html").read_text().rstrip().endswith("</html>")


def test_every_field_of_the_wrong_type_leaves_the_store_readable(pristine, tmp_path, capsys, monkeypatch):
    """One wrong-typed value in each field in turn (the first of WRONG whose JSON type differs)."""
    import json

    monkeypatch.setenv("KDW_DEBUG", "1")
    checked = 0
    for i, (run, name, path) in enumerate(_fields(pristine)):
        f = pristine / run / name
        original = _get(json.loads(f.read_text().splitlines()[0] if name == "metrics.jsonl" else f.read_text()), path)
        value = next(v for v in WRONG if _kind(v) != _kind(original))
        root = _damage(pristine, tmp_path / f"s{i}", run, name, path, value)
        try:
            _views_survive(root, capsys)
        except Exception as e:
            raise AssertionError(f"{name} {'.'.join(path)} = {value!r} broke a view: {type(e).__name__}: {e}") from e
        checked += 1
    assert checked > 150


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 12, 10 ** 12) |
                           st.floats(allow_nan=False) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                         max_size=3), max_leaves=6)


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_values_in_random_fields_leave_the_store_readable(pristine, tmp_path_factory, capsys, monkeypatch,
                                                                data):
    monkeypatch.setenv("KDW_DEBUG", "1")
    run, name, path = data.draw(st.sampled_from(_fields(pristine)), label="field")
    value = data.draw(JSON_VALUES, label="value")
    _views_survive(_damage(pristine, tmp_path_factory.mktemp("h") / "s", run, name, path, value), capsys)


@pytest.mark.slow
def test_every_app_page_survives_a_store_where_each_field_is_wrong_somewhere(pristine, tmp_path, monkeypatch):
    """One copy of the distilled run per field, each with that field wrong; every page renders, no exception."""
    import json
    import shutil

    from streamlit.testing.v1 import AppTest

    root = tmp_path / "store"
    shutil.copytree(pristine, root)
    for i, (run, name, path) in enumerate(_fields(pristine)):
        if run != "kd":
            continue
        f = pristine / run / name
        original = _get(json.loads(f.read_text().splitlines()[0] if name == "metrics.jsonl" else f.read_text()), path)
        value = next(v for v in WRONG if _kind(v) != _kind(original))
        one = _damage(pristine, tmp_path / f"one{i}", run, name, path, value)
        shutil.move(one / run, root / f"kd-{i}")
    monkeypatch.setenv("KDW_RUNS_DIR", str(root))
    for module in ("dark_knowledge", "train", "compare", "sweep"):
        at = AppTest.from_string(f"from workbench.app.{module} import page\npage()", default_timeout=240).run()
        assert not at.exception, (module, [e.value for e in at.exception])
        assert not at.error, (module, [e.value for e in at.error])
        if module == "compare":  # the readable copies are compared; the unreadable ones are left out
            assert at.dataframe and len(at.dataframe[0].value) > 10


# ---------------------------------------------------------------------------
# 3. paths are absolute before a job is queued

def test_every_path_of_a_config_is_made_absolute_and_names_stay_names(tmp_path, monkeypatch):
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    (tmp_path / "t.safetensors").write_bytes(b"")
    (tmp_path / "tok").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(kind="kd", dataset="image-folder", data_dir="imgs", init="w/start.pth", teacher="t.safetensors",
                      model=ModelConfig("factory", name="models/f.py:make"), tokenizer="tok").with_absolute_paths()
    assert cfg.data_dir == str(tmp_path / "imgs") and cfg.init == str(tmp_path / "w/start.pth")
    assert cfg.teacher == str(tmp_path / "t.safetensors") and cfg.tokenizer == str(tmp_path / "tok")
    assert cfg.model.name == f"{tmp_path / 'models/f.py'}:make"
    named = TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn,run:kd-1", tokenizer="bert-base-uncased",
                        model=ModelConfig("factory", name="my_pkg.models:make")).with_absolute_paths()
    assert named.teacher == "digits-cnn,run:kd-1" and named.tokenizer == "bert-base-uncased"
    assert named.model.name == "my_pkg.models:make"


@pytest.mark.slow
def test_a_background_job_finds_a_relative_data_folder_and_factory_of_its_submitter(tmp_path):
    """`cd DIR && kdw teacher --data-dir imgs --model f.py:make --background`: the worker runs elsewhere."""
    import json
    import subprocess
    import sys
    import time

    from conftest import make_image_folder

    from workbench.store.runs import RunStore

    make_image_folder(tmp_path / "imgs")
    (tmp_path / "f.py").write_text(FACTORY)
    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "workbench", "teacher", "--dataset", "image-folder",
                           "--data-dir", "imgs", "--model", "f.py:make", "--image-size", "8", "--epochs", "1",
                           "--no-profile", "--background", "--runs-dir", str(runs)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    store = RunStore(runs)
    (run,) = store.list()
    deadline = time.monotonic() + 240
    while run.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.state == "done", run.status()
    config = json.loads(run.config_path.read_text())
    assert config["data_dir"] == str(tmp_path / "imgs") and config["model"]["name"] == f"{tmp_path / 'f.py'}:make"


# ---------------------------------------------------------------------------
# 8. a damaged or edited checkpoint is one sentence

@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A 2-epoch run with its checkpoint, marked failed so that it can be resumed (the template each case copies)."""
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import RunStore
    from workbench.train.loop import TrainConfig

    store = RunStore(tmp_path_factory.mktemp("resumable"))
    cfg = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=2,
                      batch_size=64, teacher="digits-cnn", profile=False)
    run = store.create(cfg.record(), run_id="r")
    assert execute_run(run, store) == "done" and run.checkpoint_path.is_file()
    run.set_status("failed", error="killed")
    return store.root


def _edit(state):
    import argparse

    return {"truncated": None, "empty": None, "an object": {**state, "extra": argparse.Namespace(a=1)},
            "no epoch": {k: v for k, v in state.items() if k != "epoch"}, "epoch 99": {**state, "epoch": 99},
            "another student": {**state, "student": {k: torch.zeros(3) for k in state["student"]}}}


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"cannot be read \((EOFError|RuntimeError)"), ("empty", r"cannot be read \(EOFError"),
    ("an object", "holds objects other than tensors and numbers"), ("no epoch", "it has no epoch"),
    ("epoch 99", r"its epoch 99 is not one of the run's \(the run has 2 epochs\)"),
    ("another student", r"its weights do not fit the run's student \(.*expected .*found \(3,\)"),
])
def test_a_damaged_checkpoint_is_one_sentence(resumable, tmp_path, damage, message):
    import shutil

    from workbench.errors import CheckpointDamaged
    from workbench.jobs.queue import resume_in_process
    from workbench.store.runs import RunStore

    root = tmp_path / "s"
    shutil.copytree(resumable, root)
    store = RunStore(root)
    run = store.get("r")
    path = run.checkpoint_path
    state = torch.load(path, weights_only=True)
    edited = _edit(state)[damage]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save(edited, path)
    before = (run.path / "status.json").read_text()
    with pytest.raises(CheckpointDamaged) as caught:  # before the resume or once its session is built
        resume_in_process(run, store)
    error = str(caught.value)
    assert (run.path / "status.json").read_text() == before  # the run is left as it was: state, error, pid, times
    assert run.state == "failed" and run.status()["error"] == "killed"
    assert error.startswith(f"checkpoint {path} is damaged: ") and "start the run again" in error, error
    assert __import__("re").search(message, error), error
    assert "weights_only" not in error and "Traceback" not in error and "\n" not in error


# ---------------------------------------------------------------------------
# 7. a CSV manifest is contained in its folder

def test_a_manifest_cannot_reach_outside_its_folder_unless_allowed(tmp_path, runs_dir):
    import shutil

    from conftest import make_image_folder

    from workbench.data.datasets import load_dataset
    from workbench.data.images import list_csv
    from workbench.errors import DataError

    imgs = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6)
    home = tmp_path / "data"
    home.mkdir()
    outside = tmp_path / "elsewhere.png"
    shutil.copy(next((imgs / "a").iterdir()), outside)
    shutil.copytree(imgs, home / "imgs")
    rows = [f"imgs/{c}/{f.name},{c}" for c in ("a", "b") for f in sorted((imgs / c).iterdir())]
    manifest = home / "m.csv"
    for bad in ("../../../../etc/passwd", str(outside), "../imgs/a/" + next((imgs / "a").iterdir()).name):
        manifest.write_text("\n".join([rows[0], rows[-1], f"{bad},a"]) + "\n")
        with pytest.raises(DataError, match=f"image {bad} lies outside the manifest's folder"):
            list_csv(manifest)
    manifest.write_text("\n".join(rows) + f"\n{outside},a\n")
    with pytest.raises(DataError, match=r"elsewhere.png lies outside .*pass --allow-outside"):
        load_dataset("csv", manifest, image_size=8)
    assert len(list_csv(manifest, allow_outside=True).files) == 13
    assert load_dataset("csv", manifest, image_size=8, allow_outside=True).num_classes == 2
    refused = kdw("teacher", "--dataset", "csv", "--data-dir", str(manifest), "--epochs", "1", "--image-size", "8",
                  "--runs-dir", str(runs_dir), check=False)
    assert refused.returncode != 0 and "--allow-outside" in refused.stderr and not any(runs_dir.glob("teacher-*"))


# ---------------------------------------------------------------------------
# 11. leftovers: temporary files of killed writers

def test_the_temporary_files_of_a_killed_writer_are_swept_when_the_store_opens(tmp_path):
    import os
    import time

    from workbench.store.runs import _SWEPT, RunStore

    store = RunStore(tmp_path / "runs")
    run = store.create({"kind": "kd", "dataset": "digits"}, run_id="r")
    (run.path / "variants" / "int8").mkdir(parents=True)
    old = [run.path / ".status.json.k1l2.tmp", run.path / ".checkpoint.pt.x9.tmp", store.root / ".queue.json.a.tmp",
           run.path / "variants" / "int8" / ".metrics.json.q.tmp"]
    fresh = run.path / ".summary.json.live.tmp"  # a writer that is still at it
    for p in [*old, fresh]:
        p.write_bytes(b"x" * 1000)
    for p in old:
        os.utime(p, (time.time() - 600, time.time() - 600))
    _SWEPT.discard(store.root)
    RunStore(store.root)  # opening the store again
    assert not any(p.exists() for p in old) and fresh.exists() and (run.path / "config.json").is_file()


# ---------------------------------------------------------------------------
# 4. a full disk ends a run cleanly

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root on Linux, as CI runs); skipped where it cannot be mounted."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _assert_ended_cleanly(run, epochs_kept: int):
    st = run.status()
    assert st["state"] == "failed" and st["error"].startswith(f"disk full ({run.path}/"), st
    assert not list(run.path.glob(".*.tmp")) and not list(run.path.glob("*.tmp"))
    assert [r["epoch"] for r in run.metrics()] == list(range(1, epochs_kept + 1))


def test_a_full_disk_fails_the_run_keeps_its_finished_epoch_and_removes_temporary_files(small_disk):
    """The real thing: a 2.4 MB student on a 2 MB disk, trained in the foreground by kdw."""
    from workbench.store.runs import RunStore

    runs = small_disk / "runs"
    proc = kdw("distill", "--dataset", "digits", "--epochs", "2", "--width", "8192", "--depth", "1", "--no-scratch",
               "--no-profile", "--runs-dir", str(runs), check=False)
    assert proc.returncode == 2 and "disk full (" in proc.stderr and "Traceback" not in proc.stderr
    (run,) = RunStore(runs).list()
    _assert_ended_cleanly(run, 1)


def test_a_writer_that_hits_a_full_disk_leaves_no_partial_file_and_the_status_still_says_why(store, monkeypatch):
    """The same with a fault-injecting writer (any machine): the weights writer fills the disk half-way, after
    which no new file can be made, so the status is written in place."""
    import errno
    import tempfile

    import safetensors.torch

    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    full = {"now": False}
    real_mkstemp, real_save = tempfile.mkstemp, safetensors.torch.save_file

    def mkstemp(*a, **k):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkstemp(*a, **k)

    def save_file(tensors, path, metadata=None):
        if (metadata or {}).get("kdw_epoch") == "2":
            with open(path, "wb") as f:
                f.write(b"\0" * 100_000)  # half a file, then the disk is full
            full["now"] = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr("workbench.io.tempfile.mkstemp", mkstemp)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    cfg = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=3,
                      batch_size=64, teacher="digits-cnn", profile=False)
    run = store.create(cfg.record(), run_id="r")
    assert execute_run(run, store) == "failed"
    _assert_ended_cleanly(run, 2)
    assert "student.safetensors" in run.status()["error"] or "last.safetensors" in run.status()["error"]


def test_a_worker_records_why_it_stopped_and_a_stranded_queue_says_why_it_cannot_start(store, monkeypatch):
    import errno

    from workbench.errors import RunStoreError
    from workbench.jobs import queue
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    cfg = TrainConfig(kind="teacher", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                      profile=False)
    store.create(cfg.record(), run_id="q")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(store.root / "q" / ".claim"))

    monkeypatch.setattr(queue, "claim_next", full)
    with pytest.raises(OSError):
        queue.worker_loop(store)
    assert queue.worker_failure(store).startswith(f"disk full ({store.root / 'q' / '.claim'})")
    monkeypatch.setattr(queue, "spawn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("not here")))

    def not_writable(self):
        raise RunStoreError(f"the runs folder {self.root} is not writable (No space left on device). Set ...")

    monkeypatch.setattr(type(store), "ensure_writable", not_writable)
    started, why = queue.restart_queue(store)
    assert not started and why.startswith("1 queued run(s) cannot start: the runs folder") and "No space" in why
    from workbench.cli.main import main

    assert main(["runs", "--runs-dir", str(store.root)]) == 0


# ---------------------------------------------------------------------------
# 5. exports have a lifecycle

def _dead_identity():
    import subprocess

    from workbench.store.runs import process_identity

    p = subprocess.Popen(["sleep", "30"])
    identity = process_identity(p.pid)
    p.kill()
    p.wait()
    return identity


def test_a_variant_whose_export_process_is_gone_reads_failed(store):
    import json
    import time

    from workbench.deploy.export import set_variant_status

    run = _done(store)
    set_variant_status(run.variants_path / "onnx-fp32", "running", identity=_dead_identity(), progress={"fraction": 0.3})
    (run.variants_path / "onnx-int8").mkdir(parents=True)  # an old store's status: no process recorded
    (run.variants_path / "onnx-int8" / "status.json").write_text(json.dumps({"state": "queued",
                                                                              "updated": time.time()}))
    set_variant_status(run.variants_path / "live", "running", progress={"fraction": 0.5})  # this process: alive
    states = {v["name"]: (v["state"], v["error"]) for v in run.variants()}
    assert states["onnx-fp32"][0] == "failed" and "export process ended without finishing" in states["onnx-fp32"][1]
    assert states["onnx-int8"][0] == "failed" and states["live"] == ("running", None)


def _done(store, run_id="r"):
    from workbench.jobs.queue import execute_run
    from workbench.models.zoo import ModelConfig
    from workbench.train.loop import TrainConfig

    cfg = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                      batch_size=64, teacher="digits-cnn", profile=False)
    run = store.create(cfg.record(), run_id=run_id)
    assert execute_run(run, store) == "done"
    return run


@pytest.mark.slow
def test_kill_9_during_an_export_leaves_it_failed_and_the_deploy_panel_stops_polling(store):
    import os
    import signal
    import time

    from streamlit.testing.v1 import AppTest

    from workbench.deploy.export import ExportOptions, start_export

    run = _done(store)
    start_export(store, run.run_id, ExportOptions(int8=True))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = __import__("json").loads((run.variants_path / "onnx-fp32" / "status.json").read_text())
        if st["state"] == "running":
            break
        time.sleep(0.1)
    assert st["state"] == "running" and st["pid_started"], st
    os.kill(st["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60  # until the process is gone from the process table
    while {v["state"] for v in run.variants()} != {"failed"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {v["state"] for v in run.variants()} == {"failed"}
    at = AppTest.from_string("from workbench.app.compare import page\npage()", default_timeout=120).run()
    assert not at.exception and at.session_state["cmp_deploy_polling"] is False
    assert any("export process ended without finishing" in e.value for e in at.error)


def test_two_exports_of_one_run_are_serialised_by_a_lock(store):
    import threading
    import time

    from workbench.deploy.export import ExportOptions, export_lock, export_run, start_export
    from workbench.errors import DeployError

    run = _done(store)
    said = []
    with export_lock(run):  # another export holds the run
        with pytest.raises(DeployError, match="an export of r is running; wait for it"):
            start_export(store, run.run_id, ExportOptions())
        t = threading.Thread(target=export_run, args=(run, store, ExportOptions()),
                             kwargs={"progress": lambda *a: said.append(a)})
        t.start()
        deadline = time.monotonic() + 60
        while not said and time.monotonic() < deadline:  # until the waiting export says so
            time.sleep(0.05)
        assert t.is_alive() and said[0][1].startswith("waiting for the export") and not run.variants()
    t.join(120)
    assert [(v["name"], v["state"]) for v in run.variants()] == [("onnx-fp32", "done")]


# ---------------------------------------------------------------------------
# 11. leftovers: Ray's folders and agents

def _ray_processes(folder):
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(folder) in " ".join(p.info["cmdline"] or []) and "watchdog" not in " ".join(p.info["cmdline"]):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_an_embedded_ray_leaves_no_folder_and_ends_with_a_killed_driver(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from workbench.experiments.search import ray_folder
    from workbench.store.runs import process_identity

    driver = subprocess.Popen([sys.executable, "-c", (
        "from workbench.experiments.search import connect, shutdown, ray_folder\n"
        "import sys, time\n"
        "ray = connect(num_cpus=1)\n"
        "assert ray.get(ray.remote(lambda: 7).remote()) == 7\n"
        "print(ray_folder(), flush=True)\n"
        "if sys.argv[1] == 'stop':\n"
        "    shutdown()\n"
        "    print('stopped', flush=True)\n"
        "else:\n"
        "    time.sleep(600)\n"), "stop"], stdout=subprocess.PIPE, text=True)
    out, _ = driver.communicate(timeout=240)
    folder = out.splitlines()[0]
    assert out.splitlines()[1] == "stopped" and not __import__("os").path.exists(folder)

    killed = subprocess.Popen([sys.executable, "-c", (
        "from workbench.experiments.search import connect, ray_folder\n"
        "import time\n"
        "ray = connect(num_cpus=1)\n"
        "assert ray.get(ray.remote(lambda: 7).remote()) == 7\n"
        "print(ray_folder(), flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    folder = killed.stdout.readline().strip()
    assert folder == str(ray_folder(process_identity(killed.pid))) and _ray_processes(folder)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    deadline = time.monotonic() + 30
    while (_ray_processes(folder) or __import__("os").path.exists(folder)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ray_processes(folder) and not __import__("os").path.exists(folder)


# ---------------------------------------------------------------------------
# a file that is not a bounded regular JSON file makes its run unreadable, never the store

def _fifo(f):
    f.unlink()
    os.mkfifo(f)


def _dev_zero(f):
    f.unlink()
    f.symlink_to("/dev/zero")


def _huge_int(f):
    import json

    obj = json.loads(f.read_text())
    f.write_text(json.dumps(obj)[:-1] + ', "extra": ' + "9" * 5000 + "}")


def _deep(f):
    f.write_text("[" * 100_000 + "]" * 100_000)


def _too_large(f):
    f.write_text('{"x": "' + "a" * (40 * 2 ** 20) + '"}')


def _huge_int_metrics(f):
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0][:-1] + ', "extra": ' + "9" * 5000 + "}"] + lines[1:]) + "\n")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name,damage,why", [
    ("status.json", _dev_zero, "a device, not a regular file"),
    ("status.json", _fifo, "a FIFO, not a regular file"),
    ("config.json", _huge_int, "a whole number of 5,000 digits"),
    ("summary.json", _deep, "nested more than 64 levels deep"),
    ("summary.json", _too_large, "more than the 33,554,432 a run's file may hold"),
    ("metrics.jsonl", _huge_int_metrics, None),
])
def test_a_file_no_bounded_json_reader_accepts_marks_its_run_unreadable_and_nothing_else(pristine, tmp_path, capsys,
                                                                                          name, damage, why):
    """A link to /dev/zero (before: kdw runs grew to 20 GB), a FIFO (before: every command hung), a 5,000-digit
    number (before: Python's digit-limit traceback), JSON nested 100,000 deep (before: RecursionError) or a file
    over the size cap: that run reads "unreadable: why", the other runs and every view stay. A metrics line with
    such a number is skipped: the run's other epochs stay."""
    import json
    import shutil

    from workbench.cli.main import main
    from workbench.store.runs import RunStore

    root = tmp_path / "store"
    shutil.copytree(pristine, root)
    damage(root / "kd" / name)
    store = RunStore(root)
    listing = {r.run_id: r for r in store.list()}
    assert listing["scratch"].state == "done"
    if why is None:
        assert len(listing["kd"].metrics()) == 1 and listing["kd"].state == "done"  # one of 2 epochs skipped
    else:
        info = listing["kd"].info()
        assert why in json.dumps(info), info
    assert main(["runs", "--json", "--runs-dir", str(root)]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["scratch"]["state"] == "done" and set(rows) == {"kd", "scratch"}
    main(["compare", "--group", "g", "--runs-dir", str(root)])
    assert "scratch" in capsys.readouterr().out


def test_a_report_on_a_full_disk_keeps_the_old_report_whole_and_says_so(pristine, small_disk):
    """kdw report -o over a complete report on a 2 MB disk that cannot hold the new one (about 5 MB, Plotly
    embedded): before, the report was written in place and left truncated (no </html>), or empty where there was
    none, with advice about runs. Now the old file stays whole, no temporary file stays, and the sentence is the
    report's."""
    old = small_disk / "rep.html"
    old.write_text("<html><body>the old report</body></html>")
    for target in (old, small_disk / "new.html"):
        proc = kdw("report", "--group", "g", "-o", str(target), "--runs-dir", str(pristine), check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "disk full: the report" in proc.stderr and "export it again" in proc.stderr, proc.stderr
        assert "resume" not in proc.stderr
    assert old.read_text() == "<html><body>the old report</body></html>"
    assert not (small_disk / "new.html").exists() and not list(small_disk.glob(".*.tmp"))
