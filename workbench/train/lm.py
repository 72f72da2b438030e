"""Training a language model: token-level distillation from the teacher's cached top-k logits.

The same stages as `workbench.train.loop` (prepare, start, epochs, finish) and the same events, run folder and
summary keys where they mean the same thing, for next-token prediction:

- a sample is a block of ``seq_len + 1`` token ids; the student reads the first ``seq_len`` and every position
  is scored on the next token;
- the teacher runs once per block of the corpus, and its **top-k logits per token** are cached on disk
  (`teacher_topk`: values in fp16, ids in the smallest integer type that holds the vocabulary, memory-mapped),
  keyed by the teacher's weights, the corpus, the sequence length and k; every later run, sweep and search reads
  them from there. The cache also keeps the teacher's loss on the true next token, for its own perplexity;
- the objective is the method's `token_terms` (``kd``: (1 − α)·CE + α·T²·KL per next token, with the project's
  α convention; ``reverse_kl``, ``jsd`` and ``skew_kl`` likewise);
- the best epoch is the one with the lowest validation perplexity; the summary's ``test`` holds the test split's
  perplexity, the next-token top-1 agreement with the teacher and the mean KL to the teacher, and
  ``generations`` the greedy and sampled continuations of a fixed set of prompts.

A teacher run with ``epochs = 0`` evaluates a pretrained language model and registers it as a teacher.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core import losses
from workbench.data.lm import tokens_in
from workbench.evaluate.metrics import OtherCpuLoad, device_name
from workbench.models.zoo import checkpoint_bytes, count_params
from workbench.tasks import task_for
from workbench.train.steps import _emit, check_finite, lr_at, make_optimizer, pick_device, save_epoch_weights
from workbench.train.teachers import Teacher, load_teacher

DEFAULT_TOPK = 32
PROMPTS = ("Q: What is the best way to learn a new language?\nA:", "The computer", "Never trust a",
           "A man walked into a bar and", "The secret of happiness is")
GENERATED_TOKENS = 32
EVAL_BATCH = 8


@dataclass
class LMSession:
    config: object
    device: torch.device
    dataset: object
    teacher: Teacher | None
    method: object
    student: torch.nn.Module
    task: object
    setup_s: float = 0.0
    topk: int = DEFAULT_TOPK
    cache: dict = field(default_factory=dict)  # split -> (values, ids, nll) numpy arrays (memory-mapped)
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    step: int = 0
    epoch: int = 0
    train_s: float = 0.0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_ppl": math.inf, "epoch": 0, "state": None})

    @property
    def steps_per_epoch(self) -> int:
        return max(1, len(self.dataset.x_train) // min(self.config.batch_size, len(self.dataset.x_train)))

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch


def prepare(config, store=None, teacher: Teacher | None = None) -> LMSession:
    """Device, seed, the teacher, the corpus in its tokens, the method and the student; refuses what cannot work."""
    t0 = time.perf_counter()
    if config.nproc != 1 or config.nnodes:
        raise ValueError("language models train in one process here; --nproc and --nnodes are for classifiers")
    if config.init or config.compile:
        raise ValueError("--init and --compile are not supported for language models yet")
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    task = task_for(config.dataset, config.task)
    method = config.build_method()
    task.check_method(method)
    if config.teacher and teacher is None:
        teacher = load_teacher(config.teacher, store, temperature=method.temperature or 1.0,
                               trust_factory=config.trust_factory)
    dataset = task.load_for(config, teacher.model if teacher is not None else None)
    if teacher is not None:
        task.check_teacher(teacher.model, dataset, None, None)
        teacher.model.to(device)
    topk = config.topk or DEFAULT_TOPK
    if teacher is not None and topk > teacher.model.vocab_size:
        raise ValueError(f"topk {topk} is larger than the teacher's vocabulary of {teacher.model.vocab_size:,} tokens")
    torch.manual_seed(config.seed)  # the same init for a scratch student and its distilled twin
    shape = task.student_shape(dataset, config)
    if config.keep_layers is not None:
        student = task.student_from_teacher(teacher.model, config.keep_layers)
        student.kdw_config = replace(config.model, pretrained=False)
        student.kdw_input_shape, student.kdw_vocab = shape, dict(dataset.vocab)
        student.kdw_num_classes = student.vocab_size
    else:
        task.check_family(config.model.family)
        student = task.build_student(config.model, shape, dataset)
    if teacher is not None and teacher.model.vocab_size != student.vocab_size:
        raise ValueError(f"the student's vocabulary ({student.vocab_size:,} tokens) differs from the teacher's "
                         f"({teacher.model.vocab_size:,}); distilling across vocabularies is not supported")
    task.probe(student, shape)
    student = student.to(device)
    method.to(device)
    return LMSession(config, device, dataset, teacher, method, student, task, setup_s=time.perf_counter() - t0,
                     topk=topk)


# ---------------------------------------------------------------------------
# the teacher's top-k cache

def _ids_dtype(vocab: int):
    return np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32


def topk_key(teacher: Teacher, dataset, split: str, k: int) -> str:
    blocks = getattr(dataset, f"x_{split}")
    h = hashlib.sha256(f"{teacher.digest}|{dataset.fingerprint}|{split}|{tuple(blocks.shape)}|{k}".encode())
    h.update(blocks.numpy().tobytes())
    return h.hexdigest()[:24]


def teacher_topk(teacher: Teacher, dataset, split: str, k: int, cache_dir, device, progress=None,
                 batch: int = EVAL_BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values (N, L, k) fp16, ids (N, L, k), nll (N, L) fp32, None for the train split) of the teacher on a split's
    blocks, from the disk cache (memory-mapped) or computed once into it. `progress(done, total)` is called as
    blocks are done."""
    blocks = getattr(dataset, f"x_{split}")
    n, L = blocks.shape[0], blocks.shape[1] - 1
    vocab = teacher.model.vocab_size
    with_nll = split != "train"  # the teacher's own loss is only ever read on held-out blocks
    folder = None
    if cache_dir is not None:
        folder = cache_dir / "teacher-topk" / topk_key(teacher, dataset, split, k)
        if (folder / "meta.json").is_file():
            try:
                arrays = _open_cache(folder, with_nll)
                if arrays[0].shape == (n, L, k) and (arrays[2] is None or arrays[2].shape == (n, L)):
                    return arrays
            except (OSError, ValueError):
                pass
    if folder is not None:
        tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        open_ = np.lib.format.open_memmap
        values = open_(tmp / "values.npy", mode="w+", dtype=np.float16, shape=(n, L, k))
        ids = open_(tmp / "ids.npy", mode="w+", dtype=_ids_dtype(vocab), shape=(n, L, k))
        nll = open_(tmp / "nll.npy", mode="w+", dtype=np.float32, shape=(n, L)) if with_nll else None
    else:
        values = np.zeros((n, L, k), np.float16)
        ids = np.zeros((n, L, k), _ids_dtype(vocab))
        nll = np.zeros((n, L), np.float32) if with_nll else None
    model = teacher.model.eval()
    if progress is not None:
        progress(0, n)  # before the first batch: what is about to take the time
    with torch.inference_mode():
        for i in range(0, n, batch):
            x = blocks[i:i + batch].to(device)
            z = model(x[:, :-1]).float()  # (b, L, V)
            v, j = z.topk(k, dim=-1)
            values[i:i + batch] = v.half().cpu().numpy()
            ids[i:i + batch] = j.cpu().numpy().astype(ids.dtype)
            if nll is not None:
                nll[i:i + batch] = F.cross_entropy(z.transpose(1, 2), x[:, 1:], reduction="none").cpu().numpy()
            if progress is not None:
                progress(min(i + batch, n), n)
    if folder is None:
        return values, ids, nll
    for a in (values, ids, nll):
        if a is not None:
            a.flush()
    del values, ids, nll
    (tmp / "meta.json").write_text(json.dumps({"teacher": teacher.spec, "digest": teacher.digest, "split": split,
                                               "blocks": n, "seq_len": L, "k": k, "vocab": vocab}))
    if folder.exists():  # another run filled it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return _open_cache(folder, with_nll)


def _open_cache(folder, with_nll: bool):
    """(values, ids, nll or None) of a cache folder, memory-mapped."""
    names = ("values", "ids", "nll") if with_nll else ("values", "ids")
    arrays = tuple(np.load(folder / f"{name}.npy", mmap_mode="r") for name in names)
    return arrays if with_nll else (*arrays, None)


def topk_bytes(n_tokens: int, k: int, vocab: int, with_nll: bool = False) -> int:
    """Bytes of the top-k cache's arrays for `n_tokens` tokens: values fp16 and ids (k each), and on held-out
    blocks the teacher's nll (fp32, one per token)."""
    return n_tokens * (k * (2 + np.dtype(_ids_dtype(vocab)).itemsize) + (4 if with_nll else 0))


def _batch_topk(cache, idx: np.ndarray, device):
    values, ids, _ = cache
    v = torch.from_numpy(np.ascontiguousarray(values[idx])).to(device).float()
    j = torch.from_numpy(np.ascontiguousarray(ids[idx]).astype(np.int64)).to(device)
    return v, j


# ---------------------------------------------------------------------------
# the stages

SAMPLE_PROMPT_TOKENS = 16  # sequence-level KD: the teacher continues each training block from its first tokens


def teacher_samples(teacher: Teacher, dataset, cache_dir, device, seed: int = 0, progress=None,
                    batch: int = EVAL_BATCH) -> torch.Tensor:
    """Sequence-level KD's training text (Kim & Rush 2016): for each training block, its first
    `SAMPLE_PROMPT_TOKENS` tokens continued by the teacher to the block's full length, sampled at T = 1 from its top 50
    (seeded), end-of-text tokens included as the teacher writes them (it goes on with a new text). (N, L + 1) blocks
    like `dataset.x_train`, cached on disk, keyed by the teacher's weights, the blocks and the seed."""
    x = dataset.x_train
    n, length = x.shape
    P = min(SAMPLE_PROMPT_TOKENS, length - 1)
    path = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{teacher.digest}|{dataset.fingerprint}|{n}|{length}|{P}|{seed}".encode()).hexdigest()
        path = cache_dir / "teacher-samples" / f"{key[:24]}.npy"
        if path.is_file():
            try:
                return torch.from_numpy(np.load(path)).long()
            except (OSError, ValueError):
                pass
    hf = teacher.model.hf.eval()
    config = copy.deepcopy(hf.generation_config)
    config.eos_token_id, config.pad_token_id = None, int(dataset.vocab.get("eos_id", dataset.vocab["pad_id"]))
    config.do_sample, config.top_k, config.top_p, config.temperature = True, 50, None, 1.0
    config.max_new_tokens = config.min_new_tokens = length - P
    out = torch.empty_like(x)
    if progress is not None:
        progress(0, n)
    with torch.inference_mode():
        for i in range(0, n, batch):
            prompt = x[i:i + batch, :P].to(device)
            torch.manual_seed(seed + i)
            g = hf.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=config)
            out[i:i + batch] = g[:, :length].cpu()
            if progress is not None:
                progress(min(i + batch, n), n)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npy")
        np.save(tmp, out.numpy().astype(np.int32))
        os.replace(tmp, path)
    return out


def _reading_rate(store, spec: str) -> float | None:
    """The tokens per second a teacher run read its test blocks at (what caching its top k costs), if it says."""
    try:
        if store is None or not store.exists(spec):
            return None
        rate = (store.get(spec).summary.get("test") or {}).get("tokens_per_s")
        return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    except Exception:
        return None


def start(s: LMSession, store=None, callbacks=()) -> None:
    t0 = time.perf_counter()
    cache_dir = store.cache_dir if store is not None else None
    if getattr(s.method, "teacher_samples", False) and s.config.epochs > 0:
        t_stage, n_blocks = time.perf_counter(), len(s.dataset.x_train)
        text = (f"the teacher writes its own text for sequence-level KD: {n_blocks} blocks of "
                f"{s.dataset.x_train.shape[1]:,} tokens (first run only, then cached)")

        def wrote(n, total):
            spent, frac = time.perf_counter() - t_stage, n / max(1, total)
            _emit(callbacks, {"event": "stage", "text": text, "fraction": frac,
                              "eta_s": spent / frac * (1 - frac) if frac > 0 else None})
        samples = teacher_samples(s.teacher, s.dataset, cache_dir, s.device, s.config.seed, wrote)
        fp = hashlib.sha256(f"{s.dataset.fingerprint}|teacher-samples|{s.teacher.digest}|{s.config.seed}".encode())
        s.dataset = replace(s.dataset, x_train=samples, fingerprint=fp.hexdigest()[:16])
    if s.teacher is not None:
        uses_cache = s.method.teacher_input != "none" and getattr(s.method, "uses_token_cache", True)
        splits = (["train"] if uses_cache and s.config.epochs > 0 else []) + ["val", "test"]
        sizes = {sp: len(getattr(s.dataset, f"x_{sp}")) for sp in splits}
        total, done = sum(sizes.values()), 0
        t_stage = time.perf_counter()
        n_tok = total * int(s.dataset.vocab["seq_len"])
        rate = _reading_rate(store, s.teacher.spec)
        text = (f"caching the teacher's top-{s.topk} logits of {n_tok:,} tokens ({', '.join(splits)}"
                + (f"; about {n_tok / rate:,.0f} s at the {rate:,.0f} tokens/s its run read at" if rate else "")
                + "; first run only, every later run reads them)")
        for sp in splits:
            def report(n, _, done=done):
                frac = (done + n) / total
                spent = time.perf_counter() - t_stage
                _emit(callbacks, {"event": "stage", "text": text, "fraction": frac,
                                  "eta_s": spent / frac * (1 - frac) if frac > 0 else None})
            s.cache[sp] = teacher_topk(s.teacher, s.dataset, sp, s.topk, cache_dir, s.device, report)
            done += sizes[sp]
    if s.config.epochs > 0:
        s.optimizer = make_optimizer(s.student, s.config, extra=s.method)
    s.generator = torch.Generator().manual_seed(s.config.seed)
    s.setup_s += time.perf_counter() - t0


def train_epoch(s: LMSession, epoch: int, callbacks=()) -> dict:
    s.student.train()
    t0 = time.perf_counter()
    x_all = s.dataset.x_train
    b = min(s.config.batch_size, len(x_all))
    order = torch.randperm(len(x_all), generator=s.generator)
    sums: dict[str, float] = {}
    distil = s.method.teacher_input != "none" and "train" in s.cache
    for step in range(s.steps_per_epoch):
        idx = order[step * b:(step + 1) * b]
        for g in s.optimizer.param_groups:
            g["lr"] = lr_at(s.step, s.total_steps, s.config.lr)
        x = x_all[idx].to(s.device)
        logits = s.student(x[:, :-1]).float()  # (B, L, V)
        V = logits.shape[-1]
        targets = x[:, 1:].reshape(-1)
        values = ids = None
        if distil:
            values, ids = _batch_topk(s.cache["train"], idx.numpy(), s.device)
            values, ids = values.reshape(-1, values.shape[-1]), ids.reshape(-1, ids.shape[-1])
        terms = s.method.token_terms(logits.reshape(-1, V), targets, values, ids)
        loss = sum(terms.values())
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s.student.parameters(), 1.0)
        s.optimizer.step()
        s.step += 1
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        _emit(callbacks, {"event": "step", "step": s.step, "total_steps": s.total_steps, "epoch": epoch})
    epoch_s = time.perf_counter() - t0
    s.train_s += epoch_s
    means = {k: v / s.steps_per_epoch for k, v in sums.items()}
    return {"epoch": epoch, "step": s.step, "lr": s.optimizer.param_groups[0]["lr"], "train_loss": sum(means.values()),
            **{f"loss_{k}": v for k, v in means.items()}, "epoch_s": epoch_s, "train_s": s.train_s}


def lm_metrics(model, blocks: torch.Tensor, cache=None, device="cpu", batch: int = EVAL_BATCH) -> dict:
    """Perplexity of `model` on `blocks`, and, with the teacher's top-k `cache` of them, the next-token top-1
    agreement with the teacher, the mean KL(p̃_t ‖ q_s) at T = 1 over its top k, and the teacher's own perplexity."""
    model.eval()
    nll_sum, n_tok, agree, kl_sum = 0.0, 0, 0, 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(blocks), batch):
            x = blocks[i:i + batch].to(device)
            z = model(x[:, :-1]).float()
            V = z.shape[-1]
            t = x[:, 1:].reshape(-1)
            flat = z.reshape(-1, V)
            nll_sum += float(F.cross_entropy(flat, t, reduction="sum"))
            n_tok += t.numel()
            if cache is not None:
                v, j = _batch_topk(cache, np.arange(i, min(i + batch, len(blocks))), device)
                v, j = v.reshape(-1, v.shape[-1]), j.reshape(-1, j.shape[-1])
                agree += int((flat.argmax(-1) == j[:, 0]).sum())
                kl_sum += float(losses.token_forward_kl(flat, v, j, t, 1.0)) * t.numel()
    out = {"nll": nll_sum / n_tok, "perplexity": math.exp(min(nll_sum / n_tok, 50.0)), "tokens": n_tok,
           "tokens_per_s": n_tok / max(time.perf_counter() - t0, 1e-9)}  # the rate a top-k cache of it is made at
    if cache is not None:
        out["agreement"] = agree / n_tok
        out["kl_to_teacher"] = kl_sum / n_tok
        t_nll = float(np.asarray(cache[2], dtype=np.float64).mean())
        out["teacher_perplexity"] = math.exp(min(t_nll, 50.0))
    return out


def evaluate(s: LMSession) -> dict:
    m = lm_metrics(s.student, s.dataset.x_val, s.cache.get("val"), s.device)
    out = {"val_loss": m["nll"], "val_ppl": m["perplexity"]}
    if "agreement" in m:
        out["val_agreement"], out["val_kl"] = m["agreement"], m["kl_to_teacher"]
    return out


def generations(model, tokenizer_folder: str, device, prompts=PROMPTS, new_tokens: int = GENERATED_TOKENS,
                seed: int = 0) -> list[dict]:
    """Greedy and sampled (T = 1, top 50, seeded) continuations of `prompts` by `model` (a models.lm.CausalLM)."""
    from workbench.data.text import load_tokenizer

    tok, _ = load_tokenizer(tokenizer_folder)
    out = []
    model.eval()
    for n, prompt in enumerate(prompts):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=device)
        if ids.shape[1] + new_tokens > model.max_positions:
            raise ValueError(f"the prompt is {ids.shape[1]} tokens; with {new_tokens} new ones it is longer than the "
                             f"model's context of {model.max_positions}")
        row = {"prompt": prompt}
        eos = tok.eos_token_id
        with torch.inference_mode():
            for mode in ("greedy", "sampled"):
                torch.manual_seed(seed + n)
                g = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                      do_sample=mode == "sampled", top_k=50 if mode == "sampled" else None,
                                      temperature=1.0 if mode == "sampled" else None, top_p=None,
                                      pad_token_id=eos, eos_token_id=eos)
                row[mode] = tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True)
        out.append(row)
    return out


def lm_profile(model, dataset, device="cpu", timing: bool = True) -> dict:
    """Params, size and tokens per second at batch 1 and 32 over blocks of `timed_sample`'s length, on the CPU."""
    task = task_for(dataset.name, "language-modelling")
    model = model.to(device).eval()
    out = {"params": count_params(model), "size_bytes": len(checkpoint_bytes(model)), "device": str(device),
           "device_name": device_name(str(device)), "dtype": "float32", "threads": torch.get_num_threads(),
           "sample": task.timed_sample(dataset)}
    out["size_mb"] = out["size_bytes"] / 1e6
    if not timing:
        return out
    with OtherCpuLoad() as load, torch.inference_mode():
        for batch in (1, 32):
            x = task.timing_batch(model, dataset, batch).to(device)
            model(x)  # warm-up
            reps, t0 = 0, time.perf_counter()
            while reps < 3 and (reps == 0 or time.perf_counter() - t0 < 2.0):
                model(x)
                reps += 1
            dt = (time.perf_counter() - t0) / reps
            if batch == 1:
                out["latency_ms"] = 1000 * dt
                out["ms_per_token"] = 1000 * dt / x.shape[1]
            out[f"tokens_per_s_b{batch}"] = x.numel() / dt
    out["throughput"] = out["tokens_per_s_b32"] / x.shape[1]  # blocks per second at batch 32
    if load.fraction is not None:
        out["cpu_busy_elsewhere"] = round(load.fraction, 3)
    return out


def finish(s: LMSession, run=None, profile: bool = True) -> dict:
    student, ds = s.student, s.dataset
    last_state = copy.deepcopy(student.state_dict())
    last_test = lm_metrics(student, ds.x_test, s.cache.get("test"), s.device)
    if s.best["state"] is not None and s.best["epoch"] != s.epoch:
        student.load_state_dict(s.best["state"])
        best_test = lm_metrics(student, ds.x_test, s.cache.get("test"), s.device)
    else:
        best_test = last_test
    method = s.method
    summary = {
        "kind": s.config.kind, "task": s.task.name, "model": s.config.model.to_dict(),
        "model_label": s.config.model.label(), "dataset": ds.name, "best_epoch": s.best["epoch"],
        "epochs_done": len(s.history), "val_ppl_best": s.best["val_ppl"], "test": best_test, "test_last": last_test,
        "train_s": s.train_s, "setup_s": s.setup_s, "device": str(s.device), "input_shape": [int(ds.vocab["seq_len"])],
        "corpus": {"train_tokens": tokens_in(ds, "train"), "val_tokens": tokens_in(ds, "val"),
                   "test_tokens": tokens_in(ds, "test"),
                   "documents": ds.vocab.get("documents"), "corpus_tokens": ds.vocab.get("total_tokens"),
                   "seq_len": int(ds.vocab["seq_len"]), "topk": s.topk if s.teacher is not None else None,
                   "train_text": "the teacher's samples (sequence-level KD)"
                   if getattr(method, "teacher_samples", False) else "the corpus"},
        "method": {"name": method.name, "params": method.p, "objective": method.objective_text(),
                   "title": method.title, "citation": method.citation},
    }
    try:
        summary["generations"] = generations(student, ds.vocab["tokenizer"], s.device)
    except Exception as e:  # a model that cannot generate still has its numbers
        summary["generations_error"] = f"{type(e).__name__}: {e}"
    if profile:
        summary["profile"] = lm_profile(copy.deepcopy(student).float(), ds, "cpu")
    if s.teacher is not None:
        t = s.teacher
        summary["teacher"] = {"spec": t.spec, "source": t.source, "label": t.label, "digest": t.digest,
                              "model": t.config.to_dict(), "params": sum(p.numel() for p in t.model.parameters()),
                              "test": {"perplexity": best_test.get("teacher_perplexity"),
                                       "nll": math.log(best_test["teacher_perplexity"])
                                       if best_test.get("teacher_perplexity") else None}}
        if profile:
            summary["teacher"]["profile"] = lm_profile(copy.deepcopy(t.model).float(), ds, "cpu")
    student.load_state_dict(last_state)
    if run is not None:
        run.write_summary(summary)
    if s.best["state"] is not None:
        student.load_state_dict(s.best["state"])
    return summary


def train(config, *, run=None, callbacks=(), store=None, teacher: Teacher | None = None,
          session: LMSession | None = None, resume=None) -> dict:
    """Train (or, with 0 epochs, evaluate) a language model to the end; returns its summary."""
    if resume:
        raise ValueError("resuming a language-model run is not supported yet; start it again")
    s = session if session is not None else prepare(config, store, teacher)
    start(s, store, callbacks)
    _emit(callbacks, {"event": "start", "total_steps": s.total_steps, "epochs": config.epochs,
                      "steps_per_epoch": s.steps_per_epoch, "device": str(s.device), "augment": "none",
                      "params": count_params(s.student), "visible_labels": 0, "method": s.method.name,
                      "objective": s.method.objective_text(), "setup_s": s.setup_s, "resumed_from": None})
    for epoch in range(1, config.epochs + 1):
        row = train_epoch(s, epoch, callbacks) | evaluate(s)
        s.history.append(row)
        check_finite(row, epoch, config.lr, callbacks)
        improved = row["val_ppl"] < s.best["val_ppl"]
        if improved:
            s.best = {"val_ppl": row["val_ppl"], "epoch": epoch, "state": copy.deepcopy(s.student.state_dict())}
        s.epoch = epoch
        _emit(callbacks, {"event": "epoch", **row, "best_epoch": s.best["epoch"]})  # metrics before weights
        save_epoch_weights(run, s.student, epoch, improved)
    if config.epochs == 0:
        row = evaluate(s)
        s.best = {"val_ppl": row["val_ppl"], "epoch": 0, "state": None}
        save_epoch_weights(run, s.student, 0, improved=True)
    summary = finish(s, run, config.profile)
    _emit(callbacks, {"event": "end", "summary": summary})
    summary["_model"] = s.student
    return summary
