"""Peak memory and process count of a burst of queued jobs, as a user's sweep causes it.

    python benchmarks/queue_burst.py              # 50 tiny digits jobs submitted at once
    python benchmarks/queue_burst.py --jobs 10

Submits N one-epoch digits runs through `LocalQueueRunner` as fast as it can (what the Sweep page
does on one click), then samples every KD Workbench process of this run store every 50 ms until the
queue is empty: how many workers and jobs were alive at once, and their summed resident memory.
Writes benchmarks/out/queue_burst.json; docs/reliability.md quotes the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil

from workbench.jobs.queue import LocalQueueRunner
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig


def ours(root: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "workbench" in cmd and root in " ".join(cmd):
            out.append(p)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50)
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="kdw-burst-")
    store = RunStore(root)
    config = TrainConfig(kind="kd", dataset="digits", model=ModelConfig("mlp", depth=1, width=8), epochs=1,
                         teacher="digits-cnn", profile=False)
    runner = LocalQueueRunner(store)
    t0 = time.perf_counter()
    ids = [runner.submit(config.record("benchmarks/queue_burst.py")) for _ in range(args.jobs)]
    submit_s = time.perf_counter() - t0
    peak_rss = peak_workers = peak_procs = 0
    while any(store.get(i).state in ("queued", "running") for i in ids):
        procs = ours(str(store.root))
        rss = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                pass
        workers = sum("worker" in (proc.info["cmdline"] or []) for proc in procs)
        peak_rss, peak_workers, peak_procs = max(peak_rss, rss), max(peak_workers, workers), max(peak_procs, len(procs))
        time.sleep(0.05)
    total_s = time.perf_counter() - t0
    states = [store.get(i).state for i in ids]
    result = {"jobs": args.jobs, "done": states.count("done"), "submit_s": round(submit_s, 2),
              "total_s": round(total_s, 1), "per_job_s": round(total_s / args.jobs, 2),
              "peak_workers": peak_workers, "peak_processes": peak_procs, "peak_rss_mb": round(peak_rss / 1e6)}
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "queue_burst.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["done"] == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
