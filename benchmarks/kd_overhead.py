"""What does distillation cost on top of training the student alone? Time per training epoch of:

    (a) the student alone (scratch, α = 0);
    (b) distillation with the teacher's logits cached per view (our default);
    (c) distillation running the frozen teacher on every batch (the usual tutorial loop);
    (d) (c) written the usual way: a torch DataLoader over a torchvision-style Dataset with
        per-sample transforms (ToTensor, RandomHorizontalFlip, Normalize), batch 128.

    python benchmarks/kd_overhead.py                  # Fashion-MNIST, the demo's student, CPU
    python benchmarks/kd_overhead.py --device cuda    # the same on a GPU
    python benchmarks/kd_overhead.py --dataset digits --epochs 3   # a quick check

All four run in this one process, on the same data, student, teacher and batch size, with
warm-up: the first epoch of each is dropped and the median of the rest is reported. Training
epochs only: validation, checkpoints and profiling are outside the timed region. Prints a
table and writes benchmarks/out/kd_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench.core.losses import distillation_objective
from workbench.data.datasets import load_dataset
from workbench.evaluate.metrics import device_name
from workbench.experiments.recipes import DEMOS, scratch_twin
from workbench.models.zoo import build_model
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig, lr_at, make_optimizer, pick_device, train
from workbench.train.teachers import load_teacher


def epoch_times(config: TrainConfig, store: RunStore, dataset) -> list[float]:
    times = []
    train(config, store=store, dataset=dataset, callbacks=[lambda e: e["event"] == "epoch" and times.append(e["epoch_s"])])
    return times


class TutorialDataset(torch.utils.data.Dataset):
    """What a torchvision dataset does: uint8 images, a PIL-free per-sample transform chain."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div_(255).unsqueeze(0)  # ToTensor
        if torch.rand(()) < 0.5:  # RandomHorizontalFlip
            x = x.flip(-1)
        x = (x - self.mean) / self.std  # Normalize
        return x, int(self.labels[i])


def tutorial_epochs(config: TrainConfig, dataset, store: RunStore, epochs: int) -> list[float]:
    """(d): DataLoader + per-sample transforms, the teacher run on every batch, same student and optimiser."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    raw = (dataset.denormalise(dataset.x_train).mul(255).round().to(torch.uint8)[:, 0]).numpy()  # back to uint8
    ds = TutorialDataset(raw, dataset.y_train.numpy(), dataset.mean[0], dataset.std[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=True, drop_last=True)
    teacher = load_teacher(config.teacher, store).model.to(device)
    student = build_model(config.model, dataset.input_shape, dataset.num_classes).to(device)
    opt = make_optimizer(student, config)
    total = epochs * len(loader)
    step, times = 0, []
    for _ in range(epochs):
        student.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, config.lr)
            with torch.no_grad():
                t_logits = teacher(x)
            p = config.method_params
            loss = distillation_objective(student(x), t_logits, y, p["temperature"], p["alpha"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--epochs", type=int, default=4, help="epochs per variant; the first is warm-up")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs-dir", default=str(Path(__file__).parent / "out" / "runs"))
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds of a and b")
    p.add_argument("--variants", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    args = p.parse_args(argv)

    setting = DEMOS[args.dataset]
    store = RunStore(args.runs_dir)
    dataset = load_dataset(args.dataset)
    base = TrainConfig(kind="kd", dataset=args.dataset, model=setting.student, teacher=setting.teacher,
                       method_params={"temperature": setting.temperature, "alpha": setting.alpha}, epochs=args.epochs,
                       batch_size=setting.batch_size, lr=setting.lr, device=args.device, profile=False)
    # warm the teacher-logit cache once, as a sweep or a second run would find it
    train(TrainConfig(**{**base.to_dict(), "epochs": 1}), store=store, dataset=dataset)

    variants = {
        "a": ("student alone (scratch)", lambda: epoch_times(scratch_twin(base), store, dataset)),
        "b": ("KD, cached teacher logits", lambda: epoch_times(base, store, dataset)),
        "c": ("KD, teacher on every batch", lambda: epoch_times(TrainConfig(**{**base.to_dict(),
                                                                           "teacher_cache": False}), store, dataset)),
        "d": ("KD, DataLoader + per-sample transforms", lambda: tutorial_epochs(base, dataset, store, args.epochs)),
    }
    results = {}
    # the cheap variants run in several interleaved rounds (a b a b ...), so that a burst of load on a
    # shared machine lands on both; the first epoch of each run is warm-up. b/a is the median of the
    # per-round ratios, reported with their range.
    order = ["a", "b"] * args.rounds + ["c", "d"]
    round_ratio, last_a = [], None
    for key in order:
        if key not in args.variants:
            continue
        name, fn = variants[key]
        times = fn()
        med_run = statistics.median(times[1:] or times)
        entry = results.setdefault(key, {"name": name, "epochs_s": []})
        entry["epochs_s"] += times[1:] or times
        entry["median_s"] = statistics.median(entry["epochs_s"])
        if key == "a":
            last_a = med_run
        elif key == "b" and last_a:
            round_ratio.append(med_run / last_a)
        print(f"  ({key}) {name:42s} {med_run:7.3f} s/epoch", file=sys.stderr, flush=True)

    med = {k: v["median_s"] for k, v in results.items()}
    ratios = {f"{x}/{y}": med[x] / med[y] for x, y in (("b", "a"), ("c", "a"), ("d", "b"), ("d", "c"))
              if x in med and y in med}
    if round_ratio:
        ratios["b/a"] = statistics.median(round_ratio)
    dev = pick_device(args.device)
    env = {"device": str(dev), "device_name": device_name(str(dev)), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "dataset": args.dataset, "student": setting.student.label(),
           "teacher": setting.teacher, "batch_size": setting.batch_size, "epochs_timed": args.epochs - 1,
           "rounds": args.rounds}
    print(f"\nKD overhead on {env['device_name']} ({env['device']}, {env['threads']} threads), {args.dataset}, "
          f"student {env['student']}, teacher {env['teacher']}, batch {env['batch_size']}, "
          f"median over {env['epochs_timed']} epochs after 1 warm-up per run; a and b in {args.rounds} interleaved rounds\n")
    print("| variant | s / epoch |\n|---|---|")
    for k, v in results.items():
        print(f"| ({k}) {v['name']} | {v['median_s']:.3f} |")
    print("\n| ratio | value |\n|---|---|")
    for k, v in ratios.items():
        extra = f" (median of {len(round_ratio)} rounds, range {min(round_ratio):.2f}–{max(round_ratio):.2f})" \
            if k == "b/a" and round_ratio else ""
        print(f"| {k} | {v:.2f}{extra} |")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "kd_overhead.json").write_text(json.dumps({"env": env, "results": results, "ratios": ratios,
                                                          "b_over_a_rounds": round_ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
