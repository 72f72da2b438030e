"""The sidebar every page shares: presentation mode, the objective, the job queue and where runs are stored."""

import streamlit as st

from workbench.jobs import active_runs, ensure_worker_for_queue
from workbench.losses import OBJECTIVE
from workbench.ui import common


def _jobs() -> None:
    """The queue, refreshed every few seconds (a fragment), so the count never goes stale."""
    store = common.store()
    try:
        ensure_worker_for_queue(store)  # queued runs whose worker died start again on any page load
        active = active_runs(store)
    except Exception as e:
        common.show_error("The run store cannot be read", e)
        return
    running = [r for r in active if r.state == "running"]
    st.caption(f"Jobs: **{len(running)} running, {len(active) - len(running)} queued** · runs in `{store.root}`")


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### KD Workbench")
        st.caption("Knowledge distillation you can see, measure and compare.")
        st.toggle("Presentation mode", key="presenting",
                  help="For a projector: larger text and plots, and only the controls a class needs.")
        st.code(OBJECTIVE, language=None, wrap_lines=True)
        st.caption("Vanilla KD. α = 0: scratch baseline · α = 1: pure distillation")
        st.fragment(_jobs, run_every=3.0)()
