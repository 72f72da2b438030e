"""Tokens per second of a language-model run's ONNX variants, timed side by side in one process.

    python benchmarks/variant_speed.py RUN_FOLDER [VARIANT ...]     # default: every variant with a model.onnx

A variant's metrics.json times it when it is made, which may be minutes apart and under other load. This script
times the variants in turns (round robin, the same threads, the same blocks), so that their ratios come from one run.
Prints a markdown table: tokens per second at batch 1 and batch 32 over blocks of the run's length, and each
variant's ratio to the first one.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from workbench.evaluate.metrics import device_name


def session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    run = Path(sys.argv[1])
    names = sys.argv[2:] or sorted(p.parent.name for p in (run / "variants").glob("*/model.onnx"))
    metrics = json.loads((run / "variants" / names[0] / "metrics.json").read_text())
    found = re.search(r"(\d+) tokens", str(metrics["profile"].get("sample")))  # "a block of 32 tokens"
    length = int(found.group(1)) if found else 128
    vocab = 1000
    sessions = {n: session(run / "variants" / n / "model.onnx") for n in names}
    rng = np.random.default_rng(0)
    one, batch = rng.integers(0, vocab, (1, length)), rng.integers(0, vocab, (32, length))
    times: dict[str, dict[str, list[float]]] = {n: {"b1": [], "b32": []} for n in names}
    for s in sessions.values():  # warm-up
        s.run(None, {"input_ids": one})
        s.run(None, {"input_ids": batch})
    for _ in range(5):  # rounds: every variant once per round, so that load spikes hit them alike
        for n, s in sessions.items():
            for key, x, reps in (("b1", one, 5), ("b32", batch, 1)):
                t0 = time.perf_counter()
                for _ in range(reps):
                    s.run(None, {"input_ids": x})
                times[n][key].append((time.perf_counter() - t0) / reps)
    print(f"{run.name}: blocks of {length} tokens, {torch.get_num_threads()} threads, onnxruntime {ort.__version__} "
          f"on {device_name('cpu')}, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| variant | size MB | tokens/s (b=1) | tokens/s (b=32) | b=1 vs first | b=32 vs first |")
    print("|---|---|---|---|---|---|")
    base = None
    for n in names:
        b1 = length / statistics.median(times[n]["b1"])
        b32 = 32 * length / statistics.median(times[n]["b32"])
        base = base or (b1, b32)
        size = json.loads((run / "variants" / n / "metrics.json").read_text())["size_mb"]
        print(f"| {n} | {size:,.1f} | {b1:,.0f} | {b32:,.0f} | {b1 / base[0]:.2f}× | {b32 / base[1]:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
