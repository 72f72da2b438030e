"""Teachers: shipped checkpoints, teacher runs or user files, and their cached logits.

A teacher spec is one of

- the name of a shipped teacher (``workbench/assets/teachers/<name>.safetensors``, package data, with a card
  ``<name>.json``), e.g. ``fashion-mnist-cnn``; ``shipped:<name>`` also works;
- the id of a finished run in the run store (``run:<id>`` also works);
- a path to a ``.safetensors`` file whose metadata holds its model config, or with a
  ``<file>.json`` beside it holding ``{"model": {...}, "input_shape": [...], "num_classes": N}``.

The teacher is frozen: eval mode, no gradients. Its logits on a split and a view
(``plain`` or ``flip``) are computed once per (weights, data set, split, view) and
cached in memory and under ``<runs>/.cache/teacher-logits``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.data.datasets import Dataset
from workbench.data.transforms import batch_flip_lr
from workbench.errors import ModelError, RunStoreError
from workbench.io import atomic_write
from workbench.models.zoo import ModelConfig, is_convnet, load_checkpoint, read_checkpoint
from workbench.store.runs import RunStore, validate_run_id
from workbench.tasks import task_for

VIEWS = ("plain", "flip")


def assets_dir() -> Path:
    env = os.environ.get("KDW_ASSETS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "assets"  # package data: in the wheel too


def shipped_teachers(dataset: str | None = None) -> list[dict]:
    """Cards of the shipped teachers (optionally for one data set), each with its 'name' and 'path'."""
    out = []
    folder = assets_dir() / "teachers"
    for card_path in sorted(folder.glob("*.json")):
        weights = card_path.with_suffix(".safetensors")
        if not weights.is_file():
            continue
        card = json.loads(card_path.read_text())
        card.update(name=card_path.stem, path=str(weights))
        if dataset is None or card.get("dataset") == dataset:
            out.append(card)
    return out


def default_teacher(dataset: str) -> str | None:
    cards = shipped_teachers(dataset)
    return cards[0]["name"] if cards else None


@dataclass
class Teacher:
    model: nn.Module  # frozen, eval mode
    spec: str  # what the user asked for
    source: str  # shipped | run | file
    label: str  # model label, e.g. cnn(d=2, w=32)
    digest: str  # sha256 of the weights, keys the logit cache
    card: dict | None = None  # shipped teacher card or the teacher run's summary
    trained_on: str | None = None  # the data set it learnt (shipped card, run config); None: unknown (a file)

    @property
    def config(self) -> ModelConfig:
        return self.model.kdw_config  # an ensemble reports its first member's


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes() if v.is_floating_point()
                 else v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm statistics never move) and no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class EnsembleTeacher(nn.Module):
    """Several teachers as one: its logits are T·log Σᵢ wᵢ·softmax(zᵢ/T).

    So softmax(logits / T) is exactly the weighted average of the members' softened
    distributions (the multi-teacher target of You et al., KDD 2017), and the whole training
    path, the logit cache included, works unchanged. Its top-1 class is the mixture's at T.
    """

    def __init__(self, members: list[nn.Module], weights: list[float], temperature: float):
        super().__init__()
        if len(weights) != len(members) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ModelError(f"teacher weights must be {len(members)} non-negative numbers, got {weights}")
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.register_buffer("log_w", torch.log(torch.tensor([w / total for w in weights])))
        self.temperature = float(temperature)
        first = members[0]
        for m in members[1:]:
            if tuple(m.kdw_input_shape) != tuple(first.kdw_input_shape) or m.kdw_num_classes != first.kdw_num_classes:
                raise ModelError("every teacher of an ensemble must take the same input and classes")
        self.kdw_input_shape, self.kdw_num_classes = first.kdw_input_shape, first.kdw_num_classes
        self.kdw_config = first.kdw_config

    def forward(self, x):  # (B, C, H, W) -> (B, K)
        T = self.temperature
        log_p = torch.stack([torch.log_softmax(m(x).float() / T, 1) for m in self.members])  # (M, B, K)
        return T * torch.logsumexp(log_p + self.log_w.view(-1, 1, 1), dim=0)


def load_teacher(spec: str, store=None, config: ModelConfig | None = None, temperature: float = 4.0,
                 weights=None, trust_factory: bool = False) -> Teacher:
    """Resolve a teacher spec (see the module docstring) to a frozen model.

    A file whose metadata (or side file) names a model built by code, a factory, would run that code when
    loaded: it is refused unless `trust_factory` (kdw's --trust-factory). A run of the store is trusted: its
    factory was named by whoever launched it on this store.

    A comma-separated spec (``a,b``) is an ensemble: the weighted average of the members'
    softened distributions at `temperature` (equal weights unless `weights` are given).
    """
    if not spec:
        raise ModelError("no teacher given")
    if "," in spec:
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        members = [load_teacher(p, store, trust_factory=trust_factory) for p in parts]
        w = list(weights) if weights else [1.0] * len(members)
        model = freeze(EnsembleTeacher([m.model for m in members], w, temperature))
        label = "ensemble(" + " + ".join(m.label for m in members) + ")"
        digest = hashlib.sha256(("|".join(m.digest for m in members) + f"|{w}|{temperature}").encode()).hexdigest()[:20]
        known = {m.trained_on for m in members}
        return Teacher(model, spec, "ensemble", label, digest, {"members": [m.spec for m in members], "weights": w},
                       known.pop() if len(known) == 1 else None)
    store = store or RunStore()
    name = spec.split(":", 1)[1] if spec.startswith(("shipped:", "run:")) else spec
    shipped = {c["name"]: c for c in shipped_teachers()}
    if not spec.startswith("run:") and name in shipped:
        card = shipped[name]
        model, _ = load_checkpoint(card["path"])
        return Teacher(freeze(model), spec, "shipped", model.kdw_config.label(), weights_digest(model), card,
                       card.get("dataset"))
    if not spec.startswith("shipped:") and not name.endswith(".safetensors") and "/" not in name:
        try:
            run = store.get(name)
        except (ValueError, RunStoreError):
            run = None
        if run is not None:
            if run.state != "done":
                raise ModelError(f"teacher run {name} is {run.state}, not done")
            model = run.load_model("best")
            cfg = run.config
            where = data_identity(cfg.get("dataset"), cfg.get("data_dir"))
            return Teacher(freeze(model), spec, "run", model.kdw_config.label(), weights_digest(model), run.summary,
                           where)
    path = Path(name)
    if path.suffix == ".safetensors" or path.exists():
        meta_path = path.with_name(path.name + ".json")
        shape = classes = None
        if config is None and meta_path.is_file():
            side = json.loads(meta_path.read_text())
            config = ModelConfig.from_dict(side["model"])
            shape, classes = side.get("input_shape"), side.get("num_classes")
        model, _ = load_checkpoint(path, config, shape, classes, allow_factory=trust_factory)
        return Teacher(freeze(model), spec, "file", model.kdw_config.label(), weights_digest(model), None)
    known = ", ".join(sorted(shipped)) or "none shipped"
    raise ModelError(f"unknown teacher {spec!r}: not a shipped teacher ({known}), a finished run id, "
                     "or a .safetensors file")


def data_identity(name: str | None, data_dir: str | None = None) -> str:
    """What names a data set: its name, and for your own images (image-folder, csv) their resolved path."""
    if name in ("image-folder", "csv") and data_dir:
        return f"{name}:{Path(data_dir).expanduser().resolve()}"
    return str(name)


def check_fits(teacher_model: nn.Module, dataset: Dataset, trained_on: str | None = None,
               data_dir: str | None = None) -> None:
    """Raise ModelError unless the teacher can teach on this data set (its task decides: `Task.check_teacher`)."""
    task_for(dataset.name).check_teacher(teacher_model, dataset, trained_on, data_identity(dataset.name, data_dir))


def as_teacher(model: nn.Module, name: str = "python", input_shape=None, num_classes: int | None = None,
               trained_on: str | None = None) -> Teacher:
    """Any `nn.Module` as a frozen teacher, for the Python API: `train(config, teacher=as_teacher(net))`.

    `input_shape` (C, H, W) and `num_classes` are needed unless the module carries them (models built by
    workbench.models.zoo do). Say `trained_on` (the data set's name) to let it see the data at its own size.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"a teacher must be a torch.nn.Module, got {type(model).__name__}")
    if input_shape is not None:
        model.kdw_input_shape = tuple(input_shape)
    if num_classes is not None:
        model.kdw_num_classes = int(num_classes)
    if not hasattr(model, "kdw_input_shape") or not hasattr(model, "kdw_num_classes"):
        raise ModelError("say the teacher's input_shape (C, H, W) and num_classes: as_teacher(net, input_shape=..., "
                         "num_classes=...)")
    if not hasattr(model, "kdw_config"):
        model.kdw_config = ModelConfig("factory", name=f"{name}:{type(model).__name__}")  # a label, never rebuilt
    return Teacher(freeze(model), name, "python", type(model).__name__, weights_digest(model), None, trained_on)


# ---------------------------------------------------------------------------
# cached logits

_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()  # small LRU; logits are a few MB at most
_MEMORY_MAX = 16


@torch.inference_mode()
def compute_logits(model: nn.Module, x: torch.Tensor, view: str = "plain", batch_size: int = 256,
                   progress=None) -> torch.Tensor:
    """(N, K) float32 logits of `model` on `x` under a deterministic view.

    Conv nets run in channels_last, at batch 256: measured 3.3x faster on 2 CPU cores than
    contiguous tensors at batch 1024 (docs/performance.md).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    model.eval()
    device = next(model.parameters()).device
    fmt = torch.channels_last if is_convnet(model) and x.ndim == 4 else torch.contiguous_format
    model.to(memory_format=fmt)
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device)
        if view == "flip":
            xb = batch_flip_lr(xb, torch.ones(len(xb), dtype=torch.bool, device=device))
        out.append(model(xb.contiguous(memory_format=fmt)).float())
        if progress is not None:
            progress(min(i + batch_size, len(x)), len(x))
    return torch.cat(out)


def cached_logits(teacher: Teacher, dataset: Dataset, split: str, view: str = "plain",
                  cache_dir: Path | None = None, device: torch.device | str | None = None, progress=None
                  ) -> torch.Tensor:
    """The teacher's logits on a split and view: from memory, then disk, else computed and saved.

    `progress(done, total)` is called as a computation goes (never for a cache hit)."""
    key = f"{teacher.digest}-{dataset.name}-{dataset.fingerprint}-{split}-{view}"
    device = torch.device(device) if device is not None else next(teacher.model.parameters()).device
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key].to(device)
    logits = None
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        from safetensors.torch import load_file
        try:
            logits = load_file(str(path))["logits"]
        except Exception:  # a torn cache file is recomputed, never trusted
            logits = None
    if logits is None:
        x, _ = dataset.split(split)
        logits = compute_logits(teacher.model, x, view, progress=progress).cpu()
        if path is not None:
            from safetensors.torch import save_file
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                save_file({"logits": logits.contiguous()}, str(tmp))
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only store still trains, just without the disk cache
    _MEMORY[key] = logits.cpu()
    while len(_MEMORY) > _MEMORY_MAX:
        _MEMORY.popitem(last=False)
    return logits.to(device)


# ---------------------------------------------------------------------------
# language models: the teacher's top-k logits per token, and its own samples (sequence-level KD)

EVAL_BATCH = 8  # blocks per teacher pass (a vocabulary of 49k makes (8, L, V) logits large already)


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


def reading_rate(store, spec: str) -> float | None:
    """The tokens per second a teacher run read its test blocks at (what caching its top k costs), if it says."""
    try:
        if store is None or not store.exists(spec):
            return None
        rate = (store.get(spec).summary.get("test") or {}).get("tokens_per_s")
        return float(rate) if isinstance(rate, (int, float)) and rate > 0 else None
    except Exception:
        return None



def publish_teacher(run, name: str, to: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Copy a finished run's best weights into ``assets/teachers`` (or `to`) as teacher `name`, with the card that
    says what it scores and how to reproduce it. Returns (the weights file, the card)."""
    if run.state != "done":
        raise ValueError(f"run {run.run_id} is {run.state}; only finished runs can be published as teachers")
    name = validate_run_id(name)
    out = Path(to) if to else assets_dir() / "teachers"
    out.mkdir(parents=True, exist_ok=True)
    cfg, sm = run.config, run.summary
    weights = out / f"{name}.safetensors"
    shutil.copyfile(run.weights_path("best"), weights)
    _, meta = read_checkpoint(weights)
    prof = sm.get("profile", {})
    card = {
        "name": name,
        "dataset": cfg["dataset"],
        "model": cfg["model"],
        "model_label": cfg.get("model_label"),
        "input_shape": json.loads(meta["kdw_input_shape"]),
        "num_classes": int(meta["kdw_num_classes"]),
        "test_accuracy": sm["test"]["accuracy"],
        "test_accuracy_last": sm["test_last"]["accuracy"],
        "val_accuracy": sm["val_acc_best"],
        "best_epoch": sm["best_epoch"],
        "params": prof.get("params"),
        "size_mb": weights.stat().st_size / 1e6,
        "flops": prof.get("flops"),
        "epochs": cfg["epochs"],
        "train_s": sm.get("train_s"),
        "trained_on": f"{sm.get('device')} ({prof.get('device_name')}), {prof.get('threads')} threads",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime(cfg.get("created", time.time()))),
        "command": cfg.get("command") or "",
        "objective": cfg.get("objective") or "",
        "init": sm.get("init"),
        "export_command": f"kdw publish-teacher {run.run_id} --name {name}",
    }
    atomic_write(out / f"{name}.json", json.dumps(card, indent=2) + "\n")
    return weights, card
