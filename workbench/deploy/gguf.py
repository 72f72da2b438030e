"""A language-model student as a GGUF file: what llama.cpp, Ollama and LM Studio load.

    kdw export RUN --format gguf                    # runs/RUN/variants/gguf-f16/model.gguf
    kdw export RUN --format gguf --gguf-type q8_0   # 8-bit blocks of 32 (llama.cpp's Q8_0)

`export_gguf` writes the run's best student with the `gguf` package's `GGUFWriter`, as llama.cpp's own converter
writes a LLaMA: the `llama` architecture's metadata keys, llama.cpp's tensor names (`gguf.get_tensor_name_map`), the
query and key projections permuted into llama.cpp's rotary layout, norms in f32, a tied output layer left out (the
loader reuses the token embedding), and the byte-level BPE tokenizer (tokens, types, merges, special ids). It then
loads the file back with transformers' own GGUF loader (`AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`,
which dequantizes it) and measures what it loaded, as the Hugging Face folder is measured: logits against the
student's, test perplexity, agreement with the teacher, size and tokens per second.

Only the LLaMA architecture is written (the llama students, SmolLM2 and students cut from it), with a byte-level BPE
tokenizer; anything else is refused in one sentence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from workbench.data.text import require_transformers
from workbench.deploy.export import require
from workbench.deploy.hf import lm_student, write_and_measure
from workbench.errors import DeployError
from workbench.models.lm import CausalLM
from workbench.store.runs import Run, RunStore

GGUF_TYPES = ("f32", "f16", "q8_0")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """HF's rotary layout (two halves) → llama.cpp's (interleaved pairs), per head, as llama.cpp's converter does."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokenizer(writer, folder: str, vocab_size: int) -> None:
    """The byte-level BPE tokenizer of `folder` (its tokenizer.json) as GGUF metadata; DeployError for another kind."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise DeployError(f"GGUF needs the student's tokenizer.json, which {folder} does not have")
    spec = json.loads(path.read_text())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise DeployError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 style, as SmolLM2's); this student's "
                          f"is {model.get('type') or 'unknown'}: export it with --format hf")
    vocab = dict(model["vocab"])
    special = {t["id"]: t["content"] for t in spec.get("added_tokens") or []}
    for i, text in special.items():
        vocab.setdefault(text, i)
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in special else 1 for i in range(vocab_size)])  # 3: control, 1: normal
    writer.add_token_merges(merges)


def write_gguf(student: CausalLM, tokenizer_folder: str, path: Path, kind: str = "f16") -> dict:
    """`student` as a GGUF file at `path` (`kind`: f32, f16 or q8_0 for its matrices); returns what was written."""
    gguf = require("gguf")
    if kind not in GGUF_TYPES:
        raise DeployError(f"the GGUF type must be one of {', '.join(GGUF_TYPES)}, got {kind!r}")
    hf = student.hf
    cfg = hf.config
    if cfg.model_type != "llama":
        raise DeployError(f"GGUF export writes LLaMA-architecture students (llama students, SmolLM2 and students cut "
                          f"from it); this one is {cfg.model_type}: export it with --format hf")
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("kd-workbench student")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({"f32": 0, "f16": 1, "q8_0": 7}[kind])  # llama.cpp's LLAMA_FTYPE_ALL_F32, MOSTLY_F16, Q8_0
    _tokenizer(writer, tokenizer_folder, cfg.vocab_size)
    for key, setter in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id)):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            setter(value)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    written = 0
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # the loader takes the token embedding as the output layer
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise DeployError(f"GGUF has no llama.cpp name for the tensor {name}")
        data = tensor.detach().float().cpu().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, kv_heads)
        if data.ndim == 1 or kind == "f32":
            writer.add_tensor(new, data.astype(np.float32))
        elif kind == "f16" or data.shape[-1] % 32:  # Q8_0 rows come in blocks of 32; llama.cpp falls back to f16 too
            writer.add_tensor(new, data.astype(np.float16))
        else:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(new, gguf.quants.quantize(data, q8), raw_dtype=q8)
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": written, "type": kind, "tied_output": tied}


def export_gguf(run: Run, store: RunStore, kind: str = "f16", progress=None) -> dict:
    """Write `run`'s best student as GGUF under `runs/RUN/variants/gguf-KIND/`, load it back with transformers'
    GGUF loader and measure it; returns its metrics."""
    say = progress or (lambda text, fraction: None)
    student = lm_student(run, "--format gguf writes language models (llama students, SmolLM2 and students cut from "
                              "it)")
    transformers = require_transformers()
    written = {}

    def write(tmp: Path) -> None:
        say(f"writing model.gguf ({kind})", 0.1)
        written.update(write_gguf(student.float().eval(), student.kdw_vocab["tokenizer"], tmp / "model.gguf", kind))

    def load(folder: Path):
        say("loading it back with transformers' GGUF loader and measuring it", 0.4)
        return transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file="model.gguf",
                                                                 dtype=torch.float32)

    def annotate(metrics: dict) -> dict:
        return {"format": f"GGUF ({kind}), llama architecture", "written": written,
                "check": {**metrics["check"], "loader": "transformers.AutoModelForCausalLM (gguf_file)"}}

    return write_and_measure(run, store, f"gguf-{kind.replace('_', '')}", student, write, load, say, annotate)
