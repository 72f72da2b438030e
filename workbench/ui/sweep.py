"""Sweep: a T × α grid over seeds, and a size sweep of students, each with scratch twins."""

from __future__ import annotations

import streamlit as st

from workbench import plots, recipes
from workbench.compare import comparison_rows
from workbench.jobs import active_runs
from workbench.models import ModelConfig
from workbench.recipes import describe_runs
from workbench.runs import FINISHED, new_run_id
from workbench.sweep import grid_configs, grid_table, scratch_cell, size_configs, size_table, sweep_progress
from workbench.train import TrainConfig, check_setup
from workbench.ui import common

KINDS = {"grid": "T × α grid", "size": "size sweep"}


def _reset_defaults(prefix: str) -> None:
    """A new data set brings its own epochs and label budget (never the previous data set's)."""
    d = recipes.dataset_defaults(st.session_state.get(f"{prefix}_dataset"))
    st.session_state[f"{prefix}_epochs"] = d.sweep_epochs
    st.session_state[f"{prefix}_labels"] = d.labels or 0


def _base(prefix: str) -> TrainConfig | None:
    ds_name = common.dataset_picker(f"{prefix}_dataset", on_change=_reset_defaults, args=(prefix,))
    ds = common.dataset(ds_name)
    choices = common.teacher_choices(ds_name)
    if not choices:
        st.warning(f"No teacher for {ds_name} yet.")
        return None
    teacher = choices[st.selectbox("Teacher", list(choices), key=f"{prefix}_teacher")]
    student = common.student_picker(f"{prefix}_student", ds.input_shape, ds.num_classes) if prefix == "swg" else \
        ModelConfig("mlp", depth=1, width=64)
    defaults = recipes.dataset_defaults(ds_name)
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Epochs", 1, 100, defaults.sweep_epochs, key=f"{prefix}_epochs")
    budget = c2.number_input("Visible labels (0 = all)", 0, len(ds.x_train), defaults.labels or 0,
                             step=100, key=f"{prefix}_labels")
    device = st.selectbox("Device", common.device_choices(), key=f"{prefix}_device") if not common.presenting() \
        else "auto"
    try:
        return TrainConfig(kind="kd", dataset=ds_name, teacher=teacher, model=student, epochs=int(epochs),
                           labels=int(budget) if budget else None, device=device)
    except ValueError as e:
        common.show_error("These settings cannot be trained", e)
        return None


def _submit(configs: list[TrainConfig], group: str) -> None:
    try:
        check_setup(next(c for c in configs if c.kind == "kd"), common.store())  # the one with the teacher
    except Exception as e:
        common.show_error("Cannot launch", e)
        return
    runner = common.runner()
    for c in configs:
        runner.submit(c.record("app: Sweep page"), prefix=c.kind)
    st.session_state["sw_group"] = group
    st.toast(f"Queued {len(configs)} runs as {group}.")


def _grid_form() -> None:
    base = _base("swg")
    temps = st.multiselect("Temperatures T", [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0], [1.0, 2.0, 4.0, 8.0],
                           key="swg_T")
    alphas = st.multiselect("α values (weight of the KD term)", [0.1, 0.25, 0.5, 0.75, 0.9, 1.0], [0.5, 0.9],
                            key="swg_alpha")
    seeds = st.slider("Seeds", 1, 5, 2, key="swg_seeds")
    n = len(temps) * len(alphas) * seeds + seeds
    st.caption(f"{n} runs: every (T, α, seed), plus one scratch twin per seed (α = 0).")
    if st.button("Launch sweep", type="primary", key="swg_launch", disabled=base is None or not temps or not alphas):
        group = new_run_id("sweep")
        _submit(grid_configs(base, sorted(temps), sorted(alphas), list(range(seeds)), group), group)


def _size_form() -> None:
    base = _base("sws")
    family = st.selectbox("Student family", ["mlp", "cnn", "resnet"], key="sws_family")
    if family == "resnet":
        depths = st.multiselect("Depths", [8, 14, 20, 32], [8, 14, 20], key="sws_depths")
        models = [ModelConfig("resnet", depth=d, width=16) for d in sorted(depths)]
    else:
        widths = st.multiselect("Widths", [4, 8, 16, 32, 64, 128, 256], [8, 16, 32, 64] if family == "mlp"
                                else [4, 8, 16], key="sws_widths")
        models = [ModelConfig(family, depth=1, width=w) for w in sorted(widths)]
    c1, c2, c3 = st.columns(3)
    T = c1.slider("T", 1.0, 20.0, 4.0, 0.5, key="sws_T")
    alpha = c2.slider("α", 0.0, 1.0, 0.9, 0.05, key="sws_alpha")
    seeds = c3.slider("Seeds", 1, 5, 2, key="sws_seeds")
    st.caption(f"{2 * len(models) * seeds} runs: each size trained from scratch and distilled, per seed.")
    if st.button("Launch size sweep", type="primary", key="sws_launch", disabled=base is None or not models):
        group = new_run_id("size")
        _submit(size_configs(base.with_params(temperature=T, alpha=alpha), models, list(range(seeds)), group), group)


def _results() -> None:
    store = common.store()
    groups = recipes.groups(store, ("sweep-", "size-"))
    if not groups:
        st.info("No sweeps yet. Set one up on the left.")
        return
    ss = st.session_state
    if ss.get("sw_group") in groups:
        ss["sw_pick"] = ss.pop("sw_group")
    group = st.selectbox("Sweep", groups[::-1], key="sw_pick")
    runs = store.list(group=group)
    prog = sweep_progress(runs)
    st.progress(prog["fraction"], text=f"{prog['done']} done, {prog['running']} running, {prog['queued']} queued, "
                                       f"{prog['failed'] + prog['diverged']} failed or diverged, "
                                       f"{prog['cancelled']} cancelled of {prog['total']}")
    active = [r for r in runs if r.state not in FINISHED]
    if active and st.button("Cancel the rest of this sweep", key="sw_cancel"):
        for r in active:
            common.runner().cancel(r.run_id)
    st.caption(describe_runs(runs))  # what the results came from: data, students, budget, labels, seeds
    for r in runs:
        state = r.state
        if state in ("failed", "unreadable"):
            st.error(f"{r.run_id} {state}: {r.status().get('error')}")
        elif state == "diverged":
            st.warning(f"{r.run_id} diverged: {r.status().get('error')}", icon=":material/warning:")
    finished = [r for r in runs if r.state == "done"]
    if not finished:
        st.caption("Results appear here as runs finish.")
        return
    if group.startswith("sweep-"):
        sc = scratch_cell(finished)
        if sc:
            spread = (f"± {100 * sc['test_acc_std']:.2f} points over {sc['seeds']} seeds" if sc["test_acc_std"]
                      is not None else "one seed: its spread is unknown")
            st.metric("Scratch baseline (α = 0)", f"{100 * sc['test_acc']:.2f}%", help=spread)
        cells = grid_table(finished)
        if cells:  # one above the other: side by side, their titles and colour bars did not fit a projector
            for value, key in (("test_acc", "sw_heat_acc"), ("kd_gain", "sw_heat_gain")):
                common.chart(plots.sweep_heatmap(cells, value), key)
        common.chart(plots.parallel_coordinates([r for r in comparison_rows(finished) if r["role"] == "kd"]),
                     "sw_parcoords")
    else:
        cells = size_table(finished)
        for x, key in (("params", "sw_size_params"), ("latency_ms", "sw_size_latency")):
            common.chart(plots.size_curves(cells, x), key)


def page() -> None:
    st.title("Sweep")
    st.markdown("Explore T and α over several seeds, or find what distillation buys at each student size. "
                "Each sweep is a queue of jobs; results fill in as runs finish.")
    left, right = st.columns([2, 3], gap="large")
    with left:
        kind = st.radio("Kind", list(KINDS), format_func=KINDS.get, horizontal=True, key="sw_kind")
        _grid_form() if kind == "grid" else _size_form()
    with right:
        polling = bool(active_runs(common.store()))
        st.fragment(_results, run_every=2.0 if polling else None)()
