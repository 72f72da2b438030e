"""Jobs: training runs executed in their own process, watched through the run store.

A job owns exactly one run folder. `execute_run` runs a run's config in the current
process, moving its status through running -> done | failed | cancelled; Ctrl-C and
SIGTERM end it as cancelled, any error as failed with a readable message, and the
epochs finished so far stay in metrics.jsonl.

The UIs go through a `Runner` (submit, status, cancel). The default `LocalQueueRunner`
queues runs in the store and starts detached worker processes (``kdw worker``), up to the
store's worker count (`--workers N`, default one per visible GPU, else one), each pinned to
its own GPU with ``CUDA_VISIBLE_DEVICES``. A worker holds its slot's lock and runs queued jobs
one after another; it takes a run by creating the run's ``.claim`` file under the store's claim
lock, so two workers never run the same run. A page reload or a second tab finds the jobs again.
Ray Tune runs searches and grids on the same store (`workbench.experiments.search`). The locks are
`filelock.FileLock`s, so this works on Linux, macOS and Windows.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import time
from pathlib import Path
from typing import Protocol

from workbench.errors import CheckpointDamaged, RunFailed, RunStoreError, friendly_error
from workbench.io import atomic_write_json, read_json_object
from workbench.jobs.spawn import Command, spawn
from workbench.store.runs import FINISHED, HEARTBEAT_S, Run, RunStore, process_identity, same_process

WORKER_MARKER = ".worker.json"  # the last worker started in slot 0: {pid, pid_started, host}
QUEUE_SETTINGS = ".queue.json"  # {"workers": N}: how many jobs this store runs at once


class AlreadyClaimed(ValueError):
    """A resume of a run that another process is training (or has finished) meanwhile: one sentence, and the run's
    status is left as that process wrote it."""


def _claim_resume(run: Run) -> None:
    """Under the claim lock: AlreadyClaimed unless `run` is still stopped (failed, cancelled, diverged), so of two
    resumes started at the same moment exactly one trains."""
    state = run.state
    if state in ("running", "queued"):
        pid = run.status().get("pid")
        raise AlreadyClaimed(f"run {run.run_id} is already being resumed or trained"
                             + (f" (process {pid})" if pid else "") + "; wait for it, or cancel it first")
    if state == "done":
        raise AlreadyClaimed(f"run {run.run_id} has finished meanwhile; there is nothing to resume")


class Cancelled(KeyboardInterrupt):
    """Raised inside a job when it is asked to stop (SIGTERM)."""


class _Progress:
    """Writes throttled progress (fraction of steps) into status.json, and notices a cancel request.

    A cancel request is a file `cancel` in the run folder (`LocalQueueRunner.cancel` writes it), so a
    job can be stopped from any machine that sees the run store, without signalling a process id.
    """

    def __init__(self, run: Run, every_s: float = 0.5):
        self.run, self.every_s, self.last = run, every_s, 0.0
        self.total = 1

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "stage":  # before the first epoch: say what is taking the time
            now = time.monotonic()
            if now - self.last >= self.every_s or event["fraction"] >= 1:
                self.last = now
                if self.run.cancel_requested():
                    raise Cancelled()
                self.run.set_progress(stage=event["text"], stage_fraction=event["fraction"],
                                      stage_eta_s=event.get("eta_s"))
        elif kind == "start":
            self.total = max(1, event["total_steps"])
            self.run.set_progress(step=0, total_steps=event["total_steps"], epoch=0, epochs=event["epochs"],
                                  device=event["device"], fraction=0.0, stage=None)
        elif kind == "step":
            now = time.monotonic()
            if now - self.last >= self.every_s or event["step"] == event["total_steps"]:
                self.last = now
                if self.run.cancel_requested():
                    raise Cancelled()
                self.run.set_progress(step=event["step"], epoch=event["epoch"],
                                      fraction=event["step"] / event["total_steps"])
        elif kind == "epoch":
            self.run.append_metrics({k: v for k, v in event.items() if k != "event"})
            self.run.set_progress(epoch=event["epoch"], fraction=event["step"] / self.total)


class _Heartbeat:
    """Rewrites the run's status every HEARTBEAT_S seconds while it runs (long set-up, long evaluation), so
    another machine sharing the store can tell a live job from a dead one."""

    def __init__(self, run: Run):
        import threading

        self.run, self.stop = run, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                self.run.set_progress()
            except OSError:
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()  # no heartbeat write may land after the final status


def _claim_lock(store: RunStore):
    """The store's lock for a run's fate: claiming it, starting it and cancelling it before it starts."""
    from filelock import FileLock

    return FileLock(str(store.root / ".claim.lock"))


def execute_run(run: Run, store: RunStore, callbacks=(), *, reraise_interrupt: bool = False, teacher=None,
                resume: bool = False, launch: bool = True, queued: bool = False) -> str:
    """Run `run`'s config here and now; returns the final state (done, failed, cancelled or diverged).

    `queued` (a job of the queue): the run starts only if it is still queued when this process takes it, decided
    under the same lock as `LocalQueueRunner.cancel`, so a run whose status says "cancelled before it started"
    never trains.

    The status records this process's identity (pid, start time, host); metrics.jsonl starts empty, or, with
    `resume`, keeps the epochs up to the run's checkpoint. A config with `nproc` > 1 is launched through
    torch.distributed.run (`launch`), whose rank 0 comes back here with `launch=False`.
    """
    from workbench.errors import Diverged
    from workbench.train.loop import TrainConfig, train

    def on_term(signum, frame):
        raise Cancelled()

    config = TrainConfig.from_dict(run.config)
    if launch and config.nproc > 1:
        return _launch_distributed(run, store, config, resume)
    old = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    checkpoint = run.checkpoint_path if resume else None
    tracker, state, before = None, "failed", None
    try:
        with _claim_lock(store):  # the start and a cancel of the queued run are decided one at a time
            if queued and run.state != "queued":  # cancelled (or taken) while it waited: it never trains
                state = run.state
                return state
            if resume and not queued and launch:  # (a queued resume was claimed by `resume`; a rank by its launcher)
                _claim_resume(run)  # two resumes at once: the second one says so and leaves the run alone
            before = read_json_object(run.status_path) if resume else None  # what a refused resume puts back
            run.cancel_path.unlink(missing_ok=True)  # an old request never stops a new start
            run.set_status("running", **process_identity(), started=time.time(), error=None, resume=None,
                           worker=_slot_env())
        if resume:
            run.keep_metrics_until(_checkpoint_epoch(checkpoint))
        else:
            run.reset_metrics()
            (run.checkpoint_path).unlink(missing_ok=True)
        extra = []
        if config.track:
            from workbench.train.tracking import Tracker

            tracker = Tracker(config.track, run, run.config, store.root)
            extra.append(tracker)
        with _Heartbeat(run):
            summary = train(config, run=run, store=store, callbacks=[_Progress(run), *extra, *callbacks],
                            teacher=teacher, resume=checkpoint)
        if summary.get("diverged"):
            run.set_status("diverged", error=summary["diverged"])
            state = "diverged"
            return state
        run.set_status("done")
        state = "done"
        return state
    except AlreadyClaimed:
        state = run.state
        raise
    except CheckpointDamaged:
        if before is not None:  # found once the session was built: the run is left as it was (state, pid, times)
            atomic_write_json(run.status_path, before)
        state = run.state
        raise
    except KeyboardInterrupt:
        run.set_status("cancelled", error="cancelled by the user")
        state = "cancelled"
        if reraise_interrupt:
            raise
        return state
    except Diverged as e:
        run.set_status("diverged", error=str(e))
        state = "diverged"
        return state
    except Exception as e:
        run.set_status("failed", error=friendly_error(e))
        _log_traceback(run)
        return state
    finally:
        if tracker is not None:  # MLflow ends FINISHED, FAILED or KILLED; TensorBoard's writer is closed
            tracker.close(state)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _checkpoint_epoch(path: Path) -> int:
    from workbench.train.loop import read_checkpoint_state

    return int(read_checkpoint_state(path)["epoch"])


# ---------------------------------------------------------------------------
# resume

def check_resumable(run: Run, overrides: dict | None = None) -> None:
    """ValueError in one sentence unless `run` can go on from its checkpoint with the same options."""
    from workbench.train.loop import TrainConfig

    state = run.state
    if state == "done":
        raise ValueError(f"run {run.run_id} has finished; there is nothing to resume")
    if state in ("queued", "running"):
        raise ValueError(f"run {run.run_id} is {state}; only a failed, cancelled or killed run can be resumed")
    if not (run.checkpoint_path).is_file():
        raise ValueError(f"run {run.run_id} has no checkpoint to resume from: it stopped before its first epoch "
                         "ended; start it again instead")
    stored = TrainConfig.from_dict(run.config).to_dict()
    changed = sorted(k for k, v in (overrides or {}).items() if k in stored and stored[k] != v)
    if changed:
        diffs = "; ".join(f"{k}: {stored[k]!r} in the run, {overrides[k]!r} asked" for k in changed)
        raise ValueError(f"a run resumes with its own options; these differ: {diffs}. Start a new run to change them")
    from workbench.train.loop import read_checkpoint_state

    read_checkpoint_state(run.checkpoint_path, stored["epochs"])  # damaged: one sentence, and the run is untouched


def resume_in_process(run: Run, store: RunStore, callbacks=(), overrides: dict | None = None) -> str:
    """`kdw resume RUN`: go on from the last completed epoch, here, into the same run folder."""
    check_resumable(run, overrides)
    return execute_run(run, store, callbacks, resume=True)


# ---------------------------------------------------------------------------
# several processes: torch.distributed.run

def distributed_command(run: Run, store: RunStore, nproc: int, resume: bool = False, nnodes: str | None = None,
                        rdzv_endpoint: str | None = None, rdzv_id: str | None = None) -> Command:
    """The torch.distributed.run command that trains `run` on `nproc` processes per node; with `rdzv_endpoint`, on
    `nnodes` machines that meet there (c10d) under `rdzv_id` (default: the run id)."""
    launcher = [f"--nproc-per-node={nproc}"]
    if nnodes:
        launcher += [f"--nnodes={nnodes}"]
    if rdzv_endpoint:
        launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id or run.run_id}"]
    else:
        launcher += ["--standalone"]
    rank = Command.kdw("rank", run.run_id, *(["--resume"] if resume else []), store_root=store.root)
    return rank.under_torchrun(*launcher)


def _launch_distributed(run: Run, store: RunStore, config, resume: bool) -> str:
    """Train on `config.nproc` processes and wait; rank 0 writes the run store, this process relays a cancel."""
    check_nproc(config.nproc, config.device)
    with _claim_lock(store):
        if resume:
            _claim_resume(run)
        run.set_status("running", **process_identity(), started=time.time(), error=None)
    env = dict(os.environ, KDW_RUNS_DIR=str(store.root), OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1)
                                                                                 // config.nproc)))
    proc = spawn(distributed_command(run, store, config.nproc, resume, nnodes=config.nnodes,
                                     rdzv_endpoint=config.rdzv_endpoint, rdzv_id=config.rdzv_id),
                 store.root, run.log_path(), env=env)
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            if run.cancel_requested():
                os.killpg(proc.pid, signal.SIGTERM)
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        run.set_status("cancelled", error="cancelled by the user")
        raise
    state = run.state
    if state in ("queued", "running"):
        run.set_status("failed", error=f"the {config.nproc} training processes exited with code {proc.returncode} "
                                       "before finishing; see log.txt")
    return run.state


def check_nproc(nproc: int, device: str = "auto") -> None:
    """ValueError unless this machine has `nproc` devices: GPUs for CUDA, cores on the CPU."""
    import torch

    if nproc <= 1:
        return
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    have = torch.cuda.device_count() if on_gpu else (os.cpu_count() or 1)
    what = "GPUs" if on_gpu else "CPU cores"
    if nproc > have:
        raise ValueError(f"--nproc {nproc} asks for more processes than this machine has {what} ({have})")


def run_rank(run_id: str, store: RunStore, resume: bool = False) -> int:
    """One rank of a data-parallel run (started by torch.distributed.run): rank 0 writes the run store."""
    import torch
    import torch.distributed as dist

    from workbench.train.loop import TrainConfig, train

    config = TrainConfig.from_dict(store.get(run_id).config)
    backend = "nccl" if torch.cuda.is_available() and config.device in ("auto", "cuda") else "gloo"
    # a rank that never meets the others (a machine that did not start) fails after this, instead of hanging
    timeout = datetime.timedelta(seconds=float(os.environ.get("KDW_DIST_TIMEOUT_S", 600)))
    dist.init_process_group(backend, timeout=timeout)
    try:
        run = store.get(run_id)
        if dist.get_rank() == 0:
            state = execute_run(run, store, resume=resume, launch=False)
        else:
            train(config, store=store, resume=(run.checkpoint_path) if resume else None)
            state = "done"
    finally:
        dist.destroy_process_group()
    return 0 if state in ("done", "diverged") else 1


def _slot_env() -> int | None:
    """The worker slot this process runs for (`worker_loop` sets it), or None outside the queue."""
    slot = os.environ.get("KDW_WORKER_SLOT")
    return int(slot) if slot and slot.isdigit() else None


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _log_traceback(run: Run) -> None:
    """The full traceback goes to the run's log for developers; users see the one-line error."""
    import traceback
    try:
        with open(run.traceback_path, "w") as f:
            traceback.print_exc(file=f)
    except OSError:
        pass


def run_in_process(store: RunStore, config, callbacks=(), *, run_id: str | None = None, prefix: str | None = None,
                   command: str = "", teacher=None) -> Run:
    """Create a run for `config` and execute it here (blocking); returns the finished run.

    For the CLI, notebooks and benchmarks. Ctrl-C marks the run cancelled and propagates.
    `teacher` reuses a teacher already loaded in this process.
    """
    run = store.create(config.record(command), run_id=run_id, prefix=prefix or config.kind)
    state = execute_run(run, store, callbacks, reraise_interrupt=True, teacher=teacher)
    if state != "done":
        raise RunFailed(f"run {run.run_id} {state}: {run.status().get('error')}")
    return run


def run_foreground(store: RunStore, config, *, run_id: str | None = None, quiet: bool = False, command: str = "",
                   teacher=None) -> Run:
    """`run_in_process` with a progress bar that starts with the run's own objective (the CLI and the demo)."""
    from workbench.train.loop import TqdmProgress

    desc = f"{config.kind:7s} {config.model.label()}" + (f" [{config.method}]" if config.kind == "kd" else "")
    return run_in_process(store, config, [] if quiet else [TqdmProgress(desc)], run_id=run_id, prefix=config.kind,
                          command=command, teacher=teacher)


def active_runs(store: RunStore) -> list[Run]:
    """Queued and running runs, oldest first (the sidebar, the Train page and `kdw runs`)."""
    return [r for r in store.list() if r.state in ("queued", "running")]


# ---------------------------------------------------------------------------
# runners

class Runner(Protocol):
    """What the UIs need from a job backend."""

    def submit(self, config: dict, run_id: str | None = None, prefix: str = "run") -> str: ...
    def status(self, run_id: str) -> dict: ...
    def cancel(self, run_id: str) -> str: ...
    def resume(self, run_id: str, overrides: dict | None = None) -> None: ...


class LocalQueueRunner(Runner):
    """Queue runs in the store; up to `workers` detached worker processes run them, each one at a time."""

    def __init__(self, store: RunStore | None = None, workers: int | None = None):
        self.store = store or RunStore()
        if workers is not None:
            check_workers(workers)
        self._workers = workers

    @property
    def workers(self) -> int:
        return self._workers if self._workers is not None else workers_setting(self.store)

    def submit(self, config: dict, run_id: str | None = None, prefix: str = "run") -> str:
        from workbench.train.loop import TrainConfig

        TrainConfig.from_dict(config)  # validate before anything touches the store
        run = self.store.create(config, run_id=run_id, prefix=prefix)
        self.ensure_worker()
        return run.run_id
    def status(self, run_id: str) -> dict:
        return self.store.get(run_id).status()

    def cancel(self, run_id: str) -> str:
        """Stop a queued or running run; returns what happened, in a few words.

        A running job is asked through its run folder (a `cancel` file it checks twice a second) and, when
        its process is alive on this host and is still the one recorded, also sent SIGTERM. A process id
        that now belongs to another process is never signalled.
        """
        run = self.store.get(run_id)
        with _claim_lock(self.store):  # never between a job's check that the run is queued and its start
            st = run.status()
            if st["state"] == "queued":
                run.set_status("cancelled", error="cancelled before it started")
                return "cancelled before it started"
        if st["state"] != "running":
            return f"nothing to cancel: it is {st['state']}"
        run.request_cancel()
        if same_process(st):
            try:
                os.kill(int(st["pid"]), signal.SIGTERM)  # the job marks itself cancelled
            except (ProcessLookupError, PermissionError, OSError):
                pass
            return "cancel sent"
        return f"cancel requested; the job on {st.get('host')} stops at its next step"

    def resume(self, run_id: str, overrides: dict | None = None) -> None:
        """Queue a failed, cancelled or killed run to go on from its last completed epoch."""
        run = self.store.get(run_id)
        check_resumable(run, overrides)
        with _claim_lock(self.store):  # a resume in the foreground at the same moment: one of them says so
            _claim_resume(run)
            (run.claim_path).unlink(missing_ok=True)  # the process that ran it before has let it go
            run.set_status("queued", resume=True, error=None)
        self.ensure_worker()

    def ensure_worker(self) -> bool:
        """Start detached workers in free slots, as many as there are unclaimed queued runs (up to `workers`);
        True if one was started.

        The last worker started in each slot is recorded (`.worker.json`, `.worker-1.json`, …: pid, start time,
        host), so a burst of submits starts one worker per slot, not one per submit. A worker that holds its
        slot's lock sees runs queued meanwhile: it forgets its record and looks at the queue once more before
        it exits (see `worker_loop`).
        """
        self.store.ensure_writable()
        waiting = len(_unclaimed(self.store))
        started = False
        for slot in range(self.workers):
            if waiting <= 0:
                break
            lock = _try_lock(_slot_lock(self.store, slot))
            if lock is None:
                continue  # busy: it takes the next queued run when its job ends
            lock.release()
            marker = _worker_marker(self.store, slot)
            try:
                last = read_json_object(marker)
            except RunStoreError:
                last = None
            if last and not last.get("stopped") and same_process(last):
                waiting -= 1  # started moments ago, not holding the lock yet
                continue
            proc = spawn(Command.kdw("worker", "--slot", slot, store_root=self.store.root), self.store.root,
                         self.store.root / ".worker.log", env=_worker_env(self.store, slot, self.workers))
            atomic_write_json(marker, process_identity(proc.pid))
            started = True
            waiting -= 1
        return started

    def wait(self, run_id: str, timeout: float = 600.0, poll: float = 0.2) -> dict:
        """Block until a run finishes (for scripts and tests); returns its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(run_id)
            if st["state"] in FINISHED:
                return st
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} did not finish within {timeout} s")


def _try_lock(path: Path):
    """The queue lock if nobody holds it (a held `filelock.FileLock`), else None."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def worker_loop(store: RunStore, warm: bool | None = None, slot: int = 0) -> int:
    """Run queued jobs oldest first, one at a time, while holding the lock of worker slot `slot`.

    Each job is taken by claiming it (`claim_next`), so workers in other slots, or a Ray grid on the same
    store, never run it too. A *warm* worker (the default) imports PyTorch once, on its first job, and runs
    each job in its own process, one after another: a queued digits job then costs well under a second of
    start-up instead of several (docs/performance.md). ``KDW_JOB_ISOLATION=process`` (or `warm=False`) runs
    every job in a fresh `python -m workbench job` process instead. A job that crashes the warm worker is
    marked failed by the next worker, which a page load or `kdw runs` starts.

    Returns the number of jobs run. After the queue empties it releases the lock and
    looks once more, so a job queued in that instant is never stranded.
    """
    try:
        return _worker_loop(store, warm, slot)
    except BaseException as e:  # record why this worker stopped, where the next `kdw runs` or page load reads it
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            _record_worker_failure(store, slot, e)
        raise


def _record_worker_failure(store: RunStore, slot: int, e: BaseException) -> None:
    """Write this worker's cause of death into its slot's record (in place when the disk is full)."""
    try:
        atomic_write_json(_worker_marker(store, slot), {**process_identity(), "error": friendly_error(e),
                                                        "stopped": time.time()}, in_place_when_full=True)
    except OSError:
        pass
    print(f"kdw worker stopped: {friendly_error(e)}", file=sys.stderr)


def worker_failure(store: RunStore) -> str | None:
    """Why the last worker of a slot stopped, if it stopped on an error (its record says so), else None."""
    for slot in range(workers_setting(store)):
        try:
            last = read_json_object(_worker_marker(store, slot))
        except RunStoreError:
            continue
        if last and last.get("error") and last.get("stopped"):
            return str(last["error"])
    return None


def _worker_loop(store: RunStore, warm: bool | None, slot: int) -> int:
    if warm is None:
        warm = os.environ.get("KDW_JOB_ISOLATION", "warm") != "process"
    store.ensure_writable()
    os.environ["KDW_WORKER_SLOT"] = str(slot)  # recorded in each run's status: the sidebar shows who runs what
    lock_path = _slot_lock(store, slot)
    done = 0
    while True:
        lock = _try_lock(lock_path)
        if lock is None:
            return done  # another worker owns this slot
        try:
            fail_stale_runs(store)  # a previous worker or job that died mid-run
            while True:
                run = claim_next(store)
                if run is None:
                    break
                if warm:
                    _run_warm(run, store)
                else:
                    proc = spawn(Command.kdw("job", run.run_id, store_root=store.root), store.root, run.log_path(),
                                 detached=False)
                    proc.wait()
                    if run.state in ("queued", "running"):  # the job died before recording its end
                        run.set_status("failed", error=f"the job process exited with code {proc.returncode} "
                                                       "before finishing; see log.txt")
                done += 1
        finally:
            lock.release()
        _forget_worker(store, slot)  # from here on, a submit starts a new worker rather than wait for this one
        if not _unclaimed(store):
            return done


# ---------------------------------------------------------------------------
# parallel workers: slots, claims, the worker count

def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without importing torch: ``CUDA_VISIBLE_DEVICES`` if set, else the
    NVIDIA driver's list (Linux), else none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return [str(i) for i in range(len(list(gpus.iterdir())))] if gpus.is_dir() else []
    except OSError:
        return []


def default_workers() -> int:
    """One worker per visible GPU, else one."""
    return max(1, len(visible_gpus()))


def check_workers(n: int) -> None:
    """ValueError in one sentence unless this machine can run `n` jobs at once (one per GPU, or per core)."""
    gpus = visible_gpus()
    have, what = (len(gpus), "GPUs") if gpus else (os.cpu_count() or 1, "CPU cores")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of workers must be at least 1, got {n}")
    if n > have:
        raise ValueError(f"{n} workers is more than this machine has {what} ({have}); use at most {have}")


def workers_setting(store: RunStore) -> int:
    """How many jobs this store's queue runs at once: its `.queue.json`, else `default_workers()`."""
    try:
        n = (read_json_object(store.root / QUEUE_SETTINGS) or {}).get("workers")
    except RunStoreError:
        n = None
    return int(n) if isinstance(n, int) and n >= 1 else default_workers()


def set_workers(store: RunStore, n: int) -> None:
    """Let this store's queue run up to `n` jobs at once (`--workers N`, the app's Parallel jobs setting)."""
    check_workers(n)
    store.ensure_writable()
    atomic_write_json(store.root / QUEUE_SETTINGS, {"workers": n})
    if n > 1:
        LocalQueueRunner(store, n).ensure_worker()  # queued runs start on the new workers at once


def _slot_lock(store: RunStore, slot: int) -> Path:
    return store.root / (".queue.lock" if slot == 0 else f".queue-{slot}.lock")


def _worker_marker(store: RunStore, slot: int) -> Path:
    return store.root / (WORKER_MARKER if slot == 0 else f".worker-{slot}.json")


def _worker_env(store: RunStore, slot: int, workers: int) -> dict:
    """A worker's environment: the store, its GPU (``CUDA_VISIBLE_DEVICES``), and its share of the CPU cores."""
    env = dict(os.environ, KDW_RUNS_DIR=str(store.root), KDW_WORKER_SLOT=str(slot))
    gpus = visible_gpus()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def _claim_holder(run: Run) -> dict | None:
    try:
        return read_json_object(run.claim_path)
    except RunStoreError:
        return None


def _unclaimed(store: RunStore) -> list[Run]:
    """Queued runs that no live process has taken, oldest first."""
    out = []
    for run in store.list():
        if run.state != "queued":
            continue
        holder = _claim_holder(run)
        if holder and same_process(holder):
            continue
        out.append(run)
    return out


def claim(run: Run, identity: dict | None = None) -> bool:
    """Take a queued run for this process (or `identity`), under the store's claim lock; False if it is not
    queued or a live process holds it. A claim by a process that has died is taken over."""
    with _claim_lock(run.store):
        if run.state != "queued":
            return False
        holder = _claim_holder(run)
        if holder and same_process(holder) and holder.get("pid") != os.getpid():
            return False
        atomic_write_json(run.claim_path, identity or process_identity())
        return True


def claim_next(store: RunStore) -> Run | None:
    """The oldest queued run that nobody holds, claimed for this process; None when there is none."""
    for run in _unclaimed(store):
        if claim(run):
            return run
    return None


def worker_slots(store: RunStore, running_runs: list[Run] | None = None) -> list[dict]:
    """Each worker slot in use: {slot, busy (holds its lock), run (the run it is running, or None)};
    `running_runs`: the store's running runs when the caller has listed them already."""
    running = {}
    for run in running_runs if running_runs is not None else store.list(state="running"):
        slot = run.status().get("worker")
        if slot is not None:
            running[int(slot)] = run
    out = []
    for slot in range(max(workers_setting(store), max(running, default=-1) + 1)):
        lock = _try_lock(_slot_lock(store, slot))
        busy = lock is None
        if lock is not None:
            lock.release()
        out.append({"slot": slot, "busy": busy, "run": running.get(slot)})
    return out


def start_profile(store: RunStore, run_ids: list[str]) -> None:
    """`kdw profile RUN...` as a detached process (the Compare page's re-measure button)."""
    for rid in run_ids:
        store.get(rid)  # each one exists
    spawn(Command.kdw("profile", *run_ids, store_root=store.root), store.root, store.root / ".profile.log")


def _run_warm(run: Run, store: RunStore) -> None:
    """One queued job in this (warm) worker, its output in the run's log.txt; cancels stop it, not the worker."""
    import contextlib

    with open(run.log_path(), "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            run_job(run.run_id, store)
        except RunStoreError as e:  # it has results already, or is no longer queued: never run twice
            print(f"not run: {e}", file=log)
        except Exception as e:  # nothing a job does may stop the worker
            if run.state in ("queued", "running"):
                run.set_status("failed", error=friendly_error(e))


def _forget_worker(store: RunStore, slot: int = 0) -> None:
    """Remove the slot's `.worker*.json` if it names this process (a newer worker's record is left alone)."""
    marker = _worker_marker(store, slot)
    try:
        last = read_json_object(marker)
        if last and last.get("pid") == os.getpid():
            marker.unlink()
    except (RunStoreError, OSError):
        pass


def run_job(run_id: str, store: RunStore) -> str:
    """Entry point of a job subprocess: execute one queued run (never one that has already produced results)."""
    run = store.get(run_id)
    if run.state != "queued":
        raise RunStoreError(f"run {run_id} is {run.state}, not queued")
    if run.status().get("resume"):  # queued to go on from its checkpoint
        return execute_run(run, store, resume=True, queued=True)
    if run.summary_path.exists() or run.metrics_path.exists():
        raise RunStoreError(f"run {run_id} already has results; it is not run again")
    return execute_run(run, store, queued=True)


def fail_stale_runs(store: RunStore) -> list[str]:
    """Write `failed` into the status of every run that says running but whose process is gone (a kill -9,
    a reboot), so the store tells the truth without anyone having to look. Returns their ids."""
    failed = []
    for run in store.list():
        try:
            raw = run.status_path.read_text()
        except OSError:
            continue
        if '"running"' not in raw:
            continue
        st = run.status()
        if st.get("state") == "failed":
            run.set_status("failed", error=st.get("error"))
            failed.append(run.run_id)
    return failed


def ensure_worker_for_queue(store: RunStore) -> bool:
    """Start a worker when runs are queued and none holds the queue lock (after a crash, or a killed worker).

    Cheap enough for every `kdw runs` and every app page load; True if one was started.
    """
    return restart_queue(store)[0]


def restart_queue(store: RunStore) -> tuple[bool, str | None]:
    """`ensure_worker_for_queue`, and why queued runs are not running where something stops them: (a worker was
    started, None) or (False, "3 queued runs cannot start: disk full (…)"); (False, None) when all is well."""
    if not store.root.is_dir():
        return False, None
    waiting = _unclaimed(store)
    if not waiting:
        return False, None
    died = worker_failure(store)
    try:
        started = LocalQueueRunner(store).ensure_worker()
    except (RunStoreError, OSError) as e:  # a read-only or full store: nobody can run its queue from here
        return False, f"{len(waiting)} queued run(s) cannot start: {friendly_error(e)}"
    if died:
        return started, f"the last worker stopped: {died}" + ("; started another" if started else "")
    return started, None
