"""Latency and throughput of every zoo model, and our latency helper checked against torch's Timer.

    python benchmarks/zoo_latency.py                     # CPU, Fashion-MNIST-sized inputs (1, 28, 28)
    python benchmarks/zoo_latency.py --device cuda
    python benchmarks/zoo_latency.py --shape 3 32 32     # CIFAR-sized inputs

For each model: `workbench.evaluate.metrics.latency_ms` (median of at least 30 batch-1 passes after
5 warm-ups) next to `torch.utils.benchmark.Timer(...).blocked_autorange()` 's median for the
same model and input, their ratio (must be within 10%), and throughput at batch 1 and 256.
The two are measured alternately, `--rounds` times each (default 5), and each column is the
best (lowest) of its rounds, as the `timeit` documentation advises: on a shared virtual
machine whose speed drifts by tens of percent from one second to the next, the lowest
reading is the least disturbed one for both tools, so their ratio compares the estimators
rather than the moments they ran at. Every round is kept in the JSON. Prints a table and
writes benchmarks/out/zoo_latency.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tb

from workbench.evaluate.metrics import device_name, latency_ms, throughput
from workbench.models.zoo import ModelConfig, build_model, count_params

ZOO = [ModelConfig("mlp", depth=1, width=64), ModelConfig("mlp", depth=2, width=256), ModelConfig("cnn", width=8),
       ModelConfig("cnn", depth=1, width=32), ModelConfig("resnet", depth=8, width=16),
       ModelConfig("resnet", depth=20, width=16), ModelConfig("mobilenet_v2", width=0.5), ModelConfig("resnet18")]


def timer_ms(model, x) -> float:
    t = tb.Timer(stmt="model(x)", globals={"model": model, "x": x}, num_threads=torch.get_num_threads())
    with torch.inference_mode():
        return 1e3 * t.blocked_autorange(min_run_time=0.5).median


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28])
    p.add_argument("--rounds", type=int, default=5, help="alternating measurements of each (default 5)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = tuple(args.shape)
    rows = []
    for cfg in ZOO:
        model = build_model(cfg, shape, 10).to(device).eval()
        x = torch.randn(1, *shape, device=device)
        ours_all, ref_all = [], []
        for _ in range(args.rounds):
            ours_all.append(latency_ms(model, shape, device))
            ref_all.append(timer_ms(model, x))
        ours, ref = min(ours_all), min(ref_all)
        row = {"model": cfg.label(), "params": count_params(model), "latency_ms": ours, "timer_ms": ref,
               "ratio": ours / ref, "ours_rounds": ours_all, "timer_rounds": ref_all, "throughput_b1": 1e3 / ours, "throughput_b256": throughput(model, shape)}
        rows.append(row)
        print(f"  {row['model']:22s} ours {ours:8.3f} ms  Timer {ref:8.3f} ms  ratio {row['ratio']:.3f}",
              file=sys.stderr, flush=True)
    env = {"device": str(device), "device_name": device_name(str(device)), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "input": list(shape), "rounds": args.rounds}
    print(f"\nZoo latency on {env['device_name']} ({env['device']}, {env['threads']} threads, fp32), input {shape}\n")
    print("| model | params | latency ms (ours) | latency ms (Timer) | ours / Timer | samples/s b=1 | samples/s b=256 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {r['latency_ms']:.3f} | {r['timer_ms']:.3f} | {r['ratio']:.3f} | "
              f"{r['throughput_b1']:,.0f} | {r['throughput_b256']:,.0f} |")
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(f"\nlargest disagreement with torch.utils.benchmark.Timer: {100 * worst:.1f}% "
          f"({'within' if worst <= 0.10 else 'OUTSIDE'} the 10% target)")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "zoo_latency.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
