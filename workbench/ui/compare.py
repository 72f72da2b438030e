"""Compare: teacher, scratch and distilled students side by side, and an HTML report to hand over."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from workbench import plots, recipes
from workbench.compare import (aggregate, comparison_rows, find_scratch_twins, table_columns, timing_warning,
                               verdict_subject)
from workbench.report import build_report
from workbench.ui import common


def _default_selection(runs) -> list[str]:
    """The newest group's runs, so the page opens on the latest launch."""
    if not runs:
        return []
    group = runs[-1].config.get("group")
    chosen = [r for r in runs if group and r.config.get("group") == group] or runs[-2:]
    return [common.run_label(r) for r in chosen]


def _table(rows: list[dict], aggregated: bool) -> pd.DataFrame:
    cols = table_columns(aggregated)
    return pd.DataFrame([{name: fn(r) for name, fn in cols} for r in rows])


def page() -> None:
    st.title("Compare")
    store = common.store()
    done = [r for r in store.list() if r.state == "done" and r.summary]
    if not done:
        st.info("No finished runs yet. Launch one on the **Train** page (or run `kdw demo`), then come back.")
        return
    datasets = sorted({r.config.get("dataset") for r in done})
    ds_name = st.selectbox("Data set", datasets, index=len(datasets) - 1 if "fashion-mnist" not in datasets
                           else datasets.index("fashion-mnist"), key="cmp_dataset")
    pool = [r for r in done if r.config.get("dataset") == ds_name]
    labels = {common.run_label(r): r for r in pool}
    st.session_state.setdefault("cmp_runs", _default_selection(pool))
    st.session_state["cmp_runs"] = [x for x in st.session_state["cmp_runs"] if x in labels]
    chosen = st.multiselect("Runs", list(labels), key="cmp_runs",
                            help="KD runs are paired with their scratch twin (same student, budget and seed) "
                                 "from the store for the KD gain.")
    if not chosen:
        st.info("Pick runs to compare.")
        return
    runs = [labels[c] for c in chosen]
    runs += [r for r in find_scratch_twins(runs, store) if r not in runs]
    rows = comparison_rows(runs)
    agg_mode = st.toggle("Fold seeds into mean ± std", value=False, key="cmp_agg")
    shown = aggregate(rows) if agg_mode else rows
    device = next((f"{r['device']}, {r['threads']} threads" for r in rows if r.get("device")), "cpu")
    st.dataframe(_table(shown, agg_mode), hide_index=True, key="cmp_table")
    st.caption(f"Test accuracy on the best-validation epoch and on the last epoch. KD gain = distilled − scratch twin "
               f"(same seed), in points. Latency: median of ≥ 30 batch-1 passes, fp32; throughput at batch 256; both "
               f"on {device}. FLOPs count a multiply-add as 2; size is the fp32 safetensors file.")
    warning = timing_warning(rows)
    if warning:
        st.warning(warning, icon=":material/speed:")
    for r in shown:
        if r.get("verdict"):
            st.caption(f"{verdict_subject(r)}: **{r['verdict']}**")

    tab_curves, tab_pareto, tab_cm = st.tabs(["Training curves", "Pareto", "Confusion matrices"])
    with tab_curves:
        series, colors = recipes.curve_series(runs)
        fig = plots.training_curves(series, colors)
        st.plotly_chart(fig, key="cmp_curves")
        st.caption(plots.caption(fig))
    with tab_pareto:
        axis = st.radio("x axis", ["latency_ms", "size_mb", "flops"], horizontal=True, key="cmp_axis",
                        format_func=lambda a: plots.AXES[a])
        fig = plots.pareto(rows, axis, device if axis == "latency_ms" else None)
        st.plotly_chart(fig, key="cmp_pareto")
        st.caption(plots.caption(fig))
    with tab_cm:
        ds = common.dataset(ds_name)
        student_label = st.selectbox("Student", [common.run_label(r) for r in runs], key="cmp_cm_student")
        student = next(r for r in runs if common.run_label(r) == student_label)
        cms = {}
        teacher = next((r.summary["teacher"] for r in runs if r.summary.get("teacher")), None)
        if teacher:
            cms[f"teacher {teacher['label']}"] = teacher["test"]["confusion_matrix"]
        cms[recipes.run_title(student.config)] = student.summary["test"]["confusion_matrix"]
        fig = plots.confusion_matrices(cms, ds.classes)
        st.plotly_chart(fig, key="cmp_cm")
        st.caption(plots.caption(fig))

    st.subheader("Export")
    st.caption("One self-contained HTML file: the table, the plots, every run's config, the environment and the "
               "date. It opens offline in any browser.")
    classes = common.dataset(ds_name).classes
    title = f"KD Workbench report: {ds_name}"
    st.download_button("Export report", lambda: build_report(runs, title, classes).encode("utf-8"),
                       file_name=f"kdw-report-{time.strftime('%Y%m%d-%H%M%S')}.html", mime="text/html",
                       key="cmp_export", type="primary")
