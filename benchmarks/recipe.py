"""The classic recipe, measured: a torchvision ResNet-50 teacher distilled into MobileNetV2, with scratch twins.

    python benchmarks/recipe.py                                # CPU defaults (see below); about 25 minutes
    python benchmarks/recipe.py --teacher-init resnet50.pth    # start the teacher from ImageNet weights
    python benchmarks/recipe.py --pretrained                   # torchvision's ImageNet weights (online)

Data: CIFAR-10 when its python batches are in $KDW_DATA_DIR or ./data; else the image folder given with
--data-dir; else (offline, here) a folder of Fashion-MNIST PNGs that this script writes, --per-class
training images per class and the whole test set, seen in colour. Sizes: 224 on a GPU; on a CPU the
teacher at 32 px and the students at 32 px and at a lower --low-size (the teacher's logits stay cached at
its own size: a compression lever of its own). The same steps as `kdw teacher ... --model
torchvision:resnet50 --init ...` and `kdw distill ... --model torchvision:mobilenet_v2`, through
workbench.experiments.recipes.ClassicRecipe. Writes benchmarks/out/recipe.json and prints the table of docs/recipes.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.analysis.compare import comparison_rows
from workbench.analysis.format import format_flops
from workbench.data.datasets import load_dataset
from workbench.errors import DataError
from workbench.experiments.recipes import ClassicRecipe
from workbench.jobs.queue import run_in_process
from workbench.store.runs import RunStore, new_run_id


def fashion_folder(out: Path, per_class: int) -> Path:
    """Fashion-MNIST as an image folder of PNGs: `per_class` training images per class, the whole test set."""
    from PIL import Image

    if (out / "test").is_dir():
        return out
    ds = load_dataset("fashion-mnist")
    rng = np.random.default_rng(0)
    for split, x, y in (("train", torch.cat([ds.x_train, ds.x_val]), torch.cat([ds.y_train, ds.y_val])),
                        ("test", ds.x_test, ds.y_test)):
        pixels = (ds.denormalise(x)[:, 0] * 255).round().byte().numpy()
        labels = y.numpy()
        for c, name in enumerate(ds.classes):
            folder = out / split / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == c)
            if split == "train":
                idx = rng.choice(idx, size=min(per_class, len(idx)), replace=False)
            for i in idx:
                Image.fromarray(pixels[i], mode="L").save(folder / f"{i}.png")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="an image folder (class subfolders, or train/ and test/)")
    p.add_argument("--per-class", type=int, default=1000, help="Fashion-MNIST fallback: training images per class")
    p.add_argument("--teacher-init", default=None, help="a ResNet-50 state dict to fine-tune (ImageNet weights)")
    p.add_argument("--pretrained", action="store_true", help="torchvision's ImageNet weights (online)")
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="teacher and student size (default: 224 GPU, 32 CPU)")
    p.add_argument("--low-size", type=int, default=24, help="a second student size, below the teacher's")
    p.add_argument("--runs-dir", default=str(Path(__file__).parent / "out" / "recipe-runs"))
    args = p.parse_args(argv)

    gpu = torch.cuda.is_available()
    size = args.size or (224 if gpu else 32)
    try:
        load_dataset("cifar10")
        dataset, data_dir, what = "cifar10", None, "CIFAR-10"
    except DataError:
        if args.data_dir:
            dataset, data_dir, what = "image-folder", args.data_dir, f"the image folder {args.data_dir}"
        else:
            folder = fashion_folder(Path(__file__).parent / "out" / f"fmnist-folder-{args.per_class}", args.per_class)
            dataset, data_dir = "image-folder", str(folder)
            what = f"Fashion-MNIST as PNGs ({args.per_class} training images per class, the 10,000 test images)"
    recipe = ClassicRecipe(dataset, data_dir, teacher_size=size, student_size=size,
                           teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs,
                           teacher_init=args.teacher_init, pretrained=args.pretrained)
    store = RunStore(args.runs_dir)
    group = new_run_id("recipe")
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", file=sys.stderr, flush=True)

    teacher = run_in_process(store, recipe.teacher_config(group), command="benchmarks/recipe.py")
    log(f"teacher {100 * teacher.summary['test']['accuracy']:.2f}%")
    runs = [teacher]
    for s in dict.fromkeys([size, args.low_size]):
        for cfg in recipe.student_configs(teacher.run_id, group, s):
            runs.append(run_in_process(store, cfg, command="benchmarks/recipe.py"))
            log(f"{cfg.kind} mobilenet_v2 at {s}px {100 * runs[-1].summary['test']['accuracy']:.2f}%")
    rows = [r for r in comparison_rows(runs) if r["run_id"] in {x.run_id for x in runs}]
    by_id = {r.run_id: r for r in runs}
    lines = ["| role | model | input | test acc % | KD gain (pts) | params | size MB | FLOPs | latency ms (b=1) | "
             "samples/s (b=256) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shape = by_id[r["run_id"]].summary.get("input_shape")
        gain = "—" if r.get("kd_gain") is None else f"{100 * r['kd_gain']:+.2f}"
        lines.append(f"| {'distilled' if r['role'] == 'kd' else r['role']} | {r['model']} | {shape[1]}×{shape[2]} | "
                     f"{100 * r['test_acc']:.2f} | {gain} | {r['params']:,} | {r['size_mb']:.2f} | "
                     f"{format_flops(r['flops'])} | {r['latency_ms']:.2f} | {r['throughput']:,.0f} |")
    init = teacher.summary.get("init")
    start = ("torchvision's ImageNet weights" if args.pretrained else
             f"{init['source']} (new layers: {', '.join(init['new_layers']) or 'none'})" if init else
             "random initialisation (no ImageNet weights on this offline machine)")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "recipe.json").write_text(json.dumps({"rows": [{k: v for k, v in r.items() if not k.startswith("_")}
                                                          for r in rows], "data": what, "teacher_start": start},
                                                indent=2, default=str))
    busy = max((r.get("cpu_busy") or 0) for r in rows)
    print(f"Data: {what}. Teacher: torchvision:resnet50 from {start}, {args.teacher_epochs} epochs at {size} px; "
          f"students: torchvision:mobilenet_v2, {args.student_epochs} epochs (T = 4, α = 0.9). One seed. "
          f"{'GPU ' + torch.cuda.get_device_name(0) if gpu else 'CPU'}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; other processes' CPU share at most {100 * busy:.0f}% while timing; "
          f"{(time.perf_counter() - t0) / 60:.0f} minutes.\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
