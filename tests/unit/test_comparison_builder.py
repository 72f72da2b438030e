"""One comparison builder: the app's table, the notebook's and the report's have the same columns and cells."""

from __future__ import annotations

import pytest

from workbench.analysis.compare import build_comparison
from workbench.analysis.report import build_report
from workbench.store.runs import RunStore


def _summary(acc, latency, busy=0.0, model="mlp(d=1, w=8)"):
    return {"test": {"accuracy": acc, "confusion_matrix": [[3, 1], [0, 4]]}, "test_last": {"accuracy": acc},
            "model_label": model, "dataset": "wine",
            "profile": {"latency_ms": latency, "throughput": 1e5, "cpu_busy_elsewhere": busy, "size_mb": 0.01,
                        "params": 100, "device_name": "cpu", "threads": 2},
            "teacher": {"digest": "t1", "label": "mlp(d=2, w=64)", "spec": "tw", "test": {"accuracy": 0.97,
                        "confusion_matrix": [[4, 0], [0, 4]]},
                        "profile": {"latency_ms": 0.05, "throughput": 1e4, "cpu_busy_elsewhere": 0.0,
                                    "size_mb": 0.1, "params": 5000}}}


@pytest.fixture
def mixed_runs(tmp_path):
    """A scratch run and a vanilla-KD run of one student, and a DKD run of a wider one timed on a busy CPU."""
    store = RunStore(tmp_path / "runs")
    base = {"dataset": "wine", "model": {"family": "mlp", "depth": 1, "width": 8}, "epochs": 20, "seed": 0,
            "model_label": "mlp(d=1, w=8)"}
    made = []
    for kind, method, params, acc, busy in (
            ("scratch", "ce", {}, 0.90, 0.0),
            ("kd", "kd", {"temperature": 4.0, "alpha": 0.9}, 0.94, 0.0),
            ("kd", "dkd", {"temperature": 4.0, "beta": 8.0}, 0.95, 0.9)):
        extra = {"method_temperature": params.get("temperature"), "method_weight": params.get("alpha")}
        run = store.create({**base, "kind": kind, "method": method, "method_params": params, **extra})
        run.write_summary(_summary(acc, 0.01, busy, "mlp(d=1, w=16)" if busy else "mlp(d=1, w=8)"))
        run.set_status("done")
        made.append(run)
    return store, made


def test_the_notebook_table_has_the_apps_columns_and_the_method(mixed_runs):
    from workbench.notebook.widgets import comparison_table

    store, runs = mixed_runs
    c = build_comparison(runs[1:], store)  # the scratch twin joins from the store
    assert runs[0].run_id in {r.run_id for r in c.runs}
    names = [n for n, _ in c.columns]
    assert "method" in names  # two methods, and dkd has no α to tell it by
    frame = comparison_table([r.run_id for r in runs[1:]], store=store)
    assert list(frame.columns) == names
    assert frame.to_dict("records") == c.cells()
    assert {"kd", "dkd"} <= set(frame["method"])
    kd_row = next(r for r in c.rows if r.get("method") == "kd")
    assert kd_row["kd_gain"] == pytest.approx(0.04) and kd_row["alpha"] == 0.9


def test_busy_timings_are_greyed_the_same_way_everywhere(mixed_runs):
    store, runs = mixed_runs
    c = build_comparison(runs, store)
    busy = [i for i, r in enumerate(c.shown) if r.get("method") == "dkd"]
    assert busy and all((i, "latency ms") in c.greyed() for i in busy)
    assert c.warning and "unreliable" in c.warning
    html = build_report(runs, "t")
    assert "class='unreliable'" in html
    assert c.headline and c.headline in html.replace("&#x27;", "'")


def test_confusion_matrices_name_the_teacher_and_the_student(mixed_runs):
    _, runs = mixed_runs
    cms = build_comparison(runs).confusion_matrices()
    assert list(cms)[0] == "teacher mlp(d=2, w=64)" and len(cms) == 2


def test_the_twin_that_joins_is_a_finished_one_of_the_same_launch(tmp_path):
    """Issue 22, item 8: a cancelled scratch run of another launch never joins the comparison or its curves; one
    twin per distilled run, from its own launch where there is one, else the newest finished one."""
    import time

    store = RunStore(tmp_path / "runs")
    base = {"dataset": "wine", "model": {"family": "mlp", "depth": 1, "width": 8}, "epochs": 20, "seed": 0,
            "model_label": "mlp(d=1, w=8)"}

    def make(kind, group, state, acc=0.9):
        run = store.create({**base, "kind": kind, "group": group, "created": time.time(),
                            **({"method": "kd", "method_params": {"temperature": 4.0, "alpha": 0.9}} if kind == "kd"
                               else {"method": "ce"})})
        if state == "done":
            run.write_summary(_summary(acc, 0.01))
        run.set_status(state)
        time.sleep(0.01)
        return run

    old = make("scratch", "a", "done", 0.80)
    own = make("scratch", "b", "done", 0.85)
    make("scratch", "c", "cancelled")
    newer = make("scratch", "d", "done", 0.88)
    make("scratch", "e", "failed")
    kd = make("kd", "b", "done", 0.94)
    c = build_comparison([kd], store)
    assert [r.run_id for r in c.runs] == [kd.run_id, own.run_id]
    assert [s for s in c.rows if s["role"] == "kd"][0]["kd_gain"] == pytest.approx(0.09)
    lone = make("kd", "z", "done", 0.94)  # a launch without its own twin: the newest finished one
    assert [r.run_id for r in build_comparison([lone], store).runs] == [lone.run_id, newer.run_id]
    assert old.run_id not in {r.run_id for r in build_comparison([kd, lone], store).runs}
