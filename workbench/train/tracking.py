"""Tracking: the same training events the run store gets, also sent to TensorBoard or MLflow.

    kdw distill ... --track tensorboard              # event files under <runs>/tensorboard/<run id>
    kdw distill ... --track tensorboard:/some/dir
    kdw distill ... --track mlflow                   # a local file store, <runs>/mlruns
    kdw distill ... --track mlflow:http://host:5000  # or any MLflow tracking URI (sqlite:///mlflow.db, ...)

Each target logs the run's config as parameters, every per-epoch figure (each loss term included) as a
metric at its epoch, and at the end the summary's headline figures as metrics and summary.json and the
student's weights as artifacts. The run store stays the record: a target that cannot be reached or fails
later gets one warning, and the run goes on without it. A default can live in a settings file
(``$KDW_SETTINGS``, default ``~/.config/kd-workbench/settings.toml``)::

    track = ["tensorboard"]

TensorBoard and MLflow are an optional extra: ``pip install -e '.[tracking]'``. MLflow's local file store is
in maintenance mode upstream; the workbench opts into it for ``file:`` URIs (``MLFLOW_ALLOW_FILE_STORE``), and
any other MLflow URI works as MLflow itself allows.
"""

from __future__ import annotations

import json
import os
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
    """A training callback that mirrors a run's events to its tracking targets."""

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


def _numbers(d: dict) -> dict:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _headline(summary: dict) -> dict:
    out = {"test_acc": summary.get("test", {}).get("accuracy"), "test_acc_last": summary.get("test_last", {}).get(
        "accuracy"), "best_epoch": summary.get("best_epoch"), "train_s": summary.get("train_s")}
    prof = summary.get("profile") or {}
    out.update({k: prof.get(k) for k in ("params", "size_mb", "latency_ms", "throughput")})
    return {k: v for k, v in out.items() if v is not None}


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
            for k, v in _numbers(_headline(event["summary"])).items():
                self.writer.add_scalar(f"summary/{k}", v, 0)
            folder = self.dir / self.owner.run.run_id / "artifacts"  # TensorBoard has no artifacts: copies
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps({k: v for k, v in event["summary"].items()
                                                             if not k.startswith("_")}, default=str, indent=2))
            weights = self.owner.run.weights_path("best")
            if weights.is_file():
                (folder / weights.name).write_bytes(weights.read_bytes())
            self.writer.close()


class _MLflow:
    def __init__(self, owner: Tracker, where: str | None):
        uri = where or f"file:{owner.root / 'mlruns'}"
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the local file store, kept working
        from mlflow.tracking import MlflowClient

        self.owner, self.name = owner, f"mlflow:{uri}"
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name("kd-workbench")
        exp_id = exp.experiment_id if exp else self.client.create_experiment("kd-workbench")
        self.id = self.client.create_run(exp_id, run_name=owner.run.run_id).info.run_id
        params = {k: str(v)[:500] for k, v in _flat(owner.config).items() if v is not None}
        for k, v in params.items():
            self.client.log_param(self.id, k, v)

    def handle(self, event: dict) -> None:
        kind = event["event"]
        if kind == "epoch":
            for k, v in _numbers({k: v for k, v in event.items() if k not in ("event", "epoch", "step")}).items():
                self.client.log_metric(self.id, k, v, step=int(event["epoch"]))
        elif kind == "end":
            for k, v in _numbers(_headline(event["summary"])).items():
                self.client.log_metric(self.id, f"summary.{k}", v)
            run = self.owner.run
            for path in (run.summary_path, run.weights_path("best")):
                if path.is_file():
                    self.client.log_artifact(self.id, str(path))
            self.client.set_terminated(self.id)
