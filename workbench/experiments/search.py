"""Hyperparameter search on Ray Tune with Optuna's TPE sampler and early stopping, every trial a run in the store.

    kdw search --dataset digits --model mlp --width 32 --method dkd --param-range beta=1:16:log --trials 4 --epochs 3

A search samples the method's own hyperparameters (T and α for kd; β, the weights, the temperature for the
others), the learning rate (``lr``) or the student's width (``width``) within the given ranges, runs each
trial as a run of the run store (one group), and reports the validation accuracy every epoch to Ray Tune,
whose scheduler (ASHA by default, or the median stopping rule) stops a trial that falls behind. The test set
is never looked at to choose: when the budget is spent, the best configuration by validation accuracy is
trained again over `seeds` seeds, each beside its scratch twin, and its paired KD gain on the test set is
the search's result.

Where it runs: an embedded Ray for this machine by default (``ray.init`` with its CPU and GPU counts), or an
existing cluster with ``--address``. Trials write the run store directly, so on a cluster the store must be a
folder every worker machine sees at the same path (docs/scaling.md). Ray and Optuna are an optional extra:
``pip install -e '.[search]'``.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from workbench.analysis.compare import comparison_rows, gain_verdict, mean_std
from workbench.analysis.format import format_values
from workbench.core.methods import METHODS
from workbench.errors import friendly_error
from workbench.experiments.recipes import distill_configs
from workbench.io import atomic_write_json, read_json_object
from workbench.jobs.queue import check_workers, claim, default_workers, execute_run, fail_stale_runs
from workbench.jobs.spawn import Command, spawn
from workbench.store.runs import RunStore, process_identity, same_process
from workbench.train.loop import TrainConfig

INSTALL = "pip install -e '.[search]' (or pip install 'kd-workbench[search]')"
SCHEDULERS = ("asha", "median", "none")


def require_ray():
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no progress tables on the driver's output
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import optuna  # noqa: F401
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise ValueError(f"search runs on Ray Tune with Optuna, which are not installed: {INSTALL}") from None
    return ray


@dataclass(frozen=True)
class ParamRange:
    """One searched hyperparameter: `name` in [low, high], on a log scale if `log`, whole numbers if `integer`."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"the range of {self.name} must be finite numbers, got {self.low}:{self.high}")
        if not self.low < self.high:
            raise ValueError(f"the range of {self.name} is empty or inverted ({self.low:g}:{self.high:g}); "
                             "give it as low:high with low < high")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range of {self.name} must be above 0, got {self.low:g}:{self.high:g}")

    def distribution(self):
        from ray import tune

        if self.integer:
            return tune.lograndint(int(self.low), int(self.high) + 1) if self.log else \
                tune.randint(int(self.low), int(self.high) + 1)
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)


def parse_range(text: str) -> ParamRange:
    """'beta=1:16:log', 'lr=1e-4:1e-2:log', 'width=16:128:int' -> ParamRange.

    >>> parse_range("beta=1:16:log")
    ParamRange(name='beta', low=1.0, high=16.0, log=True, integer=False)
    """
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or len(parts) < 2 or not name.strip():
        raise ValueError(f"a parameter range looks like name=low:high[:log][:int], got {text!r}")
    flags = {p.strip().lower() for p in parts[2:]}
    if flags - {"log", "int", "lin", ""}:
        raise ValueError(f"{text!r}: after low:high, only log and int are understood")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{text!r}: low and high must be numbers") from None
    return ParamRange(name.strip(), low, high, "log" in flags, "int" in flags)


def searchable(method: str, family: str) -> dict[str, bool]:
    """{parameter: whole numbers?} that a search may vary for this method and student family."""
    out = {k: isinstance(v, int) for k, v in METHODS[method].defaults.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out["lr"] = False
    if family in ("mlp", "cnn", "resnet"):
        out["width"] = True
    elif family == "mobilenet_v2":
        out["width"] = False
    return out


def check_ranges(method: str, family: str, ranges: list[ParamRange]) -> list[ParamRange]:
    """The ranges, validated against what this method and student can vary (one sentence if not)."""
    allowed = searchable(method, family)
    if not ranges:
        raise ValueError(f"give at least one --param-range; {method} can search {', '.join(allowed)}")
    out = []
    for r in ranges:
        if r.name not in allowed:
            raise ValueError(f"{method} has no parameter {r.name!r} to search; it can search {', '.join(allowed)}")
        if r.name in ("lr", "width") and r.low <= 0:
            raise ValueError(f"the range of {r.name} must be above 0, got {r.low:g}:{r.high:g}")
        if r.name in METHODS[method].defaults:  # both ends within what the method accepts for a single run
            for v in (r.low, r.high):
                try:
                    METHODS[method]({r.name: int(v) if allowed[r.name] else float(v)})
                except ValueError as e:
                    raise ValueError(f"the range {r.name}={r.low:g}:{r.high:g} reaches {v:g}, which {method} "
                                     f"refuses ({str(e).removeprefix(method + ': ')})") from None
        out.append(replace(r, integer=r.integer or allowed[r.name]))
    return out


def default_range(method: str, name: str, base=None) -> ParamRange:
    """A sensible starting range for one parameter (the forms' defaults): a method's weight from 1/16 to 4 times
    its paper's value on a log scale, a temperature 1 to 8, α 0.1 to 1, the learning rate around `base`'s."""
    m = METHODS[method]
    value = m.defaults.get(name)
    if name == m.temperature_key:
        return ParamRange(name, 1.0, 8.0)
    if name == m.weight_key:
        return ParamRange(name, 0.1, 1.0)
    if name == "lr":
        lr = base.lr if base is not None else 3e-3
        return ParamRange(name, lr / 10, lr * 3, log=True)
    if name == "width":
        w = float(base.model.width) if base is not None and base.model.width else 32.0
        if base is not None and base.model.family == "mobilenet_v2":
            return ParamRange(name, 0.25, 1.0)
        return ParamRange(name, max(1.0, w / 4), w * 2, log=True, integer=True)
    if isinstance(value, int) and not isinstance(value, bool):
        return ParamRange(name, max(1, value // 2), value * 2, integer=True)
    if isinstance(value, float) and value > 0:
        return ParamRange(name, value / 16, value * 4, log=True)
    return ParamRange(name, 0.1, 10.0, log=True)


def apply(base, values: dict):
    """`base` (a TrainConfig) with sampled values: the method's parameters, `lr`, or the student's `width`."""
    params = {k: v for k, v in values.items() if k not in ("lr", "width")}
    config = base.with_params(**params) if params else base
    if "lr" in values:
        config = replace(config, lr=float(values["lr"]))
    if "width" in values:
        w = values["width"]
        config = replace(config, model=replace(config.model, width=int(round(w)) if config.model.family != "mobilenet_v2"
                                               else float(w)))
    return config


# ---------------------------------------------------------------------------
# where Ray runs

class StartCancelled(Exception):
    """A cancel arrived while an embedded Ray was starting (`connect`'s `stop`)."""


START_ATTEMPTS = 4  # Ray gives its node 30 s to start; a busy laptop needs more: this many tries, up to 2 minutes


def connect(address: str | None = None, num_cpus: int | None = None, stop=None, say=None):
    """An embedded Ray for this machine, or the cluster at `address` (checked first, so a wrong address fails
    in seconds with the address in the message instead of hanging). Without `address`, the cluster named by
    ``RAY_ADDRESS`` when it is set: what `ray job submit -- kdw search ...` sets for the job it starts.

    An embedded Ray that times out starting (its node has 30 s, which a loaded machine can miss) is started
    again, up to START_ATTEMPTS times; `say(text)` hears of each retry, and `stop()`, asked between them, ends the
    start-up with StartCancelled (a cancel)."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if not address and os.environ.get("RAY_ADDRESS"):  # inside a Ray job, or a shell pointed at a cluster
        ray.init(log_to_driver=False)  # ray.init reads RAY_ADDRESS itself, in every form it accepts
        return ray
    if address and address != "auto":
        host, _, port = address.replace("ray://", "").rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
                pass
        except (OSError, ValueError):
            raise ValueError(f"cannot reach a Ray cluster at {address}: nothing answers there (start one with "
                             "`ray start --head`, or drop --address to run on this machine)") from None
        ray.init(address=address, log_to_driver=False)
        return ray
    if address == "auto":  # the cluster that `ray start` started on this machine
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:
            raise ValueError("--address auto found no Ray cluster started on this machine (`ray start --head`)") \
                from None
        return ray
    import torch

    # address="local": always a new Ray for this process, never a cluster that `ray start` left on this machine;
    # in a folder of its own, which `shutdown` removes and a watchdog removes (with Ray) if this process is killed
    prune_ray_folders()
    folder = ray_folder()
    folder.mkdir(parents=True, exist_ok=True)
    _watch(folder)
    t0 = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=torch.cuda.device_count(),
                     include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=str(folder))
            return ray
        except Exception as e:
            timed_out = "timed out during startup" in str(e)
            if timed_out:
                _end_ray_children()  # what the attempt started
            cancelled = timed_out and stop is not None and stop()
            if not timed_out or cancelled or attempt == START_ATTEMPTS:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)  # no Ray: its watchdog has nothing to wait for
                if not timed_out:
                    raise
                if cancelled:
                    raise StartCancelled() from None
                raise RuntimeError(f"Ray did not start in {time.monotonic() - t0:.0f} s ({attempt} tries of 30 s): "
                                   "this machine is too busy; try again when it is quieter, or start Ray once with "
                                   "`ray start --head` and search with --address auto") from None
            if say is not None:
                say(f"Ray did not start within 30 s (a busy machine); starting it again, try {attempt + 1} of "
                    f"{START_ATTEMPTS}")
    return ray


RAY_FOLDER_PREFIX = "kdw-ray-"


def ray_folder(identity: dict | None = None) -> Path:
    """The embedded Ray's temporary folder for this process (pid and start time in its name): short, because Ray's
    sockets live in it and a socket's path may have at most 107 bytes, and its own, so it is removed whole."""
    import tempfile

    me = identity or process_identity()
    return Path(tempfile.gettempdir()) / f"{RAY_FOLDER_PREFIX}{me['pid']}-{int(me['pid_started'] or 0)}"


def prune_ray_folders() -> list[Path]:
    """Remove the embedded-Ray folders of processes that are gone (a driver killed before its watchdog could
    clean up, a machine that restarted). Returns what was removed."""
    import shutil
    import tempfile

    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{RAY_FOLDER_PREFIX}*"):
        try:
            pid, started = d.name[len(RAY_FOLDER_PREFIX):].split("-")
            owner = {"pid": int(pid), "pid_started": float(started), "host": socket.gethostname()}
        except ValueError:
            continue
        if not same_process(owner) and d.is_dir():  # started is whole seconds: within same_process's 1 s
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _watch(folder: Path) -> None:
    """Start the watchdog that ends this embedded Ray, and removes `folder`, if this process dies first."""
    me = process_identity()
    spawn(Command.watchdog(me["pid"], me["pid_started"], folder), None, None)


# ---------------------------------------------------------------------------
# the search

def _epoch_reporter(run_id: str):
    """A training callback that reports each epoch's validation figures to Ray Tune (in a trial's process)."""
    from ray import tune

    def report(event):
        if event["event"] == "epoch":
            tune.report({"score": epoch_score(event), "val_loss": event["val_loss"], "epoch": event["epoch"],
                         "run_id": run_id})

    return report


def epoch_score(row: dict) -> float:
    """What a search maximises, from an epoch's metrics: the validation accuracy of a classifier, minus the
    validation perplexity of a language model (lower is better)."""
    return -float(row["val_ppl"]) if "val_ppl" in row else float(row["val_acc"])


def _score(t: dict) -> float | None:
    """A trial's score (`trial_table`), or its validation accuracy where a caller gives only that."""
    return t["score"] if t.get("score") is not None else t.get("val_acc")


def score_text(t: dict) -> str:
    """A trial's best validation figure as a front end shows it: '93.10%' or 'ppl 812.4'."""
    if t.get("val_ppl") is not None:
        return f"ppl {t['val_ppl']:,.1f}"
    return f"{100 * t['val_acc']:.2f}%" if t.get("val_acc") is not None else "—"


def _trainable(trial_config: dict):
    """One trial (in a Ray worker): a run of the store, reporting its validation accuracy every epoch."""
    store = RunStore(trial_config["_store"])
    base = TrainConfig.from_dict(trial_config["_base"])
    values = {k: v for k, v in trial_config.items() if not k.startswith("_")}
    config = apply(base, values)
    run = store.create(config.record(trial_config["_command"]) | {"search_values": values}, prefix="trial")
    state = execute_run(run, store, [_epoch_reporter(run.run_id)])
    if state in ("failed", "diverged"):  # an error for Ray Tune: Optuna records a FAILED trial, not a score of 0
        raise TrialFailed(f"trial {run.run_id} {state}: {run.status().get('error') or 'see its log.txt'}")


class TrialFailed(RuntimeError):
    """A search trial whose run did not finish; Ray Tune marks the trial errored and the sampler learns nothing
    from it. The run stays in the store with its epochs."""


def tpe_startup_trials(trials: int) -> int:
    """How many of a budget's trials TPE draws at random before it models the results: Optuna's default of 10,
    sized down to a third of a small budget (at least 2, so its first model has two points)."""
    return min(10, max(2, trials // 3))


def tpe_note(trials: int) -> str | None:
    """What a front end says when a budget is too small for TPE to leave its random start, else None."""
    startup = tpe_startup_trials(trials)
    if trials > startup:
        return None
    return (f"With {trials} trial(s) every trial is drawn at random: TPE models the results only after its first "
            f"{startup} random trials, so give the search at least {startup + 1} trials for it to choose any.")


@dataclass
class SearchResult:
    group: str
    trials: list[dict]  # {run_id, values, score, val_acc or val_ppl, epochs, state}
    best: dict | None  # the best trial's values and validation accuracy
    final_runs: list[str]  # the best configuration over seeds, each with its scratch twin
    gain: float | None = None  # paired KD gain on the test set, mean over seeds
    gain_std: float | None = None
    test_acc: float | None = None
    test_acc_std: float | None = None
    test_ppl: float | None = None  # a language model's: gain is then its scratch twin's perplexity minus its own
    test_ppl_std: float | None = None
    verdict: str = ""
    state: str = "done"  # done | cancelled


# ---------------------------------------------------------------------------
# a search's own record: <store>/.cache/search/GROUP.json (what it searches, its state and result), and a
# GROUP.cancel file that stops it from any process that sees the store

def status_path(store: RunStore, group: str) -> Path:
    return store.cache_dir / "search" / f"{group}.json"


def _cancel_path(store: RunStore, group: str) -> Path:
    return store.cache_dir / "search" / f"{group}.cancel"


def _write_status(store: RunStore, group: str, **fields) -> dict:
    path = status_path(store, group)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = read_json_object(path) or {}
    except Exception:
        old = {}
    new = {**old, **fields, "updated": time.time()}
    atomic_write_json(path, new)
    return new


def search_status(store: RunStore, group: str) -> dict | None:
    """A search's record, or None; a 'running' search whose driver process is gone reads as failed."""
    try:
        st = read_json_object(status_path(store, group))
    except Exception:
        return None
    if st and st.get("state") in ("queued", "running") and st.get("host") == socket.gethostname() \
            and st.get("pid") and not same_process(st):
        st = {**st, "state": "failed", "error": st.get("error") or "the search process ended without finishing; "
                                                                   "see its log in the store's .cache/search"}
    return st


def searches(store: RunStore) -> list[str]:
    """The groups of the searches in this store, oldest first."""
    folder = store.cache_dir / "search"
    if not folder.is_dir():
        return []
    return [p.stem for p in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)]


def cancel_search(store: RunStore, group: str) -> str:
    """Stop a search: no new trials start, the running ones stop at their next step, the finished ones stay."""
    st = search_status(store, group)
    if not st or st.get("state") not in ("queued", "running"):
        return f"nothing to cancel: the search is {st.get('state') if st else 'unknown'}"
    _cancel_path(store, group).touch()
    for run in store.list(group=group, state="running"):
        run.request_cancel()
    if st.get("state") == "queued" or str(st.get("stage") or "").startswith("starting Ray"):
        # nothing has run: it reads cancelled at once; its process ends Ray's start-up and says the same
        _write_status(store, group, state="cancelled", stage=None, error="cancelled before any trial started",
                      ended=time.time())
        return "cancelled"
    return "cancel requested"


def prepare_search(store: RunStore, base, ranges: list[ParamRange], trials: int, group: str, *, seeds: int = 3,
                   time_budget_s: float | None = None, scheduler: str = "asha", address: str | None = None,
                   command: str = "") -> None:
    """Check a search's inputs and record it as queued, for `start_search` to run in the background."""
    check_inputs(base, ranges, trials, seeds, time_budget_s, scheduler)
    require_ray()
    if status_path(store, group).exists():
        raise ValueError(f"a search named {group} exists already; choose another name")
    from dataclasses import asdict

    _write_status(store, group, state="queued", base=base.to_dict(), ranges=[asdict(r) for r in ranges],
                  trials=trials, seeds=seeds, time_budget_s=time_budget_s, scheduler=scheduler, address=address,
                  command=command, method=base.method, created=time.time())


def run_prepared(store: RunStore, group: str, progress=None) -> SearchResult:
    """Run a search that `prepare_search` recorded (the background job's entry point)."""
    st = search_status(store, group)
    if not st:
        raise ValueError(f"no search named {group} in {store.root}")
    if st.get("state") == "cancelled":  # cancelled while it was queued: it never starts
        return SearchResult(group, [], None, [], state="cancelled")
    try:
        return search(TrainConfig.from_dict(st["base"]), [ParamRange(**r) for r in st["ranges"]], st["trials"],
                      store, group, seeds=st["seeds"], time_budget_s=st.get("time_budget_s"),
                      scheduler=st.get("scheduler", "asha"), address=st.get("address"), command=st.get("command", ""),
                      progress=progress)
    finally:
        shutdown()


def check_inputs(base, ranges, trials, seeds, time_budget_s, scheduler) -> list[ParamRange]:
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"the trial budget must be at least 1, got {trials}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"the time budget must be above 0 seconds, got {time_budget_s}")
    if seeds < 0:
        raise ValueError(f"seeds must be at least 1 (or 0: no confirmation runs), got {seeds}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    if not METHODS[base.method].distils:
        raise ValueError(f"a search tunes a distillation method; choose one (kd, dkd, at, ...), not {base.method}")
    return check_ranges(base.method, base.model.family, ranges)


def _stopper(store: RunStore, group: str):
    from ray.tune import Stopper

    path = _cancel_path(store, group)

    class CancelStopper(Stopper):
        """Stops the whole search when its cancel file appears (`cancel_search`, the app's Cancel button)."""

        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return path.exists()

    return CancelStopper()


def search(base, ranges: list[ParamRange], trials: int, store: RunStore, group: str, *, seeds: int = 3,
           time_budget_s: float | None = None, scheduler: str = "asha", address: str | None = None,
           num_cpus: int | None = None, command: str = "", progress=None, twins: bool = True,
           workers: int | None = None) -> SearchResult:
    """Search `ranges` around `base` (a distillation TrainConfig) with `trials` trials, then confirm the best
    configuration over `seeds` seeds, each with its scratch twin (`twins=False`: without, for a benchmark that
    pairs every method with one shared set of scratch runs). `workers` trials run at once: by default one per
    GPU, else two sharing the CPU cores. Writes its record (`search_status`)."""
    from dataclasses import asdict


    ranges = check_inputs(base, ranges, trials, seeds, time_budget_s, scheduler)
    say = progress or (lambda msg: None)
    store.ensure_writable()
    base = replace(base, group=group)
    if (search_status(store, group) or {}).get("state") != "queued":
        _cancel_path(store, group).unlink(missing_ok=True)  # an old search's request never stops a new one
    _write_status(store, group, state="running", **process_identity(), base=base.to_dict(),
                  ranges=[asdict(r) for r in ranges], trials=trials, seeds=seeds, time_budget_s=time_budget_s,
                  scheduler=scheduler, address=address, command=command, method=base.method, started=time.time(),
                  error=None)
    try:
        result = _search(base, ranges, trials, store, group, seeds, time_budget_s, scheduler, address, num_cpus,
                         command, say, twins, workers)
    except BaseException as e:
        cancelled = isinstance(e, KeyboardInterrupt) or _cancel_path(store, group).exists()  # asked for: not a fault
        _write_status(store, group, state="cancelled" if cancelled else "failed", stage=None,
                      error="cancelled by the user" if cancelled else friendly_error(e), ended=time.time(),
                      error_detail=None if isinstance(e, KeyboardInterrupt) else str(e)[-4000:])  # Ray's own text
        raise
    _write_status(store, group, state=result.state, best=result.best, final_runs=result.final_runs, gain=result.gain,
                  gain_std=result.gain_std, test_acc=result.test_acc, test_acc_std=result.test_acc_std,
                  test_ppl=result.test_ppl, test_ppl_std=result.test_ppl_std,
                  verdict=result.verdict, ended=time.time(),
                  error="cancelled: the finished trials are kept" if result.state == "cancelled" else None)
    return result


def _search(base, ranges, trials, store, group, seeds, time_budget_s, scheduler, address, num_cpus, command,
            say, twins, workers) -> SearchResult:
    cancel = _cancel_path(store, group)
    if cancel.exists():  # cancelled while it was waiting to start
        return SearchResult(group, [], None, [], state="cancelled")
    say("starting Ray…")
    _write_status(store, group, stage="starting Ray", stage_started=time.time())
    try:
        ray = connect(address, num_cpus, stop=cancel.exists,
                      say=lambda text: (say(text), _write_status(store, group, stage=f"starting Ray: {text}")))
    except StartCancelled:
        return SearchResult(group, [], None, [], state="cancelled")
    _write_status(store, group, stage=None)
    if cancel.exists():  # cancelled while Ray was starting: nothing ran
        return SearchResult(group, [], None, [], state="cancelled")
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    space = {r.name: r.distribution() for r in ranges}
    space.update(_store=str(store.root), _base=base.to_dict(), _command=command)
    # max_t beyond the last epoch: a trial that reaches it must finish (test, summary), not be cut at its report
    sched = {"asha": lambda: ASHAScheduler(time_attr="epoch", max_t=base.epochs + 1, grace_period=1,
                                           reduction_factor=2),
             "median": lambda: MedianStoppingRule(time_attr="epoch", grace_period=1, min_samples_required=2),
             "none": lambda: None}[scheduler]()
    resources = ray.cluster_resources()
    gpus = 1 if resources.get("GPU") else 0
    if workers is None:  # one trial per GPU; on the CPU, two trials sharing the cores
        workers = int(resources["GPU"]) if gpus else min(2, int(resources.get("CPU", 1)))
    cpus = max(1, int(resources.get("CPU", 1)) // workers)
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": cpus, "gpu": gpus}), param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", num_samples=trials, scheduler=sched,
                                    search_alg=OptunaSearch(sampler=optuna.samplers.TPESampler(
                                        n_startup_trials=tpe_startup_trials(trials), seed=base.seed)),
                                    time_budget_s=time_budget_s,
                                    max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(store.cache_dir / "ray"), name=group, verbose=0,
                                  stop=_stopper(store, group), callbacks=[_settler(store, base.epochs)]))
    say(f"search {group}: {trials} trial(s) of {base.method} over {', '.join(r.name for r in ranges)} "
        f"(TPE after {tpe_startup_trials(trials)} random trials)")
    if tpe_note(trials):
        say(tpe_note(trials))
    grid = None
    try:
        grid = tuner.fit()
    finally:
        outcomes = {}
        for r in grid or []:
            rid = (r.metrics or {}).get("run_id")
            if rid:
                outcomes[rid] = "error" if r.error else "stopped"
        _settle_trials(store, group, base.epochs, outcomes)
    found = []
    for t in trial_table(store, group):
        if t["score"] is not None:
            found.append(t)
    found.sort(key=lambda t: -t["score"])
    cancelled = _cancel_path(store, group).exists()
    result = SearchResult(group, found, found[0] if found else None, [], state="cancelled" if cancelled else "done")
    if not found or cancelled or seeds == 0:
        return result
    best = apply(base, found[0]["values"])
    say(f"best on validation: {format_values(found[0]['values'], '=')} ({score_text(found[0])}); "
        f"now {seeds} seed(s), each with its scratch twin")
    configs = [c for seed in range(base.seed, base.seed + seeds)
               for c in distill_configs(replace(best, seed=seed, group=group), scratch=twins)]
    ids = run_grid(store, configs, command, address=address, extra={"search_confirm": True}, workers=workers)
    finals = [store.get(i) for i in ids]
    result.final_runs = ids
    if _cancel_path(store, group).exists():
        result.state = "cancelled"
        return result
    bad = [r for r in finals if r.state != "done"]
    if bad:
        raise RuntimeError(f"the confirmation run {bad[0].run_id} {bad[0].state}: {bad[0].status().get('error')}")
    rows = [r for r in comparison_rows(finals, variants=False) if r["role"] == "kd"]
    if any(r.get("test_ppl") is not None for r in rows):  # a language model: perplexity, and its drop vs scratch
        if twins:
            result.gain, result.gain_std = mean_std([r.get("ppl_gain") for r in rows])
        result.test_ppl, result.test_ppl_std = mean_std([r["test_ppl"] for r in rows])
    else:
        if twins:
            result.gain, result.gain_std = mean_std([r["kd_gain"] for r in rows])
        result.test_acc, result.test_acc_std = mean_std([r["test_acc"] for r in rows])
    result.verdict = gain_verdict(result.gain, result.gain_std, len(rows)) if twins else ""
    return result


# ---------------------------------------------------------------------------
# grids: the grid case of the same engine (kdw sweep)

def _grid_trial(trial_config: dict):
    """One cell of a grid (in a Ray worker): the queued run the driver created and claimed, run here."""
    from ray import tune


    store = RunStore(trial_config["_store"])
    run = store.get(trial_config["run_id"])
    if run.state != "queued":
        tune.report({"score": 0.0, "epoch": 0, "state": run.state})
        return
    atomic_write_json(run.claim_path, process_identity())  # the driver's claim handed to this process
    state = execute_run(run, store, [_epoch_reporter(run.run_id)])
    tune.report({"score": 0.0, "epoch": 0, "state": state})


def run_grid(store: RunStore, configs: list, command: str = "", *, workers: int | None = None,
             address: str | None = None, progress=None, extra: dict | None = None) -> list[str]:
    """Run a fixed list of TrainConfigs (a sweep) on Ray Tune, `workers` at a time; returns their run ids.

    The runs are created in the store first (queued, claimed by this process, so the local queue leaves
    them alone) and each Ray trial runs one of them. Runs that never started when the grid stops (Ctrl-C)
    are marked cancelled; a run whose Ray worker died is marked failed with its epochs kept.
    """
    ray = connect(address)
    if workers is None:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = gpus or default_workers()
    elif not address:
        check_workers(workers)
    from ray import tune

    store.ensure_writable()
    runs = [store.create(c.record(command) | (extra or {}), prefix=c.kind) for c in configs]
    for run in runs:
        claim(run)
    gpu = 1 if ray.cluster_resources().get("GPU") else 0
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // workers)
    say = progress or (lambda msg: None)
    say(f"{len(runs)} runs on Ray, {workers} at a time")
    tuner = tune.Tuner(
        tune.with_resources(_grid_trial, {"cpu": cpus, "gpu": gpu}),
        param_space={"run_id": tune.grid_search([r.run_id for r in runs]), "_store": str(store.root)},
        tune_config=tune.TuneConfig(max_concurrent_trials=workers, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(store.cache_dir / "ray"), name=f"grid-{runs[0].run_id}",
                                  verbose=0))
    def on_term(signum, frame):  # `kill PID` stops the sweep like Ctrl-C: what it queued is cancelled, not left
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() else None
    try:
        tuner.fit()
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        for run in runs:
            st = run.status()
            if st["state"] == "queued":
                run.set_status("cancelled", error="the sweep stopped before this run started")
        fail_stale_runs(store)
    return [r.run_id for r in runs]


def _settle_trials(store: RunStore, group: str, epochs: int, outcomes: dict[str, str]) -> None:
    """Write what Ray knows into the trials' runs (at the end of a search, for any trial not settled yet)."""
    for run in store.list(group=group):
        if "search_values" in run.config:
            _settle(run, epochs, outcomes.get(run.run_id) == "error")


def _settle(run, epochs: int, errored: bool) -> None:
    """A trial the scheduler stopped (or a cancel interrupted) reads as cancelled, with how far it got; one whose
    worker died reads as failed, its metrics kept. A trial that finished, or failed on its own, is left alone."""
    st = run.status()
    if st["state"] in ("done", "diverged", "cancelled", "queued"):
        return
    if st["state"] == "failed" and "ended without finishing" not in str(st.get("error")):
        return  # a trial that failed on its own keeps its own reason
    done = len(run.metrics())
    if errored:
        run.set_status("failed", error=f"the trial's Ray worker died after {done} of {epochs} epochs; "
                                       "the search went on without it")
    else:
        run.set_status("cancelled", error=f"stopped by the search after {done} of {epochs} epochs "
                                          "(early stopping, the time budget, or a cancel)")


def _settler(store: RunStore, epochs: int):
    """A Ray Tune callback that settles each trial's run as soon as Ray ends it, so the app never shows a trial
    stopped early as a crashed job."""
    from ray.tune import Callback

    class Settle(Callback):
        def _one(self, trial, errored: bool) -> None:
            rid = (trial.last_result or {}).get("run_id")
            if rid and store.exists(rid):
                try:
                    _settle(store.get(rid), epochs, errored)
                except Exception:
                    pass  # settled again at the end of the search

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._one(trial, False)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._one(trial, True)

    return Settle()


def shutdown(wait_s: float = 30.0) -> None:
    """Stop the embedded Ray, and wait until the processes it started have exited.

    `ray.shutdown()` returns before its workers (`ray::` processes), `monitor.py` and `log_monitor.py` are gone; on
    a busy machine they linger for seconds. This waits up to `wait_s` for the Ray processes below this one (raylet,
    GCS, monitors, workers), then kills what is left, so a sweep or a search that returns leaves nothing running.
    """
    try:
        import ray
    except ImportError:
        return
    if not ray.is_initialized():
        return
    started = _ray_children()
    ray.shutdown()
    _end_ray_children(wait_s, started)
    import shutil

    shutil.rmtree(ray_folder(), ignore_errors=True)  # Ray's session folder, logs and sockets; its watchdog exits


def _ray_children() -> list:
    """The Ray processes below this one (raylet, GCS, monitors, workers)."""
    import psutil

    def is_ray(p) -> bool:
        try:
            cmd = " ".join(p.cmdline()) or p.name()
        except psutil.Error:
            return False
        return any(n in cmd for n in ("ray::", "raylet", "gcs_server", "/ray/", "default_worker.py"))

    try:
        return [p for p in psutil.Process().children(recursive=True) if is_ray(p)]
    except psutil.Error:
        return []


def _end_ray_children(wait_s: float = 5.0, started: list | None = None) -> None:
    """Wait up to `wait_s` for these Ray processes (default: all below this one) to exit, then kill the rest."""
    from workbench.jobs.watchdog import end_processes

    end_processes(_ray_children() if started is None else started, wait_s)


def trial_table(store: RunStore, group: str) -> list[dict]:
    """The finished and running trials of a search, from the run store: values, the best validation accuracy (or
    perplexity, for a language model) as `score` (`epoch_score`: higher is better), epochs."""
    out = []
    for i, run in enumerate(r for r in store.list(group=group) if "search_values" in r.config):
        rows = run.metrics()
        score = max((epoch_score(r) for r in rows), default=None)
        lm = any("val_ppl" in r for r in rows)
        out.append({"trial": i + 1, "run_id": run.run_id, "state": run.state, "values": run.config["search_values"],
                    "score": score, "val_acc": None if lm else score,
                    "val_ppl": -score if lm and score is not None else None, "epochs": len(rows)})
    return out


def trial_rows(trials: list[dict]) -> list[dict]:
    """`trial_table` flattened for a table: one column per searched parameter, validation accuracy in %."""
    lm = any(t.get("val_ppl") is not None for t in trials)
    return [{"trial": t["trial"], **{k: round(v, 4) if isinstance(v, float) else v for k, v in t["values"].items()},
             **({"val ppl": None if t.get("val_ppl") is None else round(t["val_ppl"], 1)} if lm else
                {"val acc %": None if t["val_acc"] is None else round(100 * t["val_acc"], 2)}),
             "epochs": t["epochs"], "state": t["state"], "run": t["run_id"]} for t in trials]


IMPORTANCE_METHOD = "fANOVA (Optuna's FanovaImportanceEvaluator)"


def importances(trials: list[dict], ranges: list[ParamRange] | None = None) -> dict[str, float]:
    """fANOVA parameter importances of the finished trials (empty with fewer than three, or one parameter).

    The study is rebuilt from the trials with each parameter's searched distribution (`ranges`: its log scale
    and whole numbers kept); a parameter without its range spans the values tried.
    """
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [t for t in trials if _score(t) is not None]
    names = sorted({k for t in done for k in t["values"]})
    if len(done) < 3 or len(names) < 2:
        return {n: 1.0 for n in names} if len(names) == 1 and len(done) >= 3 else {}
    given = {r.name: r for r in ranges or []}

    def dist(n):
        r = given.get(n)
        if r is not None and r.integer:
            return IntDistribution(int(r.low), int(r.high), log=r.log)
        if r is not None:
            return FloatDistribution(r.low, r.high, log=r.log)
        low, high = min(t["values"][n] for t in done), max(t["values"][n] for t in done)
        return FloatDistribution(low, high if high > low else low + 1e-9)

    dists = {n: dist(n) for n in names}
    study = optuna.create_study(direction="maximize")
    for t in done:
        params = {n: int(t["values"][n]) if isinstance(dists[n], IntDistribution) else float(t["values"][n])
                  for n in names}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=_score(t)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return {k: float(v) for k, v in get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)).items()}


def start_search(store: RunStore, group: str) -> None:
    """Run a search recorded by `prepare_search` as a detached ``kdw search-job GROUP`` process (the Sweep
    page's Search mode, `widgets.search_panel`); its trials land in the store as runs of `group`."""
    if not search_status(store, group):
        raise ValueError(f"no search named {group} is prepared in {store.root}")
    spawn(Command.kdw("search-job", group, store_root=store.root), store.root,
          status_path(store, group).with_suffix(".log"))
