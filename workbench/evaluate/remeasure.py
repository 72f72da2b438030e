"""Time finished runs again: the student's and its teacher's latency and throughput, written into the run's summary.

Timings taken while other processes were busy are unreliable (the comparison greys them); `remeasure` times every
named model again in one process, one after the other, on a machine that has gone quiet. `kdw profile RUN...` and
the Compare page's re-measure button (through `jobs.queue.start_profile`) call it.
"""

from __future__ import annotations

import json

from workbench.evaluate.metrics import model_profile
from workbench.models.zoo import load_checkpoint
from workbench.store.runs import Run, RunStore
from workbench.train.loop import teacher_profile
from workbench.train.teachers import load_teacher


def remeasure(run: Run, store: RunStore) -> dict:
    """Time a finished run's student (fp32, on the CPU) and its teacher again, and keep the figures in its summary.

    Returns {"student": profile, "teacher": profile or None, "teacher_error": why the teacher was not timed, or
    None}. A teacher that is gone keeps its old figures. ValueError for a run that has not finished."""
    if run.state != "done":
        raise ValueError(f"{run.run_id} is {run.state}: only finished runs have weights to time")
    summary = run.summary
    model, meta = load_checkpoint(run.weights_path("best"), allow_factory=True)
    summary["profile"] = model_profile(model.float(), tuple(json.loads(meta["kdw_input_shape"])), "cpu")
    out = {"student": summary["profile"], "teacher": None, "teacher_error": None}
    teacher = summary.get("teacher")
    if teacher:
        try:
            t = load_teacher(teacher["spec"], store, trust_factory=bool(run.config.get("trust_factory")))
            out["teacher"] = teacher["profile"] = teacher_profile(t, tuple(t.model.kdw_input_shape))
        except Exception as e:  # the teacher may be gone: keep its old figures
            out["teacher_error"] = str(e)
    run.write_summary(summary)
    return out
