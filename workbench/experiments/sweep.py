"""Sweeps: a T × α grid of vanilla KD (plus seeds), and a size sweep of students, each with scratch twins.

`grid_configs` and `size_configs` expand a base `TrainConfig` into the runs to queue;
`grid_table` and `size_table` fold the finished runs of a sweep into the cells the
heatmaps and curves show (mean ± std over seeds). A sweep is one `group` in the run
store, so a partial sweep shows what has finished and a page reload finds it again.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from workbench.analysis.compare import aggregate, comparison_rows, mean_std
from workbench.core.methods import method_info
from workbench.experiments.recipes import distill_configs, scratch_twin
from workbench.models.zoo import ModelConfig
from workbench.store.runs import Run
from workbench.train.loop import TrainConfig


def grid_configs(base: TrainConfig, temperatures, alphas, seeds, group: str) -> list[TrainConfig]:
    """Vanilla-KD runs for every (T, α, seed), and one scratch twin per seed (α = 0 is the twin)."""
    if not temperatures or not alphas or not seeds:
        raise ValueError("a sweep needs at least one temperature, one α and one seed")
    m = method_info(base.method)
    if not (m.temperature_key and m.weight_key):
        raise ValueError(f"a T × α grid sweeps a method with a temperature and a weight of its distillation term "
                         f"(kd), not {base.method}")
    base = replace(base, group=group)
    configs = [scratch_twin(replace(base, seed=s)) for s in seeds]
    for T, a, s in itertools.product(temperatures, alphas, seeds):
        if a == 0.0:
            continue  # that is the scratch twin
        configs.append(replace(base, seed=s).with_params(**{m.temperature_key: float(T), m.weight_key: float(a)}))
    return configs


def size_configs(base: TrainConfig, models: list[ModelConfig], seeds, group: str) -> list[TrainConfig]:
    """For each student size and seed: a scratch run and a distilled run with the same budget."""
    if not models or not seeds:
        raise ValueError("a size sweep needs at least one student and one seed")
    out = []
    for m, s in itertools.product(models, seeds):
        out += distill_configs(replace(base, model=m, seed=s, group=group))
    return out


def grid_table(runs: list[Run]) -> list[dict]:
    """One cell per (T, α): mean ± std over seeds of test accuracy and of the paired KD gain."""
    rows = comparison_rows(runs)
    cells = {}
    for r in rows:
        if r["role"] != "kd":
            continue
        cells.setdefault((r["temperature"], r["alpha"]), []).append(r)
    out = []
    for (T, a), members in sorted(cells.items()):
        acc, acc_sd = mean_std([m["test_acc"] for m in members])
        gain, gain_sd = mean_std([m["kd_gain"] for m in members])
        cell = {"temperature": T, "alpha": a, "seeds": len(members), "test_acc": acc, "test_acc_std": acc_sd,
                "kd_gain": gain, "kd_gain_std": gain_sd, "run_ids": [m["run_id"] for m in members]}
        if any(m.get("test_ppl") is not None for m in members):  # a language model: perplexity, lower is better
            cell["test_ppl"], cell["test_ppl_std"] = mean_std([m.get("test_ppl") for m in members])
            cell["ppl_gain"], cell["ppl_gain_std"] = mean_std([m.get("ppl_gain") for m in members])
        out.append(cell)
    return out


def scratch_cell(runs: list[Run]) -> dict | None:
    """Mean ± std of the scratch twins (the α = 0 row of the grid)."""
    rows = [r for r in comparison_rows(runs) if r["role"] == "scratch"]
    if not rows:
        return None
    acc, sd = mean_std([r["test_acc"] for r in rows])
    ppl, ppl_sd = mean_std([r.get("test_ppl") for r in rows])
    return {"test_acc": acc, "test_acc_std": sd, "test_ppl": ppl, "test_ppl_std": ppl_sd, "seeds": len(rows)}


def size_table(runs: list[Run]) -> list[dict]:
    """One cell per (role, student): mean ± std of accuracy, with params, size and latency."""
    return aggregate(comparison_rows(runs))


def sweep_progress(runs: list[Run]) -> dict:
    """Counts of a sweep's runs by state, and the fraction finished."""
    states = [r.state for r in runs]
    counts = {s: states.count(s) for s in ("queued", "running", "done", "failed", "cancelled", "diverged",
                                           "unreadable")}
    finished = sum(counts[s] for s in ("done", "failed", "cancelled", "diverged", "unreadable"))
    return {**counts, "total": len(runs), "fraction": finished / len(runs) if runs else 0.0}
