"""`kdw demo`: the shipped teacher distilled into a small student, next to its scratch twin.

The settings live here, in one place. They were chosen from the measurements in
docs/results.md: with every label visible, vanilla KD does not measurably beat a small
student trained from scratch on Fashion-MNIST; with a label budget, where the teacher
labels the rest of the training images (Hinton's transfer set), it does, by several
points. The demo shows that setting; `kdw distill` runs any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .losses import OBJECTIVE
from .models import ModelConfig


@dataclass(frozen=True)
class DemoSetting:
    dataset: str
    teacher: str  # a shipped teacher's name
    student: ModelConfig
    labels: int | None  # visible training labels (None = all)
    epochs: int
    temperature: float
    alpha: float
    batch_size: int = 128
    lr: float = 3e-3
    why: str = ""


DEMOS = {
    "fashion-mnist": DemoSetting(
        dataset="fashion-mnist", teacher="fashion-mnist-cnn", student=ModelConfig("mlp", depth=1, width=64),
        labels=1000, epochs=10, temperature=4.0, alpha=0.9,
        why="1,000 visible labels; the teacher's soft targets cover the other 53,000 training images"),
    "digits": DemoSetting(
        dataset="digits", teacher="digits-cnn", student=ModelConfig("mlp", depth=1, width=32),
        labels=100, epochs=20, temperature=4.0, alpha=0.9, batch_size=64,
        why="100 visible labels; the teacher's soft targets cover the other training images"),
}


def demo_configs(setting: DemoSetting, seed: int, group: str, device: str = "auto"):
    from .train import TrainConfig

    common = dict(dataset=setting.dataset, model=setting.student, teacher=setting.teacher, epochs=setting.epochs,
                  labels=setting.labels, batch_size=setting.batch_size, lr=setting.lr, seed=seed, group=group,
                  device=device, temperature=setting.temperature)
    return [TrainConfig(kind="scratch", alpha=0.0, **common), TrainConfig(kind="kd", alpha=setting.alpha, **common)]


def run_demo(fast: bool = False, seeds: int = 1, runs_dir=None, device: str = "auto") -> int:
    from .cli import _run_foreground
    from .compare import aggregate, comparison_rows, format_table
    from .data import DataError, load_dataset
    from .runs import RunStore, new_run_id

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
    print(f"KD Workbench demo on {setting.dataset}: teacher {setting.teacher} -> student {setting.student.label()}")
    print(f"  objective: {OBJECTIVE}")
    print(f"  with T = {setting.temperature:g}, α = {setting.alpha:g} (α = 0 is the scratch twin); "
          f"{setting.epochs} epochs, labels: {labels}")
    print(f"  setting: {setting.why}")
    print(f"  seeds: {seeds}; both arms get the same student, budget, optimiser and seeds\n")
    runs = []
    for seed in range(seeds):
        for config in demo_configs(setting, seed, group, device):
            runs.append(_run_foreground(store, config, config.kind))
    rows = comparison_rows(runs)
    print()
    print(format_table(aggregate(rows), aggregated=True) if seeds > 1 else format_table(rows))
    gains = [r["kd_gain"] for r in rows if r["role"] == "kd" and r["kd_gain"] is not None]
    if gains:
        g = sum(gains) / len(gains)
        print(f"\nKD gain over scratch: {100 * g:+.2f} points"
              + (" (one seed; `--seeds 3` gives mean ± std)" if seeds == 1 else ""))
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s. Runs are in {store.root} (group {group}):")
    print(f"  kdw compare --group {group} --runs-dir {store.root}")
    print("  Why no gain with every label? See docs/results.md.")
    return 0
