"""The sidebar every page shares: presentation mode, the objective, the job queue and where runs are stored."""

import os

import streamlit as st

from workbench.app import common
from workbench.core.objective import OBJECTIVE
from workbench.jobs.queue import (
    active_runs,
    restart_queue,
    set_workers,
    visible_gpus,
    worker_slots,
    workers_setting,
)


def _jobs() -> None:
    """The queue, refreshed every few seconds (a fragment), so the count never goes stale."""
    store = common.store()
    try:
        _, why = restart_queue(store)  # queued runs whose worker died start again on any page load
        active = active_runs(store)
    except Exception as e:
        common.show_error("The run store cannot be read", e)
        return
    running = [r for r in active if r.state == "running"]
    st.caption(f"Jobs: **{len(running)} running, {len(active) - len(running)} queued** · runs in `{store.root}`")
    if why:
        st.warning(f"The queue: {why}", icon=":material/warning:")
    try:
        slots = worker_slots(store, running)
    except Exception:
        return
    if len(slots) > 1 or any(w["run"] is not None for w in slots):
        lines = []
        for w in slots:
            run = w["run"]
            if run is None:
                lines.append(f"worker {w['slot'] + 1}: {'starting' if w['busy'] else 'idle'}")
            else:
                p = run.status().get("progress") or {}
                epoch = f" · epoch {p.get('epoch', 0)}/{p['epochs']}" if p.get("epochs") else ""
                lines.append(f"worker {w['slot'] + 1}: `{run.run_id}`{epoch}")
        st.caption("  \n".join(lines))


def _workers() -> None:
    """How many jobs the queue runs at once (kept in the run store, like `--workers N`)."""
    store = common.store()
    gpus = visible_gpus()
    most = len(gpus) or os.cpu_count() or 1
    try:
        current = min(workers_setting(store), most)
    except Exception:
        return
    n = st.number_input("Parallel jobs", 1, most, current, key="sb_workers",
                        help=f"How many queued runs train at once: up to one per GPU ({len(gpus)} here), or per CPU "
                             f"core ({os.cpu_count()} here) without a GPU. Sweeps queue their runs here too; a "
                             "search runs its trials on Ray.")
    if n != current:
        try:
            set_workers(store, int(n))
        except Exception as e:
            common.show_error("Cannot change the number of parallel jobs", e)


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### KD Workbench")
        st.caption("Knowledge distillation you can see, measure and compare.")
        ss = st.session_state
        if "presenting" not in ss and st.query_params.get("present") == "1":  # a reload keeps presentation mode
            ss["presenting"] = True
        st.toggle("Presentation mode", key="presenting",
                  help="For a projector: larger text and plots, and only the controls a class needs.")
        if ss.get("presenting"):
            st.query_params["present"] = "1"
        else:
            st.query_params.pop("present", None)
        st.code(OBJECTIVE, language=None, wrap_lines=True)
        st.caption("Vanilla KD. α = 0: scratch baseline · α = 1: pure distillation")
        try:  # every 3 s while something runs; an idle tab looks every 15 s (it costs the server ~5% of a core less)
            busy = bool(active_runs(common.store()))
        except Exception:
            busy = False
        st.fragment(_jobs, run_every=3.0 if busy else 15.0)()
        if not common.presenting():
            _workers()
