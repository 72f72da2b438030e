"""Tiny randomly initialised text models saved to local folders, so text tests never need the real MiniLM."""

from __future__ import annotations

import re
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert(folder: Path, texts, hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """A BERT of `layers` × `hidden` with a WordPiece tokenizer whose vocabulary is the words of `texts`;
    saved with save_pretrained (safetensors) into `folder`. Returns the folder."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {w: i for i, w in enumerate(SPECIALS + words)}
    core = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                     pad_token_id=0)
    return _save_random(BertForSequenceClassification, cfg, tok, folder)


def _save_random(model_class, config, tokenizer, folder: Path) -> Path:
    """A model of `model_class` initialised with seed 0, saved with its tokenizer (safetensors) into `folder`."""
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    model_class(config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def text_csv(path: Path, n_per_class: int = 30) -> Path:
    """A small, learnable text CSV: three classes whose sentences use their own words."""
    import random

    rng = random.Random(0)
    vocab = {"animal": ["dog", "cat", "horse", "bird", "fish", "wolf"],
             "food": ["bread", "cheese", "apple", "soup", "rice", "cake"],
             "tool": ["hammer", "saw", "drill", "wrench", "axe", "chisel"]}
    filler = ["a", "the", "small", "large", "old", "new", "is", "of", "with", "and"]
    rows = ["text,label"]
    for label, words in vocab.items():
        for _ in range(n_per_class):
            sent = [rng.choice(filler) for _ in range(rng.randint(2, 6))] + rng.sample(words, 2)
            rng.shuffle(sent)
            rows.append(f"{' '.join(sent)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


_WORDNET_TEACHER: dict = {}


def wordnet_teacher(runs_dir: Path, run_id: str = "wn-bert") -> str:
    """A tiny BERT teacher run on WordNet's definitions (its tokenizer knows their words), copied into `runs_dir`;
    trained once per test session (about 20 s). Skips the test where WordNet is not installed."""
    import shutil
    import tempfile

    import pytest

    pytest.importorskip("transformers")
    from workbench.data.text import WORDNET_FILE, read_wordnet
    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import parse_model
    from workbench.store.runs import RunStore
    from workbench.train.loop import TrainConfig

    if not WORDNET_FILE.is_file():
        pytest.skip("Debian's wordnet-base is not installed (make installs it as root)")
    if "store" not in _WORDNET_TEACHER:
        root = Path(tempfile.mkdtemp(prefix="kdw-wordnet-teacher-"))
        bert = tiny_bert(root / "bert", read_wordnet().texts)
        store = RunStore(root / "runs")
        run_in_process(store, TrainConfig(kind="teacher", dataset="wordnet", model=parse_model(f"hf:{bert}"),
                                          epochs=1, batch_size=128, lr=3e-3, max_length=32, profile=False),
                       run_id=run_id)
        _WORDNET_TEACHER["store"] = store.root
    shutil.copytree(_WORDNET_TEACHER["store"] / run_id, Path(runs_dir) / run_id)
    return run_id


def tiny_llama(folder: Path, texts, hidden: int = 32, layers: int = 2, heads: int = 2) -> Path:
    """A LLaMA of `layers` × `hidden` with a word-level tokenizer of the words of `texts` (and <eos>), saved with
    save_pretrained (safetensors) into `folder`: a causal-LM teacher for tests. Returns the folder."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + words)}
    core = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=1)
    return _save_random(LlamaForCausalLM, cfg, tok, folder)


def tiny_llama_bpe(folder: Path, texts, hidden: int = 64, layers: int = 2, heads: int = 2) -> Path:
    """A LLaMA like `tiny_llama`, with a byte-level BPE tokenizer (GPT-2 style, as SmolLM2's) trained on `texts`:
    what GGUF's tokenizer metadata can hold. Returns the folder."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    core = Tokenizer(BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=core.get_vocab_size(), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    return _save_random(LlamaForCausalLM, cfg, tok, folder)


def lm_corpus(path: Path, n: int = 400) -> Path:
    """A learnable text file: short sentences of a small grammar, one paragraph each."""
    import random

    rng = random.Random(0)
    subjects = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "finds", "eats", "follows", "calls"]
    objects = ["the ball", "a fish", "the red apple", "some bread", "the river", "a green tree"]
    paras = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} and {rng.choice(verbs)} "
             f"{rng.choice(objects)} ." for _ in range(n)]
    path.write_text("\n\n".join(paras) + "\n")
    return path


def lm_teacher(runs_dir: Path, root: Path, run_id: str = "tl") -> str:
    """A tiny LLaMA registered as a language-model teacher run (epochs 0) in `runs_dir`, on a corpus written under
    `root`; takes about a second. Returns the run id."""
    from workbench.jobs.queue import run_in_process
    from workbench.models.zoo import parse_model
    from workbench.store.runs import RunStore
    from workbench.train.loop import TrainConfig

    corpus = lm_corpus(Path(root) / "corpus.txt")
    llama = tiny_llama(Path(root) / "llama", corpus.read_text().split())
    run_in_process(RunStore(runs_dir), TrainConfig(kind="teacher", dataset="text-file", data_dir=str(corpus),
                                                   model=parse_model(f"hf:{llama}"), epochs=0, seq_len=16,
                                                   train_tokens=2000, val_tokens=200, profile=False), run_id=run_id)
    return run_id
