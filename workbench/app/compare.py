"""Compare: teacher, scratch and distilled students side by side, and an HTML report to hand over."""

from __future__ import annotations

import re
import time

import pandas as pd
import streamlit as st

from workbench.analysis import describe, plots
from workbench.analysis.compare import (
    AGREEMENT_MEANS,
    ECE_MEANS,
    Comparison,
    artifact_label,
    build_comparison,
    generations,
    table_columns,
)
from workbench.analysis.report import build_report
from workbench.app import common
from workbench.deploy.export import LM_FORMATS, ExportOptions, start_export, start_format_export, zip_variant
from workbench.jobs.queue import start_profile
from workbench.tasks import task_for


def _classes(runs) -> list[str]:
    """The class names of the runs' data set; class numbers if it cannot be loaded here any more."""
    cfg = runs[0].config
    try:
        return list(common.dataset(cfg["dataset"], cfg.get("data_dir"), cfg.get("image_size")).classes)
    except Exception:
        k = len(runs[0].summary.get("test", {}).get("confusion_matrix") or [])
        return [str(i) for i in range(k)]


def _default_selection(runs) -> list[str]:
    """The newest group's runs, so the page opens on the latest launch."""
    if not runs:
        return []
    group = runs[-1].config.get("group")
    chosen = [r for r in runs if group and r.config.get("group") == group] or runs[-2:]
    return [common.run_label(r) for r in chosen]


def _tables(comparison: Comparison) -> list:
    """The table as pandas Stylers: timings measured on a busy CPU greyed, with a * (see the caption). With "More
    columns", the extra ones are a second table under the first (role and model again), so that neither scrolls
    sideways on a laptop's screen."""
    names = [name for name, _ in comparison.columns]
    df = pd.DataFrame(comparison.cells(), columns=names)
    grey = comparison.greyed()

    def style(frame):
        out = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for i, col in grey:
            if col in out.columns:
                out.loc[i, col] = "color: #9a9a9a; font-style: italic"
        return out

    if not comparison.wide:
        return [df.style.apply(style, axis=None)]
    main = [n for n, _ in table_columns(comparison.aggregated, False, comparison.shown)]
    extra = ["role", "model"] + [n for n in names if n not in main]
    return [df[main].style.apply(style, axis=None), df[extra].style.apply(style, axis=None)]


KEPT_FIELDS = ("cmp_dataset", "cmp_runs_", "cmp_agg", "cmp_wide", "cmp_axis", "cmp_deploy_")  # kept through a page switch


def _not_a_field(key: str) -> bool:
    return key in ("cmp_deploy_go", "cmp_deploy_polling")  # a button, and the panel's own state


def _from_address(done) -> None:
    """Once per session: the runs (and so the data set) of the address, `?runs=ID,ID` (what the page writes), to
    send a comparison as a link or find it again after a reload."""
    ss = st.session_state
    if ss.get("_cmp_from_address"):
        return
    ss["_cmp_from_address"] = True
    ids = [i for i in st.query_params.get("runs", "").split(",") if i]
    found = [r for r in done if r.run_id in ids]
    if found:
        ds = found[0].config.get("dataset")
        ss["cmp_dataset"] = ss[common.KEPT + "cmp_dataset"] = ds
        ss[f"cmp_runs_{ds}"] = ss[common.KEPT + f"cmp_runs_{ds}"] = \
            [common.run_label(r) for r in found if r.config.get("dataset") == ds]
    for k, key in (("folded", "cmp_agg"), ("wide", "cmp_wide")):
        if k in st.query_params:
            ss[key] = ss[common.KEPT + key] = st.query_params[k] == "1"


def _to_address(runs, folded: bool, wide: bool) -> None:
    want = {"runs": ",".join(r.run_id for r in runs), "folded": "1" if folded else "0", "wide": "1" if wide else "0"}
    if any(st.query_params.get(k) != v for k, v in want.items()):
        st.query_params.update(want)


def page() -> None:
    st.title("Compare")
    store = common.store()
    done = [r for r in store.list() if r.state == "done" and r.summary]
    if not done:
        st.info("No finished runs yet. Launch one on the **Train** page (or run `kdw demo`), then come back.")
        return
    _from_address(done)
    with common.kept_form(KEPT_FIELDS, skip=_not_a_field, address=False):
        _page(store, done)


def _page(store, done) -> None:
    datasets = sorted({r.config.get("dataset") for r in done})
    ds_name = st.selectbox("Data set", datasets, index=len(datasets) - 1 if "fashion-mnist" not in datasets
                           else datasets.index("fashion-mnist"), key="cmp_dataset")
    pool = [r for r in done if r.config.get("dataset") == ds_name]
    labels = {common.run_label(r): r for r in pool}
    key = f"cmp_runs_{ds_name}"  # each data set keeps its own choice: switching back finds it again
    st.session_state.setdefault(key, _default_selection(pool))
    st.session_state[key] = [x for x in st.session_state[key] if x in labels]
    chosen = st.multiselect("Runs", list(labels), key=key,
                            help="Distilled runs are paired with their scratch twin (same student, budget and seed) "
                                 "from the store for the KD gain.")
    if not chosen:
        st.query_params["runs"] = ""
        st.info("Pick runs to compare.")
        return
    c1, c2 = st.columns(2)
    agg_mode = c1.toggle("Fold seeds into mean ± std", value=False, key="cmp_agg")
    wide = not common.presenting() and c2.toggle("More columns", value=False, key="cmp_wide",
                     help="T, α, labels, seeds, FLOPs, throughput, agreement and ECE")
    _to_address([labels[c] for c in chosen], agg_mode, st.session_state.get("cmp_wide", False))
    comparison = build_comparison([labels[c] for c in chosen], store, aggregated=agg_mode, wide=wide)
    runs, rows = comparison.runs, comparison.rows
    line = comparison.headline
    if line:
        st.markdown(f"**{line}**")
    st.caption(describe.describe_runs(runs))
    device = comparison.device
    for i, table in enumerate(_tables(comparison)):
        st.dataframe(table, hide_index=True, key="cmp_table" if i == 0 else "cmp_table_more")
    samples = sorted({r["sample"] for r in rows if r.get("sample")})  # text: sentences of a stated length
    lm = any(r.get("test_ppl") is not None for r in rows)
    if lm:
        st.caption(f"Test perplexity of the best-validation epoch (exp of the mean next-token cross-entropy; lower is "
                   f"better). ppl vs scratch = distilled − scratch twin (same seed): below zero, the teacher helped. "
                   f"Agreement: how often the student's most likely next token is the teacher's. Latency, ms/token "
                   f"and tokens/s: fp32 forward passes over {' or '.join(samples) or 'a block'} at batch 1 and 32, "
                   f"on {device}. Size: the fp32 safetensors file.")
    else:
        st.caption(f"Test accuracy of the best-validation epoch. KD gain = distilled − scratch twin (same seed), in "
                   f"points. Latency: median of ≥ 30 batch-1 passes, fp32, on {device}; each model is timed once per "
                   f"comparison (the quietest measurement on record)"
                   + (f"; one sample is {' or '.join(samples)}, and throughput counts such sentences per second"
                      if samples else "") + ". Size: the fp32 safetensors file."
                   + (f" {AGREEMENT_MEANS} {ECE_MEANS} FLOPs count a multiply-add as 2." if wide else ""))
    warning = comparison.warning
    if warning:
        st.warning(warning.replace("(kdw profile RUN)", "(grey in the table)"), icon=":material/speed:")
        _remeasure(runs)
    if comparison.int8_warning:
        st.warning(comparison.int8_warning, icon=":material/warning:")
    for subject, verdict in comparison.verdicts:
        st.caption(f"{subject}: **{verdict}**")

    tab_curves, tab_pareto, tab_cm = st.tabs(["Training curves", "Pareto",
                                              "Generations" if lm else "Confusion matrices"])
    with tab_curves:
        common.chart(plots.training_curves(*describe.curve_series(runs)), "cmp_curves")
    with tab_pareto:
        axes = ["latency_ms", "size_mb", "flops"]
        axis = st.radio("x axis", axes, horizontal=True, key="cmp_axis", format_func=lambda a: plots.AXES[a],
                        index=1 if warning else 0,  # size, when the latencies are not to be trusted
                        help="Latency is unreliable when it was timed on a busy CPU; size and FLOPs never are.")
        common.chart(plots.pareto(rows, axis, device if axis == "latency_ms" else None), "cmp_pareto")
    with tab_cm:
        if lm:
            _generations(runs, store)
            student_label = None
        else:
            student_label = st.selectbox("Student", [common.run_label(r) for r in runs], key="cmp_cm_student")
            student = next(r for r in runs if common.run_label(r) == student_label)
            common.chart(plots.confusion_matrices(comparison.confusion_matrices(student), _classes(runs)), "cmp_cm")

    if common.presenting():  # in front of a class: the results, not the tools
        return
    st.subheader("Deploy")
    _deploy_panel([r for r in runs if r.state == "done"])

    st.subheader("Export")
    st.caption("One self-contained HTML file: the table, the plots, every run's config, the environment and the "
               "date. It opens offline in any browser.")
    classes = None if lm else _classes(runs)
    title = f"KD Workbench report: {ds_name}"
    st.download_button("Export report", lambda: build_report(runs, title, classes).encode("utf-8"),
                       file_name=f"kdw-report-{time.strftime('%Y%m%d-%H%M%S')}.html", mime="text/html",
                       key="cmp_export", type="primary")


def _generations(runs, store) -> None:
    """The stored generations of the teacher, scratch and distilled students, side by side for each prompt."""
    prompts = generations(runs, store)
    if not prompts:
        st.caption("These runs stored no generations.")
        return
    mode = st.radio("Decoding", ["greedy", "sampled"], horizontal=True, key="cmp_gen_mode",
                    help="greedy: the most likely next token each time; sampled: T = 1 from the top 50, seeded, so a "
                         "rerun of the same model writes the same text")
    models = list(prompts[0]["models"])
    st.caption(f"32 new tokens after each prompt, as each run wrote them when it finished ({len(models)} models; "
               "the teacher's from its own run).")
    for g in prompts:
        with st.container(border=True):
            st.markdown(f"**Prompt:** `{g['prompt']}`")
            per_row = 2 if len(g["models"]) > 3 else max(1, len(g["models"]))
            items = list(g["models"].items())
            for i in range(0, len(items), per_row):
                cols = st.columns(per_row)
                for col, (title, text) in zip(cols, items[i:i + per_row]):
                    col.caption(title)
                    shown = re.sub(r"\n\s*\n+", "\n", text[mode].strip())  # blank lines folded, for reading
                    col.text(shown or "(nothing: the model ended the text)")


def _deploy_panel(runs) -> None:
    """Export a run's student as ONNX (int8, pruned) in the background, watch it, download the artifacts."""
    st.caption("The student as the artifact you ship: ONNX, int8 (ONNX Runtime quantization) and pruned-then-"
               "distilled, each measured by running it in ONNX Runtime. The variants join the table and the "
               "Pareto plots above. The **Compress** page runs a whole pipeline (prune → heal → quantize after or "
               "while training, with the teacher) and shows what each step costs.")
    if not runs:
        return
    labels = {common.run_label(r): r for r in runs}
    c1, c2, c3, c4 = st.columns([3, 1, 2, 2], vertical_alignment="bottom")
    run = labels[c1.selectbox("Run to deploy", list(labels), key="cmp_deploy_run")]
    task = task_for(run.config["dataset"], run.config.get("task"))
    fmt = "onnx"
    if task.token_level:  # a language model also leaves as the files its users deploy
        fmt = st.radio("Format", ["onnx", *LM_FORMATS], horizontal=True, key="cmp_deploy_format",
                       format_func={"onnx": "ONNX", "hf": "Hugging Face folder", "gguf": "GGUF (f16)",
                                    "gguf-q8_0": "GGUF (Q8_0)"}.get,
                       help="Hugging Face folder: save_pretrained with the tokenizer (transformers, vLLM, TGI). "
                            "GGUF: llama.cpp's file (llama.cpp, Ollama, LM Studio). Each is loaded back by "
                            "transformers and measured.")
    int8 = c2.checkbox("int8", value=True, key="cmp_deploy_int8", disabled=fmt != "onnx")
    prune = c3.slider("Prune channels", 0.0, 0.9, 0.0, 0.1, key="cmp_deploy_prune",
                      disabled=not task.prunable or fmt != "onnx",
                      help="0 = no pruned variant. Structured pruning by L2 magnitude (torch-pruning), then a short "
                           "distillation with the run's teacher and method.")
    epochs = c4.number_input("Fine-tune epochs", 0, 50, 3, key="cmp_deploy_epochs", disabled=prune == 0)
    if st.button("Export", key="cmp_deploy_go"):
        try:
            if fmt == "onnx":
                start_export(common.store(), run.run_id, ExportOptions(int8=int8, prune=prune or None,
                                                                       finetune_epochs=int(epochs)))
            else:
                start_format_export(common.store(), run.run_id, fmt)
            st.toast(f"Exporting {run.run_id} in the background.")
        except Exception as e:
            common.show_error("Cannot export", e)

    def progress() -> None:
        variants = run.variants()
        busy = False
        for v in variants:
            label = f"{artifact_label(v['name'])} ({v['name']})"
            if v["state"] in ("queued", "running"):
                busy = True
                p = v.get("progress") or {}
                st.progress(float(p.get("fraction", 0.0)), text=f"{label}: {p.get('text', v['state'])}")
            elif v["state"] == "failed":
                st.error(f"{label} failed: {common.in_app_words(v['error'])}")
            elif v["state"] == "done" and v["metrics"]:
                m = v["metrics"]
                c1, c2 = st.columns([4, 1], vertical_alignment="center")
                lm = "perplexity" in m["test"]
                score = f"test perplexity {m['test']['perplexity']:,.1f}" if lm else \
                    f"{100 * m['test']['accuracy']:.2f}% test"
                c1.caption(f"**{label}**: {score}, {m['size_mb']:.3f} MB, "
                           f"{m['profile']['latency_ms']:.3f} ms at batch 1 in ONNX Runtime; top-1 equals PyTorch's on "
                           f"{100 * m['check']['top1_agreement']:.2f}% of "
                           f"{'next-token positions' if lm else 'test images'}")
                advice = (m.get("int8_check") or {}).get("advice")
                if advice:
                    c1.warning(advice, icon=":material/warning:")
                c2.download_button("Download", lambda f=v["folder"]: zip_variant(f), file_name=f"{run.run_id}-{v['name']}.zip",
                                   mime="application/zip", key=f"cmp_dl_{run.run_id}_{v['name']}")
        if not variants:
            st.caption("No variants of this run yet.")
        if not busy and st.session_state.get("cmp_deploy_polling"):
            st.session_state["cmp_deploy_polling"] = False
            st.rerun()  # finished: one full rerun puts the variants into the table and the plots

    busy = any(v["state"] in ("queued", "running") for v in run.variants())
    st.session_state["cmp_deploy_polling"] = busy
    st.fragment(progress, run_every=1.0 if busy else None)()


def _remeasure(runs) -> None:
    """A button that re-times every run of the comparison (and its teacher) in one background process."""
    if st.button("Re-measure these timings together", key="cmp_remeasure",
                 help="Runs `kdw profile` on these runs in the background: every model is timed again in one "
                      "process, one after the other. Reload the page when it is done."):
        try:
            start_profile(common.store(), [r.run_id for r in runs])
            st.toast("Re-measuring in the background; reload in a minute.")
        except Exception as e:
            common.show_error("Cannot re-measure", e)
