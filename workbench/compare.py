"""Side-by-side comparison of runs: teacher, scratch and distilled students.

`comparison_rows(runs)` turns finished runs into one row each (plus one row per distinct
teacher), with the KD gain of each distilled student over its scratch twin: the scratch
run with the same data, student, budget, optimiser, augmentation, label budget and seed.
`aggregate(rows)` folds seeds into mean ± std, with the gain as the mean ± std of the
paired per-seed differences. `format_table` prints either as text.
"""

from __future__ import annotations

import re
import statistics

from .evaluate import BUSY_LIMIT
from .runs import Run

# what must match for a scratch run to be a KD run's fair baseline
TWIN_KEYS = ("dataset", "data_dir", "model", "epochs", "batch_size", "lr", "weight_decay", "optimizer",
             "labels", "augment", "seed")
ROLE_ORDER = {"teacher": 0, "scratch": 1, "kd": 2}


def twin_key(config: dict, with_seed: bool = True) -> tuple:
    keys = TWIN_KEYS if with_seed else tuple(k for k in TWIN_KEYS if k != "seed")
    return tuple(repr(config.get(k)) for k in keys)


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _row(run: Run | None, role: str, summary: dict, config: dict) -> dict:
    test, last = _dict(summary.get("test")), _dict(summary.get("test_last"))
    prof = _dict(summary.get("profile"))
    method, params = config.get("method"), config.get("method_params") or {}
    temperature = None
    if role == "kd" and method:
        from .methods import METHODS

        key = METHODS[method].temperature_key if method in METHODS else None
        temperature = params.get(key) if key else None
    return {
        "role": role,
        "run_id": run.run_id if run else "",
        "model": summary.get("model_label") or summary.get("label") or config.get("model_label", ""),
        "dataset": summary.get("dataset") or config.get("dataset"),
        "method": method if role == "kd" else None,
        "temperature": temperature,
        "alpha": params.get("alpha") if role == "kd" and method == "kd" else None,
        "labels": config.get("labels"),
        "seed": config.get("seed"),
        "epochs": config.get("epochs"),
        "test_acc": test.get("accuracy"),
        "test_acc_last": last.get("accuracy") if last else None,
        "best_epoch": summary.get("best_epoch"),
        "kd_gain": None,
        "params": prof.get("params") or summary.get("params"),
        "size_mb": prof.get("size_mb"),
        "flops": prof.get("flops"),
        "latency_ms": prof.get("latency_ms"),
        "throughput": prof.get("throughput"),
        "agreement": test.get("agreement"),
        "ece": test.get("ece"),
        "device": prof.get("device_name"),
        "threads": prof.get("threads"),
        "cpu_busy": prof.get("cpu_busy_elsewhere"),
        "train_s": summary.get("train_s"),
        "variant": None,
        "_twin": twin_key(config) if role != "teacher" else None,
        "_group": twin_key(config, with_seed=False) + (role, repr(method), repr(sorted(params.items())))
        if role != "teacher" else ("teacher",),
    }


def comparison_rows(runs: list[Run], variants: bool = True) -> list[dict]:
    """One row per finished run and per distinct teacher, KD gains filled in where a twin exists.

    With `variants`, each run's deployed variants (ONNX, int8, pruned; see workbench.deploy) follow its
    row, with the figures measured by running them (role: the run's; `variant`: their name).
    """
    rows, teachers = [], {}
    for run in runs:
        if run.state != "done":
            continue
        cfg, sm = run.config, run.summary
        if not sm:
            continue
        kind = cfg.get("kind", "kd")
        rows.append(_row(run, kind, sm, cfg))
        t = _dict(sm.get("teacher"))
        if t and t.get("digest") not in teachers:
            trow = _row(None, "teacher", {"test": _dict(t.get("test")), "profile": _dict(t.get("profile")),
                                          "label": t.get("label"), "params": t.get("params"),
                                          "dataset": sm.get("dataset")}, {})
            trow["run_id"] = t.get("spec", "")
            teachers[t.get("digest")] = trow
    scratch = {r["_twin"]: r for r in rows if r["role"] == "scratch"}
    for r in rows:
        if r["role"] == "kd" and r["_twin"] in scratch and r["test_acc"] is not None:
            twin = scratch[r["_twin"]]
            r["kd_gain"] = r["test_acc"] - twin["test_acc"]
            r["twin"] = twin["run_id"]
    # a teacher that is itself one of the listed runs (a teacher run, or a TAKD assistant) already has its row
    listed = {r["run_id"] for r in rows}
    teacher_rows = [t for t in teachers.values()
                    if t["run_id"] not in listed
                    and not any(r["role"] == "teacher" and r["model"] == t["model"] and r["test_acc"] == t["test_acc"]
                                for r in rows)]
    out = sorted(teacher_rows + rows, key=lambda r: (ROLE_ORDER.get(r["role"], 3), r.get("labels") or 0,
                                                     r.get("params") or 0, str(r["model"]), str(r.get("method") or ""),
                                                     r.get("temperature") or 0, r.get("alpha") or 0,
                                                     r.get("seed") or 0))
    if not variants:
        return out
    by_id = {run.run_id: run for run in runs}
    with_variants = []
    for r in out:  # each run's deployed variants right under it
        with_variants.append(r)
        if r["run_id"] in by_id:
            with_variants += variant_rows(by_id[r["run_id"]], r)
    return with_variants


VARIANT_ORDER = ("onnx-fp32", "onnx-int8")  # then pruned ones, fp32 before int8


def artifact_label(variant: str | None) -> str:
    """'PyTorch fp32', 'ONNX int8', 'pruned 50% · ONNX fp32', ... for a variant name (None: the run itself).

    >>> artifact_label(None), artifact_label("onnx-int8"), artifact_label("pruned50-onnx-fp32")
    ('PyTorch fp32', 'ONNX int8', 'pruned 50% · ONNX fp32')
    """
    if not variant:
        return "PyTorch fp32"
    m = re.fullmatch(r"(?:pruned(\d+)-)?onnx-(fp32|int8)", variant)
    if not m:
        return variant
    return (f"pruned {m.group(1)}% · " if m.group(1) else "") + f"ONNX {m.group(2)}"


def variant_rows(run: Run, parent: dict) -> list[dict]:
    """One row per finished variant of `run` (deploy.list_variants), measured by running the artifact."""
    from .deploy import list_variants

    rows = []
    for v in list_variants(run):
        m = v["metrics"]
        if v["state"] != "done" or not isinstance(m, dict):
            continue
        test, prof = _dict(m.get("test")), _dict(m.get("profile"))
        rows.append({**parent, "variant": v["name"], "run_id": f"{run.run_id}/{v['name']}", "_parent": run.run_id,
                     "test_acc": test.get("accuracy"), "test_acc_last": None, "best_epoch": None, "kd_gain": None,
                     "params": m.get("params"), "size_mb": m.get("size_mb"), "flops": m.get("flops"),
                     "latency_ms": prof.get("latency_ms"), "throughput": prof.get("throughput"),
                     "agreement": test.get("agreement"), "ece": test.get("ece"), "device": prof.get("device_name"),
                     "threads": prof.get("threads"), "cpu_busy": prof.get("cpu_busy_elsewhere"),
                     "runtime": prof.get("runtime"), "quantization": m.get("quantization"),
                     "finetune": m.get("finetune"), "_twin": None, "_group": parent["_group"] + (v["name"],)})
    order = {n: i for i, n in enumerate(VARIANT_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), r["variant"]))


def find_scratch_twins(runs: list[Run], store) -> list[Run]:
    """Scratch runs in the store that pair with the given KD runs (for `kdw compare` on KD ids alone)."""
    wanted = {twin_key(r.config) for r in runs if r.config.get("kind") == "kd"}
    have = {twin_key(r.config) for r in runs if r.config.get("kind") == "scratch"}
    missing = wanted - have
    if not missing:
        return []
    return [r for r in store.list(kind="scratch") if twin_key(r.config) in missing]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None for the spread of a single value).

    >>> mean_std([0.8, 0.9, 1.0])
    (0.9, 0.09999999999999998)
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(rows: list[dict]) -> list[dict]:
    """Fold seeds: one row per (role, student, setting) with mean and std of each figure."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["_group"], []).append(r)
    out = []
    for members in groups.values():
        first = members[0]
        agg = {k: first.get(k) for k in ("role", "method", "model", "dataset", "temperature", "alpha", "labels",
                                         "epochs", "device", "threads", "variant")}
        agg["seeds"] = len(members)
        agg["run_ids"] = [m["run_id"] for m in members]
        for key in ("test_acc", "test_acc_last", "kd_gain", "params", "size_mb", "flops", "latency_ms",
                    "throughput", "agreement", "ece", "train_s"):
            agg[key], agg[key + "_std"] = mean_std([m.get(key) for m in members])
        if agg["role"] == "kd" and not agg["variant"]:
            agg["verdict"] = gain_verdict(agg["kd_gain"], agg["kd_gain_std"], agg["seeds"])
        out.append(agg)
    return out  # in the order of `rows`, whose groups come sorted (and variants under their run)


def gain_verdict(gain: float | None, std: float | None, n: int) -> str:
    """docs/conventions.md: a gain smaller than its spread is 'no measurable gain'."""
    if gain is None:
        return "no scratch twin"
    if n < 2 or std is None:
        return "one seed: spread unknown"
    if abs(gain) <= std:
        return "no measurable gain"
    return "KD helps" if gain > 0 else "KD hurts"


# ---------------------------------------------------------------------------
# text tables

def format_pct(v, std=None) -> str:
    """A fraction as percent with two decimals, with its spread if given ('—' for None)."""
    if v is None:
        return "—"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def format_gain(v, std=None) -> str:
    """A difference of fractions as signed points, with its spread if given ('—' for None)."""
    if v is None:
        return "—"
    return f"{100 * v:+.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def format_flops(v) -> str:
    """FLOPs with an SI prefix.

    >>> format_flops(4758016), format_flops(4810), format_flops(None)
    ('4.76 MFLOPs', '4.81 kFLOPs', '—')
    """
    if v is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g} {unit}FLOPs"
    return f"{v:.0f} FLOPs"


def _num(v, fmt):
    return "—" if v is None else format(v, fmt)


def table_columns(aggregated: bool) -> list[tuple[str, callable]]:
    s = (lambda r, k: r.get(k + "_std")) if aggregated else (lambda r, k: None)
    cols = [
        ("role", lambda r: r["role"]),
        ("model", lambda r: str(r["model"])),
        ("artifact", lambda r: artifact_label(r.get("variant"))),
        ("method", lambda r: r.get("method") or "—"),
        ("T", lambda r: _num(r.get("temperature"), "g")),
        ("α", lambda r: _num(r.get("alpha"), "g")),
        ("labels", lambda r: "all" if r.get("labels") is None else _num(r.get("labels"), "g")),
    ]
    if aggregated:
        cols.append(("seeds", lambda r: str(r["seeds"])))
    else:
        cols.append(("seed", lambda r: _num(r.get("seed"), "d")))
    cols += [
        ("test acc % (best val)", lambda r: format_pct(r["test_acc"], s(r, "test_acc"))),
        ("test acc % (last)", lambda r: format_pct(r["test_acc_last"], s(r, "test_acc_last"))),
        ("KD gain (pts)", lambda r: format_gain(r.get("kd_gain"), s(r, "kd_gain"))),
        ("params", lambda r: _num(r.get("params"), ",.0f")),
        ("size MB", lambda r: _num(r.get("size_mb"), ".3f")),
        ("FLOPs", lambda r: format_flops(r.get("flops"))),
        ("latency ms (b=1)", lambda r: _num(r.get("latency_ms"), ".3f")),
        ("samples/s (b=256)", lambda r: _num(r.get("throughput"), ",.0f")),
        ("agreement %", lambda r: format_pct(r.get("agreement"))),
        ("ECE", lambda r: _num(r.get("ece"), ".3f")),
    ]
    return cols


def timing_warning(rows: list[dict]) -> str | None:
    """A warning naming the rows whose CPU timings were taken while other processes were busy, else None."""
    busy = [r for r in rows if (r.get("cpu_busy") or 0) > BUSY_LIMIT]
    if not busy:
        return None
    names = ", ".join(sorted({f"{r['role']} {r['model']}" + (f" (seed {r['seed']})" if r.get("seed") is not None
                                                              else "") for r in busy}))
    worst = max(r["cpu_busy"] for r in busy)
    return (f"Latency and throughput of {names} were measured while other processes used up to {100 * worst:.0f}% "
            f"of the CPU, so they are unreliable: compare sizes and FLOPs instead, or re-measure on a quiet machine "
            f"(kdw profile RUN).")


def verdict_subject(row: dict) -> str:
    """What an aggregated row's verdict is about: student, method and its T and α where it has them."""
    bits = [str(row["model"]), row.get("method") or ""]
    if row.get("temperature") is not None:
        bits.append(f"T={row['temperature']:g}")
    if row.get("alpha") is not None:
        bits.append(f"α={row['alpha']:g}")
    return " ".join(b for b in bits if b)


def format_table(rows: list[dict], aggregated: bool = False) -> str:
    """A plain-text table, with a footer naming the device and what the columns mean."""
    cols = table_columns(aggregated)
    cells = [[name for name, _ in cols]] + [[fn(r) for _, fn in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in range(len(cols)))
             for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    devices = sorted({f"{r['device']}, {r['threads']} threads" for r in rows if r.get("device")})
    foot = [f"latency/throughput: fp32 on {'; '.join(devices) or 'cpu'}. FLOPs count a multiply-add as 2. "
            "size = fp32 safetensors file.",
            "test acc (best val) = the epoch with the best validation accuracy; KD gain = KD − scratch, same seed(s)."]
    if any(r.get("variant") for r in rows):
        foot.append("ONNX rows are measured by running the artifact in ONNX Runtime (same threads); their size counts "
                    "every file a deployment needs.")
    verdicts = [f"{verdict_subject(r)}: {r['verdict']}" for r in rows if aggregated and r.get("verdict")]
    warning = timing_warning(rows)
    return "\n".join(lines + [""] + foot + ([f"warning: {warning}"] if warning else []) + verdicts)
