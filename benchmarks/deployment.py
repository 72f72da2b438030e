"""The deployment table of docs/deployment.md: PyTorch fp32, ONNX Runtime fp32 and int8, and pruned-then-distilled.

    python benchmarks/deployment.py                 # Fashion-MNIST: the demo's two students and the shipped teacher
    python benchmarks/deployment.py --fast          # digits, a few seconds, to try it

Trains the demo's scratch and distilled students (seed 0; the recipe of `kdw demo`), exports each with
`kdw export RUN --format onnx --int8 --prune 0.5` (the same code), and exports the shipped teacher to
ONNX fp32 and int8 too. Every ONNX figure comes from running the artifact in ONNX Runtime on the test
set; every ratio compares two numbers measured in this one process, on the same threads.
Writes benchmarks/out/deployment.json and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.analysis.compare import artifact_label
from workbench.core.metrics import classification_metrics
from workbench.data.datasets import load_dataset
from workbench.deploy.export import ExportOptions, calibration_images, export_onnx, export_run, measure, quantize_int8
from workbench.evaluate.metrics import model_profile, predict_logits
from workbench.experiments.recipes import DEMOS, demo_configs
from workbench.jobs.queue import run_in_process
from workbench.store.runs import RunStore
from workbench.train.teachers import load_teacher


def teacher_rows(spec: str, dataset, store: RunStore, folder: Path) -> list[dict]:
    teacher = load_teacher(spec, store)
    model = teacher.model.float().eval()
    x, y = dataset.split("test")
    prof = model_profile(model, dataset.input_shape, "cpu")
    acc = classification_metrics(predict_logits(model, x), y, dataset.num_classes)["accuracy"]
    rows = [{"who": f"teacher {teacher.label}", "variant": None, "acc": acc, "size_mb": prof["size_mb"],
             "latency_ms": prof["latency_ms"], "throughput": prof["throughput"],
             "params": sum(p.numel() for p in model.parameters()), "busy": prof.get("cpu_busy_elsewhere")}]
    fp32 = export_onnx(model, dataset.input_shape, folder / "onnx-fp32")
    quantize_int8(fp32, folder / "onnx-int8", calibration_images(dataset, 512))
    for name in ("onnx-fp32", "onnx-int8"):
        m = measure(folder / name, model, dataset, None)
        rows.append({"who": f"teacher {teacher.label}", "variant": name, "acc": m["test"]["accuracy"],
                     "size_mb": m["size_mb"], "latency_ms": m["profile"]["latency_ms"],
                     "throughput": m["profile"]["throughput"], "params": m["params"],
                     "eager_latency_ms": m["pytorch_eager"]["latency_ms"],
                     "busy": m["profile"].get("cpu_busy_elsewhere")})
    return rows


def student_rows(run, store: RunStore, options: ExportOptions) -> list[dict]:
    role = "distilled" if run.config["kind"] == "kd" else "scratch"
    who = f"{role} {run.config['model_label']}"
    sm = run.summary
    rows = [{"who": who, "variant": None, "acc": sm["test"]["accuracy"], "size_mb": sm["profile"]["size_mb"],
             "latency_ms": sm["profile"]["latency_ms"], "throughput": sm["profile"]["throughput"],
             "params": sm["profile"]["params"], "busy": sm["profile"].get("cpu_busy_elsewhere")}]
    for m in export_run(run, store, options, command="benchmarks/deployment.py"):
        rows.append({"who": who, "variant": m["variant"], "acc": m["test"]["accuracy"], "size_mb": m["size_mb"],
                     "latency_ms": m["profile"]["latency_ms"], "throughput": m["profile"]["throughput"],
                     "params": m["params"], "eager_latency_ms": m["pytorch_eager"]["latency_ms"],
                     "quantization": m.get("quantization"), "finetune": m.get("finetune"),
                     "busy": m["profile"].get("cpu_busy_elsewhere")})
    return rows


def markdown(rows: list[dict]) -> str:
    out = ["| model | artifact | test acc % | Δ acc (pts) | params | size MB | size ratio | latency ms (b=1) | "
           "speed-up vs PyTorch (b=1) | samples/s (b=256) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    base = {}
    for r in rows:
        if r["variant"] is None:
            base[r["who"]] = r
        b = base[r["who"]]
        speed = b["latency_ms"] / r["latency_ms"]
        out.append(f"| {r['who']} | {artifact_label(r['variant'])} | {100 * r['acc']:.2f} | "
                   f"{100 * (r['acc'] - b['acc']):+.2f} | {r['params']:,} | {r['size_mb']:.3f} | "
                   f"{r['size_mb'] / b['size_mb']:.2f}× | {r['latency_ms']:.3f} | {speed:.2f}× | "
                   f"{r['throughput']:,.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="digits instead of Fashion-MNIST")
    p.add_argument("--prune", type=float, default=0.5)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--runs-dir", default=None, help="default: a fresh temporary folder")
    args = p.parse_args(argv)
    setting = DEMOS["digits" if args.fast else "fashion-mnist"]
    store = RunStore(args.runs_dir or tempfile.mkdtemp(prefix="kdw-deploy-"))
    dataset = load_dataset(setting.dataset)
    t0 = time.perf_counter()
    rows = teacher_rows(setting.teacher, dataset, store, store.root / "teacher-variants")
    options = ExportOptions(int8=True, prune=args.prune, finetune_epochs=args.finetune_epochs)
    for config in demo_configs(setting, seed=0, group="deployment"):
        run = run_in_process(store, config, command="benchmarks/deployment.py")
        rows += student_rows(run, store, options)
        print(f"[{time.perf_counter() - t0:5.0f} s] {config.kind} done", file=sys.stderr, flush=True)
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "deployment.json").write_text(json.dumps(rows, indent=2, default=str))
    busy = max((r.get("busy") or 0) for r in rows)
    print(f"{setting.dataset}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"others' CPU share at most {100 * busy:.0f}% during timing\n")
    print(markdown(rows))
    for r in rows:
        if r.get("finetune") and r["variant"].endswith("fp32"):
            f = r["finetune"]
            print(f"\n{r['who']} {r['variant']}: pruning {args.prune:g} left {f['params_after']:,} of "
                  f"{f['params_before']:,} params; test acc {100 * f['test_acc_before']:.2f}% right after pruning, "
                  f"{100 * f['test_acc_after']:.2f}% after {f['epochs']} epochs of {f['method']}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
