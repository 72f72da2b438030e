"""The `kdw` command line: train teachers, distil, compare, and the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from workbench.core.losses import OBJECTIVE

EPILOG = f"""\
vanilla KD's objective (--method kd; α weights the distillation term):
  {OBJECTIVE}
  α = 0 is the student trained without the teacher (scratch); α = 1 is pure distillation.
  (torchdistill and the Keras example put their α on the cross-entropy instead.)
  Every other method's objective, with its hyperparameters: `kdw methods`.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=None, help="run store folder (default: $KDW_RUNS_DIR or ./runs)")
    p.add_argument("--wide", action="store_true",
                   help="tables with every column (T, α, labels, seeds, FLOPs, throughput, agreement, ECE), "
                        "however wide the terminal")


def _table(rows, args, aggregated: bool = False) -> str:
    """A comparison table that fits the terminal (or every column with --wide)."""
    from workbench.analysis.compare import format_table, terminal_width

    wide = getattr(args, "wide", False)
    return format_table(rows, aggregated, wide=wide, width=None if wide else terminal_width())


def _add_train_args(p: argparse.ArgumentParser, kind: str) -> None:
    from workbench.train.loop import TrainConfig

    d = TrainConfig(kind="scratch")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits",
                   help="images: digits | fashion-mnist | cifar10 | cifar100 | image-folder | csv; tables: wine | "
                        "breast-cancer | table (default: digits)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding the data set's files; for image-folder, the folder of class subfolders; "
                        "for csv, the manifest file (path,label[,split]); for table, the CSV file (a header, numeric "
                        "columns and a label column)")
    g.add_argument("--label-column", default=None,
                   help="table: the CSV column that holds the class (default: label)")
    g.add_argument("--labels", default=None,
                   help="label budget: a count (1000, or 1 for one label) or a fraction with a decimal point or a "
                        "percent sign (0.05, 5%%); default all")
    g.add_argument("--augment", default="auto", help="auto | none | flip | crop | flip+crop (default: the data set's)")
    g.add_argument("--image-size", type=int, default=None,
                   help="the student's square input size in pixels (default: the data set's; image folders: 32). "
                        "The teacher keeps its own size: its logits are cached at it")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help="the student's input channels (default: the data set's): 3 shows grey images in colour")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                   help="image folders and CSV manifests: stream batches from the disk cache (default: only when "
                        "the images would not fit in a quarter of the RAM)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="cnn" if kind == "teacher" else "mlp",
                   help="mlp | cnn | resnet | mobilenet_v2 | resnet18, or torchvision:NAME (any torchvision "
                        "classification model), timm:NAME, path/to/file.py:make_model or package.module:make_model "
                        "(your factory, called with num_classes and input_shape)")
    g.add_argument("--depth", type=int, default=None, help="layers/blocks (zoo families; family default if omitted)")
    g.add_argument("--width", type=float, default=None,
                   help="units/channels/multiplier (zoo families; family default if omitted)")
    g.add_argument("--pretrained", action="store_true",
                   help="the library's own weights (resnet18, mobilenet_v2, torchvision:, timm:; online, or from "
                        "torch's download cache)")
    g.add_argument("--init", default=None, metavar="PATH",
                   help="start from these weights: .safetensors or a PyTorch state dict (.pth/.pt); a classifier "
                        "with another class count is replaced")
    if kind != "teacher":
        g = p.add_argument_group("distillation")
        g.add_argument("--teacher", default=None,
                       help="shipped teacher name, teacher run id or .safetensors file (default: the shipped one)")
        if kind == "kd":
            from workbench.core.methods import DISTILLATION_METHODS, METHODS

            kd = METHODS["kd"].defaults
            g.add_argument("--method", default="kd", choices=list(DISTILLATION_METHODS), metavar="METHOD",
                           help="distillation method: " + ", ".join(f"{k} ({METHODS[k].title})"
                                                                     for k in DISTILLATION_METHODS)
                                + " (default: kd). `kdw methods` lists their hyperparameters")
            g.add_argument("-T", "--temperature", type=float, default=None,
                           help=f"the method's temperature (kd default {kd['temperature']:g}; also lskd, dkd, dml); "
                                "the same as --param temperature=T")
            g.add_argument("--alpha", type=float, default=None,
                           help=f"vanilla KD's weight of the KD term in [0, 1] (default {kd['alpha']:g}); "
                                "the same as --param alpha=A with --method kd")
            g.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                           help="a method hyperparameter, e.g. --param beta=100 (repeatable)")
            g.add_argument("--no-scratch", action="store_true",
                           help="do not also train the scratch twin (same student and budget, method ce)")
            g.add_argument("--teacher-weights", type=float, nargs="+", default=None,
                           help="weights of an ensemble teacher given as --teacher a,b (default: equal)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"default: the data set's ({d.batch_size} for images, 16 for tables)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (warm-up then cosine); default: the "
                                                          f"data set's ({d.lr:g} for images, 0.01 for tables)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--optimizer", default=d.optimizer, help="adamw | sgd")
    g.add_argument("--seed", type=int, default=0, help="a seed, or several with --seeds")
    g.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+n-1")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    g.add_argument("--compile", action="store_true", help="torch.compile the student")
    g.add_argument("--no-profile", action="store_true", help="skip latency/throughput measurement")
    g.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this machine, through torch.distributed.run (gloo on the CPU, "
                        "NCCL on GPUs); the global batch is --batch-size")
    g.add_argument("--nnodes", default=None, help="several machines: passed to torch.distributed.run (docs/scaling.md)")
    g.add_argument("--rdzv-endpoint", default=None, help="several machines: host:port of the rendezvous")
    g.add_argument("--rdzv-id", default=None, help="several machines: the same rendezvous id on every machine "
                                                    "(default: the run id)")
    g.add_argument("--track", action="append", default=None, metavar="TARGET",
                   help="also log to tensorboard[:DIR] or mlflow[:URI] (repeatable; default: the settings file's)")
    g.add_argument("--run-id", default=None, help="name the run (letters, digits, _ . -)")
    g.add_argument("--group", default=None, help="tag runs that belong together")
    g.add_argument("--background", action="store_true", help="queue as a job and return at once")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run up to N jobs at once: the queue's workers (kept for this run store) and a sweep's "
                        "parallel runs; default one per visible GPU, else 1")
    _add_common(p)


def parse_labels(v: str | None):
    """--labels: a count of labels ("1000", "1"), or a fraction written with a decimal point or a percent
    sign ("0.05", "5%", "1.0" = all). The app's label field is a count too, so 1 means one label everywhere.

    >>> parse_labels("1"), parse_labels("0.05"), parse_labels("5%"), parse_labels("1.0"), parse_labels(None)
    (1, 0.05, 0.05, 1.0, None)
    """
    if v is None:
        return None
    text = str(v).strip()
    try:
        if text.endswith("%"):
            frac = float(text[:-1]) / 100
            if not 0 < frac <= 1:
                raise ValueError
            return frac
        if "." in text or "e" in text.lower():
            frac = float(text)
            if not 0 < frac <= 1:
                raise ValueError
            return frac
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise ValueError(f"--labels must be a count of labels (1000) or a fraction in (0, 1] written with a decimal "
                         f"point or a percent sign (0.05, 5%), got {v!r}") from None


def method_params_from_args(args) -> dict:
    """--param pairs, with -T and --alpha folded in as the method's own hyperparameters."""
    from workbench.core.methods import METHODS, parse_params

    params = parse_params(args.param)
    info = METHODS[args.method]
    if args.temperature is not None:
        if not info.temperature_key:
            raise ValueError(f"{args.method} has no temperature; its hyperparameters are "
                             f"{', '.join(info.defaults) or 'none'} (`kdw methods`)")
        params[info.temperature_key] = args.temperature
    if args.alpha is not None:
        if args.method != "kd":
            raise ValueError(f"--alpha is vanilla KD's weight of the KD term; {args.method} takes its own weights "
                             f"with --param ({', '.join(info.defaults)})")
        params["alpha"] = args.alpha
    return params


def _train_config(args, kind: str, seed: int, **over):
    from workbench.models.zoo import parse_model
    from workbench.tasks import DATASETS
    from workbench.train.loop import TrainConfig
    from workbench.train.teachers import default_teacher
    from workbench.train.tracking import default_targets

    if args.dataset not in DATASETS:  # before any advice about teachers for it
        raise ValueError(f"unknown data set {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    from workbench.experiments.recipes import dataset_defaults

    defaults = dataset_defaults(args.dataset)
    teacher = getattr(args, "teacher", None)
    method = getattr(args, "method", None) if kind == "kd" else None
    if kind != "teacher" and not teacher:
        teacher = default_teacher(args.dataset)
        from workbench.experiments.recipes import uses_teacher

        if kind == "kd" and not teacher and uses_teacher(method):
            raise ValueError(f"no shipped teacher for {args.dataset}; train one with `kdw teacher --dataset "
                             f"{args.dataset}` and pass its run id with --teacher")
    fields = dict(
        kind=kind, dataset=args.dataset, data_dir=args.data_dir, teacher=teacher,
        label_column=getattr(args, "label_column", None),
        model=parse_model(args.model, args.depth, args.width, args.pretrained),
        image_size=args.image_size, channels=args.channels, init=args.init, stream=args.stream,
        nproc=args.nproc, nnodes=getattr(args, "nnodes", None), rdzv_endpoint=getattr(args, "rdzv_endpoint", None),
        rdzv_id=getattr(args, "rdzv_id", None),
        track=tuple(args.track) if args.track is not None else tuple(default_targets()),
        epochs=args.epochs, batch_size=args.batch_size or defaults.batch_size,
        lr=args.lr if args.lr is not None else defaults.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, labels=parse_labels(args.labels), augment=args.augment, seed=seed,
        device=args.device, compile=args.compile, group=args.group, profile=not args.no_profile)
    if kind == "kd":
        fields.update(method=method, method_params=method_params_from_args(args),
                      teacher_weights=tuple(args.teacher_weights) if args.teacher_weights else None)
    fields.update(over)
    return TrainConfig(**fields)


def _command() -> str:
    """The command line that launched this process, when it was kdw."""
    if sys.argv and sys.argv[0].endswith(("kdw", "__main__.py")):
        return " ".join(["kdw", *sys.argv[1:]])
    return ""


def run_config_dict(config) -> dict:
    return config.record(_command())


def cmd_train(args, kind: str) -> int:
    from workbench.analysis.compare import comparison_rows
    from workbench.experiments.recipes import distill_configs
    from workbench.jobs.queue import run_foreground
    from workbench.store.runs import RunStore, validate_run_id
    from workbench.train.loop import check_setup

    if args.run_id is not None:
        validate_run_id(args.run_id)  # before seconds of loading data and teachers
    from workbench.jobs.queue import check_nproc

    check_nproc(args.nproc, args.device)
    if (args.nnodes or args.rdzv_endpoint or args.rdzv_id) and args.nproc < 2:
        raise ValueError("--nnodes, --rdzv-endpoint and --rdzv-id take effect with --nproc 2 or more")
    store = RunStore(args.runs_dir)
    store.ensure_writable()
    configs = []
    for i in range(args.seeds):
        c = _train_config(args, kind, args.seed + i)
        configs += distill_configs(c, scratch=not args.no_scratch) if kind == "kd" else [c]
    if args.run_id and len(configs) > 1:
        raise ValueError("--run-id names one run; drop it, or use --no-scratch and --seeds 1")
    if args.run_id and store.exists(args.run_id):
        raise ValueError(f"run {args.run_id} already exists in {store.root}; choose another --run-id")
    teachers = {}  # one check, and one load, per teacher
    for c in configs:
        if c.teacher not in teachers or c.kind == "kd":
            teachers[c.teacher] = check_setup(c, store, teacher=teachers.get(c.teacher)).teacher
    if args.background:
        runner = _queue(args, store)
        for c in configs:
            rid = runner.submit(run_config_dict(c), run_id=args.run_id, prefix=c.kind)
            print(f"queued {rid}")
        print(f"follow with `kdw runs --runs-dir {store.root}`")
        return 0
    runs = [run_foreground(store, c, run_id=args.run_id, command=_command(), teacher=teachers.get(c.teacher))
            for c in configs]
    print()
    print(_table(comparison_rows(runs), args))
    print(f"\nruns saved under {store.root}: {' '.join(r.run_id for r in runs)}")
    return 0


def cmd_runs(args) -> int:
    from workbench.analysis.describe import groups
    from workbench.jobs.queue import ensure_worker_for_queue
    from workbench.store.runs import RunStore

    store = RunStore(args.runs_dir)
    if ensure_worker_for_queue(store):  # queued runs and no worker: the queue had stranded
        print("queued runs had no worker (it crashed or was killed): started one", file=sys.stderr)
    runs = store.list(kind=args.kind, group=args.group)
    if args.json:
        print(json.dumps([r.info() for r in runs], indent=2, default=str))
        return 0
    if not runs:
        print(f"no runs in {store.root}")
        return 0
    header = (f"{'run id':40s} {'kind':8s} {'state':10s} {'dataset':14s} {'model':18s} {'method':16s} {'seed':>4s} "
              f"{'test acc':>8s}")
    print(header)
    print("-" * len(header))
    for r in runs:
        i = r.info()
        acc = "" if not isinstance(i["test_acc_best"], (int, float)) else f"{100 * i['test_acc_best']:.2f}%"
        print(f"{i['run_id']:40s} {str(i['kind']):8s} {str(i['state']):10s} {str(i['dataset']):14s} "
              f"{str(i['model']):18s} {method_label(i['method'], i['params']):16s} {str(i['seed']):>4s} {acc:>8s}")
        if i["state"] in ("failed", "unreadable") and i["error"]:
            print(f"    {i['error'] if i['state'] == 'unreadable' else 'error: ' + str(i['error'])}")
    found = groups(store)
    if found and not args.group:
        print(f"\ngroups ({len(found)}, for `kdw compare --group G` and `kdw report --group G`): "
              + ", ".join(found[-10:]) + (" …" if len(found) > 10 else ""))
    return 0


def method_label(method: str | None, params: dict) -> str:
    """kd T=4 α=0.9 for vanilla KD, the method's name otherwise."""
    if method == "kd" and isinstance(params, dict) and all(isinstance(params.get(k), (int, float))
                                                           for k in ("temperature", "alpha")):
        return f"kd T={params['temperature']:g} α={params['alpha']:g}"
    return method or ""


def _named_runs(args, purpose: str):
    """The store, and the runs named on the command line plus every run of --group (an error if none)."""
    from workbench.store.runs import RunStore

    store = RunStore(args.runs_dir)
    runs = [store.get(r) for r in args.runs] + (store.list(group=args.group) if args.group else [])
    if args.group and not any(r.config.get("group") == args.group for r in runs):
        raise ValueError(f"no runs in group {args.group!r}; `kdw runs` lists the groups")
    if not runs:
        raise ValueError(f"name runs {purpose} (see `kdw runs`), or --group G")
    return store, runs


def cmd_compare(args) -> int:
    from workbench.analysis.compare import aggregate, comparison_rows, find_scratch_twins

    store, runs = _named_runs(args, "to compare")
    rows = comparison_rows(runs + find_scratch_twins(runs, store))  # a KD run's scratch twin joins the table
    not_done = [r for r in runs if r.state != "done"]
    for r in not_done:
        st = r.status()
        print(f"{r.run_id} is {st['state']}" + (f": {st['error']}" if st.get("error") else "") + "; left out",
              file=sys.stderr)
    if not rows:
        raise ValueError("none of these runs has finished, so there is nothing to compare")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=2, default=str))
        return 0
    print(_table(aggregate(rows) if args.aggregate else rows, args, aggregated=args.aggregate))
    return 0


def cmd_demo(args) -> int:
    from workbench.experiments.demo import run_demo

    return run_demo(fast=args.fast, seeds=args.seeds, runs_dir=args.runs_dir, device=args.device, command=_command(),
                    wide=args.wide)


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


def cmd_cancel(args) -> int:
    from workbench.jobs.queue import LocalQueueRunner
    from workbench.store.runs import RunStore

    runner = LocalQueueRunner(RunStore(args.runs_dir))
    for rid in args.runs:
        print(f"{rid}: {runner.cancel(rid)}")
    return 0


def cmd_resume(args) -> int:
    """Go on with a failed, cancelled or killed run from its last completed epoch, into the same run folder."""
    from workbench.jobs.queue import resume_in_process
    from workbench.store.runs import RunStore
    from workbench.train.loop import TqdmProgress

    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)
    overrides = {k: v for k, v in {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                   "seed": args.seed, "device": args.device, "nproc": args.nproc}.items()
                 if v is not None}
    if args.background:
        _queue(args, store).resume(run.run_id, overrides)
        print(f"queued {run.run_id} to resume; follow with `kdw runs --runs-dir {store.root}`")
        return 0
    state = resume_in_process(run, store, [TqdmProgress(f"resume {run.run_id}")], overrides)
    if state != "done":
        raise ValueError(f"run {run.run_id} {state}: {run.status().get('error')}")
    from workbench.analysis.compare import comparison_rows

    print(_table(comparison_rows([run]), args))
    return 0


def cmd_rank(args) -> int:
    from workbench.jobs.queue import run_rank
    from workbench.store.runs import RunStore

    return run_rank(args.run_id, RunStore(args.runs_dir), resume=args.resume)


def cmd_teachers(args) -> int:
    from workbench.train.teachers import shipped_teachers

    for c in shipped_teachers():
        acc = c.get("test_accuracy")
        print(f"{c['name']:24s} {c.get('dataset', ''):14s} {c.get('model_label', ''):18s} "
              f"test acc {100 * acc:.2f}%  params {c.get('params', 0):,}" if acc is not None else c["name"])
        if c.get("command"):
            print(f"    reproduce: {c['command']}")
    return 0


def cmd_report(args) -> int:
    from workbench.analysis.report import write_report
    from workbench.data.datasets import load_dataset

    _, runs = _named_runs(args, "for the report")
    classes = None
    try:
        classes = load_dataset(runs[0].config["dataset"], runs[0].config.get("data_dir")).classes
    except Exception:
        pass  # the report still works with class numbers
    size = write_report(runs, args.output, args.title, classes)
    print(f"wrote {args.output} ({size / 1e6:.1f} MB): open it in any browser, offline")
    return 0


def cmd_sweep(args) -> int:
    """A T x alpha grid, or a size sweep (--widths/--depths), each with scratch twins."""
    from workbench.analysis.format import format_gain, format_pct
    from workbench.experiments.sweep import grid_configs, grid_table, scratch_cell, size_configs, size_table
    from workbench.jobs.queue import run_foreground
    from workbench.models.zoo import ModelConfig
    from workbench.store.runs import RunStore, new_run_id
    from workbench.train.loop import check_setup

    store = RunStore(args.runs_dir)
    store.ensure_writable()
    if args.workers is not None:
        from workbench.jobs.queue import check_workers

        check_workers(args.workers)
    base = _train_config(args, "kd", args.seed)
    teacher = check_setup(base, store).teacher
    seeds = list(range(args.seed, args.seeds + args.seed))
    if args.widths or args.depths:
        group = args.group or new_run_id("size")
        models = [ModelConfig(args.model, args.depth, w) for w in args.widths] if args.widths else \
                 [ModelConfig(args.model, d, args.width) for d in args.depths]
        configs = size_configs(base, models, seeds, group)
    else:
        group = args.group or new_run_id("sweep")
        configs = grid_configs(base, args.temperatures, args.alphas, seeds, group)
    print(f"sweep {group}: {len(configs)} runs")
    if args.background:
        runner = _queue(args, store)
        for c in configs:
            runner.submit(run_config_dict(c), prefix=c.kind)
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
            run_grid(store, configs, _command(), workers=args.workers, address=args.address,
                     progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        finally:
            shutdown()
    else:
        for c in configs:
            run_foreground(store, c, command=_command(), teacher=teacher if c.teacher == base.teacher else None)
    runs = store.list(group=group)
    if args.widths or args.depths:
        print(_table(size_table(runs), args, aggregated=True))
    else:
        sc = scratch_cell(runs)
        print(f"\nscratch (α = 0): {format_pct(sc['test_acc'], sc['test_acc_std'])} % over {sc['seeds']} seed(s)")
        print(f"{'T':>6s} {'α':>6s} {'test acc %':>16s} {'KD gain (pts)':>16s}")
        for c in grid_table(runs):
            print(f"{c['temperature']:6g} {c['alpha']:6g} {format_pct(c['test_acc'], c['test_acc_std']):>16s} "
                  f"{format_gain(c['kd_gain'], c['kd_gain_std']):>16s}")
    print(f"\nkdw compare --group {group} --aggregate   |   kdw report --group {group}")
    return 0


def _queue(args, store):
    """The local queue of `store`; `--workers N` first sets how many jobs it runs at once."""
    from workbench.jobs.queue import LocalQueueRunner, set_workers

    if getattr(args, "workers", None) is not None:
        set_workers(store, args.workers)
    return LocalQueueRunner(store)


def cmd_search(args) -> int:
    """Search a method's hyperparameters on Ray Tune (Optuna TPE, early stopping), then confirm the best over seeds."""
    from workbench.analysis.format import format_values
    from workbench.experiments.search import check_inputs, parse_range, require_ray, search, shutdown
    from workbench.store.runs import RunStore, new_run_id, validate_run_id

    ranges = [parse_range(r) for r in args.param_range]
    base = _train_config(args, "kd", args.seed)
    check_inputs(base, ranges, args.trials, args.seeds, args.time_budget, args.scheduler)  # before anything starts
    if args.workers is not None and not args.address:
        from workbench.jobs.queue import check_workers

        check_workers(args.workers)
    require_ray()
    store = RunStore(args.runs_dir)
    store.ensure_writable()
    from workbench.train.loop import check_setup

    check_setup(base, store)
    group = validate_run_id(args.group) if args.group else new_run_id("search")
    try:
        result = search(base, ranges, args.trials, store, group, seeds=args.seeds, time_budget_s=args.time_budget,
                        scheduler=args.scheduler, address=args.address, command=_command(), workers=args.workers,
                        progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        shutdown()
    print(f"\n{'trial':40s} {'values':40s} {'val acc':>8s} {'epochs':>6s}  state")
    for t in result.trials:
        values = format_values(t["values"], "=")
        print(f"{t['run_id']:40s} {values:40s} {100 * t['val_acc']:7.2f}% {t['epochs']:6d}  {t['state']}")
    if result.state == "cancelled":
        print("\nthe search was cancelled; the finished trials are kept")
    if result.gain is not None:
        spread = f" ± {100 * result.gain_std:.2f}" if result.gain_std is not None else ""
        print(f"\nbest on validation, over {args.seeds} seed(s) on test: {100 * result.test_acc:.2f}% test accuracy, "
              f"KD gain over the scratch twin {100 * result.gain:+.2f}{spread} points ({result.verdict})")
    print(f"\nthe trials and the confirmation runs are in group {group}:")
    if result.final_runs:
        print(f"  kdw compare {' '.join(result.final_runs)} --aggregate --runs-dir {store.root}")
    else:
        print(f"  kdw runs --group {group} --runs-dir {store.root}")
    return 0


def cmd_search_job(args) -> int:
    """Internal: run a search that the app or a notebook prepared (`search.start_search`)."""
    from workbench.experiments.search import run_prepared
    from workbench.store.runs import RunStore

    result = run_prepared(RunStore(args.runs_dir), args.group, progress=lambda msg: print(msg, flush=True))
    print(f"search {args.group} {result.state}: {len(result.trials)} trial(s)")
    return 0


def cmd_methods(args) -> int:
    from workbench.core.methods import METHODS

    for name, m in METHODS.items():
        print(f"{name:7s} {m.title}: {m.description}")
        print(f"        {m.citation}")
        print(f"        objective: {m().objective_text()}")
        for k, v in m.defaults.items():
            short = " (or -T)" if k == m.temperature_key else " (or --alpha)" if name == "kd" and k == "alpha" else ""
            print(f"        --param {k}={v:g}{short}" if isinstance(v, float) else f"        --param {k}={v}{short}",
                  end="")
            print(f"   ({m.help[k]})" if k in m.help else "")
    return 0


def cmd_chain(args, strategy: str) -> int:
    """born-again generations or a teacher-assistant chain, run in order."""
    from workbench.experiments.strategies import born_again_chain, submit_chain, takd_chain, teacher_model_config
    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import parse_model
    from workbench.store.runs import RunStore, new_run_id
    from workbench.train.loop import TqdmProgress, check_setup

    store = RunStore(args.runs_dir)
    store.ensure_writable()
    base = _train_config(args, "kd", args.seed)
    if not base.teacher:
        raise ValueError(f"{strategy} chains need a teacher; {base.method} trains without one")
    check_setup(base, store)
    group = args.group or new_run_id(strategy)
    if strategy == "ban":
        chain = born_again_chain(base, args.generations, teacher_model_config(base.teacher, store), group)
    else:
        assistant = parse_model(args.assistant_model, args.assistant_depth, args.assistant_width)
        chain = takd_chain(base, assistant, group)
    if args.background:
        ids = submit_chain(_queue(args, store), chain, _command())
        print(f"queued {' -> '.join(ids)} (group {group})")
        return 0
    runs = []
    for rid, cfg in chain:
        desc = f"{cfg.model.label()} <- {cfg.teacher}"
        runs.append(run_in_process(store, cfg, [TqdmProgress(desc)], run_id=rid, command=_command()))
    from workbench.analysis.compare import comparison_rows

    print(_table(comparison_rows(runs), args))
    print(f"\nchain {' -> '.join(r.run_id for r in runs)} (group {group})")
    return 0


def cmd_profile(args) -> int:
    """Re-measure the latency and throughput of finished runs (student and teacher), e.g. on a quiet machine."""
    from workbench.evaluate import BUSY_LIMIT
    from workbench.evaluate.metrics import model_profile
    from workbench.models.zoo import load_checkpoint
    from workbench.train.loop import teacher_profile
    from workbench.train.teachers import load_teacher

    store, runs = _named_runs(args, "to profile")
    busy = []
    for run in runs:
        if run.state != "done":
            print(f"{run.run_id}: {run.state}, skipped (only finished runs have weights to time)")
            continue
        summary = run.summary
        model, meta = load_checkpoint(run.weights_path("best"), allow_factory=True)
        shape = tuple(json.loads(meta["kdw_input_shape"]))
        summary["profile"] = model_profile(model.float(), shape, "cpu")
        line = f"{run.run_id}: {summary['profile']['latency_ms']:.3f} ms (b=1), " \
               f"{summary['profile']['throughput']:,.0f} samples/s (b=256)"
        busy.append(summary["profile"].get("cpu_busy_elsewhere") or 0)
        teacher = summary.get("teacher")
        if teacher:
            try:
                t = load_teacher(teacher["spec"], store)
                prof = teacher["profile"] = teacher_profile(t, tuple(t.model.kdw_input_shape))
                busy.append(prof.get("cpu_busy_elsewhere") or 0)
                line += f"; teacher {prof['latency_ms']:.3f} ms, {prof['throughput']:,.0f} samples/s"
            except Exception as e:  # the teacher may be gone: keep its old figures
                line += f"; teacher not re-measured ({e})"
        run.write_summary(summary)
        print(line)
    if busy and max(busy) > BUSY_LIMIT:
        print(f"warning: other processes used up to {100 * max(busy):.0f}% of the CPU meanwhile; "
              "these timings are unreliable too", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """A finished run's student as ONNX (and int8, and pruned-then-distilled) variants, each measured in ONNX Runtime."""
    from workbench.analysis.compare import comparison_rows
    from workbench.deploy.export import ExportOptions, export_run
    from workbench.store.runs import RunStore

    if args.format != "onnx":
        raise ValueError(f"unknown export format {args.format!r}; the workbench exports onnx")
    options = ExportOptions(int8=args.int8, prune=args.prune, calibration=args.calibration,
                            finetune_epochs=args.finetune_epochs)
    store = RunStore(args.runs_dir)
    run = store.get(args.run_id)

    def progress(name, text, fraction):
        print(f"[{100 * fraction:3.0f}%] {name}: {text}", file=sys.stderr, flush=True)

    results = export_run(run, store, options, progress, command=_command())
    for m in results:
        c = m["check"]
        print(f"{m['variant']:22s} {m['size_mb']:8.3f} MB  test acc {100 * m['test']['accuracy']:6.2f}%  "
              f"top-1 = PyTorch on {100 * c['top1_agreement']:.2f}% (max |Δlogit| {c['max_abs_logit_diff']:.2g})"
              + (f"  [{m['quantization']}]" if m.get("quantization") else ""))
    print()
    print(_table(comparison_rows([run]), args))
    print(f"\nvariants under {run.path / 'variants'}; `kdw compare {run.run_id}` lists them with the run")
    return 0


def cmd_publish_teacher(args) -> int:
    """Copy a finished run's best weights into assets/teachers with a card that says how to reproduce it."""
    import platform
    import shutil
    from pathlib import Path

    import torch

    from workbench.store.runs import RunStore, validate_run_id
    from workbench.train.teachers import assets_dir

    run = RunStore(args.runs_dir).get(args.run_id)
    if run.state != "done":
        raise ValueError(f"run {args.run_id} is {run.state}; only finished runs can be exported")
    name = validate_run_id(args.name)
    out = Path(args.to) if args.to else assets_dir() / "teachers"
    out.mkdir(parents=True, exist_ok=True)
    cfg, sm = run.config, run.summary
    weights = out / f"{name}.safetensors"
    shutil.copyfile(run.weights_path("best"), weights)
    prof = sm.get("profile", {})
    card = {
        "name": name,
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "model_label": cfg.get("model_label"),
        "input_shape": None,
        "num_classes": None,
        "test_accuracy": sm["test"]["accuracy"],
        "test_accuracy_last": sm["test_last"]["accuracy"],
        "val_accuracy": sm["val_acc_best"],
        "best_epoch": sm["best_epoch"],
        "params": prof.get("params"),
        "size_mb": weights.stat().st_size / 1e6,
        "flops": prof.get("flops"),
        "epochs": cfg["epochs"],
        "train_s": sm.get("train_s"),
        "trained_on": f"{sm.get('device')} ({prof.get('device_name')}), {prof.get('threads')} threads",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime(cfg.get("created", time.time()))),
        "command": cfg.get("command") or "",
        "objective": cfg.get("objective") or "",
        "init": sm.get("init"),
        "export_command": f"kdw publish-teacher {run.run_id} --name {name}",
    }
    from workbench.models.zoo import read_checkpoint

    _, meta = read_checkpoint(weights)
    card["input_shape"] = json.loads(meta["kdw_input_shape"])
    card["num_classes"] = int(meta["kdw_num_classes"])
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {weights} ({card['size_mb']:.2f} MB) and {out / (name + '.json')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdw", description="KD Workbench: knowledge distillation you can see, measure and compare.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_, **kw):
        return sub.add_parser(name, help=help_, description=help_, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter, **kw)

    s = add("demo", "distil the shipped teacher into a small student and print the comparison table")
    s.add_argument("--fast", action="store_true", help="digits, a few seconds (default: Fashion-MNIST)")
    s.add_argument("--seeds", type=int, default=1, help="seeds per arm (mean ± std when > 1)")
    s.add_argument("--device", default="auto")
    _add_common(s)
    s = add("teacher", "train a teacher on labels (cross-entropy only)")
    _add_train_args(s, "teacher")
    s = add("distill", "distil a teacher into a student (also trains its scratch twin unless --no-scratch)")
    _add_train_args(s, "kd")
    s = add("scratch", "train the student without the teacher (α = 0): the baseline")
    _add_train_args(s, "scratch")
    s = add("runs", "list the runs in the store")
    s.add_argument("--kind", default=None, help="teacher | scratch | kd")
    s.add_argument("--group", default=None)
    s.add_argument("--json", action="store_true")
    _add_common(s)
    s = add("compare", "print the side-by-side table of runs (teacher, scratch, KD)")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None, help="add every run of this group")
    s.add_argument("--aggregate", action="store_true", help="fold seeds into mean ± std")
    s.add_argument("--json", action="store_true")
    _add_common(s)
    s = add("sweep", "a T × α grid, or a size sweep of students (--widths/--depths), with scratch twins")
    _add_train_args(s, "kd")
    s.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    s.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    s.add_argument("--widths", type=float, nargs="+", default=None, help="size sweep over these widths")
    s.add_argument("--depths", type=int, nargs="+", default=None, help="size sweep over these depths")
    s.add_argument("--engine", default="auto", choices=["auto", "ray", "local"],
                   help="ray: the runs on Ray Tune, --workers at a time; local: here, one after another; "
                        "auto (default): ray when it is installed")
    s.add_argument("--address", default=None, help="an existing Ray cluster (host:port); default: a Ray for this "
                                                   "machine")
    s = add("report", "write a self-contained HTML report of runs (table, plots, configs, environment)")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None)
    s.add_argument("-o", "--output", default="kdw-report.html")
    s.add_argument("--title", default="KD Workbench report")
    _add_common(s)
    s = add("profile", "re-measure latency and throughput of finished runs (student and teacher) on this CPU")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None, help="every run of this group")
    _add_common(s)
    s = add("search", "search a method's hyperparameters on Ray Tune (Optuna TPE, early stopping); every trial is a "
                      "run, and the best configuration is trained again over seeds with scratch twins")
    _add_train_args(s, "kd")
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
    s = add("methods", "list the distillation methods with their papers and hyperparameters")
    s = add("born-again", "born-again networks: generations of students with the teacher's architecture")
    _add_train_args(s, "kd")
    s.add_argument("--generations", type=int, default=2)
    s = add("takd", "teacher-assistant KD: teacher -> assistant -> student")
    _add_train_args(s, "kd")
    s.add_argument("--assistant-model", default="cnn")
    s.add_argument("--assistant-depth", type=int, default=None)
    s.add_argument("--assistant-width", type=float, default=None)
    s = add("teachers", "list the shipped teachers")
    s = add("export", "a finished run's student as ONNX (and int8, and pruned), measured in ONNX Runtime; "
                      "the variants live under runs/RUN/variants/")
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--format", default="onnx", help="onnx (the only format for now)")
    s.add_argument("--int8", action="store_true", help="also an int8 variant (ONNX Runtime quantization: static QDQ "
                                                       "with calibration for conv nets, dynamic for MLPs)")
    s.add_argument("--prune", type=float, default=None, metavar="FRACTION",
                   help="also a pruned variant: remove this fraction of each layer's channels, then distil again")
    s.add_argument("--calibration", type=int, default=512, help="training images that calibrate int8 (default 512)")
    s.add_argument("--finetune-epochs", type=int, default=3, help="epochs of distillation after pruning (default 3)")
    _add_common(s)
    s = add("publish-teacher", "copy a finished teacher run into assets/teachers with its card")
    s.add_argument("run_id", metavar="RUN")
    s.add_argument("--name", required=True, help="teacher name, e.g. fashion-mnist-cnn")
    s.add_argument("--to", default=None, help="folder (default: assets/teachers)")
    _add_common(s)
    s = add("resume", "go on with a failed, cancelled or killed run from its last completed epoch")
    s.add_argument("run_id", metavar="RUN")
    for flag, kind in (("--epochs", int), ("--lr", float), ("--batch-size", int), ("--seed", int),
                       ("--device", str), ("--nproc", int)):
        s.add_argument(flag, type=kind, default=None, help="must equal the run's own (a resumed run keeps its options)")
    s.add_argument("--background", action="store_true", help="queue it as a job and return at once")
    _add_common(s)
    s = add("cancel", "cancel queued or running jobs")
    s.add_argument("runs", nargs="+", metavar="RUN")
    _add_common(s)
    s = sub.add_parser("job")  # internal: run one queued run
    s.add_argument("run_id")
    _add_common(s)
    s = sub.add_parser("rank")  # internal: one rank of a data-parallel run (torch.distributed.run starts it)
    s.add_argument("run_id")
    s.add_argument("--resume", action="store_true")
    _add_common(s)
    s = sub.add_parser("search-job")  # internal: a prepared search, in the background
    s.add_argument("group")
    _add_common(s)
    s = sub.add_parser("worker")  # internal: the queue worker
    s.add_argument("--slot", type=int, default=0)
    _add_common(s)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    if args.command in ("teacher", "distill", "scratch", "sweep", "born-again", "takd", "search") and args.seeds < 1:
        parser.error("--seeds must be >= 1")
    handlers = {"teacher": lambda a: cmd_train(a, "teacher"), "distill": lambda a: cmd_train(a, "kd"),
                "scratch": lambda a: cmd_train(a, "scratch"), "runs": cmd_runs, "compare": cmd_compare,
                "demo": cmd_demo, "job": cmd_job, "worker": cmd_worker, "cancel": cmd_cancel,
                "resume": cmd_resume, "rank": cmd_rank, "search": cmd_search, "search-job": cmd_search_job,
                "teachers": cmd_teachers, "export": cmd_export, "publish-teacher": cmd_publish_teacher, "sweep": cmd_sweep,
                "report": cmd_report, "methods": cmd_methods, "profile": cmd_profile, "born-again": lambda a: cmd_chain(a, "ban"),
                "takd": lambda a: cmd_chain(a, "takd")}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: the run is marked cancelled; finished epochs are kept in its metrics.jsonl",
              file=sys.stderr)
        return 130
    except Exception as e:  # every error reaches the user as one readable line
        from workbench.errors import friendly_error

        if os.environ.get("KDW_DEBUG"):
            raise
        print(f"kdw {args.command}: error: {friendly_error(e)}", file=sys.stderr)
        return 2
