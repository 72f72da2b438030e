"""One launch path: check a setup, then queue its runs (with the scratch twin, or the chain) in order.

Every front end launches through here: the CLI's ``--background`` commands, the app's Train and Sweep pages and
the notebook's DistillPanel (`launch`), and the searches of the Sweep page and the notebook's search panel
(`launch_search`). The CLI's foreground commands run `check` too, and then train in their own process.

A launch is a list of ``(run id or None, TrainConfig)``. An id is needed only where a later run of the same launch
names the run as its teacher (born-again generations, a teacher-assistant chain); the queue runs jobs in order, so
each one finds its teacher finished when it starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import replace

from workbench.experiments.search import prepare_search, start_search
from workbench.jobs.queue import LocalQueueRunner
from workbench.logs import logger
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig, check_setup
from workbench.train.teachers import Teacher

Plan = Sequence[tuple[str | None, TrainConfig]]


def as_plan(runs: Iterable[TrainConfig | tuple[str | None, TrainConfig]]) -> list[tuple[str | None, TrainConfig]]:
    """Configs, or (run id, config) pairs, as (run id, config) pairs."""
    return [r if isinstance(r, tuple) else (None, r) for r in runs]


def _setup_key(config: TrainConfig) -> str:
    """What `check_setup` depends on: everything but the seed, the group and the method's numbers (a sweep's runs
    differ only there, and the config checks each number's range when it is made)."""
    d = config.to_dict()
    for k in ("seed", "group", "track"):
        d.pop(k, None)
    d["method_params"] = {k: v for k, v in d["method_params"].items() if isinstance(v, str)}  # layer names count
    return json.dumps(d, sort_keys=True, default=str)


def check(runs, store: RunStore | None = None) -> dict[str | None, Teacher | None]:
    """Fail before anything is queued, with the error of the first setup that cannot train.

    Each distinct setup (data, student, teacher, method) is checked once, and each teacher is loaded once. A run
    taught by an earlier run of the same launch is checked when it starts (its teacher does not exist yet).
    Returns the loaded teachers by spec, for a caller that trains in this process.
    """
    plan = as_plan(runs)
    if not plan:
        raise ValueError("nothing to launch")
    pending = {rid for rid, _ in plan if rid}
    teachers: dict[str | None, Teacher | None] = {}
    seen: set[str] = set()
    for _, c in plan:
        if c.teacher in pending:
            continue
        key = _setup_key(c)
        if key in seen:
            continue
        session = check_setup(c, store, teacher=teachers.get(c.teacher))
        teachers[c.teacher] = session.teacher
        why = few_steps(session.total_steps, len(session.loader), c)
        if why:
            logger().warning(why)
        seen.add(key)
    return teachers


MIN_STEPS = 20  # below this, a run barely moves its model: a language model's perplexity stays near a unigram's


def few_steps(total: int, per_epoch: int, config) -> str | None:
    """One sentence when a run would take fewer than MIN_STEPS optimiser steps (the trial's language model took 3
    per epoch and learnt nothing), saying what to change; None otherwise.

    >>> few_steps(9, 3, type("C", (), {"epochs": 3, "batch_size": 8})())[:60]
    'this run takes 9 optimiser steps (3 per epoch × 3 epochs), f'
    """
    if config.epochs == 0 or total >= MIN_STEPS:
        return None
    epochs = f"{config.epochs} epoch" + ("s" if config.epochs != 1 else "")
    steps = f"{total} optimiser step" + ("s" if total != 1 else "")
    return (f"this run takes {steps} ({per_epoch} per epoch × {epochs}), fewer than the "
            f"{MIN_STEPS} a model needs to move: give it more data (or training tokens), more epochs or a batch "
            f"smaller than {config.batch_size}")


def submit(runner, runs, source: str = "", group: str | None = None) -> list[str]:
    """Queue the runs as jobs, in order; `source` is the command (or page) recorded in each config.json, and
    `group`, where given, ties them together. Every path in a config is made absolute against this process's
    folder first (`TrainConfig.with_absolute_paths`), and recorded so. Returns the run ids."""
    ids = []
    for rid, c in as_plan(runs):
        c = c.with_absolute_paths()  # the job runs in the worker's folder, not the submitter's
        if group is not None:
            c = replace(c, group=group)
        ids.append(runner.submit(c.record(source), run_id=rid, prefix=c.kind))
    return ids


def launch(runs, store: RunStore, source: str = "", runner=None, group: str | None = None) -> list[str]:
    """`check` the setup, then `submit` every run to the store's queue (or `runner`). Returns the run ids."""
    plan = as_plan(runs)
    check(plan, store)
    return submit(runner or LocalQueueRunner(store), plan, source, group)


def launch_search(store: RunStore, base: TrainConfig, ranges, trials: int, group: str, source: str = "",
                  **options) -> str:
    """A search in the background: `base` checked as a launch is, the search recorded as queued
    (`search.prepare_search`, which checks its ranges and budget), then started as its own process. `options` are
    prepare_search's (seeds, time_budget_s, scheduler, address). Returns the group that holds its trials."""
    base = base.with_absolute_paths()  # trials run in Ray's workers, in folders of their own
    check([base], store)
    prepare_search(store, base, ranges, trials, group, command=source, **options)
    start_search(store, group)
    return group
