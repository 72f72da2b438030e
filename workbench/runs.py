"""The run store: one folder per run under ``./runs`` (or ``$KDW_RUNS_DIR``).

    runs/<run_id>/
        config.json          everything needed to repeat the run (schema version included)
        status.json          queued | running | done | failed | cancelled, pid, times, error
        metrics.jsonl        one JSON object per epoch, appended and flushed
        summary.json         final figures (docs/conventions.md)
        student.safetensors  weights of the best-validation epoch
        last.safetensors     weights of the last epoch
        log.txt              the job's stdout/stderr, when it ran as a job

JSON files are written atomically (a temporary file, then ``os.replace``), so a
reader never sees half a file. Run ids match ``[A-Za-z0-9_.-]{1,64}`` and may not
start with a dot, so an id can never point outside the store. A run whose status
says running but whose process is gone reads as failed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2  # 2: T and α live in the method's parameters (1 kept them on the config)
STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
RUN_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RunStoreError(RuntimeError):
    """The run store cannot be used as asked; the message says why and how to fix it."""


def validate_run_id(run_id: str) -> str:
    """Return `run_id` if it is a safe folder name, else raise ValueError."""
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) or run_id.startswith("."):
        raise ValueError(f"invalid run id {run_id!r}: use 1-64 letters, digits, '_', '.' or '-', "
                         "not starting with '.'")
    return run_id


def new_run_id(prefix: str = "run") -> str:
    """A fresh id: prefix, UTC time and random suffix, e.g. ``kd-20261128-101500-a1b2``."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", prefix)[:32] or "run"
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def atomic_write_json(path: Path, obj) -> None:
    """Write JSON to `path` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_json(path: Path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as e:
        raise RunStoreError(f"{path} is not valid JSON ({e})") from None


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


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id exists and has not exited (a zombie counts as gone)."""
    import psutil

    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@dataclass
class Run:
    """A handle on one run folder."""

    store: "RunStore"
    run_id: str

    @property
    def path(self) -> Path:
        return self.store.root / self.run_id

    # -- config -------------------------------------------------------------
    @property
    def config(self) -> dict:
        """config.json, migrated to the current schema (see `migrate_config`)."""
        return migrate_config(read_json(self.path / "config.json", {}) or {})

    # -- status -------------------------------------------------------------
    def status(self) -> dict:
        """The status, with a dead process's 'running' reported as failed."""
        st = read_json(self.path / "status.json", None) or {"state": "queued"}
        if st.get("state") == "running" and st.get("host") == socket.gethostname() and not pid_alive(st.get("pid")):
            st = dict(st, state="failed", error=st.get("error") or
                      "the job's process ended without finishing (killed, or the machine restarted)")
        return st

    @property
    def state(self) -> str:
        return self.status().get("state", "queued")

    def set_status(self, state: str, **fields) -> dict:
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        st = read_json(self.path / "status.json", {}) or {}
        st.update(fields)
        st["state"] = state
        now = time.time()
        st["updated"] = now
        if state == "running" and "started" not in fields:
            st.setdefault("started", now)
        if state in FINISHED:
            st.setdefault("finished", now)
        atomic_write_json(self.path / "status.json", st)
        return st

    def set_progress(self, **fields) -> None:
        """Merge progress fields (epoch, step, fraction) into status.json without changing the state."""
        st = read_json(self.path / "status.json", {}) or {}
        st.setdefault("progress", {}).update(fields)
        st["updated"] = time.time()
        atomic_write_json(self.path / "status.json", st)

    # -- metrics ------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        """Per-epoch rows; a torn last line (a killed writer) is skipped."""
        rows = []
        try:
            with open(self.path / "metrics.jsonl") as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue
        except FileNotFoundError:
            pass
        return rows

    # -- summary and weights ------------------------------------------------
    @property
    def summary(self) -> dict:
        return read_json(self.path / "summary.json", {}) or {}

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)

    def weights_path(self, which: str = "best") -> Path:
        return self.path / ("student.safetensors" if which == "best" else "last.safetensors")

    def save_weights(self, model, which: str = "best", **meta) -> int:
        """Atomically save `model` as safetensors; returns the size in bytes."""
        from .models import save_checkpoint

        target = self.weights_path(which)
        tmp = target.with_name(f".{target.name}.tmp")
        size = save_checkpoint(model, tmp, run_id=self.run_id, **meta)
        os.replace(tmp, target)
        return size

    def load_model(self, which: str = "best"):
        from .models import load_checkpoint

        path = self.weights_path(which)
        if not path.is_file():
            raise RunStoreError(f"run {self.run_id} has no {which} weights yet (state: {self.state})")
        return load_checkpoint(path)[0]

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
            "params": cfg.get("method_params") or {},
            "seed": cfg.get("seed"),
            "labels": cfg.get("labels"),
            "group": cfg.get("group"),
            "created": cfg.get("created"),
            "test_acc_best": sm.get("test", {}).get("accuracy"),
            "test_acc_last": sm.get("test_last", {}).get("accuracy"),
            "error": st.get("error"),
        }


class RunStore:
    """The folder of runs. `root` defaults to ``$KDW_RUNS_DIR`` or ``./runs``."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get("KDW_RUNS_DIR") or "runs").absolute()

    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunStoreError(f"the runs folder {self.root} is not writable ({e.strerror}). "
                                "Set KDW_RUNS_DIR (or --runs-dir) to a folder you can write to.") from None

    def create(self, config: dict, run_id: str | None = None, prefix: str = "run") -> Run:
        """Make a new run folder holding `config` and a queued status."""
        self.ensure_writable()
        run_id = validate_run_id(run_id) if run_id is not None else new_run_id(prefix)
        path = self.root / run_id
        try:
            path.mkdir()
        except FileExistsError:
            raise RunStoreError(f"run {run_id} already exists in {self.root}; choose another id") from None
        run = Run(self, run_id)
        cfg = dict(config, schema_version=SCHEMA_VERSION, run_id=run_id,
                   created=config.get("created") or time.time())
        atomic_write_json(path / "config.json", cfg)
        run.set_status("queued", created=cfg["created"])
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
        return sorted(runs, key=lambda r: (r.config.get("created") or 0, r.run_id))

    def delete(self, run_id: str) -> None:
        import shutil

        run = self.get(run_id)
        if run.state in ("running",):
            raise RunStoreError(f"run {run_id} is running; cancel it first")
        shutil.rmtree(run.path)

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"
