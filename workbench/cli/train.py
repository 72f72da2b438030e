"""`kdw demo | teacher | distill | scratch | sweep | search | born-again | takd | resume | cancel`: runs to train."""

from __future__ import annotations

import sys

from workbench.cli import common


def cmd_train(args, kind: str) -> int:
    from workbench.analysis.compare import comparison_rows
    from workbench.experiments import launch
    from workbench.experiments.recipes import distill_configs
    from workbench.jobs.queue import check_nproc, run_foreground
    from workbench.store.runs import RunStore, validate_run_id

    if args.run_id is not None:
        validate_run_id(args.run_id)  # before seconds of loading data and teachers
    check_nproc(args.nproc, args.device)
    if (args.nnodes or args.rdzv_endpoint or args.rdzv_id) and args.nproc < 2:
        raise ValueError("--nnodes, --rdzv-endpoint and --rdzv-id take effect with --nproc 2 or more")
    store = RunStore(args.runs_dir)
    store.ensure_writable()
    common.confirm_size(args.seeds * (2 if kind == "kd" and not args.no_scratch else 1), args)
    configs = []
    for i in range(args.seeds):
        c = common.train_config(args, kind, args.seed + i)
        configs += distill_configs(c, scratch=not args.no_scratch) if kind == "kd" else [c]
    if args.run_id and len(configs) > 1:
        raise ValueError("--run-id names one run; drop it, or use --no-scratch and --seeds 1")
    if args.run_id and store.exists(args.run_id):
        raise ValueError(f"run {args.run_id} already exists in {store.root}; choose another --run-id")
    teachers = launch.check(configs, store)  # one check per setup, and one load per teacher
    if args.background:
        for rid in launch.submit(common.queue(args, store), [(args.run_id, c) for c in configs],
                                 common.command_line()):
            print(f"queued {rid}")
        print(f"follow with `kdw runs --runs-dir {store.root}`")
        return 0
    runs = [run_foreground(store, c, run_id=args.run_id, command=common.command_line(), teacher=teachers.get(c.teacher))
            for c in configs]
    print()
    print(common.table(comparison_rows(runs), args))
    print(f"\nruns saved under {store.root}: {' '.join(r.run_id for r in runs)}")
    return 0


def cmd_sweep(args) -> int:
    """A T x alpha grid, or a size sweep (--widths/--depths), each with scratch twins."""
    from workbench.analysis.format import format_gain, format_pct
    from workbench.experiments import launch
    from workbench.experiments.sweep import grid_configs, grid_table, scratch_cell, size_configs, size_table
    from workbench.jobs.queue import check_workers, run_foreground
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import RunStore, new_run_id

    store = RunStore(args.runs_dir)
    store.ensure_writable()
    if args.workers is not None:
        check_workers(args.workers)
    base = common.train_config(args, "kd", args.seed)
    seeds = list(range(args.seed, args.seeds + args.seed))
    if args.widths or args.depths:
        group = args.group or new_run_id("size")
        models = [ModelConfig(args.model, args.depth, w) for w in args.widths] if args.widths else \
                 [ModelConfig(args.model, d, args.width) for d in args.depths]
        configs = size_configs(base, models, seeds, group)
    else:
        group = args.group or new_run_id("sweep")
        configs = grid_configs(base, args.temperatures, args.alphas, seeds, group)
    common.confirm_size(len(configs), args, "this sweep")
    teachers = launch.check(configs, store)
    print(f"sweep {group}: {len(configs)} runs")
    if args.background:
        launch.submit(common.queue(args, store), configs, common.command_line())
        print(f"queued; follow with `kdw runs --group {group}`")
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            from workbench.experiments.search import require_ray

            require_ray()
            engine = "ray"
        except ValueError as e:
            print(f"{e}; running the sweep here, one run at a time", file=sys.stderr)
            engine = "local"
    if engine == "ray":
        from workbench.experiments.search import run_grid, shutdown

        try:
            run_grid(store, configs, common.command_line(), workers=args.workers, address=args.address,
                     progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        finally:
            shutdown()
    else:
        for c in configs:
            run_foreground(store, c, command=common.command_line(), teacher=teachers.get(c.teacher))
    runs = store.list(group=group)
    if args.widths or args.depths:
        print(common.table(size_table(runs), args, aggregated=True))
    else:
        sc = scratch_cell(runs)
        if sc and sc.get("test_ppl") is not None:  # language models: perplexity, lower is better
            def pm(v, sd):
                return "—" if v is None else f"{v:,.1f}" + (f" ± {sd:,.1f}" if sd is not None else "")

            print(f"\nscratch (α = 0): test perplexity {pm(sc['test_ppl'], sc['test_ppl_std'])} over "
                  f"{sc['seeds']} seed(s)")
            print(f"{'T':>6s} {'α':>6s} {'test ppl':>18s} {'below scratch':>18s}")
            for c in grid_table(runs):
                print(f"{c['temperature']:6g} {c['alpha']:6g} {pm(c.get('test_ppl'), c.get('test_ppl_std')):>18s} "
                      f"{pm(c.get('ppl_gain'), c.get('ppl_gain_std')):>18s}")
        elif sc:
            print(f"\nscratch (α = 0): {format_pct(sc['test_acc'], sc['test_acc_std'])} % over {sc['seeds']} seed(s)")
            print(f"{'T':>6s} {'α':>6s} {'test acc %':>16s} {'KD gain (pts)':>16s}")
            for c in grid_table(runs):
                print(f"{c['temperature']:6g} {c['alpha']:6g} {format_pct(c['test_acc'], c['test_acc_std']):>16s} "
                      f"{format_gain(c['kd_gain'], c['kd_gain_std']):>16s}")
    print(f"\nkdw compare --group {group} --aggregate   |   kdw report --group {group}")
    return 0


def cmd_search(args) -> int:
    """Search a method's hyperparameters on Ray Tune (Optuna TPE, early stopping), then confirm the best over seeds."""
    from workbench.analysis.format import format_values
    from workbench.experiments import launch
    from workbench.experiments.search import check_inputs, parse_range, require_ray, search, shutdown
    from workbench.jobs.queue import check_workers
    from workbench.store.runs import RunStore, new_run_id, validate_run_id

    ranges = [parse_range(r) for r in args.param_range]
    base = common.train_config(args, "kd", args.seed)
    check_inputs(base, ranges, args.trials, args.seeds, args.time_budget, args.scheduler)  # before anything starts
    if args.workers is not None and not args.address:
        check_workers(args.workers)
    require_ray()
    store = RunStore(args.runs_dir)
    store.ensure_writable()
    launch.check([base], store)
    group = validate_run_id(args.group) if args.group else new_run_id("search")
    try:
        result = search(base, ranges, args.trials, store, group, seeds=args.seeds, time_budget_s=args.time_budget,
                        scheduler=args.scheduler, address=args.address, command=common.command_line(), workers=args.workers,
                        progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        shutdown()
    from workbench.experiments.search import score_text

    print(f"\n{'trial':40s} {'values':40s} {'val best':>12s} {'epochs':>6s}  state")
    for t in result.trials:
        values = format_values(t["values"], "=")
        print(f"{t['run_id']:40s} {values:40s} {score_text(t):>12s} {t['epochs']:6d}  {t['state']}")
    if result.state == "cancelled":
        print("\nthe search was cancelled; the finished trials are kept")
    if result.gain is not None and result.test_ppl is not None:
        spread = f" ± {result.gain_std:,.1f}" if result.gain_std is not None else ""
        print(f"\nbest on validation, over {args.seeds} seed(s) on test: perplexity {result.test_ppl:,.1f}, "
              f"{result.gain:+,.1f}{spread} below the scratch twin's ({result.verdict})")
    elif result.gain is not None:
        spread = f" ± {100 * result.gain_std:.2f}" if result.gain_std is not None else ""
        print(f"\nbest on validation, over {args.seeds} seed(s) on test: {100 * result.test_acc:.2f}% test accuracy, "
              f"KD gain over the scratch twin {100 * result.gain:+.2f}{spread} points ({result.verdict})")
    print(f"\nthe trials and the confirmation runs are in group {group}:")
    if result.final_runs:
        print(f"  kdw compare {' '.join(result.final_runs)} --aggregate --runs-dir {store.root}")
    else:
        print(f"  kdw runs --group {group} --runs-dir {store.root}")
    return 0


def cmd_chain(args, strategy: str) -> int:
    """born-again generations or a teacher-assistant chain, run in order."""
    from workbench.analysis.compare import comparison_rows
    from workbench.experiments import launch
    from workbench.experiments.strategies import born_again_chain, takd_chain, teacher_model_config
    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import parse_model
    from workbench.store.runs import RunStore, new_run_id
    from workbench.train.loop import TqdmProgress

    store = RunStore(args.runs_dir)
    store.ensure_writable()
    base = common.train_config(args, "kd", args.seed)
    if not base.teacher:
        raise ValueError(f"{strategy} chains need a teacher; {base.method} trains without one")
    group = args.group or new_run_id(strategy)
    if strategy == "ban":
        teacher_model = teacher_model_config(base.teacher, store, base.trust_factory)
        chain = born_again_chain(base, args.generations, teacher_model, group)
    else:
        assistant = parse_model(args.assistant_model, args.assistant_depth, args.assistant_width)
        chain = takd_chain(base, assistant, group)
    launch.check(chain, store)  # the first run of the chain, with the real teacher
    if args.background:
        ids = launch.submit(common.queue(args, store), chain, common.command_line())
        print(f"queued {' -> '.join(ids)} (group {group})")
        return 0
    runs = []
    for rid, cfg in chain:
        desc = f"{cfg.model.label()} <- {cfg.teacher}"
        runs.append(run_in_process(store, cfg, [TqdmProgress(desc)], run_id=rid, command=common.command_line()))
    print(common.table(comparison_rows(runs), args))
    print(f"\nchain {' -> '.join(r.run_id for r in runs)} (group {group})")
    return 0


def cmd_resume(args) -> int:
    """Go on with a failed, cancelled or killed run from its last completed epoch, into the same run folder."""
    from workbench.analysis.compare import comparison_rows
    from workbench.jobs.queue import resume_in_process
    from workbench.store.runs import RunStore
    from workbench.train.loop import TqdmProgress

    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)
    overrides = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                   "seed": args.seed, "device": args.device, "nproc": args.nproc}.items()
                 if v is not None}
    if args.background:
        common.queue(args, store).resume(run.run_id, overrides)
        print(f"queued {run.run_id} to resume; follow with `kdw runs --runs-dir {store.root}`")
        return 0
    state = resume_in_process(run, store, [TqdmProgress(f"resume {run.run_id}")], overrides)
    if state != "done":
        raise ValueError(f"run {run.run_id} {state}: {run.status().get('error')}")
    print(common.table(comparison_rows([run]), args))
    return 0


def cmd_cancel(args) -> int:
    from workbench.jobs.queue import LocalQueueRunner
    from workbench.store.runs import RunStore

    runner = LocalQueueRunner(RunStore(args.runs_dir))
    for rid in args.runs:
        print(f"{rid}: {runner.cancel(rid)}")
    return 0


def cmd_demo(args) -> int:
    from workbench.experiments.demo import run_demo

    return run_demo(fast=args.fast, seeds=args.seeds, runs_dir=args.runs_dir, device=args.device, command=common.command_line(),
                    wide=args.wide)


def register(add) -> dict:
    """The training commands' parsers (`add(name, help)` makes one); returns {command: handler}."""
    s = add("demo", "distil the shipped teacher into a small student and print the comparison table")
    s.add_argument("--fast", action="store_true", help="digits, a few seconds (default: Fashion-MNIST)")
    s.add_argument("--seeds", type=int, default=1, help="seeds per arm (mean ± std when > 1)")
    s.add_argument("--device", default="auto")
    common.add_common(s)
    s = add("teacher", "train a teacher on labels (cross-entropy only)")
    common.add_train_args(s, "teacher")
    s = add("distill", "distil a teacher into a student (also trains its scratch twin unless --no-scratch)")
    common.add_train_args(s, "kd")
    s = add("scratch", "train the student without the teacher (α = 0): the baseline")
    common.add_train_args(s, "scratch")
    s = add("sweep", "a T × α grid, or a size sweep of students (--widths/--depths), with scratch twins")
    common.add_train_args(s, "kd")
    s.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    s.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    s.add_argument("--widths", type=float, nargs="+", default=None, help="size sweep over these widths")
    s.add_argument("--depths", type=int, nargs="+", default=None, help="size sweep over these depths")
    s.add_argument("--engine", default="auto", choices=["auto", "ray", "local"],
                   help="ray: the runs on Ray Tune, --workers at a time; local: here, one after another; "
                        "auto (default): ray when it is installed")
    s.add_argument("--address", default=None, help="an existing Ray cluster (host:port); default: a Ray for this "
                                                   "machine")
    s = add("search", "search a method's hyperparameters on Ray Tune (Optuna TPE, early stopping); every trial is a "
                      "run, and the best configuration is trained again over seeds with scratch twins")
    common.add_train_args(s, "kd")
    s.add_argument("--param-range", action="append", default=[], metavar="NAME=LOW:HIGH[:log][:int]",
                   help="a searched parameter: the method's own (e.g. beta=1:16:log, temperature=1:8), lr or width "
                        "(repeatable)")
    s.add_argument("--trials", type=int, default=8, help="the trial budget (default 8)")
    s.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop starting trials after this")
    s.add_argument("--scheduler", default="asha", choices=["asha", "median", "none"],
                   help="early stopping on validation accuracy, every epoch (default asha)")
    s.add_argument("--address", default=None,
                   help="an existing Ray cluster (host:port); default: a Ray for this machine")
    s.set_defaults(seeds=3)  # the best configuration is confirmed over 3 seeds (--seeds 1: one)
    s = add("born-again", "born-again networks: generations of students with the teacher's architecture")
    common.add_train_args(s, "kd")
    s.add_argument("--generations", type=int, default=2)
    s = add("takd", "teacher-assistant KD: teacher -> assistant -> student")
    common.add_train_args(s, "kd")
    s.add_argument("--assistant-model", default="cnn")
    s.add_argument("--assistant-depth", type=int, default=None)
    s.add_argument("--assistant-width", type=float, default=None)
    s = add("resume", "go on with a failed, cancelled or killed run from its last completed epoch")
    s.add_argument("run_id", metavar="RUN")
    for flag, kind in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--seed", int),
                       ("--device", str), ("--nproc", int)):
        s.add_argument(flag, type=kind, default=None, help="must equal the run's own (a resumed run keeps its options)")
    s.add_argument("--background", action="store_true", help="queue it as a job and return at once")
    common.add_common(s)
    s = add("cancel", "cancel queued or running jobs")
    s.add_argument("runs", nargs="+", metavar="RUN")
    common.add_common(s)
    return {"demo": cmd_demo, "teacher": lambda a: cmd_train(a, "teacher"), "distill": lambda a: cmd_train(a, "kd"),
            "scratch": lambda a: cmd_train(a, "scratch"), "sweep": cmd_sweep, "search": cmd_search,
            "born-again": lambda a: cmd_chain(a, "ban"), "takd": lambda a: cmd_chain(a, "takd"),
            "resume": cmd_resume, "cancel": cmd_cancel}
