"""Text data: labelled sentences, tokenised once with a model's tokenizer into padded id tensors.

Data sets by name:

- ``wordnet``: WordNet's noun definitions (glosses) labelled with their lexicographer category, from Debian's
  ``wordnet-base`` (``/usr/share/wordnet/data.noun``, or ``$KDW_WORDNET``, or ``--data-dir`` naming the file or
  its folder). Six clean, concrete categories: animal, artifact, food, location, person, plant (43,995
  definitions).
- ``fortunes``: the short texts of Debian's ``fortunes`` package (``/usr/share/games/fortunes``), one class per
  file (art, computers, food, …), for the files with at least 100 texts. Noisier: a fortune's file is a loose topic.
- ``text-csv``: a CSV file of your own (``--data-dir FILE.csv``) with a header and the columns ``text`` and
  ``label``, and optionally ``split`` (train or test; without it a stratified 20% is held out for test).
- ``hf-dataset``: a Hugging Face data set saved with ``save_to_disk`` (``--data-dir FOLDER``), a ``Dataset`` or a
  ``DatasetDict``. Its text column is ``text`` or ``sentence`` (or its only string column), its class column
  ``label`` (or ``--label-column``); a ``ClassLabel`` column gives the class names. A ``test`` split is the test
  set; every other split is training data (the validation split is drawn from it, as for every data set). Needs
  the ``datasets`` package (in the text extra).

Every sample is tokenised once by the tokenizer of the model that reads it (a Hugging Face tokenizer folder),
truncated at ``max_length`` tokens and padded with the tokenizer's pad id into an (N, max_length) int64 tensor;
the result is cached on disk under ``$KDW_CACHE_DIR`` keyed by the texts, the tokenizer and the length. Models
cut each batch to its longest sequence (`trim_batch`), so padding is dynamic per batch. The validation and test
splits are fixed and seeded, as for images, and never depend on the tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workbench.data.datasets import Dataset, fixed_splits
from workbench.data.readers import read_csv_rows
from workbench.errors import DataError, ModelError, require

TEXT_DATASETS = ("wordnet", "fortunes", "text-csv", "hf-dataset")
DEFAULT_MAX_LENGTH = 64
MAX_MAX_LENGTH = 4096
WORDNET_FILE = Path("/usr/share/wordnet/data.noun")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
# WordNet's lexicographer files (lexnames): the number in each synset line names its category
WORDNET_CATEGORIES = {5: "animal", 6: "artifact", 13: "food", 15: "location", 18: "person", 20: "plant"}
FORTUNES_MIN_PER_FILE = 100
EXTRA_HINT = "pip install -e '.[text]' (or pip install 'kd-workbench[text]')"
_APT_HINT = "install Debian's {pkg} (sudo apt-get install {pkg}; make does it when run as root)"


@dataclass(frozen=True)
class Texts:
    """Labelled texts before tokenisation: the splits are fixed here, by index."""

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    source: str
    test: np.ndarray | None = None  # (N,) bool: a split column's test rows; None: a stratified 20%


def _lines(path: Path, what: str, pkg: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{what} is not on this machine ({path} is missing): " + _APT_HINT.format(pkg=pkg))
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def read_wordnet(path=None) -> Texts:
    """WordNet noun glosses with their lexicographer category (`WORDNET_CATEGORIES`), examples cut off."""
    path = Path(path or os.environ.get("KDW_WORDNET") or WORDNET_FILE)
    if path.is_dir():
        path = path / "data.noun"
    texts, labels = [], []
    order = sorted(WORDNET_CATEGORIES)
    index = {lex: i for i, lex in enumerate(order)}
    for line in _lines(path, "WordNet", "wordnet-base"):
        if line.startswith(" ") or "|" not in line:
            continue  # the licence header
        head, gloss = line.split("|", 1)
        parts = head.split()
        if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) not in index:
            continue
        gloss = gloss.split(';', 1)[0].split(' "', 1)[0].strip()  # the definition, without its quoted examples
        if gloss:
            texts.append(gloss)
            labels.append(index[int(parts[1])])
    if not texts:
        raise DataError(f"{path} holds no noun definitions of the categories {', '.join(WORDNET_CATEGORIES.values())}")
    return Texts("wordnet", tuple(texts), np.array(labels, dtype=np.int64),
                 tuple(WORDNET_CATEGORIES[lex] for lex in order), str(path))


def read_fortunes(path=None, min_per_file: int = FORTUNES_MIN_PER_FILE) -> Texts:
    """One class per fortune file (files of at least `min_per_file` texts), one sample per %-separated text."""
    folder = Path(path or os.environ.get("KDW_FORTUNES") or FORTUNES_DIR)
    if not folder.is_dir():
        raise DataError(f"fortunes are not on this machine ({folder} is missing): " + _APT_HINT.format(pkg="fortunes"))
    per_file = {}
    for f in sorted(folder.iterdir()):
        if f.suffix or not f.is_file() or f.name.startswith("."):
            continue  # the .dat indexes and .u8 copies
        items = [re.sub(r"\s+", " ", t).strip() for t in f.read_text(encoding="utf-8", errors="replace").split("\n%")]
        items = [t.lstrip("%").strip() for t in items]
        items = [t for t in items if t]
        if len(items) >= min_per_file:
            per_file[f.name] = items
    if len(per_file) < 2:
        raise DataError(f"{folder} has fewer than two fortune files of at least {min_per_file} texts")
    classes = tuple(sorted(per_file))
    texts = tuple(t for c in classes for t in per_file[c])
    labels = np.array([i for i, c in enumerate(classes) for _ in per_file[c]], dtype=np.int64)
    return Texts("fortunes", texts, labels, classes, str(folder))


def read_text_csv(path) -> Texts:
    """A CSV of ``text,label[,split]`` with a header; DataError in one sentence for what does not fit."""
    if not path:
        raise DataError("text-csv needs a CSV file: --data-dir FILE.csv with the columns text and label")
    path = Path(path)
    rows = read_csv_rows(path, "text CSV", "a header row (text,label)")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("text", "label") if c not in header]
    if missing:
        raise DataError(f"text CSV {path} has no column {' or '.join(map(repr, missing))} (its columns: "
                        f"{', '.join(header[:8])}); it needs text and label, and optionally split")
    ti, li = header.index("text"), header.index("label")
    si = header.index("split") if "split" in header else None
    texts, labels, test = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"text CSV {path} line {n}: {len(row)} values for {len(header)} columns")
        text = row[ti].strip()
        if not text:
            raise DataError(f"text CSV {path} line {n}: the text is empty")
        label = row[li].strip()
        if not label:  # before, it became a class named ''
            raise DataError(f"text CSV {path} line {n}: the label is empty; give every row its class, or leave the "
                            "row out")
        texts.append(text)
        labels.append(label)
        if si is not None:
            split = row[si].strip().lower()
            if split not in ("train", "test"):
                raise DataError(f"text CSV {path} line {n}: split must be train or test, got {row[si]!r}")
            test.append(split == "test")
    if not texts:
        raise DataError(f"text CSV {path} has a header but no samples")
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise DataError(f"text CSV {path}: the label column holds a single class ({classes[0]!r}); classification "
                        "needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    return Texts("text-csv", tuple(texts), np.array([index[v] for v in labels], dtype=np.int64), classes, str(path),
                 np.array(test, dtype=bool) if si is not None else None)


TEXT_COLUMNS = ("text", "sentence", "content", "document")


def require_datasets():
    """The datasets module, or MissingExtra naming the text extra."""
    datasets = require("datasets", "text", "hf-dataset")
    datasets.disable_progress_bars()
    return datasets


def load_hf_disk(path) -> dict:
    """{split name: datasets.Dataset} of a folder written by ``save_to_disk``; DataError for anything else."""
    if not path:
        raise DataError("hf-dataset needs a folder written by a Hugging Face data set's save_to_disk: --data-dir FOLDER")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; give the folder a Hugging Face data set was saved to (save_to_disk)")
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(f"{path} was not written by save_to_disk (it has neither dataset_dict.json nor state.json)")
    datasets = require_datasets()
    try:
        d = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged folder fails in pyarrow, json or datasets itself
        raise DataError(f"{path} cannot be read as a saved data set ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None
    parts = dict(d) if isinstance(d, datasets.DatasetDict) else {"train": d}
    if not parts or not any(len(v) for v in parts.values()):
        raise DataError(f"the data set in {path} has no rows")
    return parts


def hf_text_column(part, path) -> str:
    """The column of a saved data set that holds the texts."""
    features = part.features
    for c in TEXT_COLUMNS:
        if c in features:
            return c
    strings = [c for c, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise DataError(f"the data set in {path} has no text column (its columns: {', '.join(list(features)[:8])}); "
                    f"name it one of {', '.join(TEXT_COLUMNS)}")


def read_hf_disk(path, label_column: str | None = None) -> Texts:
    """A labelled text data set saved with ``save_to_disk`` (see the module docstring)."""
    parts = load_hf_disk(path)
    first = next(iter(parts.values()))
    text_col = hf_text_column(first, path)
    label_col = label_column or next((c for c in ("label", "labels") if c in first.features), None)
    if label_col is None or label_col not in first.features:
        raise DataError(f"the data set in {path} has no column {label_col or 'label'!r} (its columns: "
                        f"{', '.join(list(first.features)[:8])}); name the class column with --label-column")
    feature = first.features[label_col]
    names = tuple(feature.names) if hasattr(feature, "names") else None
    texts, raw, test = [], [], []
    for split, part in parts.items():
        if text_col not in part.features or label_col not in part.features:
            raise DataError(f"the {split} split of {path} lacks the column {text_col!r} or {label_col!r}")
        for n, (text, label) in enumerate(zip(part[text_col], part[label_col])):
            text = (text or "").strip() if isinstance(text, str) else ""
            if not text:
                raise DataError(f"the {split} split of {path}, row {n}: the text is empty")
            if label is None or (names is not None and not 0 <= int(label) < len(names)):
                raise DataError(f"the {split} split of {path}, row {n}: no class (label {label!r})")
            texts.append(text)
            raw.append(names[int(label)] if names is not None else str(label))
            test.append(split == "test")
    seen = set(raw)
    classes = tuple(c for c in names if c in seen) if names is not None else tuple(sorted(seen))
    if len(seen) < 2:
        raise DataError(f"the data set in {path} holds a single class ({raw[0]!r}); classification needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    has_test = any(test)
    return Texts("hf-dataset", tuple(texts), np.array([index[v] for v in raw], dtype=np.int64), classes,
                 str(Path(path).expanduser()), np.array(test, dtype=bool) if has_test else None)


def read_texts(name: str, path=None, label_column: str | None = None) -> Texts:
    if name == "wordnet":
        return read_wordnet(path)
    if name == "fortunes":
        return read_fortunes(path)
    if name == "text-csv":
        return read_text_csv(path)
    if name == "hf-dataset":
        return read_hf_disk(path, label_column)
    raise DataError(f"unknown text data set {name!r}; choose one of {', '.join(TEXT_DATASETS)}")


def text_splits(t: Texts, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: fixed, seeded, stratified indices (a split column decides test where given)."""
    if t.test is not None and (not t.test.any() or t.test.all()):
        raise DataError(f"{t.source}: the split column must mark some rows train and some test")
    return fixed_splits(t.labels, t.classes, t.name, val_fraction, t.test, samples="texts")


# ---------------------------------------------------------------------------
# tokenisation

def text_cache_root() -> Path:
    return Path(os.environ.get("KDW_CACHE_DIR") or Path.home() / ".cache" / "kd-workbench") / "tokens"


def require_transformers():
    """The transformers module, or ModelError naming the text extra."""
    try:
        import transformers
    except ImportError:
        raise ModelError(f"text data and models need the optional packages transformers and tokenizers: {EXTRA_HINT}") \
            from None
    transformers.logging.set_verbosity_error()  # "some weights were newly initialised" is what a new head is
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer(path) -> tuple[object, str]:
    """(a fast tokenizer from the folder `path`, an id of its vocabulary and settings for cache keys)."""
    transformers = require_transformers()
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"tokenizer folder {path} does not exist")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise DataError(f"{path} holds no tokenizer transformers can load ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:160]})") from None
    h = hashlib.sha256()
    for f in sorted(path.glob("*")):
        if f.is_file() and (f.name.startswith(("tokenizer", "vocab", "special_tokens", "merges"))):
            h.update(f.name.encode() + f.read_bytes())
    return tok, h.hexdigest()[:16]


def unlike_tokenizer(vocab: dict, candidates) -> str | None:
    """Of (tokenizer folder or None, what it is) pairs, the `what` of the first whose tokenizer is not the one
    `vocab` (a model's kdw_vocab) names; None where every given one is that tokenizer."""
    for folder, what in candidates:
        if folder is not None and Path(folder).resolve() != Path(vocab["tokenizer"]).resolve() \
                and load_tokenizer(folder)[1] != vocab.get("tokenizer_id"):
            return what
    return None


def tokenize(texts, tokenizer, max_length: int, batch: int = 4096) -> np.ndarray:
    """(N, max_length) int64 token ids, truncated and padded with the tokenizer's pad id."""
    out = np.empty((len(texts), max_length), dtype=np.int64)
    for i in range(0, len(texts), batch):
        enc = tokenizer(list(texts[i:i + batch]), truncation=True, max_length=max_length, padding="max_length",
                        return_attention_mask=False)
        out[i:i + batch] = np.asarray(enc["input_ids"], dtype=np.int64)
    return out


def load_text(name: str, path=None, *, tokenizer_path: str, max_length: int = DEFAULT_MAX_LENGTH,
              val_fraction: float = 0.1, label_column: str | None = None) -> Dataset:
    """A text data set tokenised by the tokenizer in folder `tokenizer_path`, as a Dataset of (N, L) ids."""
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 1 <= max_length <= MAX_MAX_LENGTH:
        raise DataError(f"max length must be a whole number of tokens between 1 and {MAX_MAX_LENGTH}, "
                        f"got {max_length}")
    t = read_texts(name, path, label_column)
    splits = text_splits(t, val_fraction)
    tok, tok_id = load_tokenizer(tokenizer_path)
    digest = hashlib.sha256("\x1f".join(t.texts).encode() + t.labels.tobytes() + repr(t.classes).encode())
    key = hashlib.sha256(f"{digest.hexdigest()}|{tok_id}|{max_length}".encode()).hexdigest()[:20]
    cache = text_cache_root() / f"{name}-{key}.npy"
    ids = None
    if cache.is_file():
        try:
            ids = np.load(cache, allow_pickle=False)
            if ids.shape != (len(t.texts), max_length):
                ids = None
        except (OSError, ValueError):
            ids = None
    if ids is None:
        ids = tokenize(t.texts, tok, max_length)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, ids)
        os.replace(tmp, cache)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    vocab = {"tokenizer": str(tokenizer_path), "tokenizer_id": tok_id, "vocab_size": int(len(tok)), "pad_id": int(pad),
             "max_length": int(max_length)}
    x = torch.from_numpy(ids)
    y = torch.from_numpy(t.labels)
    sel = {k: torch.from_numpy(v) for k, v in splits.items()}
    return Dataset(name=name, x_train=x[sel["train"]].contiguous(), y_train=y[sel["train"]],
                   x_val=x[sel["val"]].contiguous(), y_val=y[sel["val"]], x_test=x[sel["test"]].contiguous(),
                   y_test=y[sel["test"]], classes=t.classes, mean=(), std=(), default_augment="none",
                   fingerprint=key[:16], source=t.source, vocab=vocab,
                   texts={k: tuple(t.texts[i] for i in v) for k, v in splits.items()})


def trim_batch(ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) cut to the longest sequence of the batch: dynamic padding.

    >>> ids, mask = trim_batch(torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]), 0)
    >>> ids.tolist(), mask.tolist()
    ([[5, 6], [7, 0]], [[1, 1], [1, 0]])
    """
    mask = ids != pad_id
    if ids.shape[1] > 1:
        longest = int(mask.sum(1).max().clamp_min(1))
        ids, mask = ids[:, :longest], mask[:, :longest]
    return ids, mask.long()
