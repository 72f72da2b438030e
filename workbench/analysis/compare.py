"""Side-by-side comparison of runs: teacher, scratch and distilled students.

`comparison_rows(runs)` turns finished runs into one row each (plus one row per distinct
teacher), with the KD gain of each distilled student over its scratch twin: the scratch
run with the same data, student, budget, optimiser, augmentation, label budget and seed.
`aggregate(rows)` folds seeds into mean ± std, with the gain as the mean ± std of the
paired per-seed differences. `format_table` prints either as text. `build_comparison` is the one view that
the app, the notebook and the HTML report lay out: the rows, the table's cells, the headline, the warnings and the
confusion matrices.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import cached_property

from workbench.analysis.describe import did_not_learn, run_title
from workbench.analysis.format import (
    ROLE_NAMES,
    _num,
    artifact_label,
    format_flops,
    format_gain,
    format_pct,
    format_ratio,
    short_model,
)
from workbench.evaluate import BUSY_LIMIT
from workbench.store.runs import Run, dig

# what must match for a scratch run to be a KD run's fair baseline
TWIN_KEYS = ("dataset", "data_dir", "model", "epochs", "batch_size", "lr", "weight_decay", "optimizer",
             "labels", "augment", "seed", "seq_len", "train_tokens", "val_tokens")
ROLE_ORDER = {"teacher": 0, "scratch": 1, "kd": 2}


def twin_key(config: dict, with_seed: bool = True) -> tuple:
    keys = TWIN_KEYS if with_seed else tuple(k for k in TWIN_KEYS if k != "seed")
    return tuple(repr(config.get(k)) for k in keys)


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _primary_values(config: dict) -> tuple:
    """(temperature, weight of the distillation term) of a run's method, as its config.json records them; a
    config.json older than those fields is read through the method's declaration (this loads torch)."""
    if "method_temperature" in config:
        return config.get("method_temperature"), config.get("method_weight")
    from workbench.core.methods import METHODS  # an old run store only

    m, params = METHODS.get(config.get("method")), config.get("method_params") or {}
    if m is None:
        return None, None
    return (params.get(m.temperature_key) if m.temperature_key else None,
            params.get(m.weight_key) if m.weight_key else None)


def _row(run: Run | None, role: str, summary: dict, config: dict) -> dict:
    test, last = _dict(summary.get("test")), _dict(summary.get("test_last"))
    prof = _dict(summary.get("profile"))
    method = config.get("method")
    temperature, weight = _primary_values(config) if role == "kd" and method else (None, None)
    return {
        "role": role,
        "run_id": run.run_id if run else "",
        "model": summary.get("model_label") or summary.get("label") or config.get("model_label", ""),
        "dataset": summary.get("dataset") or config.get("dataset"),
        "method": method if role == "kd" else None,
        "temperature": temperature,
        "alpha": weight,
        "labels": config.get("labels"),
        "seed": config.get("seed"),
        "epochs": config.get("epochs"),
        "test_acc": test.get("accuracy"),
        "test_acc_last": last.get("accuracy") if last else None,
        "test_ppl": test.get("perplexity"),  # language models: perplexity on the test split's tokens
        "gap_closed": _dict(summary.get("healing")).get("gap_closed"),  # a student cut from its teacher, healed
        "ppl_cut": _dict(summary.get("healing")).get("cut") if test.get("perplexity") is not None else None,
        "ms_per_token": prof.get("ms_per_token"),
        "tokens_per_s_b1": prof.get("tokens_per_s_b1"),
        "tokens_per_s_b32": prof.get("tokens_per_s_b32"),
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
        "threads": prof.get("threads"), "sample": prof.get("sample"),
        "cpu_busy": prof.get("cpu_busy_elsewhere"),
        "train_s": summary.get("train_s"),
        "input_shape": summary.get("input_shape"),
        "variant": None,
        "did_not_learn": did_not_learn(summary, config) if role != "teacher" else None,
        "_twin": twin_key(config) if role != "teacher" else None,
        "_group": twin_key(config, with_seed=False) + (role, repr(method),
                                                       repr(sorted((config.get("method_params") or {}).items())))
        if role != "teacher" else ("teacher",),
    }


def comparison_rows(runs: list[Run], variants: bool = True) -> list[dict]:
    """One row per finished run and per distinct teacher, KD gains filled in where a twin exists.

    With `variants`, each run's deployed variants (ONNX, int8, pruned; see workbench.deploy.export) follow its
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
        if t:  # the same teacher in several runs' summaries: one row (unify_timings picks the quietest timing)
            trow = _row(None, "teacher", {"test": _dict(t.get("test")), "profile": _dict(t.get("profile")),
                                          "label": t.get("label"), "params": t.get("params"),
                                          "dataset": sm.get("dataset")}, {})
            trow["run_id"] = t.get("spec", "")
            teachers.setdefault(t.get("digest"), []).append(trow)
    scratch = {r["_twin"]: r for r in rows if r["role"] == "scratch"}
    for r in rows:
        if r["role"] == "kd" and r["_twin"] in scratch and r["test_acc"] is not None:
            twin = scratch[r["_twin"]]
            r["kd_gain"] = r["test_acc"] - twin["test_acc"]
            r["twin"] = twin["run_id"]
        elif r["role"] == "kd" and r["_twin"] in scratch and r.get("test_ppl") is not None \
                and scratch[r["_twin"]].get("test_ppl") is not None:
            twin = scratch[r["_twin"]]
            r["ppl_gain"] = twin["test_ppl"] - r["test_ppl"]  # > 0: the teacher lowered the perplexity
            r["twin"] = twin["run_id"]
    # a teacher that is itself one of the listed runs (a teacher run, or a TAKD assistant) already has its row
    listed = {r["run_id"] for r in rows}
    teacher_rows = []
    for candidates in teachers.values():
        unify_timings(candidates)
        teacher_rows.append(candidates[0])
    teacher_rows = [t for t in teacher_rows
                    if t["run_id"] not in listed
                    and not any(r["role"] == "teacher" and r["model"] == t["model"] and r["test_acc"] == t["test_acc"]
                                for r in rows)]
    out = sorted(teacher_rows + rows, key=lambda r: (ROLE_ORDER.get(r["role"], 3), r.get("labels") or 0,
                                                     r.get("params") or 0, str(r["model"]), str(r.get("method") or ""),
                                                     r.get("temperature") or 0, r.get("alpha") or 0,
                                                     r.get("seed") or 0))
    if variants:
        by_id = {run.run_id: run for run in runs}
        with_variants = []
        for r in out:  # each run's deployed variants right under it
            with_variants.append(r)
            if r["run_id"] in by_id:
                with_variants += variant_rows(by_id[r["run_id"]], r)
        out = with_variants
    return add_teacher_ratios(unify_timings(out))


VARIANT_ORDER = ("onnx-fp32", "onnx-int8")  # then pruned ones, fp32 before int8


def variant_rows(run: Run, parent: dict) -> list[dict]:
    """One row per finished variant of `run` (`Run.variants`), measured by running the artifact."""

    rows = []
    for v in run.variants():
        m = v["metrics"]
        if v["state"] != "done" or not isinstance(m, dict):
            continue
        test, prof = _dict(m.get("test")), _dict(m.get("profile"))
        rows.append({**parent, "variant": v["name"], "run_id": f"{run.run_id}/{v['name']}", "_parent": run.run_id,
                     "test_acc": test.get("accuracy"), "test_acc_last": None, "best_epoch": None, "kd_gain": None,
                     "test_ppl": test.get("perplexity"), "ppl_gain": None, "ms_per_token": prof.get("ms_per_token"),
                     "tokens_per_s_b1": prof.get("tokens_per_s_b1"), "tokens_per_s_b32": prof.get("tokens_per_s_b32"),
                     "params": m.get("params"), "size_mb": m.get("size_mb"), "flops": m.get("flops"),
                     "latency_ms": prof.get("latency_ms"), "throughput": prof.get("throughput"),
                     "agreement": test.get("agreement"), "ece": test.get("ece"), "device": prof.get("device_name"),
                     "threads": prof.get("threads"), "sample": prof.get("sample"), "cpu_busy": prof.get("cpu_busy_elsewhere"),
                     "runtime": prof.get("runtime"), "quantization": m.get("quantization"),
                     "finetune": m.get("finetune"), "int8_check": m.get("int8_check"),
                     "fake_quant_check": m.get("fake_quant_check"), "pipeline": m.get("pipeline"), "_twin": None, "_group": parent["_group"] + (v["name"],),
                     "_variant_of": run.run_id})
    order = {n: i for i, n in enumerate(VARIANT_ORDER)}
    steps = ("prune", "heal", "ptq", "qat", "qad")  # a compression pipeline's variants in the order of its steps

    def step_order(name: str) -> tuple:
        return tuple((next((i for i, k in enumerate(steps) if part.startswith(k)), len(steps)), part)
                     for part in name.split("+"))

    return sorted(rows, key=lambda r: (order.get(r["variant"], len(order)), step_order(r["variant"])))


def pipeline_table(run: Run, rows: list[dict]) -> list[dict]:
    """The deployed variants of `run` among `rows` (`comparison_rows`) as the Compress view and the report show
    them: the artifact in words, its test accuracy, Δ against the run as trained (points), agreement with the
    teacher, size, latency, throughput (a language model: perplexity, Δ perplexity and tokens per second), and how
    often the fake-quantized model a step trained agrees with its artifact ("trained = deployed", for the quantizing
    steps)."""
    base = next((r for r in rows if r.get("run_id") == run.run_id and not r.get("variant")), {})

    def pct(x):
        return None if x is None else round(100 * x, 2)

    out = []
    for r in rows:
        if not r.get("variant") or r.get("_parent") != run.run_id:
            continue
        if r.get("test_ppl") is not None:  # a language model: perplexity (lower is better) and tokens per second
            ppl, ref = r["test_ppl"], base.get("test_ppl")
            figures = {"ppl": round(ppl, 2), "Δ ppl": None if ref is None else round(ppl - ref, 2)}
            speed = {"tok/s (b=1)": None if r.get("tokens_per_s_b1") is None else round(r["tokens_per_s_b1"])}
        else:
            acc, ref = r.get("test_acc"), base.get("test_acc")
            figures = {"acc %": pct(acc), "Δ acc": None if acc is None or ref is None else round(100 * (acc - ref), 2),
                       "agree %": pct(r.get("agreement"))}
            speed = {"/s (b=256)": None if r.get("throughput") is None else round(r["throughput"])}
        out.append({"artifact": artifact_label(r["variant"]), **figures, "params": r.get("params"),
                    "MB": None if r.get("size_mb") is None else round(r["size_mb"], 3),
                    "ms (b=1)": None if r.get("latency_ms") is None else round(r["latency_ms"], 3), **speed,
                    "trained = deployed %": pct(_dict(r.get("fake_quant_check")).get("top1_agreement")),
                    "variant": r["variant"]})
    return out


def find_scratch_twins(runs: list[Run], store) -> list[Run]:
    """The scratch twin, from the store, of each given KD run that has none among `runs` (for `kdw compare` on KD
    ids alone): one finished run per twin key, from the KD run's own launch (group) where there is one, else the
    newest. A cancelled, failed or still running scratch run of another launch is never one."""
    kd_groups: dict[tuple, set] = {}
    for r in runs:
        if r.config.get("kind") == "kd":
            kd_groups.setdefault(twin_key(r.config), set()).add(r.config.get("group"))
    have = {twin_key(r.config) for r in runs if r.config.get("kind") == "scratch"}
    missing = set(kd_groups) - have
    if not missing:
        return []
    chosen: dict[tuple, tuple[Run, bool]] = {}
    for r in store.list(kind="scratch"):  # oldest first: a later one of the same standing replaces it
        key = twin_key(r.config)
        if key not in missing or r.state != "done" or not r.summary:
            continue
        same_launch = r.config.get("group") in kd_groups[key]
        if key not in chosen or same_launch or not chosen[key][1]:
            chosen[key] = (r, same_launch)
    return [r for r, _ in chosen.values()]


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
                    "throughput", "agreement", "ece", "train_s", "test_ppl", "ppl_gain", "ms_per_token",
                    "tokens_per_s_b1", "tokens_per_s_b32"):
            agg[key], agg[key + "_std"] = mean_std([m.get(key) for m in members])
        agg["sample"] = first.get("sample")
        if agg["role"] == "kd" and not agg["variant"]:
            lm = agg["test_ppl"] is not None
            agg["verdict"] = gain_verdict(agg["ppl_gain"] if lm else agg["kd_gain"],
                                          agg["ppl_gain_std"] if lm else agg["kd_gain_std"], agg["seeds"])
        agg["timing_unreliable"] = any(m.get("timing_unreliable") for m in members)
        agg["cpu_busy"] = max((m.get("cpu_busy") or 0) for m in members)
        out.append(agg)
    return add_teacher_ratios(out)  # in the order of `rows`, whose groups come sorted (and variants under their run)


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


AGREEMENT_MEANS = "Agreement: how often the student picks the same class as the teacher."
ECE_MEANS = "ECE: how far the model's confidence is from its accuracy (0 is perfectly calibrated)."


def vs_teacher(r: dict) -> str:
    """'11× smaller, 2.3× faster, −5.8 pts' (or '7.8× larger, 3× slower*'): a row against the teacher of its table
    (see `add_teacher_ratios`); * marks a speed timed on a busy CPU."""
    v = r.get("vs_teacher")
    if not v:
        return "—"
    bits = []
    if v.get("smaller"):
        bits.append(format_ratio(v["smaller"], "smaller", "larger"))
    if v.get("faster"):
        bits.append(format_ratio(v["faster"], "faster", "slower") + ("*" if v.get("unreliable") else ""))
    if v.get("acc_pts") is not None:
        bits.append(f"{v['acc_pts']:+.1f} pts".replace("-", "−"))
    return ", ".join(bits) or "—"


def _unreliable(r) -> bool:
    return bool(r.get("timing_unreliable")) or (r.get("cpu_busy") or 0) > BUSY_LIMIT


def _timing(r, key, fmt):
    v = _num(r.get(key), fmt)
    return f"{v}*" if v != "—" and _unreliable(r) else v


def table_columns(aggregated: bool, wide: bool = False, rows: list[dict] | None = None) -> list[tuple[str, callable]]:
    """The table's columns: by default what a stakeholder reads (role, model, test accuracy, KD gain, params, size,
    latency and the ratios to the teacher); `wide` adds T, α, labels, seeds, FLOPs, throughput, agreement, ECE."""
    s = (lambda r, k: r.get(k + "_std")) if aggregated else (lambda r, k: None)

    rows = rows or []
    cols = [("role", lambda r: ROLE_NAMES.get(r["role"], r["role"])), ("model", lambda r: short_model(r["model"]))]
    if wide or any(r.get("variant") for r in rows):
        cols.append(("artifact", lambda r: artifact_label(r.get("variant")) + (" ⚠" if _int8_flagged(r) else "")))
    kd_rows = [r for r in rows if r["role"] == "kd"]  # named when they differ, or a method has no α to tell it by
    if wide or len({r.get("method") for r in kd_rows}) > 1 or any(r.get("alpha") is None for r in kd_rows):
        cols.append(("method", lambda r: r.get("method") or "—"))
    if wide:
        cols += [("T", lambda r: _num(r.get("temperature"), "g")), ("α", lambda r: _num(r.get("alpha"), "g")),
                 ("labels", lambda r: "all" if r.get("labels") is None else _num(r.get("labels"), "g"))]
        cols.append(("seeds", lambda r: str(r["seeds"])) if aggregated else ("seed", lambda r: _num(r.get("seed"), "d")))
    lm = any(r.get("test_ppl") is not None for r in rows)
    if lm:  # language models: perplexity, its drop against the scratch twin, agreement with the teacher's top 1
        cols += [("test ppl", lambda r: _num(r.get("test_ppl"), ",.1f") + _pm(s(r, "test_ppl"), ",.1f")),
                 ("ppl vs scratch", lambda r: "—" if r.get("ppl_gain") is None
                  else f"{-r['ppl_gain']:+,.1f}".replace("-", "−") + _pm(s(r, "ppl_gain"), ",.1f")),
                 ("agreement %", lambda r: format_pct(r.get("agreement")))]
        if any(r.get("gap_closed") is not None for r in rows):  # cut students: before healing, and the gap closed
            cols += [("ppl before healing", lambda r: _num(r.get("ppl_cut"), ",.1f")),
                     ("gap closed %", lambda r: format_pct(r.get("gap_closed")))]
    else:
        cols.append(("test acc %", lambda r: format_pct(r["test_acc"], s(r, "test_acc"))))
    if wide and not lm:
        cols.append(("test acc % (last)", lambda r: format_pct(r["test_acc_last"], s(r, "test_acc_last"))))
    cols += [] if lm else [("KD gain", lambda r: format_gain(r.get("kd_gain"), s(r, "kd_gain")))]
    cols += [
        ("params", lambda r: _num(r.get("params"), ",.0f")),
        ("size MB", lambda r: _num(r.get("size_mb"), ".3f")),
    ]
    if wide:
        cols.append(("FLOPs", lambda r: format_flops(r.get("flops"))))
    if lm:  # per token by default; the block's latency and tokens per second with the other columns
        cols.append(("ms/token", lambda r: _timing(r, "ms_per_token", ".3f")))
        if wide:
            cols += [("latency ms", lambda r: _timing(r, "latency_ms", ".3f")),
                     ("tokens/s b=1", lambda r: _timing(r, "tokens_per_s_b1", ",.0f")),
                     ("tokens/s b=32", lambda r: _timing(r, "tokens_per_s_b32", ",.0f"))]
    else:
        cols.append(("latency ms", lambda r: _timing(r, "latency_ms", ".3f")))
    if wide and not lm:
        cols += [("samples/s (b=256)", lambda r: _timing(r, "throughput", ",.0f")),
                 ("agreement %", lambda r: format_pct(r.get("agreement"))), ("ECE", lambda r: _num(r.get("ece"), ".3f"))]
    cols.append(("vs teacher", vs_teacher))
    return cols


def _pm(std, fmt: str) -> str:
    """' ± 12.3' for a spread over seeds, '' without one."""
    return "" if std is None else f" ± {std:{fmt}}"


def add_teacher_ratios(rows: list[dict]) -> list[dict]:
    """Each student row's size, speed and accuracy against the teacher of the table (when there is one teacher)."""
    teachers = [r for r in rows if r["role"] == "teacher" and not r.get("variant")]
    if len(teachers) != 1:
        return rows
    t = teachers[0]
    for r in rows:
        if r is t:
            continue
        v = {}
        if t.get("size_mb") and r.get("size_mb"):
            v["smaller"] = t["size_mb"] / r["size_mb"]
        if t.get("latency_ms") and r.get("latency_ms"):
            v["faster"] = t["latency_ms"] / r["latency_ms"]
            v["unreliable"] = _unreliable(t) or _unreliable(r)  # a ratio is as good as its worse timing
        if t.get("test_acc") is not None and r.get("test_acc") is not None:
            v["acc_pts"] = 100 * (r["test_acc"] - t["test_acc"])
        r["vs_teacher"] = v
    return rows


def headline(rows: list[dict]) -> str | None:
    """One sentence on the best distilled student against the teacher and its scratch twin, or None."""

    if any(r.get("test_ppl") is not None for r in rows):
        return _lm_headline(rows)
    kd = [r for r in rows if r["role"] == "kd" and not r.get("variant") and r.get("test_acc") is not None]
    teachers = [r for r in rows if r["role"] == "teacher" and not r.get("variant")]
    if not kd or len(teachers) != 1:
        return None
    best, t = max(kd, key=lambda r: r["test_acc"]), teachers[0]
    v = best.get("vs_teacher") or add_teacher_ratios([t, best])[1].get("vs_teacher") or {}
    parts = []
    if v.get("smaller"):
        parts.append(format_ratio(v["smaller"], "smaller", "larger"))
    busy = v.get("unreliable") or best.get("timing_unreliable") or t.get("timing_unreliable")
    if v.get("faster") and not busy:  # a timing flagged as busy is never quoted
        parts.append(format_ratio(v["faster"], "faster", "slower"))
    cost = v.get("acc_pts")
    acc = (f"{abs(cost):.2f} points {'less' if cost < 0 else 'more'} accurate "
           f"({100 * best['test_acc']:.2f}% against {100 * t['test_acc']:.2f}%)") if cost is not None else ""
    gain = best.get("kd_gain")
    twin = (f"; it is {abs(100 * gain):.2f} points {'above' if gain >= 0 else 'below'} its scratch twin"
            if gain is not None else "")
    sizes = f"{' and '.join(parts)} than the teacher {short_model(t['model'])}, and " if parts else ""
    who = f"the teacher {short_model(t['model'])}" if not parts else "the teacher"
    speed = "; its speed against the teacher's is not quoted: a timing was taken on a busy CPU (re-measure)" \
        if v.get("faster") and busy else ""
    return (f"The best {ROLE_NAMES['kd']} student, {short_model(best['model'])}, is {sizes}"
            f"{acc.replace(' accurate', ' accurate than ' + who, 1) if acc and not parts else acc}{twin}{speed}.")


def _lm_headline(rows: list[dict]) -> str | None:
    """The headline of language models: the distilled student with the lowest test perplexity, against the teacher
    (size, and speed unless a timing was taken on a busy CPU) and against its scratch twin."""
    kd = [r for r in rows if r["role"] == "kd" and not r.get("variant") and r.get("test_ppl") is not None]
    teachers = [r for r in rows if r["role"] == "teacher" and not r.get("variant") and r.get("test_ppl") is not None]
    if not kd or len(teachers) != 1:
        return None
    best, t = min(kd, key=lambda r: r["test_ppl"]), teachers[0]
    if best.get("did_not_learn"):  # a useless student is never a success, nor its twin a yardstick
        return (f"No {ROLE_NAMES['kd']} student learnt: the best, {best['model']}, has a test perplexity of "
                f"{best['test_ppl']:,.1f} against the teacher's {t['test_ppl']:,.1f}, and "
                f"{best['did_not_learn'].split(': try')[0].removeprefix('its ')}.")
    v = best.get("vs_teacher") or add_teacher_ratios([t, best])[1].get("vs_teacher") or {}
    parts = [format_ratio(v["smaller"], "smaller", "larger")] if v.get("smaller") else []
    busy = v.get("unreliable") or best.get("timing_unreliable") or t.get("timing_unreliable")
    if v.get("faster") and not busy:
        parts.append(format_ratio(v["faster"], "faster", "slower"))
    than = f"{' and '.join(parts)} than the teacher {t['model']}, with " if parts else ""
    gain = best.get("ppl_gain")
    twin = ""
    twin_learnt = not any(r.get("did_not_learn") for r in rows if r["role"] == "scratch"
                          and r.get("_twin") == best.get("_twin"))
    if gain is not None:
        scratch = best["test_ppl"] + gain
        twin = (f", {'below' if gain > 0 else 'above'} its scratch twin's {scratch:,.1f} "
                + (f"({'the teacher helps' if gain > 0 else 'the teacher does not help here'})" if twin_learnt
                   else "(which did not learn either: no comparison)"))
    lead = f"is {than}a" if than else "has a"
    return (f"The best {ROLE_NAMES['kd']} student, {best['model']}, {lead} test perplexity of "
            f"{best['test_ppl']:,.1f} against the teacher's {t['test_ppl']:,.1f}{twin}.")


def unify_timings(rows: list[dict]) -> list[dict]:
    """One measurement per model in a comparison: rows of the same architecture and input (a teacher listed by
    several runs, identical students) all take the quietest measurement on record, whatever the order of the runs.
    A measurement taken while other processes used more than BUSY_LIMIT of the CPU is flagged unreliable."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("latency_ms") is not None:
            groups.setdefault((r["role"] == "teacher", str(r["model"]), r.get("dataset"), repr(r.get("input_shape")),
                               r.get("variant"), r.get("_variant_of")), []).append(r)
    for members in groups.values():
        quiet = min(members, key=lambda r: (r.get("cpu_busy") or 0.0, r["latency_ms"]))
        for r in members:
            for k in ("latency_ms", "throughput", "cpu_busy", "device", "threads", "ms_per_token", "tokens_per_s_b1",
                      "tokens_per_s_b32"):  # a language model's per-token figures too: one measurement, one ratio
                r[k] = quiet.get(k)
            r["timing_from"] = quiet["run_id"]
    for r in rows:
        r["timing_unreliable"] = (r.get("cpu_busy") or 0) > BUSY_LIMIT
    return rows


def _int8_flagged(r: dict) -> bool:
    return (r.get("int8_check") or {}).get("ok") is False


def int8_warning(rows: list[dict]) -> str | None:
    """A warning naming the int8 variants (⚠ in the table) whose top-1 agreement with their fp32 model on the test
    set is below the threshold, with what to try; None when every one holds."""
    low = [r for r in rows if _int8_flagged(r)]
    if not low:
        return None
    names = "; ".join(f"{r['run_id']} agrees on {100 * r['int8_check']['agreement']:.1f}%" for r in low)
    threshold = 100 * low[0]["int8_check"]["threshold"]
    return (f"int8 does not hold for {names} (top-1 agreement with its fp32 model on the test set, below "
            f"{threshold:.0f}%): its figures are the int8 model's own, but it decides differently from the model it "
            f"was made from. Export again with another --int8-format (u8u8, reduce-range) or more calibration "
            f"images.")


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
    bits = [short_model(row["model"]), row.get("method") or ""]
    if row.get("temperature") is not None:
        bits.append(f"T={row['temperature']:g}")
    if row.get("alpha") is not None:
        bits.append(f"α={row['alpha']:g}")
    return " ".join(b for b in bits if b)


def format_table(rows: list[dict], aggregated: bool = False, wide: bool = False, width: int | None = None) -> str:
    """A plain-text table with a headline and a footer naming the device and what the columns mean.

    Without `wide`, the default columns (as in the app); if they are still wider than `width` characters (the
    terminal's), the last columns are dropped and the footer says so.
    """
    cols = table_columns(aggregated, wide, rows)
    cells = [[name for name, _ in cols]] + [[fn(r) for _, fn in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    dropped = []
    keep = list(range(len(cols)))
    if width and not wide:
        while len(keep) > 4 and sum(widths[i] + 2 for i in keep) - 2 > width:
            dropped.append(cols[keep.pop(-2)][0])  # the ratios to the teacher stay last; drop what is before them
    lines = ["  ".join(c[i].rjust(widths[i]) if i > 1 else c[i].ljust(widths[i]) for i in keep) for c in cells]
    lines.insert(1, "  ".join("-" * widths[i] for i in keep))
    devices = sorted({f"{r['device']}, {r['threads']} threads" for r in rows if r.get("device")})
    samples = sorted({r["sample"] for r in rows if r.get("sample")})
    per = f" ({' or '.join(samples)})" if samples else ""
    lm = any(r.get("test_ppl") is not None for r in rows)
    if lm:
        foot = [f"test ppl: perplexity on the test split's tokens, of the epoch with the best validation perplexity; "
                f"ppl vs scratch: distilled − scratch twin (lower is better); agreement: next-token top-1 agreement "
                f"with the teacher; size: the fp32 safetensors file; latency: fp32, batch 1{per}, on "
                f"{'; '.join(devices) or 'cpu'}."]
    else:
        foot = [f"test acc: the epoch with the best validation accuracy; KD gain: distilled − scratch twin, in "
                f"points; size: the fp32 safetensors file; latency: fp32, batch 1{per}, on "
                f"{'; '.join(devices) or 'cpu'}."]
    if any(r.get("variant") for r in rows):
        foot.append("ONNX rows are measured by running the artifact in ONNX Runtime (same threads); their size counts "
                    "every file a deployment needs.")
    warning = timing_warning(rows)
    if warning:
        foot.append(f"* warning: {warning}")
    int8 = int8_warning(rows)
    if int8:
        foot.append(f"⚠ warning: {int8}")
    if wide and not lm:  # a language model's agreement is defined in its first line; it has no ECE
        foot += [AGREEMENT_MEANS, ECE_MEANS]
    if dropped:
        foot.append(f"({len(dropped)} column(s) left out to fit the terminal: {', '.join(reversed(dropped))}; "
                    "--wide shows every column)")
    elif not wide:
        foot.append("--wide adds T, α, seeds, a block's latency and tokens per second at batch 1 and 32." if lm else
                    "--wide adds T, α, labels, seeds, FLOPs, throughput, agreement and ECE.")
    verdicts = [f"{verdict_subject(r)}: {r['verdict']}" for r in rows if aggregated and r.get("verdict")]
    head = headline(rows)
    if width:
        import textwrap

        foot = [w for f in foot for w in textwrap.wrap(f, width, subsequent_indent="  ")]
        head = "\n".join(textwrap.wrap(head, width)) if head else head
    return "\n".join(([head, ""] if head else []) + lines + [""] + foot + verdicts)


def terminal_width() -> int:
    """The terminal's width in characters (120 when the output is not a terminal)."""
    import shutil

    return shutil.get_terminal_size(fallback=(120, 24)).columns


TIMING_COLUMNS = ("latency ms", "samples/s (b=256)", "ms/token", "tokens/s b=1", "tokens/s b=32")


@dataclass
class Comparison:
    """One comparison as every front end shows it: the app's Compare page, the notebook's `compare` and the HTML
    report build it with `build_comparison` and only lay it out.

    `rows` holds every run (and deployed variant); `shown` is what the table lists (seeds folded into mean ± std
    when `aggregated`); `columns` are the table's, `cells()` its text, and `greyed()` the cells measured on a busy
    CPU.
    """

    runs: list
    rows: list[dict]
    aggregated: bool = False
    wide: bool = False
    shown: list[dict] = field(init=False)

    def __post_init__(self):
        self.shown = aggregate(self.rows) if self.aggregated else self.rows

    @cached_property
    def columns(self) -> list[tuple[str, callable]]:
        return table_columns(self.aggregated, self.wide, self.shown)

    def cells(self) -> list[dict]:
        """The table as {column: text}, one dict per shown row."""
        cols = self.columns
        return [{name: fn(r) for name, fn in cols} for r in self.shown]

    def greyed(self) -> list[tuple[int, str]]:
        """(row, column) of the shown cells timed on a busy CPU, or a ratio to the teacher that uses such a time."""
        names = {name for name, _ in self.columns}
        out = []
        for i, r in enumerate(self.shown):
            if r.get("timing_unreliable"):
                out += [(i, c) for c in TIMING_COLUMNS if c in names]
            if "vs teacher" in names and (r.get("vs_teacher") or {}).get("unreliable"):
                out.append((i, "vs teacher"))
        return out

    @property
    def headline(self) -> str | None:
        return headline(self.shown) or headline(self.rows)

    @property
    def device(self) -> str:
        """Where the timings were taken: "cpu-name, 2 threads", or "cpu" when no row says."""
        return next((f"{r['device']}, {r['threads']} threads" for r in self.rows if r.get("device")), "cpu")

    @property
    def warning(self) -> str | None:
        """Timings taken on a busy CPU (greyed in the table), or None."""
        return timing_warning(self.rows)

    @property
    def int8_warning(self) -> str | None:
        """int8 variants that decide differently from their fp32 model (⚠ in the table), or None."""
        return int8_warning(self.rows)

    @property
    def verdicts(self) -> list[tuple[str, str]]:
        """(what it is about, the verdict on the KD gain) for each shown row that has one."""
        return [(verdict_subject(r), r["verdict"]) for r in self.shown if r.get("verdict")]

    def confusion_matrices(self, student: Run | None = None) -> dict[str, list]:
        """{title: confusion matrix} of the teacher (when the runs name one) and of `student` (default: the first
        distilled run, else the first run)."""
        done = [r for r in self.runs if r.state == "done" and dig(r.summary, "test", "confusion_matrix")]
        if not done:
            return {}
        student = student or next((r for r in done if r.config.get("kind") == "kd"), done[0])
        out = {}
        teacher = next((r.summary["teacher"] for r in done if dig(r.summary, "teacher", "test", "confusion_matrix")),
                       None)
        if teacher:
            out[f"teacher {teacher.get('label') or ''}".strip()] = teacher["test"]["confusion_matrix"]
        out[run_title(student.config)] = student.summary["test"]["confusion_matrix"]
        return out


def generations(runs: list[Run], store=None) -> list[dict]:
    """The stored generations of language-model runs side by side: one dict per prompt, {"prompt": text, "models":
    {title: {"greedy": text, "sampled": text}}}, the teacher first (its own run's, found in `store` from a distilled
    run's summary when it is not listed), then scratch and distilled students. [] when no run has generations."""
    listed = [r for r in runs if r.state == "done" and r.summary.get("generations")]
    ids = {r.run_id for r in listed}
    if store is not None:
        for r in list(listed):
            spec = dig(r.summary, "teacher", "spec")
            if spec and spec not in ids:
                t = store.get(spec) if store.exists(spec) else None
                if t is not None and t.state == "done" and t.summary.get("generations"):
                    listed.append(t)
                    ids.add(spec)
    listed.sort(key=lambda r: (ROLE_ORDER.get(r.config.get("kind"), 3), r.config.get("seed") or 0))
    by_prompt: dict[str, dict] = {}
    for r in listed:
        title = f"{run_title(r.config)} · {r.run_id}"
        for g in r.summary["generations"]:
            row = by_prompt.setdefault(g.get("prompt", ""), {"prompt": g.get("prompt", ""), "models": {}})
            row["models"][title] = {"greedy": g.get("greedy", ""), "sampled": g.get("sampled", "")}
    return list(by_prompt.values())


def build_comparison(runs: list[Run], store=None, aggregated: bool = False, wide: bool = False) -> Comparison:
    """The comparison of `runs`: with `store`, each distilled run's scratch twin joins it from the store."""
    runs = list(runs)
    if store is not None:
        runs += [r for r in find_scratch_twins(runs, store) if r not in runs]
    return Comparison(runs, comparison_rows(runs), aggregated, wide)
