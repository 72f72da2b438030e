"""How long until the demo's distilled student is good? Wall times on this machine.

    python benchmarks/time_to_accuracy.py                 # CPU
    python benchmarks/time_to_accuracy.py --device cuda   # GPU

Measures, in one process (plus one `kdw demo` subprocess):

- the whole `kdw demo` (Fashion-MNIST, scratch + KD, profiling included) from a cold run
  store, as a user runs it the first time (Python start-up and imports included);
- a single KD run of the demo's student, end to end (setup, training, test, profile),
  with the teacher-logit cache cold and then warm;
- the time-to-accuracy: wall time from the start of the warm KD run until its validation
  accuracy first reaches the target (default: 1 point below the demo's final KD accuracy).

Prints a table and writes benchmarks/out/time_to_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench.data.datasets import load_dataset
from workbench.evaluate.metrics import device_name
from workbench.experiments.recipes import DEMOS, demo_configs
from workbench.store.runs import RunStore
from workbench.train.loop import pick_device, train
from workbench.train.teachers import _MEMORY


def timed_kd_run(config, store, dataset) -> dict:
    t0 = time.perf_counter()
    marks = []

    def on_event(e):
        if e["event"] == "epoch":
            marks.append((time.perf_counter() - t0, e["val_acc"], e["epoch"]))

    summary = train(config, store=store, dataset=dataset, callbacks=[on_event])
    return {"wall_s": time.perf_counter() - t0, "epochs": marks, "test_acc": summary["test"]["accuracy"],
            "train_s": summary["train_s"], "setup_s": summary["setup_s"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--target", type=float, default=None, help="validation accuracy to reach (default: final − 0.01)")
    p.add_argument("--skip-demo", action="store_true", help="skip the `kdw demo` subprocess")
    args = p.parse_args(argv)

    setting = DEMOS["fashion-mnist"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_demo:
            env = dict(os.environ, KDW_RUNS_DIR=str(Path(tmp) / "demo-runs"))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "workbench", "demo", "--device", args.device],
                                  env=env, capture_output=True, text=True)
            out["demo_wall_s"] = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"kdw demo failed:\n{proc.stderr[-2000:]}")
            print(f"  kdw demo (cold store): {out['demo_wall_s']:.1f} s", file=sys.stderr, flush=True)

        store = RunStore(Path(tmp) / "runs")
        dataset = load_dataset("fashion-mnist")
        kd = demo_configs(setting, seed=0, group="tta", device=args.device)[1]
        _MEMORY.clear()
        out["kd_cold"] = timed_kd_run(kd, store, dataset)  # computes and caches the teacher's logits
        print(f"  KD run, cold cache: {out['kd_cold']['wall_s']:.1f} s", file=sys.stderr, flush=True)
        _MEMORY.clear()  # the disk cache stays, as for a second run in a new process
        out["kd_warm"] = timed_kd_run(kd, store, dataset)
        print(f"  KD run, warm cache: {out['kd_warm']['wall_s']:.1f} s", file=sys.stderr, flush=True)

    final_val = out["kd_warm"]["epochs"][-1][1]
    target = args.target if args.target is not None else final_val - 0.01
    reached = next(((t, acc, ep) for t, acc, ep in out["kd_warm"]["epochs"] if acc >= target), None)
    out["target_val_acc"] = target
    out["time_to_target_s"] = reached[0] if reached else None
    out["epoch_reached"] = reached[2] if reached else None
    dev = pick_device(args.device)
    out["env"] = {"device": str(dev), "device_name": device_name(str(dev)), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "student": setting.student.label(), "teacher": setting.teacher,
                  "epochs": setting.epochs, "labels": setting.labels}

    e = out["env"]
    print(f"\nTime to accuracy on {e['device_name']} ({e['device']}, {e['threads']} threads): demo student "
          f"{e['student']}, teacher {e['teacher']}, {e['epochs']} epochs, {e['labels']} labels\n")
    print("| measurement | seconds |\n|---|---|")
    if "demo_wall_s" in out:
        print(f"| `kdw demo`, whole (cold store, 2 runs + profiling) | {out['demo_wall_s']:.1f} |")
    for key, name in (("kd_cold", "one KD run, cold teacher cache"), ("kd_warm", "one KD run, warm teacher cache")):
        r = out[key]
        print(f"| {name}: end to end | {r['wall_s']:.1f} |")
        print(f"| {name}: setup (data, teacher, logits) | {r['setup_s']:.1f} |")
        print(f"| {name}: training epochs only | {r['train_s']:.1f} |")
    if reached:
        print(f"| warm KD run reaches {100 * target:.2f}% val acc (epoch {reached[2]}) | {reached[0]:.1f} |")
    print(f"\nfinal KD test accuracy: {100 * out['kd_warm']['test_acc']:.2f}%")
    path = Path(__file__).parent / "out"
    path.mkdir(exist_ok=True)
    (path / "time_to_accuracy.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
