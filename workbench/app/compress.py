"""Compress: a pipeline over a finished run (prune → heal → PTQ, QAT or QAD), each step's artifact measured as
deployed, in one table and one plot beside the teacher and the run as trained."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from workbench.analysis import plots
from workbench.analysis.compare import artifact_label, comparison_rows, find_scratch_twins, pipeline_table
from workbench.app import common
from workbench.deploy.compress import (
    STEPS,
    CompressOptions,
    cancel_compress,
    compress_busy,
    parse_steps,
    start_compress,
)
from workbench.deploy.export import zip_variant
from workbench.tasks import task_for

QUANT_CHOICES = {"ptq": "PTQ", "qat": "QAT", "qad": "QAD"}
FIELDS = ("cz_",)  # the pipeline's fields, kept through a page switch


def _not_a_field(key: str) -> bool:
    return key in ("cz_go", "cz_cancel", "cz_polling") or key.startswith("cz_dl_")


def page() -> None:
    st.title("Compress")
    st.caption("Make a finished student smaller, step by step: prune its channels, heal it with the teacher, then "
               "quantize it (int8; a language model's weights to 4 bits), after training (PTQ) or while training "
               "(QAT on the labels, QAD under the teacher). Every step is an artifact run in ONNX Runtime on the "
               "test set: what each step costs, and what distillation gives back.")
    store = common.store()
    runs = [r for r in store.list() if r.state == "done" and r.summary]
    if not runs:
        st.info("No finished run yet. Train one on the **Train** page (or run `kdw demo`), then come back.")
        return
    with common.kept_form(FIELDS, skip=_not_a_field, address=False):
        _page(store, runs)


def _page(store, runs) -> None:
    labels = {common.run_label(r): r for r in runs}
    distilled = [i for i, r in enumerate(runs) if r.config.get("kind") == "kd"]  # what a pipeline usually starts from
    run = labels[st.selectbox("Run", list(labels), key="cz_run", index=(distilled or [len(runs) - 1])[-1],
                              help="A finished run; its teacher heals and distils the compressed student.")]
    steps = _step_builder(run)
    text = ",".join(steps)
    st.markdown("**Pipeline:** " + (" → ".join(f"`{s}`" for s in steps) if steps else "*no steps*"))
    epochs = st.session_state.get("cz_epochs", 3)
    busy = compress_busy(run)
    c1, c2 = st.columns([1, 6])
    if c1.button("Compress", key="cz_go", type="primary", disabled=busy or not steps):
        try:
            start_compress(store, run.run_id, parse_steps(text), CompressOptions(epochs=int(epochs)))
            st.toast(f"Compressing {run.run_id} in the background.")
            busy = True
        except Exception as e:
            common.show_error("Cannot compress", e)
    if busy and c2.button("Cancel", key="cz_cancel", help="Stops the pipeline; the steps it finished stay, and "
                                                          "Compress goes on from the first one that is not done."):
        st.toast(cancel_compress(run).capitalize() + ".")
        busy = False
    st.session_state["cz_polling"] = busy
    st.fragment(lambda: _results(run, store), run_every=1.0 if busy else None)()


def _step_builder(run) -> list[str]:
    """The pipeline's steps from four controls, in the only order that works: prune, heal, then the quantizers
    (int8 for a classifier, 4-bit weights for a language model: the task says which)."""
    task = task_for(run.config["dataset"], run.config.get("task"))
    has_teacher = bool(run.config.get("teacher"))
    bits = "int4" if task.token_level else "int8"
    c1, c2, c3, c4 = st.columns([2, 2, 3, 1], vertical_alignment="bottom")
    prunable = task.prunable and not task.token_level
    prune = c1.slider("Prune channels", 0.0, 0.9, 0.5 if prunable else 0.0, 0.1, key=f"cz_prune_{prunable}",
                      disabled=not prunable,
                      help=f"prune: {STEPS['prune'][1]} (torch-pruning). 0 = keep every channel."
                      + ("" if prunable else " A language model is cut when it is trained (--keep-top N), not "
                         "pruned here." if task.token_level else f" {task.title} models are not pruned here."))
    heals = ["kd", "ce", "none"] if has_teacher else ["ce", "none"]
    heal = c2.selectbox("Heal", heals, key="cz_heal", format_func=lambda h: {
        "kd": "with the teacher (KD)", "ce": "from the labels (CE)", "none": "no healing"}[h],
        help=STEPS["heal"][1])
    choices = [k for k in QUANT_CHOICES if has_teacher or k != "qad"]
    quant = c3.multiselect(f"Quantize to {bits}", choices, default=choices, key="cz_quant",
                           format_func=lambda k: QUANT_CHOICES[k],
                           help="PTQ: quantize after training, no training. QAT: train with the rounding in the "
                                "forward pass, on the labels. QAD: train with the rounding under the teacher "
                                "(quantization-aware distillation). Each starts from the float model the steps "
                                "before it left, so they compare side by side. "
                                + ("4-bit weights in groups of 32 (ONNX Runtime's MatMulNBits); activations stay "
                                   "float." if task.token_level else
                                   "ONNX Runtime's static int8: per-channel weights, per-tensor activations, "
                                   "calibrated on training samples."))
    c4.number_input("Epochs", 1, 50, 3, key="cz_epochs", help="epochs of each training step (heal, QAT, QAD)")
    steps = ([f"prune:{prune:g}"] if prune > 0 else []) + ([f"heal:{heal}"] if heal != "none" else [])
    return steps + [f"{k}:{bits}" for k in QUANT_CHOICES if k in quant]


def _results(run, store) -> None:
    """Progress while the pipeline works; then the variants as one table and one plot, with the references."""
    variants = run.variants()
    busy = False
    for v in variants:
        label = artifact_label(v["name"])
        if v["state"] in ("queued", "running"):
            busy = True
            p = v.get("progress") or {}
            st.progress(float(p.get("fraction") or 0.0), text=f"{label}: {p.get('text', v['state'])}")
        elif v["state"] in ("failed", "unreadable"):
            st.error(f"{label} ({v['name']}) failed: {common.in_app_words(v['error'] or 'no reason recorded')}")
        elif v["state"] == "cancelled":
            st.caption(f"{label} ({v['name']}): cancelled before it finished; **Compress** goes on from here.")
    if not busy and st.session_state.get("cz_polling"):
        st.session_state["cz_polling"] = False
        st.rerun()  # finished: one full rerun stops the polling
    rows = comparison_rows([run, *find_scratch_twins([run], store)])
    made = [r for r in rows if r.get("variant") and r["_parent"] == run.run_id]
    if not made:
        st.caption("No compressed variants of this run yet: choose the steps and press **Compress**.")
        return
    st.dataframe(pd.DataFrame(pipeline_table(run, rows)), hide_index=True, key="cz_table",
                 column_config={"variant": None})  # the folder's name: the artifact column says it in words
    device = made[0].get("device")
    st.caption(f"Every figure is the artifact's own, run in ONNX Runtime on the test set ({device}): test accuracy; Δ "
               "acc against the run as trained (PyTorch fp32), in points; agree: how often its top class is the "
               "teacher's; MB: its files; latency at batch 1 and samples per second at batch 256. Trained = "
               "deployed: how often the fake-quantized PyTorch model a step trained picks the same class as its "
               "int8 artifact.")
    axis = st.radio("x axis", ["latency_ms", "size_mb"], horizontal=True, key="cz_axis",
                    format_func=lambda a: plots.AXES[a].replace("fp32 safetensors", "the artifact's files"))
    refs = [r for r in rows if not r.get("variant")]
    common.chart(plots.compress_pareto(refs + made, axis, device if axis == "latency_ms" else None), "cz_pareto")
    with st.expander("Download an artifact"):
        for v in variants:
            if v["state"] == "done" and v["metrics"]:
                st.download_button(f"{artifact_label(v['name'])} ({v['metrics']['size_mb']:.3f} MB)",
                                   lambda f=v["folder"]: zip_variant(f), file_name=f"{run.run_id}-{v['name']}.zip",
                                   mime="application/zip", key=f"cz_dl_{run.run_id}_{v['name']}")
