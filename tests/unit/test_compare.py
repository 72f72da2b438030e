"""The comparison table's honesty checks: CPU timings taken while the machine was busy are flagged."""

import os
import subprocess
import sys
import time

import pytest

from workbench.analysis.compare import format_table, timing_warning
from workbench.evaluate import BUSY_LIMIT
from workbench.evaluate.metrics import OtherCpuLoad


def _row(role, model, busy, seed=0):
    return {"role": role, "model": model, "seed": seed, "cpu_busy": busy, "test_acc": 0.9, "test_acc_last": 0.9,
            "latency_ms": 0.1, "throughput": 1000.0, "device": "cpu", "threads": 2}


def test_quiet_rows_carry_no_warning():
    rows = [_row("teacher", "cnn", 0.0, None), _row("kd", "mlp", BUSY_LIMIT - 0.01), _row("scratch", "mlp", None)]
    assert timing_warning(rows) is None
    assert "warning" not in format_table(rows)


def test_busy_rows_are_named_with_the_worst_load():
    rows = [_row("teacher", "cnn(d=1, w=32)", 0.9, None), _row("kd", "mlp(d=1, w=64)", 0.4), _row("scratch", "mlp", 0)]
    msg = timing_warning(rows)
    assert "teacher cnn(d=1, w=32)" in msg and "kd mlp(d=1, w=64) (seed 0)" in msg and "scratch" not in msg
    assert "90%" in msg and "kdw profile" in msg
    assert "* warning: Latency and throughput of" in format_table(rows)


@pytest.mark.slow  # it measures the machine's load: on a machine busy with other work, its margins are thin
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc/stat (Linux)")
def test_other_cpu_load_sees_a_busy_neighbour_and_not_itself():
    with OtherCpuLoad() as own:  # this process spinning is not "other" load
        t = time.perf_counter()
        while time.perf_counter() - t < 0.5:
            pass
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        time.sleep(0.5)
        with OtherCpuLoad() as other:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    cores = os.cpu_count() or 1
    assert other.fraction is not None and other.fraction > 0.6 / cores  # one busy core out of `cores`
    assert own.fraction is not None and own.fraction <= other.fraction + 0.05  # its own spinning is not counted


def test_a_language_model_no_better_than_counting_tokens_did_not_learn():
    """LanguageModelling.did_not_learn: above 0.9 × a unigram model's perplexity on the same test tokens, or more
    than 10 × the teacher's, with the optimiser steps it took and a hint; a student between them learnt."""
    from workbench.tasks.lm import LanguageModelling

    task = LanguageModelling()

    def summary(ppl, teacher=77.9):
        return {"test": {"perplexity": ppl}, "baselines": {"unigram_perplexity": 1200.0}, "steps": 9,
                "teacher": {"test": {"perplexity": teacher}}}
    why = task.did_not_learn(summary(18_664.0))
    assert why.startswith("its test perplexity 18,664.0 is no better than counting tokens (a unigram model")
    assert "it took 9 optimiser steps" in why and "at least 20 steps" in why
    assert "more than 10× its teacher's 77.9" in task.did_not_learn(summary(900.0))
    assert task.did_not_learn(summary(500.0)) is None
    assert task.did_not_learn(summary(900.0, teacher=None)) is None  # between the unigram and no teacher: learnt


def test_the_lm_headline_never_says_the_teacher_helps_two_useless_models():
    from workbench.analysis.compare import headline

    why = "its test perplexity 18,663.7 is no better than counting tokens (unigram 1,200.0): try more tokens"
    rows = [{"role": "teacher", "model": "smol", "test_ppl": 77.9},
            {"role": "kd", "model": "llama", "test_ppl": 18_663.7, "ppl_gain": 10_073.5, "did_not_learn": why,
             "_twin": ("a",)},
            {"role": "scratch", "model": "llama", "test_ppl": 28_737.2, "did_not_learn": why, "_twin": ("a",)}]
    text = headline(rows)
    assert text.startswith("No distilled student learnt") and "the teacher helps" not in text
    assert "no better than counting tokens" in text
    rows[1] = {**rows[1], "did_not_learn": None, "test_ppl": 300.0, "ppl_gain": 28_437.2}
    assert "which did not learn either: no comparison" in headline(rows) and "teacher helps" not in headline(rows)


def test_rows_of_one_language_model_architecture_show_one_timing():
    """Before, the same LLaMA architecture showed 0.907 and 8.252 ms/token while both rows said '5.1× faster*'."""
    from workbench.analysis.compare import unify_timings

    def row(run_id, ms, busy):
        return {"role": "kd", "run_id": run_id, "model": "llama(d=4, w=192)", "dataset": "fortunes",
                "input_shape": [128], "latency_ms": 32 * ms, "ms_per_token": ms, "tokens_per_s_b1": 1000 / ms,
                "tokens_per_s_b32": 9000 / ms, "cpu_busy": busy}
    a, b = unify_timings([row("a", 0.907, 0.0), row("b", 8.252, 0.9)])
    assert a["ms_per_token"] == b["ms_per_token"] == 0.907 and a["tokens_per_s_b32"] == b["tokens_per_s_b32"]
    assert b["timing_from"] == "a"
