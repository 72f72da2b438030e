"""Language-modelling corpora: documents tokenised once with the teacher's tokenizer and cut into token blocks.

Corpora by name:

- ``fortunes``: every text of Debian's ``fortunes`` package (``/usr/share/games/fortunes``), one document per
  %-separated fortune (about 15,000 documents, about 700k tokens with SmolLM2's tokenizer).
- ``text-file``: a text file of your own (``--data-dir FILE``), one document per blank-line-separated paragraph,
  or a folder of ``.txt`` files (each file's paragraphs).
- ``hf-dataset``: a Hugging Face data set saved with ``save_to_disk``; its text column, over every split.

Every document is tokenised once (no special tokens, then the tokenizer's end-of-sequence token) and the ids are
cached on disk under ``$KDW_CACHE_DIR/tokens``, keyed by the documents and the tokenizer. The documents are then
shuffled once with a fixed seed and dealt out: the first ones to the validation split until it holds
``val_tokens`` tokens, the next ones to the test split (as many), and the rest to training, capped at
``train_tokens``. The splits never share a document, and never depend on the sequence length. Each split's tokens
are concatenated and cut into disjoint blocks of ``seq_len + 1`` tokens: a model reads the first ``seq_len`` and
predicts the next token at each of them.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import torch

from workbench.data.datasets import Dataset
from workbench.data.text import _APT_HINT, FORTUNES_DIR, hf_text_column, load_hf_disk, load_tokenizer, text_cache_root
from workbench.errors import DataError

LM_DATASETS = ("fortunes", "text-file", "hf-dataset")
DEFAULT_SEQ_LEN = 128
DEFAULT_TRAIN_TOKENS = 20_000  # with SmolLM2 on 2 CPU cores, about 2 minutes of caching its top-k logits
DEFAULT_VAL_TOKENS = 4_096  # each of validation and test
MAX_SEQ_LEN = 8192
SPLIT_SEED = 0  # the documents' one fixed shuffle


def read_fortune_documents(path=None) -> tuple[list[str], str]:
    folder = Path(path or os.environ.get("KDW_FORTUNES") or FORTUNES_DIR)
    if not folder.is_dir():
        raise DataError(f"fortunes are not on this machine ({folder} is missing): " + _APT_HINT.format(pkg="fortunes"))
    docs = []
    for f in sorted(folder.iterdir()):
        if f.suffix or not f.is_file() or f.name.startswith("."):
            continue  # the .dat indexes and .u8 copies
        for t in f.read_text(encoding="utf-8", errors="replace").split("\n%"):
            t = t.lstrip("%").strip()
            if t:
                docs.append(t)
    return docs, str(folder)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_text_documents(path) -> tuple[list[str], str]:
    if not path:
        raise DataError("text-file needs a text file or a folder of .txt files: --data-dir PATH")
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{path} holds no .txt files")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path} does not exist; give a text file or a folder of .txt files")
    docs = []
    for f in files:
        try:
            docs += _paragraphs(_utf8_text(f))
        except OSError as e:
            raise DataError(f"{f} cannot be read ({e.strerror or e})") from None
    return docs, str(path)


def _utf8_text(f: Path) -> str:
    """A corpus file's text; DataError unless it is UTF-8 text (Latin-1 or random bytes would become U+FFFD
    everywhere, and a model would learn the replacement character)."""
    data = f.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{f} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start:,}); convert it, "
                        f"for example with `iconv -f latin1 -t utf-8`") from None
    if "\x00" in text:
        raise DataError(f"{f} holds NUL bytes: it is a binary file, not text")
    return text


def read_hf_documents(path) -> tuple[list[str], str]:
    parts = load_hf_disk(path)
    col = hf_text_column(next(iter(parts.values())), path)
    docs = [t.strip() for part in parts.values() for t in part[col] if isinstance(t, str) and t.strip()]
    return docs, str(Path(path).expanduser())


def read_documents(name: str, path=None) -> tuple[list[str], str]:
    """(the corpus's documents, where they came from); DataError for an empty corpus."""
    if name == "fortunes":
        docs, source = read_fortune_documents(path)
    elif name == "text-file":
        docs, source = read_text_documents(path)
    elif name == "hf-dataset":
        docs, source = read_hf_documents(path)
    else:
        raise DataError(f"unknown language-modelling corpus {name!r}; choose one of {', '.join(LM_DATASETS)}")
    if not docs:
        raise DataError(f"the corpus {source} is empty: it holds no text")
    return docs, source


def _tokenise_documents(docs: list[str], tok, eos: int) -> tuple[np.ndarray, np.ndarray]:
    """(every document's ids followed by `eos`, concatenated (T,) int32; the (D + 1,) offsets of the documents)."""
    lengths, chunks = [], []
    for i in range(0, len(docs), 2048):
        enc = tok(docs[i:i + 2048], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for ids in enc:
            chunks.append(np.asarray([*ids, eos], dtype=np.int32))
            lengths.append(len(ids) + 1)
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return np.concatenate(chunks), offsets


def _check_count(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"between {low:,} and {high:,}" if high is not None else f"at least {low:,}"
        raise DataError(f"{name} must be a whole number {bound}, got {value!r}")
    return value


def load_lm(name: str, path=None, *, tokenizer_path: str, seq_len: int = DEFAULT_SEQ_LEN,
            train_tokens: int = DEFAULT_TRAIN_TOKENS, val_tokens: int = DEFAULT_VAL_TOKENS) -> Dataset:
    """A corpus as blocks of ``seq_len + 1`` token ids: x_* are (N, seq_len + 1) int64, y_* the blocks' indices."""
    seq_len = _check_count(seq_len, "seq_len", 2, MAX_SEQ_LEN)
    train_tokens = _check_count(train_tokens, "train_tokens", seq_len + 1)
    val_tokens = _check_count(val_tokens, "val_tokens", seq_len + 1)
    docs, source = read_documents(name, path)
    tok, tok_id = load_tokenizer(tokenizer_path)
    eos = tok.eos_token_id if tok.eos_token_id is not None else (tok.pad_token_id or 0)
    digest = hashlib.sha256("\x1e".join(docs).encode()).hexdigest()
    key = hashlib.sha256(f"lm|{digest}|{tok_id}".encode()).hexdigest()[:20]
    cache = text_cache_root() / f"lm-{name}-{key}.npz"
    ids = offsets = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                ids, offsets = z["ids"], z["offsets"]
            if len(offsets) != len(docs) + 1 or int(offsets[-1]) != len(ids):
                ids = offsets = None
        except (OSError, ValueError, KeyError):
            ids = offsets = None
    if ids is None:
        ids, offsets = _tokenise_documents(docs, tok, eos)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, ids=ids, offsets=offsets)
        os.replace(tmp, cache)
    block = seq_len + 1
    order = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
    splits: dict[str, list[np.ndarray]] = {"val": [], "test": [], "train": []}
    caps = {"val": val_tokens, "test": val_tokens, "train": train_tokens}
    held = dict.fromkeys(splits, 0)
    which = iter(("val", "test", "train"))
    split = next(which)
    for d in order:
        doc = ids[offsets[d]:offsets[d + 1]]
        while split is not None and held[split] >= caps[split]:
            split = next(which, None)
        if split is None:
            break
        take = doc[:caps[split] - held[split]] if split == "train" else doc
        splits[split].append(take)
        held[split] += len(take)
    blocks = {}
    for split, parts in splits.items():
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        n = len(stream) // block
        if n == 0:
            raise DataError(f"the corpus {source} has {int(offsets[-1]):,} tokens, too few for a {split} block of "
                            f"{block} tokens (seq_len {seq_len} + 1) after the validation and test splits took "
                            f"{held['val']:,} and {held['test']:,}; use a shorter --seq-len or a larger corpus")
        blocks[split] = torch.from_numpy(stream[:n * block].astype(np.int64).reshape(n, block))
    fingerprint = hashlib.sha256(f"{key}|{seq_len}|{train_tokens}|{val_tokens}".encode()).hexdigest()[:16]
    vocab = {"tokenizer": str(tokenizer_path), "tokenizer_id": tok_id, "vocab_size": int(len(tok)), "pad_id": int(eos),
             "eos_id": int(eos), "seq_len": int(seq_len), "max_length": int(seq_len), "total_tokens": int(offsets[-1]),
             "documents": len(docs)}
    idx = {k: torch.arange(len(v)) for k, v in blocks.items()}
    return Dataset(name=name, x_train=blocks["train"], y_train=idx["train"], x_val=blocks["val"], y_val=idx["val"],
                   x_test=blocks["test"], y_test=idx["test"], classes=(), mean=(), std=(), default_augment="none",
                   fingerprint=fingerprint, source=source, vocab=vocab)


def tokens_in(dataset: Dataset, split: str = "train") -> int:
    """The number of predicted tokens of a split (seq_len per block)."""
    x = getattr(dataset, f"x_{split}")
    return int(x.shape[0] * (x.shape[1] - 1))


def batch_topk(cache, idx: np.ndarray, device):
    """The cached top-k (values, ids) of the blocks `idx`, (b, L, k) each, as float and long tensors on `device`."""
    values, ids = cache[0], cache[1]
    v = torch.from_numpy(np.ascontiguousarray(values[idx])).to(device).float()
    j = torch.from_numpy(np.ascontiguousarray(ids[idx]).astype(np.int64)).to(device)
    return v, j
