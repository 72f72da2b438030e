"""`kdw runs | compare | report | profile | methods | teachers`: what the runs show."""

from __future__ import annotations

import json
import sys

from workbench.cli import common
from workbench.logs import logger

log = logger("workbench.cli")


def cmd_runs(args) -> int:
    from workbench.analysis.describe import groups
    from workbench.jobs.queue import restart_queue
    from workbench.store.runs import RunStore

    store = RunStore(args.runs_dir)
    started, why = restart_queue(store)  # queued runs and no worker: the queue had stranded
    if why:
        print(f"the queue: {why}", file=sys.stderr)
    elif started:
        print("queued runs had no worker (it crashed or was killed): started one", file=sys.stderr)
    runs = store.list(kind=args.kind, group=args.group)
    if args.json:
        print(json.dumps([r.info() for r in runs], indent=2, default=str))
        return 0
    if not runs and args.group and args.group not in groups(store):
        found = groups(store)
        raise ValueError(f"no group {args.group!r} in {store.root}"
                         + (f"; its groups: {', '.join(found[-10:])}" if found else "; it has no groups"))
    if not runs:
        print(f"no {args.kind} runs in {store.root}" if args.kind and store.list() else f"no runs in {store.root}")
        return 0
    header = (f"{'run id':40s} {'kind':8s} {'state':10s} {'dataset':14s} {'model':18s} {'method':16s} {'seed':>4s} "
              f"{'test acc':>8s}")
    print(header)
    print("-" * len(header))
    for r in runs:
        i = r.info()
        acc = "" if not isinstance(i["test_acc_best"], (int, float)) else f"{100 * i['test_acc_best']:.2f}%"
        print(f"{i['run_id']:40s} {str(i['kind']):8s} {str(i['state']):10s} {str(i['dataset']):14s} "
              f"{str(i['model']):18s} {method_label(i):16s} {str(i['seed']):>4s} {acc:>8s}")
        if i["state"] in ("failed", "unreadable") and i["error"]:
            print(f"    {i['error'] if i['state'] == 'unreadable' else 'error: ' + str(i['error'])}")
    found = groups(store)
    if found and not args.group:
        print(f"\ngroups ({len(found)}, for `kdw compare --group G` and `kdw report --group G`): "
              + ", ".join(found[-10:]) + (" …" if len(found) > 10 else ""))
    return 0


def method_label(info: dict) -> str:
    """The method with its primary values, as the run recorded them ("kd T=4 α=0.9"); its name for older runs."""
    method, label = str(info.get("method") or ""), str(info.get("method_label") or "")
    return label if label.startswith(method) else f"{method} {label}".strip()


def cmd_compare(args) -> int:
    from workbench.analysis.compare import build_comparison

    store, runs = common.named_runs(args, "to compare")
    comparison = build_comparison(runs, store, aggregated=args.aggregate)  # a KD run's scratch twin joins the table
    rows = comparison.rows
    not_done = [r for r in runs if r.state != "done"]
    for r in not_done:
        st = r.status()
        print(f"{r.run_id} is {st['state']}" + (f": {st['error']}" if st.get("error") else "") + "; left out",
              file=sys.stderr)
    listed = {row["run_id"] for row in rows}
    for r in runs:  # finished, yet no row: its summary.json is gone (before: the other rows, without a word)
        if r.state == "done" and r.run_id not in listed:
            print(f"{r.run_id} has finished but has no summary.json to compare; left out (train it again to "
                  "have one)", file=sys.stderr)
    if not rows:
        raise ValueError("none of these runs has finished, so there is nothing to compare")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=2, default=str))
        return 0
    print(common.table(comparison.shown, args, aggregated=args.aggregate))
    return 0


def cmd_report(args) -> int:
    from workbench.analysis.report import write_report
    from workbench.data.datasets import load_dataset

    _, runs = common.named_runs(args, "for the report")
    classes = None
    try:
        cfg = runs[0].config
        classes = load_dataset(cfg["dataset"], cfg.get("data_dir"), allow_outside=cfg.get("allow_outside") is True).classes
    except Exception:
        pass  # the report still works with class numbers
    size = write_report(runs, args.output, args.title, classes)
    print(f"wrote {args.output} ({size / 1e6:.1f} MB): open it in any browser, offline")
    return 0


def cmd_profile(args) -> int:
    """Re-measure the latency and throughput of finished runs (student and teacher), e.g. on a quiet machine."""
    from workbench.evaluate import BUSY_LIMIT
    from workbench.evaluate.remeasure import remeasure

    store, runs = common.named_runs(args, "to profile")
    busy = []
    for run in runs:
        if run.state != "done":
            print(f"{run.run_id}: {run.state}, skipped (only finished runs have weights to time)")
            continue
        m = remeasure(run, store)
        prof, tprof = m["student"], m["teacher"]
        line = f"{run.run_id}: {prof['latency_ms']:.3f} ms (b=1), {prof['throughput']:,.0f} samples/s (b=256)"
        busy.append(prof.get("cpu_busy_elsewhere") or 0)
        if tprof:
            busy.append(tprof.get("cpu_busy_elsewhere") or 0)
            line += f"; teacher {tprof['latency_ms']:.3f} ms, {tprof['throughput']:,.0f} samples/s"
        elif m["teacher_error"]:
            line += f"; teacher not re-measured ({m['teacher_error']})"
        print(line)
    if busy and max(busy) > BUSY_LIMIT:
        log.warning("other processes used up to %.0f%% of the CPU meanwhile; these timings are unreliable too",
                    100 * max(busy))
    return 0


def cmd_methods(args) -> int:
    from workbench.core.methods import METHODS

    for name, m in METHODS.items():
        print(f"{name:7s} {m.title}: {m.description}")
        print(f"        {m.citation}")
        print(f"        objective: {m().objective_text()}")
        for k, v in m.defaults.items():
            short = " (or -T)" if k == m.temperature_key else " (or --alpha)" if k == m.weight_key else ""
            print(f"        --param {k}={v:g}{short}" if isinstance(v, float) else f"        --param {k}={v}{short}",
                  end="")
            print(f"   ({m.help[k]})" if k in m.help else "")
    return 0


def cmd_teachers(args) -> int:
    from workbench.train.teachers import shipped_teachers

    for c in shipped_teachers():
        acc = c.get("test_accuracy")
        print(f"{c['name']:24s} {c.get('dataset', ''):14s} {c.get('model_label', ''):18s} "
              f"test acc {100 * acc:.2f}%  params {c.get('params', 0):,}" if acc is not None else c["name"])
        if c.get("command"):
            print(f"    reproduce: {c['command']}")
    return 0


def register(add) -> dict:
    """The result commands' parsers; returns {command: handler}."""
    s = add("runs", "list the runs in the store")
    s.add_argument("--kind", default=None, choices=("teacher", "scratch", "kd"), help="teacher | scratch | kd")
    s.add_argument("--group", default=None)
    s.add_argument("--json", action="store_true")
    common.add_common(s)
    s = add("compare", "print the side-by-side table of runs (teacher, scratch, KD)")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None, help="add every run of this group")
    s.add_argument("--aggregate", action="store_true", help="fold seeds into mean ± std")
    s.add_argument("--json", action="store_true")
    common.add_common(s)
    s = add("report", "write a self-contained HTML report of runs (table, plots, configs, environment)")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None)
    s.add_argument("-o", "--output", default="kdw-report.html")
    s.add_argument("--title", default="KD Workbench report")
    common.add_common(s)
    s = add("profile", "re-measure latency and throughput of finished runs (student and teacher) on this CPU")
    s.add_argument("runs", nargs="*", metavar="RUN")
    s.add_argument("--group", default=None, help="every run of this group")
    common.add_common(s)
    add("methods", "list the distillation methods with their papers and hyperparameters")
    add("teachers", "list the shipped teachers")
    return {"runs": cmd_runs, "compare": cmd_compare, "report": cmd_report, "profile": cmd_profile,
            "methods": cmd_methods, "teachers": cmd_teachers}
