"""Tracking: the same training events the run store gets, also sent to TensorBoard or MLflow.

    kdw distill ... --track tensorboard              # event files under <runs>/tensorboard/<run id>
    kdw distill ... --track tensorboard:/some/dir
    kdw distill ... --track mlflow                   # $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db
    kdw distill ... --track mlflow:http://host:5000  # or any MLflow tracking URI

Each target logs the run's config as parameters, every per-epoch figure (each loss term included) as a
metric at its epoch, and at the end the summary's headline figures as metrics and summary.json and the
student's weights as artifacts. MLflow gets them in batches (`log_batch`), the run ends FINISHED, FAILED
(failed or diverged) or KILLED (cancelled), and the runs of one launch (a search's trials, a sweep's cells, a
distilled run and its scratch twin: one group) are children of a parent run named after the group.
TensorBoard logs the run's hyperparameters and results for its HParams view (`add_hparams`), and its writer is
closed however the run ends. The run store stays the record: a target that cannot be reached or fails later
gets one warning, and the run goes on without it. A default can live in a settings file (``$KDW_SETTINGS``,
default ``~/.config/kd-workbench/settings.toml``)::

    track = ["tensorboard"]

TensorBoard and MLflow (with SQLAlchemy and Alembic for its SQLite store) are an optional extra: ``pip install
-e '.[tracking]'``. ``mlflow:file:DIR`` still reaches MLflow's file store, which MLflow keeps only behind
``MLFLOW_ALLOW_FILE_STORE``; the workbench sets that for such a URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from workbench.logs import logger

log = logger(__name__)
KINDS = ("tensorboard", "mlflow")
INSTALL = "pip install -e '.[tracking]' (or pip install 'kd-workbench[tracking]')"


def parse_target(spec: str) -> tuple[str, str | None]:
    """'tensorboard', 'tensorboard:DIR', 'mlflow' or 'mlflow:URI' -> (kind, where or None)."""
    kind, _, where = str(spec).partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown tracking target {spec!r}: use tensorboard[:DIR] or mlflow[:URI]")
    return kind, where or None


def check_target(spec: str) -> None:
    """ValueError for a malformed target or a missing package (with the install command)."""
    kind, _ = parse_target(spec)
    try:
        __import__(kind)  # the package is named as the target
    except ImportError:
        raise ValueError(f"--track {kind} needs the optional package {kind}: {INSTALL}") from None


def default_targets() -> list[str]:
    """`track` from the settings file, or none."""
    path = Path(os.environ.get("KDW_SETTINGS") or Path.home() / ".config" / "kd-workbench" / "settings.toml")
    if not path.is_file():
        return []
    try:
        import tomllib
    except ImportError:  # Python 3.10: the same parser from PyPI (a dependency there)
        import tomli as tomllib
    try:
        track = tomllib.loads(path.read_text()).get("track", [])
    except Exception as e:
        log.warning("%s could not be read (%s); no default tracking", path, e)
        return []
    return [track] if isinstance(track, str) else list(track)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


class Tracker:
    """A training callback that mirrors a run's events to its tracking targets; `close(state)` ends them."""

    def __init__(self, targets, run, config: dict, store_root: Path):
        self.run, self.config, self.root = run, config, Path(store_root)
        self.sinks, self.warned = [], set()
        for spec in targets:
            kind, where = parse_target(spec)
            try:
                self.sinks.append(_TensorBoard(self, where) if kind == "tensorboard" else _MLflow(self, where))
            except Exception as e:
                self.warn(spec, e)

    def warn(self, what, error) -> None:
        if str(what) in self.warned:
            return
        self.warned.add(str(what))
        log.warning("tracking to %s failed (%s: %s); the run goes on, and the run store keeps everything", what,
                    type(error).__name__, str(error).splitlines()[0] if str(error) else "")

    def __call__(self, event: dict) -> None:
        for sink in list(self.sinks):
            try:
                sink.handle(event)
            except Exception as e:  # tracking never stops training
                self.warn(sink.name, e)
                self.sinks.remove(sink)

    def close(self, state: str) -> None:
        """End every target with the run's final state (done, failed, diverged or cancelled)."""
        for sink in self.sinks:
            try:
                sink.close(state)
            except Exception as e:
                self.warn(sink.name, e)
        self.sinks = []


def _numbers(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _headline(summary: dict) -> dict:
    out = {"test_acc": summary.get("test", {}).get("accuracy"), "test_acc_last": summary.get("test_last", {}).get(
        "accuracy"), "best_epoch": summary.get("best_epoch"), "train_s": summary.get("train_s")}
    prof = summary.get("profile") or {}
    out.update({k: prof.get(k) for k in ("params", "size_mb", "latency_ms", "throughput")})
    return {k: v for k, v in out.items() if v is not None}


def hparams(config: dict) -> dict:
    """The hyperparameters a comparison of runs varies, flat and scalar (TensorBoard's HParams view)."""
    out = {"method": config.get("method"), "model": config.get("model_label") or str(config.get("model")),
           "lr": config.get("lr"), "batch_size": config.get("batch_size"), "epochs": config.get("epochs"),
           "seed": config.get("seed"), "labels": config.get("labels") if config.get("labels") is not None else "all"}
    out.update({f"method.{k}": v for k, v in (config.get("method_params") or {}).items()})
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool)) and v is not None}


class _TensorBoard:
    def __init__(self, owner: Tracker, where: str | None):
        from torch.utils.tensorboard import SummaryWriter

        self.owner = owner
        self.dir = Path(where) if where else owner.root / "tensorboard"
        self.name = f"tensorboard:{self.dir}"
        self.writer = SummaryWriter(log_dir=str(self.dir / owner.run.run_id))
        self.writer.add_text("config", "```\n" + json.dumps(owner.config, indent=2, default=str) + "\n```")

    def handle(self, event: dict) -> None:
        kind = event["event"]
        if kind == "epoch":
            for k, v in _numbers({k: v for k, v in event.items() if k not in ("event", "epoch", "step")}).items():
                self.writer.add_scalar(k, v, int(event["epoch"]))
            self.writer.flush()
        elif kind == "end":
            headline = _numbers(_headline(event["summary"]))
            for k, v in headline.items():
                self.writer.add_scalar(f"summary/{k}", v, 0)
            self.writer.add_hparams(hparams(self.owner.config), {f"hparam/{k}": v for k, v in headline.items()},
                                    run_name=".")  # beside the run's scalars: one row per run in HParams
            folder = self.dir / self.owner.run.run_id / "artifacts"  # TensorBoard has no artifacts: copies
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps({k: v for k, v in event["summary"].items()
                                                             if not k.startswith("_")}, default=str, indent=2))
            weights = self.owner.run.weights_path("best")
            if weights.is_file():
                (folder / weights.name).write_bytes(weights.read_bytes())

    def close(self, state: str) -> None:
        if state != "done":
            self.writer.add_text("state", state)
        self.writer.close()


MLFLOW_STATUS = {"done": "FINISHED", "failed": "FAILED", "diverged": "FAILED", "cancelled": "KILLED"}
MLFLOW_BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch call


def mlflow_uri(where: str | None, store_root: Path) -> str:
    """The tracking URI of `--track mlflow[:URI]`: the one given, else $MLFLOW_TRACKING_URI, else a SQLite file in
    the run store."""
    return where or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(store_root).absolute() / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: for a SQLite database, a folder beside it (MLflow's default is
    ./mlruns of whatever folder the job happens to run in); for a server or a file store, MLflow's own choice."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///"):]).absolute().parent / "mlflow-artifacts").as_uri()


class _MLflow:
    EXPERIMENT = "kd-workbench"

    def __init__(self, owner: Tracker, where: str | None):
        uri = mlflow_uri(where, owner.root)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow keeps its file store behind this
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.owner, self.name = owner, f"mlflow:{uri}"
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(self.EXPERIMENT)
        self.exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.EXPERIMENT, artifact_location=_artifact_location(uri))
        tags = {"kdw.run_id": owner.run.run_id, "kdw.kind": str(owner.config.get("kind"))}
        group = owner.config.get("group")
        if group:
            tags |= {"kdw.group": group, "mlflow.parentRunId": self._parent(group)}
        self.id = self.client.create_run(self.exp_id, run_name=owner.run.run_id, tags=tags).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in _flat(owner.config).items() if v is not None]
        for i in range(0, len(params), MLFLOW_BATCH):
            self.client.log_batch(self.id, params=params[i:i + MLFLOW_BATCH])

    def _parent(self, group: str) -> str:
        """The MLflow run that holds the group's runs as children: made by the first run of the group, found by
        the others (its id is kept in the run store, under a lock, so parallel trials share one parent)."""
        from filelock import FileLock

        folder = self.owner.root / ".cache" / "mlflow-parents"
        folder.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(f"{self.client.tracking_uri}|{group}".encode()).hexdigest()[:16]
        record = folder / f"{key}.json"
        with FileLock(str(record) + ".lock", timeout=60):
            if record.is_file():
                parent = json.loads(record.read_text()).get("run_id")
                try:
                    self.client.get_run(parent)
                    return parent
                except Exception:  # the tracking store was reset: make it again
                    pass
            run = self.client.create_run(self.exp_id, run_name=group, tags={"kdw.group": group,
                                                                            "kdw.kind": "group"})
            self.client.set_terminated(run.info.run_id, "FINISHED")  # a folder for its children, not a job
            record.write_text(json.dumps({"run_id": run.info.run_id, "group": group}))
            return run.info.run_id

    def handle(self, event: dict) -> None:
        from mlflow.entities import Metric

        kind = event["event"]
        now = int(time.time() * 1000)
        if kind == "epoch":
            values = _numbers({k: v for k, v in event.items() if k not in ("event", "epoch", "step")})
            self.client.log_batch(self.id, metrics=[Metric(k, v, now, int(event["epoch"])) for k, v in values.items()])
        elif kind == "end":
            values = _numbers(_headline(event["summary"]))
            self.client.log_batch(self.id, metrics=[Metric(f"summary.{k}", v, now, 0) for k, v in values.items()])
            run = self.owner.run
            for path in (run.summary_path, run.weights_path("best")):
                if path.is_file():
                    self.client.log_artifact(self.id, str(path))

    def close(self, state: str) -> None:
        self.client.set_terminated(self.id, MLFLOW_STATUS.get(state, "FAILED"))
