"""The internal commands that the workbench starts itself: a queued job, a queue worker, one rank of a
data-parallel run, a prepared search."""

from __future__ import annotations

from workbench.cli import common


def cmd_job(args) -> int:
    from workbench.jobs.queue import run_job
    from workbench.store.runs import RunStore

    state = run_job(args.run_id, RunStore(args.runs_dir))
    return 0 if state == "done" else 1


def cmd_worker(args) -> int:
    from workbench.jobs.queue import worker_loop
    from workbench.store.runs import RunStore

    worker_loop(RunStore(args.runs_dir), slot=args.slot)
    return 0


def cmd_rank(args) -> int:
    from workbench.jobs.queue import run_rank
    from workbench.store.runs import RunStore

    return run_rank(args.run_id, RunStore(args.runs_dir), resume=args.resume)


def cmd_search_job(args) -> int:
    """Internal: run a search that the app or a notebook prepared (`search.start_search`)."""
    from workbench.experiments.search import run_prepared
    from workbench.store.runs import RunStore

    result = run_prepared(RunStore(args.runs_dir), args.group, progress=lambda msg: print(msg, flush=True))
    print(f"search {args.group} {result.state}: {len(result.trials)} trial(s)")
    return 0


def register(sub) -> dict:
    """The internal commands' parsers (not listed in `kdw --help`); returns {command: handler}."""
    s = sub.add_parser("job")  # run one queued run
    s.add_argument("run_id")
    common.add_common(s)
    s = sub.add_parser("rank")  # one rank of a data-parallel run (torch.distributed.run starts it)
    s.add_argument("run_id")
    s.add_argument("--resume", action="store_true")
    common.add_common(s)
    s = sub.add_parser("search-job")  # a prepared search, in the background
    s.add_argument("group")
    common.add_common(s)
    s = sub.add_parser("worker")  # the queue worker
    s.add_argument("--slot", type=int, default=0)
    common.add_common(s)
    return {"job": cmd_job, "rank": cmd_rank, "search-job": cmd_search_job, "worker": cmd_worker}
