"""Regenerate the tables of docs/results.md: when does vanilla KD beat a student trained from scratch?

    python benchmarks/kd_results.py                 # every setting, 3 seeds (about 25 min on 2 CPU cores)
    python benchmarks/kd_results.py --only demo     # one setting
    python benchmarks/kd_results.py --seeds 5

Each setting trains a scratch student and a distilled student (same student, budget,
optimiser, augmentation and seeds) from the shipped Fashion-MNIST teacher, and prints a
Markdown table of mean ± std over seeds, the paired KD gain, and the verdict
(docs/conventions.md: a gain smaller than its spread is "no measurable gain"). Runs land in
benchmarks/out/runs (or --runs-dir); a rerun with the same folder starts afresh per setting.
Raw rows are written to benchmarks/out/kd_results.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from workbench.analysis.compare import aggregate, comparison_rows
from workbench.experiments.recipes import DEMOS, distill_configs
from workbench.jobs.queue import run_in_process
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig

FM = DEMOS["fashion-mnist"]
MLP64 = ModelConfig("mlp", depth=1, width=64)
MLP32 = ModelConfig("mlp", depth=1, width=32)
CNN8 = ModelConfig("cnn", depth=1, width=8)

# name -> (description, student, epochs, labels, T, alpha)
SETTINGS = {
    "demo": ("the demo's default: 1,000 labels, the teacher labels the rest", MLP64, FM.epochs, FM.labels,
             FM.temperature, FM.alpha),
    "mlp64-all": ("every label, MLP student", MLP64, 10, None, 4.0, 0.9),
    "mlp32-all": ("every label, smaller MLP student", MLP32, 10, None, 4.0, 0.9),
    "cnn8-all": ("every label, small CNN student", CNN8, 5, None, 4.0, 0.9),
    "cnn8-1000": ("1,000 labels, small CNN student", CNN8, 5, 1000, 4.0, 0.9),
    "mlp64-all-T2-a0.5": ("every label, MLP student, milder T and α", MLP64, 10, None, 2.0, 0.5),
    "mlp64-100": ("100 labels, MLP student", MLP64, 10, 100, 4.0, 0.9),
    "mlp64-5000": ("5,000 labels, MLP student", MLP64, 10, 5000, 4.0, 0.9),
}


def run_setting(store: RunStore, name: str, seeds: int) -> list[dict]:
    desc, student, epochs, labels, T, alpha = SETTINGS[name]
    runs = []
    for seed in range(seeds):
        kd = TrainConfig(kind="kd", dataset="fashion-mnist", model=student, teacher=FM.teacher, epochs=epochs,
                         labels=labels, method_params={"temperature": T, "alpha": alpha}, seed=seed,
                         group=f"results-{name}", lr=FM.lr, batch_size=FM.batch_size)
        for cfg in distill_configs(kd):  # the scratch twin, then the distilled run
            runs.append(run_in_process(store, cfg, prefix=f"{name}-{cfg.kind}", command="benchmarks/kd_results.py"))
    return aggregate(comparison_rows(runs))


def pm(v, s):
    return "—" if v is None else f"{100 * v:.2f} ± {100 * (s or 0):.2f}"


def markdown(name: str, agg: list[dict], seeds: int) -> str:
    desc, student, epochs, labels, T, alpha = SETTINGS[name]
    by_role = {r["role"]: r for r in agg}
    t, s, k = by_role.get("teacher"), by_role["scratch"], by_role["kd"]
    lab = "all 54,000" if labels is None else f"{labels:,}"
    return (f"| {name} | {student.label()} | {lab} | {epochs} | {T:g} | {alpha:g} | "
            f"{100 * t['test_acc']:.2f} | {pm(s['test_acc'], s['test_acc_std'])} | {pm(k['test_acc'], k['test_acc_std'])} | "
            f"{100 * k['kd_gain']:+.2f} ± {100 * (k['kd_gain_std'] or 0):.2f} | {k['verdict']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", nargs="*", choices=list(SETTINGS), default=None)
    p.add_argument("--runs-dir", default=str(Path(__file__).parent / "out" / "runs"))
    args = p.parse_args(argv)
    store = RunStore(args.runs_dir)
    store.ensure_writable()
    names = args.only or list(SETTINGS)
    header = ("| setting | student | labels | epochs | T | α | teacher % | scratch % | KD % | KD gain (pts) | verdict |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|")
    lines, raw = [], {}
    t0 = time.perf_counter()
    for name in names:
        agg = run_setting(store, name, args.seeds)
        raw[name] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in agg]
        lines.append(markdown(name, agg, args.seeds))
        print(f"[{time.perf_counter() - t0:6.0f} s] {lines[-1]}", file=sys.stderr, flush=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "kd_results.json").write_text(json.dumps(raw, indent=2, default=str))
    print(f"Test accuracy of the best-validation epoch, mean ± std over {args.seeds} seeds; KD gain = KD − scratch, "
          f"paired by seed. Fashion-MNIST, teacher {FM.teacher}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.\n")
    print(header)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
