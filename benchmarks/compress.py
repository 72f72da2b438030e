"""The compression table of docs/deployment.md: prune → heal → PTQ, QAT or QAD, over seeds.

    python benchmarks/compress.py                   # Fashion-MNIST, cnn(d=1, w=8) distilled from the shipped teacher
    python benchmarks/compress.py --fast            # digits, one seed, a minute, to try it

For each seed: distil the student (`kdw distill`'s code, the results page's recipe: 10 epochs, T = 4, α = 0.9),
then run `kdw compress RUN --steps prune:0.5,heal:kd,ptq:int8,qat:int8,qad:int8` (the same code). Every figure
is the artifact's, run in ONNX Runtime on the test set. Prints the markdown table (mean ± std over seeds, and the
paired differences QAD − PTQ and QAD − QAT) and writes benchmarks/out/compress.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from workbench.deploy.compress import CompressOptions, compress_run, parse_steps, plan
from workbench.evaluate.metrics import device_name
from workbench.jobs.queue import run_in_process
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig

STEPS = "prune:0.5,heal:kd,ptq:int8,qat:int8,qad:int8"
LABELS = {"onnx-fp32": "distilled student, ONNX fp32", "prune50": "pruned 50% (no healing)",
          "prune50+heal-kd": "pruned, healed with KD", "prune50+heal-kd+ptq-int8": "… + PTQ int8 (no training)",
          "prune50+heal-kd+qat-int8": "… + QAT int8 (cross-entropy)",
          "prune50+heal-kd+qad-int8": "… + QAD int8 (under the teacher)"}


def mean_std(values: list[float]) -> str:
    m = statistics.mean(values)
    return f"{m:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{m:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="digits, one seed")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each pipeline training step")
    p.add_argument("--out", default="benchmarks/out/compress.json")
    args = p.parse_args()
    seeds = [0] if args.fast else [int(s) for s in args.seeds.split(",")]
    dataset, teacher = ("digits", "digits-cnn") if args.fast else ("fashion-mnist", "fashion-mnist-cnn")
    store = RunStore(Path(tempfile.mkdtemp(prefix="kdw-compress-")) / "runs")
    steps = parse_steps(STEPS)
    names = [name for _, name in plan(steps)]
    per_seed: dict[int, dict[str, dict]] = {}
    started = time.time()
    for seed in seeds:
        cfg = TrainConfig(kind="kd", dataset=dataset, teacher=teacher, epochs=10, seed=seed, profile=False,
                          model=ModelConfig("cnn", depth=1, width=8), method_params={"temperature": 4.0, "alpha": 0.9})
        run = run_in_process(store, cfg, run_id=f"cnn8-s{seed}")
        print(f"seed {seed}: student {100 * run.summary['test']['accuracy']:.2f}%", file=sys.stderr, flush=True)
        results = compress_run(run, store, steps, CompressOptions(epochs=args.epochs),
                               lambda n, t, f: print(f"  {n}: {t}", file=sys.stderr, flush=True),
                               command=f"benchmarks/compress.py (seed {seed})")
        per_seed[seed] = {m["variant"]: m for m in results}
    rows = []
    for name in names:
        ms = [per_seed[s][name] for s in seeds]
        rows.append({"variant": name, "label": LABELS.get(name, name),
                     "acc": [100 * m["test"]["accuracy"] for m in ms],
                     "agreement": [100 * m["test"].get("agreement", float("nan")) for m in ms],
                     "size_mb": ms[0]["size_mb"], "params": ms[0]["params"],
                     "latency_ms": statistics.median(m["profile"]["latency_ms"] for m in ms),
                     "throughput": statistics.median(m["profile"]["throughput"] for m in ms),
                     "fake_quant_agreement": [m["fake_quant_check"]["top1_agreement"] for m in ms
                                              if m.get("fake_quant_check")],
                     "quantization": ms[0].get("quantization")})
    print(f"\n{dataset}, cnn(d=1, w=8) distilled from {teacher}, seeds {','.join(map(str, seeds))}, pipeline "
          f"{STEPS} with {args.epochs} epochs per training step; torch on {device_name('cpu')} "
          f"({platform.machine()}), {time.strftime('%Y-%m-%d')}, {(time.time() - started) / 60:.0f} min\n")
    print("| variant | test acc % | agreement with teacher % | params | size MB | latency ms (b=1) | samples/s (b=256) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {mean_std(r['acc'])} | {mean_std(r['agreement'])} | {r['params']:,} | "
              f"{r['size_mb']:.3f} | {r['latency_ms']:.3f} | {r['throughput']:,.0f} |")
    by = {r["variant"]: r for r in rows}
    ptq, qat, qad = (by[f"prune50+heal-kd+{k}-int8"]["acc"] for k in ("ptq", "qat", "qad"))
    healed = by["prune50+heal-kd"]["acc"]
    print(f"\npaired by seed (points): PTQ − healed fp32 {mean_std([a - b for a, b in zip(ptq, healed)])}; "
          f"QAT − PTQ {mean_std([a - b for a, b in zip(qat, ptq)])}; QAD − PTQ {mean_std([a - b for a, b in zip(qad, ptq)])}; "
          f"QAD − QAT {mean_std([a - b for a, b in zip(qad, qat)])}")
    print(f"int8 scheme: {by['prune50+heal-kd+ptq-int8']['quantization']}")
    for r in rows:
        if r["fake_quant_agreement"]:
            print(f"{r['label']}: trained = deployed on {min(r['fake_quant_agreement']):.2%}–"
                  f"{max(r['fake_quant_agreement']):.2%} of test samples")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "seeds": seeds, "dataset": dataset, "steps": STEPS,
                               "epochs": args.epochs, "cpu": device_name("cpu")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
