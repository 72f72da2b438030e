"""Throughput of a sweep with 1 and with 2 workers, on Ray, in one run (docs/scaling.md).

    python benchmarks/workers.py                  # about 3 minutes on 2 CPU cores
    python benchmarks/workers.py --workers 1 2 4  # on a larger machine

The same grid (`kdw sweep`'s: vanilla KD over T ∈ {1, 2, 4, 8} × α ∈ {0.5, 0.9} plus the scratch twin, one seed,
Fashion-MNIST with 1,000 labels, mlp(d=1, w=64), 3 epochs) runs once per worker count, each time into a fresh
run store (so every pass computes the teacher's logits once, as a user's first sweep does). Each pass is timed
from the first run created to the last run finished; the ratio is runs per minute with N workers over runs per
minute with 1, measured in the same process one after the other. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.experiments.search import connect, run_grid, shutdown
from workbench.experiments.sweep import grid_configs
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dataset", default="fashion-mnist")
    args = p.parse_args(argv)
    base = TrainConfig(kind="kd", dataset=args.dataset, model=ModelConfig("mlp", depth=1, width=64),
                       teacher=f"{args.dataset}-cnn", epochs=args.epochs, labels=1000, profile=False)
    configs = grid_configs(base, [1.0, 2.0, 4.0, 8.0], [0.5, 0.9], [0], "bench-workers")
    connect(num_cpus=os.cpu_count())
    rows = []
    try:
        for n in args.workers:
            root = Path(tempfile.mkdtemp(prefix=f"kdw-workers-{n}-"))
            try:
                store = RunStore(root)
                t0 = time.perf_counter()
                ids = run_grid(store, configs, "benchmarks/workers.py", workers=n)
                wall = time.perf_counter() - t0
                states = [store.get(i).state for i in ids]
                if any(s != "done" for s in states):
                    raise SystemExit(f"{n} workers: not every run finished: {states}")
                rows.append((n, len(ids), wall))
                print(f"{n} worker(s): {len(ids)} runs in {wall:.1f} s", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        shutdown()
    print(f"{len(configs)} runs ({args.dataset}, mlp(d=1, w=64), 1,000 labels, {args.epochs} epochs), "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}.\n")
    print("| workers | CPU threads each | wall time | runs per minute | throughput vs 1 worker |")
    print("|---|---|---|---|---|")
    base_rate = rows[0][1] / rows[0][2]
    for n, count, wall in rows:
        rate = count / wall
        print(f"| {n} | {max(1, (os.cpu_count() or 1) // n)} | {wall:.1f} s | {60 * rate:.1f} | "
              f"{rate / base_rate:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
