"""`kdw demo`: the shipped teacher distilled into a small student, next to its scratch twin.

The settings live in `workbench.experiments.recipes.DEMOS`. They were chosen from the measurements in
docs/results.md: with every label visible, vanilla KD does not measurably beat a small
student trained from scratch on Fashion-MNIST; with a label budget, where the teacher
labels the rest of the training images (Hinton's transfer set), it does, by several
points. The demo shows that setting; `kdw distill` runs any other.
"""

from __future__ import annotations

import time

from workbench.analysis.compare import aggregate, comparison_rows, format_table, terminal_width
from workbench.data.datasets import load_dataset
from workbench.errors import DataError
from workbench.experiments.recipes import DEMOS, demo_configs
from workbench.jobs.queue import run_foreground
from workbench.store.runs import RunStore, new_run_id
from workbench.train.teachers import load_teacher


def run_demo(fast: bool = False, seeds: int = 1, runs_dir=None, device: str = "auto", command: str = "",
             wide: bool = False) -> int:
    setting = DEMOS["digits" if fast else "fashion-mnist"]
    t0 = time.perf_counter()
    try:
        load_dataset(setting.dataset)
    except DataError as e:
        raise DataError(f"{e} Or run `kdw demo --fast`, on the digits that ship with scikit-learn.") from None
    store = RunStore(runs_dir)
    store.ensure_writable()
    group = new_run_id("demo")
    labels = "all" if setting.labels is None else f"{setting.labels:,}"
    configs = [demo_configs(setting, seed, group, device) for seed in range(seeds)]
    print(f"KD Workbench demo on {setting.dataset}: teacher {setting.teacher} -> student {setting.student.label()}")
    print(f"  distilled: {configs[0][1].objective()}")
    print(f"  scratch twin: {configs[0][0].objective()}")
    print(f"  {setting.epochs} epochs, labels: {labels}; {setting.why}")
    print(f"  seeds: {seeds}; both arms get the same student, budget, optimiser and seeds\n")
    teacher = load_teacher(setting.teacher, store, temperature=setting.temperature)  # loaded once for every run
    runs = [run_foreground(store, c, command=command, teacher=teacher) for pair in configs for c in pair]
    rows = comparison_rows(runs)
    print()
    width = None if wide else terminal_width()
    print(format_table(aggregate(rows), aggregated=True, wide=wide, width=width) if seeds > 1
          else format_table(rows, wide=wide, width=width))
    gains = [r["kd_gain"] for r in rows if r["role"] == "kd" and r["kd_gain"] is not None]
    if gains:
        g = sum(gains) / len(gains)
        print(f"\nKD gain over scratch: {100 * g:+.2f} points"
              + (" (one seed; `--seeds 3` gives mean ± std)" if seeds == 1 else ""))
        if g <= 0:
            print("  No gain here. With every label visible, a small student often gains nothing from the teacher; "
                  "docs/results.md shows when it does.")
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s. Runs are in {store.root} (group {group}):")
    print(f"  kdw compare --group {group} --runs-dir {store.root}")
    return 0
