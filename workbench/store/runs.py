"""The run store: one folder per run under ``./runs`` (or ``$KDW_RUNS_DIR``).

    runs/<run_id>/
        config.json          everything needed to repeat the run (schema version included)
        status.json          queued | running | done | failed | cancelled | diverged, pid, times, error
        metrics.jsonl        one JSON object per epoch, appended and flushed
        summary.json         final figures (docs/conventions.md)
        student.safetensors  weights of the best-validation epoch
        last.safetensors     weights of the last epoch
        checkpoint.pt        optimiser, schedule, RNG states and best so far, after every epoch (kdw resume)
        log.txt              the job's stdout/stderr, when it ran as a job
        traceback.txt        the full traceback of a failed job
        cancel               present when a cancel was asked for
        .claim               the queue worker that took the run
        variants/<name>/     deployed variants: model files, status.json, metrics.json

Each of these is a property of `Run` (`Run.checkpoint_path`, `Run.claim_path`, ...); no other module names them.
Files are replaced with `workbench.io.atomic_write` (a temporary file, fsync, ``os.replace``), so a reader never
sees half a file. Run ids match ``[A-Za-z0-9_.-]{1,64}`` and may not start with a dot, so an id can never point
outside the store. A run whose status says running but whose process is gone reads as failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import RunStoreError
from workbench.io import (
    MAX_JSONL_BYTES,
    atomic_write,
    atomic_write_json,
    fsync_dir,
    json_default,
    loads_bounded,
    read_bounded,
    read_json_object,
)
from workbench.store.schema import FILES, METRICS_ROW, problem_in

SCHEMA_VERSION = 2  # 2: T and α live in the method's parameters (1 kept them on the config)
STATES = ("queued", "running", "done", "failed", "cancelled", "diverged")  # what a status.json may say
FINISHED = ("done", "failed", "cancelled", "diverged", "unreadable")  # nothing more will happen to these by itself
RUN_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is a safe folder name, else raise ValueError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         "not starting with '.'")
    return run_id


def new_run_id(prefix: str = "run") -> str:
    """A fresh id: prefix, UTC time and a 32-bit random suffix, e.g. ``kd-20261128-101500-a1b2c3d4`` (a sweep makes
    dozens in one second: 16 bits collided in about 2% of bursts of 50)."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", prefix)[:32] or "run"
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"


def dig(obj, *keys):
    """obj[k1][k2]..., or None where a level is missing or is not a dict (a hand-edited or foreign file)."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def migrate_config(config: dict) -> dict:
    """A run's config of any schema version, in the current one.

    Schema 1 kept T and α on the config itself: a kd run's become its method's parameters, and
    teacher and scratch runs (whose α was 0) get the ``ce`` method. Idempotent on current configs.
    """
    d = dict(config)
    T, alpha = d.pop("temperature", None), d.pop("alpha", None)
    if d.get("kind", "kd") != "kd":
        if d.get("method") in (None, "kd"):
            d["method"], d["method_params"] = "ce", {}
    elif d.get("method") in (None, "kd"):
        params = dict(d.get("method_params") or {})
        if T is not None:
            params.setdefault("temperature", T)
        if alpha is not None:
            params.setdefault("alpha", alpha)
        d["method"], d["method_params"] = "kd", params
    return d


def process_identity(pid: int | None = None) -> dict:
    """What identifies a process beyond its id, which the OS reuses: its start time and the host."""
    import psutil

    pid = os.getpid() if pid is None else pid
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        started = None
    return {"pid": pid, "pid_started": started, "host": socket.gethostname()}


def same_process(status: dict) -> bool:
    """Whether the process a status names is alive on this host and is still the one recorded (start time).

    A pid alone is not an identity: after a crash the OS hands it to another process, which must never be
    reported as the job or sent a signal. Without a recorded start time the run reads as lost.
    """
    import psutil

    pid = status.get("pid")
    if not pid or status.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        recorded = status.get("pid_started")
        if recorded is None:  # a pid without its start time names no process for sure: never taken for the job
            return False
        return abs(proc.create_time() - float(recorded)) < 1.0
    except (psutil.Error, OSError, ValueError, TypeError):
        return False


TEMP_STALE_S = 120.0  # a temporary file this old belongs to no live writer
_SWEPT: set[Path] = set()  # the stores this process has swept
HEARTBEAT_S = 30.0  # a running job rewrites its status at least this often
STALE_S = 300.0  # a run on another host whose status is older than this is reported stale, not running


@dataclass
class Run:
    """A handle on one run folder."""

    store: "RunStore"
    run_id: str

    @property
    def path(self) -> Path:
        return self.store.root / self.run_id

    # -- the run folder's layout: every file a run has is named here, and only here ----------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def checkpoint_path(self) -> Path:
        """Everything `kdw resume` needs to go on after the last completed epoch (optimiser, RNGs, best so far)."""
        return self.path / "checkpoint.pt"

    @property
    def claim_path(self) -> Path:
        """The identity of the queue worker that took this queued run (so no other worker takes it too)."""
        return self.path / ".claim"

    @property
    def cancel_path(self) -> Path:
        """Present when a cancel was asked for: the job checks for it at every progress update."""
        return self.path / "cancel"

    @property
    def traceback_path(self) -> Path:
        """The full traceback of a failed job (the status holds its one-sentence error)."""
        return self.path / "traceback.txt"

    @property
    def variants_path(self) -> Path:
        """Deployed variants (ONNX, int8, pruned), one folder each with its own status.json and metrics.json."""
        return self.path / "variants"

    def variants(self) -> list[dict]:
        """Each variant of this run: {name, folder, state, error, progress, metrics}, in the order they were made.
        A variant queued or running whose export process is gone (or was never recorded) reads failed."""
        folder = self.variants_path
        if not folder.is_dir():
            return []
        out = []
        for d in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime):
            if not d.is_dir() or d.name.startswith("."):
                continue
            try:
                status = read_json_object(d / "status.json") or {}
                metrics = read_json_object(d / "metrics.json")
            except RunStoreError as e:
                status, metrics = {"state": "unreadable", "error": str(e)}, None
            state = status.get("state") or ("done" if metrics else "unknown")
            error = status.get("error")
            if state in ("queued", "running") and status.get("host", socket.gethostname()) == socket.gethostname() \
                    and not same_process(status):  # its export process is gone (kill -9), or was never recorded
                state, error = "failed", ("the export process ended without finishing (killed, or the machine "
                                          "restarted); export again")
            out.append({"name": d.name, "folder": d, "state": state, "error": error,
                        "progress": status.get("progress"), "metrics": metrics})
        return out

    # -- config -------------------------------------------------------------
    def _read(self, name: str) -> dict | None:
        """One of the run's JSON files, each known field checked by its type (`workbench.store.schema`);
        None if it does not exist; RunStoreError ("unreadable: why (path)") if it cannot be used."""
        path = self.path / name
        obj = read_json_object(path)
        if obj is not None:
            if name == "config.json":
                try:
                    obj = migrate_config(obj)
                except (TypeError, ValueError, AttributeError) as e:
                    raise RunStoreError(f"unreadable: {e} ({path})") from None
            wrong = problem_in(obj, FILES[name])
            if wrong:
                raise RunStoreError(f"unreadable: {wrong} ({path})")
        return obj

    @property
    def config(self) -> dict:
        """config.json, migrated to the current schema (see `migrate_config`); {} if it cannot be read."""
        try:
            return self._read("config.json") or {}
        except RunStoreError:
            return {}

    def _files(self) -> dict[str, dict | None]:
        """config.json, status.json and summary.json, each read and checked once (`_read`); RunStoreError for the
        first that cannot be used."""
        return {name: self._read(name) for name in ("config.json", "status.json", "summary.json")}

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        """The status, as far as the files and the process table tell.

        - a config, status or summary that cannot be read: state "unreadable", with why and where;
        - no status.json: "queued" for a new run, but "done" if it has a summary and "failed" if it has
          metrics (the status was lost; such a run is never run again);
        - "running" whose process is gone, or is another process by now (pid reused): "failed";
        - "running" on another host with no heartbeat for STALE_S seconds: "failed", as stale.
        """
        try:
            st = self._files()["status.json"]  # every file checked, and the status read once
        except RunStoreError as e:
            return {"state": "unreadable", "error": str(e)}
        if st is None:
            if (self.summary_path).is_file():
                return {"state": "done", "note": "status.json was missing; recovered from summary.json"}
            if (self.metrics_path).is_file():
                return {"state": "failed", "error": "status.json is missing, but the run had started (metrics.jsonl "
                                                    "exists); it is not run again"}
            return {"state": "queued"}
        if st.get("state") not in STATES:
            return {"state": "unreadable", "error": f"unreadable: unknown state {st.get('state')!r} "
                                                    f"({self.path / 'status.json'})"}
        if st["state"] == "running":
            if st.get("host") == socket.gethostname():
                if not same_process(st):
                    st = dict(st, state="failed", error=st.get("error") or
                              "the job's process ended without finishing (killed, or the machine restarted)")
            elif time.time() - float(st.get("updated") or 0) > STALE_S:
                st = dict(st, state="failed", error=f"no sign of life from host {st.get('host')} for more than "
                                                    f"{STALE_S / 60:.0f} minutes")
        return st

    @property
    def state(self) -> str:
        return self.status().get("state", "queued")

    def set_status(self, state: str, **fields) -> dict:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        try:
            st = read_json_object(self.status_path) or {}
        except RunStoreError:
            st = {}  # a broken status is replaced, never merged
        st.update(fields)
        st["state"] = state
        now = time.time()
        st["updated"] = now
        if state == "running" and "started" not in fields:
            st.setdefault("started", now)
        if state in FINISHED:
            st.setdefault("finished", now)
        atomic_write_json(self.status_path, st, in_place_when_full=state in FINISHED)  # the end is always said
        return st

    def request_cancel(self) -> None:
        """Ask a running job to stop: it checks for this file at every progress update."""
        self.cancel_path.write_text(f"{time.time()}\n")

    def cancel_requested(self) -> bool:
        return self.cancel_path.exists()

    def set_progress(self, **fields) -> None:
        """Merge progress fields (epoch, step, fraction) into status.json without changing the state."""
        try:
            st = read_json_object(self.status_path) or {}
        except RunStoreError:
            st = {}
        st.setdefault("progress", {}).update(fields)
        st["updated"] = time.time()
        atomic_write_json(self.status_path, st)

    # -- metrics ------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        try:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row, default=json_default) + "\n")
                f.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.metrics_path)) if not e.filename else e from None

    def metrics(self) -> list[dict]:
        """Per-epoch rows; a torn line (a killed writer), a binary line, one that is not an epoch or one with a field
        of the wrong type (`schema.METRICS_ROW`) is skipped."""
        rows = []
        try:
            data = read_bounded(self.metrics_path, MAX_JSONL_BYTES)
        except (OSError, RunStoreError):  # missing, or not a bounded regular file: no rows to show
            return rows
        for line in data.splitlines():
            try:
                row = loads_bounded(line)
            except ValueError:  # UnicodeDecodeError and JSONDecodeError too; never RecursionError
                continue
            if isinstance(row, dict) and problem_in(row, METRICS_ROW) is None and "epoch" in row:
                rows.append(row)
        return rows

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop the epochs after `epoch` from metrics.jsonl (a resumed run redoes them), atomically."""
        rows = [r for r in self.metrics() if r["epoch"] <= epoch]
        atomic_write(self.metrics_path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))

    def reset_metrics(self) -> None:
        """Start metrics.jsonl afresh (a run that starts owns it; nothing is ever appended to another attempt's)."""
        with open(self.metrics_path, "w"):
            pass

    # -- summary and weights ------------------------------------------------
    @property
    def summary(self) -> dict:
        """summary.json; {} if it is missing or cannot be read (`status()` says why)."""
        try:
            return self._read("summary.json") or {}
        except RunStoreError:
            return {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, summary)

    def weights_path(self, which: str = "best") -> Path:
        return self.path / ("student.safetensors" if which == "best" else "last.safetensors")

    def save_weights(self, model, which: str = "best", **meta) -> int:
        """Atomically save `model` as safetensors; returns the size in bytes."""
        from workbench.models.zoo import save_checkpoint

        sizes = []
        atomic_write(self.weights_path(which), lambda tmp: sizes.append(save_checkpoint(model, tmp, run_id=self.run_id,
                                                                                          **meta)))
        return sizes[0]

    def load_model(self, which: str = "best"):
        from workbench.models.zoo import load_checkpoint

        path = self.weights_path(which)
        if not path.is_file():
            raise RunStoreError(f"run {self.run_id} has no {which} weights yet (state: {self.state})")
        return load_checkpoint(path, allow_factory=True)[0]  # a run of this store: its own factory code

    def log_path(self) -> Path:
        return self.path / "log.txt"

    def info(self) -> dict:
        """One flat dict for listings: id, kind, state, label and headline numbers."""
        cfg, st, sm = self.config, self.status(), self.summary
        return {
            "run_id": self.run_id,
            "kind": cfg.get("kind", "?"),
            "state": st.get("state"),
            "dataset": cfg.get("dataset"),
            "model": cfg.get("model_label", ""),
            "method": cfg.get("method"),
            "method_label": cfg.get("method_label"),
            "params": cfg.get("method_params") or {},
            "seed": cfg.get("seed"),
            "labels": cfg.get("labels"),
            "group": cfg.get("group"),
            "created": cfg.get("created"),
            "test_acc_best": dig(sm, "test", "accuracy"),
            "test_acc_last": dig(sm, "test_last", "accuracy"),
            **({"test_ppl_best": dig(sm, "test", "perplexity"), "test_ppl_last": dig(sm, "test_last", "perplexity")}
               if dig(sm, "test", "perplexity") is not None else {}),
            "error": st.get("error"),
        }


class RunStore:
    """The folder of runs. `root` defaults to ``$KDW_RUNS_DIR`` or ``./runs``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get("KDW_RUNS_DIR") or "runs").absolute()
        if self.root not in _SWEPT:  # once per process and store: what a killed writer left behind
            _SWEPT.add(self.root)
            self.sweep_temporaries()

    def sweep_temporaries(self, older_than_s: float = TEMP_STALE_S) -> list[Path]:
        """Remove the temporary files of `atomic_write` (``.NAME.*.tmp``) that a process killed mid-write left in
        the store, its run folders and their variants, once they are older than `older_than_s` (a live writer
        renames its file within seconds). Returns what was removed."""
        removed, now = [], time.time()
        if not self.root.is_dir():
            return removed
        folders = [self.root]
        try:
            for d in self.root.iterdir():
                if d.is_dir() and not d.name.startswith("."):
                    folders.append(d)
                    if (d / "variants").is_dir():
                        folders += [v for v in (d / "variants").iterdir() if v.is_dir()]
        except OSError:
            return removed
        for folder in folders:
            for tmp in folder.glob(".*.tmp"):
                try:
                    if now - tmp.stat().st_mtime > older_than_s:
                        tmp.unlink()
                        removed.append(tmp)
                except OSError:
                    pass
        return removed

    def ensure_writable(self) -> None:
        probe = self.root / f".write-test-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
        except OSError as e:
            raise RunStoreError(f"the runs folder {self.root} is not writable ({e.strerror}). "
                                "Set KDW_RUNS_DIR (or --runs-dir) to a folder you can write to.") from None
        finally:
            try:
                probe.unlink()
            except OSError:
                pass

    def create(self, config: dict, run_id: str | None = None, prefix: str = "run") -> Run:
        """Make a new run folder holding `config` and a queued status."""
        self.ensure_writable()
        generated = run_id is None
        for _ in range(5):  # a generated id that is taken (however unlikely) is drawn again; a given one is an error
            run_id = new_run_id(prefix) if generated else validate_run_id(run_id)
            path = self.root / run_id
            try:
                path.mkdir()
                break
            except FileExistsError:
                if not generated:
                    raise RunStoreError(f"run {run_id} already exists in {self.root}; choose another id") from None
        else:
            raise RunStoreError(f"could not make a new run folder in {self.root}: every id drawn was taken")
        run = Run(self, run_id)
        cfg = dict(config, schema_version=SCHEMA_VERSION, run_id=run_id,
                   created=config.get("created") or time.time())
        atomic_write_json(path / "config.json", cfg)
        run.set_status("queued", created=cfg["created"])
        fsync_dir(path)
        fsync_dir(self.root)  # the new folder survives a power cut once create() returns
        return run

    def get(self, run_id: str) -> Run:
        validate_run_id(run_id)
        run = Run(self, run_id)
        if not (run.path / "config.json").is_file():
            raise RunStoreError(f"no run {run_id!r} in {self.root}; `kdw runs` lists them")
        return run

    def exists(self, run_id: str) -> bool:
        try:
            self.get(run_id)
            return True
        except (ValueError, RunStoreError):
            return False

    def list(self, kind: str | None = None, state: str | None = None, group: str | None = None) -> list[Run]:
        """Runs, oldest first, optionally filtered."""
        if not self.root.is_dir():
            return []
        runs = []
        for p in self.root.iterdir():
            if p.name.startswith(".") or not (p / "config.json").is_file() or not RUN_ID_RE.fullmatch(p.name):
                continue
            run = Run(self, p.name)
            try:
                cfg = run.config
            except RunStoreError:
                continue
            if kind and cfg.get("kind") != kind:
                continue
            if group and cfg.get("group") != group:
                continue
            if state and run.state != state:
                continue
            runs.append(run)
        return sorted(runs, key=lambda r: (r.config.get("created") or 0, r.run_id))  # config: {} if unreadable

    def delete(self, run_id: str) -> None:
        import shutil

        run = self.get(run_id)
        if run.state in ("running",):
            raise RunStoreError(f"run {run_id} is running; cancel it first")
        shutil.rmtree(run.path)

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"
