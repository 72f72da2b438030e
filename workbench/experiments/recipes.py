"""Recipes the front ends share: the CLI, the app's pages, the widgets, the demo and the sweeps.

Each is written once here, so the front ends keep only their widgets and layout:

- `distill_configs`: a distilled run and its scratch twin (same student, budget and seed;
  method ``ce``), with teacher-free methods (DML) handled in one place;
- `dataset_choices` and `teacher_choices`: what can be picked on this machine;
- `dataset_defaults`: epochs and label budget per data set;
- `curve_series`: the per-epoch rows of runs, labelled and coloured by role, for `plots.training_curves`;
- `groups` and `latest_group`: group queries on the run store;
- `DEMOS` and `demo_configs`: the demo's settings, chosen from docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from workbench.analysis.format import ROLE_NAMES, plural
from workbench.core.methods import method_info
from workbench.data.datasets import IMAGE_DATASETS, available_datasets, load_dataset
from workbench.data.images import list_csv, list_folder
from workbench.data.tables import EMBEDDED_TABLES, load_table
from workbench.errors import DataError
from workbench.models.zoo import ModelConfig, parse_model
from workbench.store.runs import RunStore
from workbench.tasks import infer_task, task_for
from workbench.train.loop import TrainConfig
from workbench.train.teachers import shipped_teachers

# ---------------------------------------------------------------------------
# a distilled run and its scratch twin


def uses_teacher(method: str) -> bool:
    """Whether a distillation method learns from a pretrained teacher (DML does not)."""
    return method_info(method).needs_teacher


def scratch_twin(kd: TrainConfig) -> TrainConfig:
    """The student trained without the teacher: the same student, data, budget, optimiser and seed,
    method ``ce``. It keeps the teacher (for agreement) only when the distilled run has one."""
    return replace(kd, kind="scratch", method="ce", method_params={}, teacher_weights=kd.teacher_weights
                   if kd.teacher else None)


def distill_configs(kd: TrainConfig, scratch: bool = True) -> list[TrainConfig]:
    """[scratch twin, distilled run] (or just the distilled run): the unit every front end launches.

    A teacher-free method (DML) drops any teacher it was given, so neither run loads, caches or
    profiles a teacher it never uses.
    """
    if kd.kind != "kd":
        raise ValueError(f"distill_configs takes a kd config, got a {kd.kind} config")
    if not uses_teacher(kd.method) and kd.teacher:
        kd = replace(kd, teacher=None, teacher_weights=None)
    return [scratch_twin(kd), kd] if scratch else [kd]


# ---------------------------------------------------------------------------
# data sets and teachers

@dataclass(frozen=True)
class DatasetDefaults:
    epochs: int  # a run on the Train page, the widgets and the CLI
    sweep_epochs: int  # each run of a sweep (many runs: shorter)
    labels: int | None  # the label budget the pages open with (None = all)
    batch_size: int = 128
    lr: float = 3e-3  # peak learning rate


TABLE_DEFAULTS = DatasetDefaults(epochs=40, sweep_epochs=30, labels=None, batch_size=16, lr=1e-2)  # ~100-500 rows
TEXT_DEFAULTS = DatasetDefaults(epochs=5, sweep_epochs=3, labels=None, batch_size=64, lr=3e-3)
LM_DEFAULTS = DatasetDefaults(epochs=3, sweep_epochs=2, labels=None, batch_size=8, lr=1e-3)  # blocks of 128 tokens
FINE_TUNE_LR = 5e-5  # a pretrained Hugging Face encoder (hf:) is fine-tuned, not trained from scratch (BERT's 2e-5..5e-5)
HEAL_LR = 3e-4  # a language model cut from its pretrained teacher is healed: SmolLM2 cut to 15 layers healed at 3e-4
# (batch 8) and did not move at the fine-tuning 5e-5 (batch 64, 4 steps)
DATASET_DEFAULTS = {
    "fashion-mnist": DatasetDefaults(epochs=10, sweep_epochs=5, labels=1000),
    "digits": DatasetDefaults(epochs=20, sweep_epochs=15, labels=None),
    "wine": TABLE_DEFAULTS,
    "breast-cancer": TABLE_DEFAULTS,
    "table": TABLE_DEFAULTS,
    "wordnet": replace(TEXT_DEFAULTS, labels=2000),
    "fortunes": TEXT_DEFAULTS,
    "text-csv": TEXT_DEFAULTS,
    "hf-dataset": TEXT_DEFAULTS,
}


def dataset_defaults(name: str, model=None) -> DatasetDefaults:
    """The defaults of a run on data set `name` (of a language model `model` where the data set is also a corpus)."""
    if model is not None and task_for(name, infer_task(name, model)).token_level:
        return LM_DEFAULTS
    return DATASET_DEFAULTS.get(name, DatasetDefaults(epochs=10, sweep_epochs=5, labels=None))


def default_lr(dataset: str, model, cut: bool = False) -> float:
    """The peak learning rate a run starts from: the data set's, `HEAL_LR` for a language model `cut` from its
    teacher, or `FINE_TUNE_LR` for a pretrained hf: model."""
    if cut and dataset_defaults(dataset, model) is LM_DEFAULTS:
        return HEAL_LR
    return FINE_TUNE_LR if getattr(model, "family", None) == "hf" else dataset_defaults(dataset, model).lr


def lm_budget(train_tokens: int, seq_len: int, batch_size: int, epochs: int) -> dict:
    """What a language-model run's settings come to: its training blocks of `seq_len + 1` tokens, optimiser steps
    per epoch and in all (the loop drops the last partial batch).

    >>> lm_budget(4000, 128, 8, 3)
    {'blocks': 31, 'steps_per_epoch': 3, 'steps': 9}
    """
    blocks = max(1, int(train_tokens) // (int(seq_len) + 1))
    per_epoch = max(1, blocks // min(int(batch_size), blocks))
    return {"blocks": blocks, "steps_per_epoch": per_epoch, "steps": per_epoch * int(epochs)}


def available_texts() -> dict[str, str | None]:
    """The text data sets that ship with Debian packages: None where one loads here, else how to get it."""
    import importlib.util

    from workbench.data.text import FORTUNES_DIR, WORDNET_FILE

    if not all(importlib.util.find_spec(m) for m in ("tokenizers", "transformers")):  # installed, not imported
        hint = "the text extra (pip install -e '.[text]') is not installed"
        return {"wordnet": hint, "fortunes": hint}
    return {"wordnet": None if WORDNET_FILE.is_file() else "sudo apt-get install wordnet-base",
            "fortunes": None if FORTUNES_DIR.is_dir() else "sudo apt-get install fortunes"}


def dataset_choices(sample_kind: str | tuple | None = None) -> tuple[list[str], dict[str, str]]:
    """(embedded data sets that load here, {missing data set: how to get it}); only those whose task shows samples
    of `sample_kind` ("image", "features", "text") when it is given (the Dark knowledge views show images)."""
    avail = available_datasets() | dict.fromkeys(EMBEDDED_TABLES) | available_texts()
    kinds = (sample_kind,) if isinstance(sample_kind, str) else sample_kind
    avail = {k: v for k, v in avail.items() if kinds is None or task_for(k).sample_kind in kinds}
    return [k for k, v in avail.items() if v is None], {k: v for k, v in avail.items() if v is not None}


def default_dataset() -> str:
    names, _ = dataset_choices()
    return "fashion-mnist" if "fashion-mnist" in names else "digits"


def _upload_input_shape(path: Path) -> tuple | None:
    """The input shape a saved checkpoint declares in its header, without loading its tensors."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return tuple(json.loads((f.metadata() or {})["kdw_input_shape"]))
    except Exception:  # not ours, or broken: not offered
        return None


def check_data_path(name: str, path: str, label_column: str | None = None, lm: bool = False) -> str | None:
    """Why a user's image folder, CSV manifest, CSV table, text CSV or saved data set cannot be used, in one sentence; None if it
    can."""
    p = Path(path).expanduser()
    try:
        if name == "table":
            load_table(name, p, label_column=label_column)
        elif name == "text-csv":
            from workbench.data.text import read_text_csv

            read_text_csv(p)
        elif name == "text-file" or (name == "hf-dataset" and lm):  # a corpus for a language model
            from workbench.data.lm import read_documents

            read_documents(name, p)
        elif name == "hf-dataset":
            from workbench.data.text import read_hf_disk

            read_hf_disk(p, label_column)
        elif name == "csv":
            list_csv(p)
        elif (p / "train").is_dir() and (p / "test").is_dir():
            list_folder(p / "train")
            list_folder(p / "test")
        else:
            list_folder(p)
    except DataError as e:
        return str(e)
    return None


def teacher_choices(dataset: str, store: RunStore, uploads: Path | None = None, data_dir: str | None = None,
                    task: str | None = None) -> list[tuple[str, str]]:
    """(label, teacher spec) pairs: shipped teachers, finished teacher runs on the same data (and of the same task:
    `task`, default the data set's first, since fortunes are texts to classify and a corpus to model), and uploaded
    files that fit."""
    task = task or task_for(dataset).name
    lm = task_for(dataset, task).token_level
    out = [] if lm else [(f"{c['name']} (shipped, {100 * c['test_accuracy']:.2f}% test)", c["name"])
                         for c in shipped_teachers(dataset)]
    for r in store.list(kind="teacher", state="done"):
        cfg = r.config
        if cfg.get("dataset") != dataset or (data_dir is not None and cfg.get("data_dir") != data_dir):
            continue
        if (cfg.get("task") or task_for(dataset).name) != task:
            continue
        test = r.summary.get("test") if isinstance(r.summary.get("test"), dict) else {}
        acc, ppl = test.get("accuracy"), test.get("perplexity")
        score = (f", test ppl {ppl:,.1f}" if isinstance(ppl, (int, float)) else
                 f", {100 * acc:.2f}% test" if isinstance(acc, (int, float)) else "")
        out.append((f"{r.run_id} ({'language model' if lm else 'teacher run'}{score})", r.run_id))
    if not lm and uploads is not None and uploads.is_dir() and dataset in IMAGE_DATASETS \
            and dataset not in ("image-folder", "csv"):
        shape = tuple(load_dataset(dataset).input_shape)
        for p in sorted(uploads.glob("*.safetensors")):
            if _upload_input_shape(p) == shape:
                out.append((f"{p.stem} (uploaded)", str(p)))
    return out


def lm_teacher_facts(store: RunStore, run_id: str) -> dict:
    """What a language-model teacher run tells the Train page without loading its weights: its model config, its
    tokenizer's `vocab` (from its checkpoint's header), its layers and positions, the corpus settings it ran with
    and the tokens per second it read its test blocks at (the rate of a top-k cache; older runs: None)."""
    import json

    from safetensors import safe_open

    run = store.get(run_id)
    cfg = run.config
    with safe_open(str(run.path / "student.safetensors"), framework="pt") as f:
        vocab = json.loads((f.metadata() or {})["kdw_vocab"])
    model = ModelConfig.from_dict(cfg["model"])
    layers = positions = None
    if model.family == "hf":
        from workbench.models.lm import model_folder

        hf = json.loads((model_folder(model.name) / "config.json").read_text())
        layers, positions = hf.get("num_hidden_layers"), hf.get("max_position_embeddings")
    elif model.family == "llama":
        layers = model.resolved_depth
    prof = run.summary.get("profile") if isinstance(run.summary.get("profile"), dict) else {}
    test = run.summary.get("test") if isinstance(run.summary.get("test"), dict) else {}
    return {"model": model, "vocab": vocab, "layers": layers, "positions": positions,
            "seq_len": int(cfg.get("seq_len") or vocab.get("seq_len") or 128),
            "train_tokens": cfg.get("train_tokens"), "val_tokens": cfg.get("val_tokens"), "tokens_per_s": test.get("tokens_per_s"), "tokens_per_s_b32": prof.get("tokens_per_s_b32")}


def cut_student(teacher: str, store: RunStore, keep: tuple[int, ...] | None = None) -> tuple[ModelConfig, tuple]:
    """(the student's ModelConfig, the kept layers) of a student cut from a Hugging Face teacher: its layers `keep`
    (default every other one), initialised from its weights (`--student-from-teacher --keep-layers`)."""
    import json

    from workbench.experiments.strategies import teacher_model_config

    config = teacher_model_config(teacher, store) if not store.exists(teacher) else \
        ModelConfig.from_dict(store.get(teacher).config["model"])
    if config.family != "hf":
        raise ValueError(f"a student cut from its teacher needs a Hugging Face teacher (hf:), not {config.label()}")
    if not keep:
        from workbench.models.lm import is_causal, model_folder
        from workbench.models.text import resolve_hf

        folder = model_folder(config.name) if is_causal(config.name) else resolve_hf(config.name)
        n = json.loads((folder / "config.json").read_text()).get("num_hidden_layers", 2)
        keep = tuple(range(0, int(config.depth or n), 2))
    return replace(config, depth=len(keep), pretrained=False), tuple(keep)


CALIBRATION_BLOCKS = 32  # training blocks a cut by block influence is measured on (32 × 128 tokens for SmolLM2)


def cut_by_influence(teacher: str, store: RunStore, n: int, dataset: str, data_dir=None, seq_len=None,
                     train_tokens=None, val_tokens=None) -> tuple[ModelConfig, tuple, list[float]]:
    """(the student's ModelConfig, the kept layers, every layer's block influence) of a language-model student
    cut from its teacher to the `n` layers of the highest block influence (ShortGPT; `models.lm.block_influence`),
    measured on the first CALIBRATION_BLOCKS training blocks of the corpus. ValueError in one sentence for a
    teacher that is not a causal language model, or an `n` it cannot keep."""
    from workbench.models.lm import CausalLM, block_influence
    from workbench.tasks.lm import LanguageModelling
    from workbench.train.teachers import load_teacher

    model = load_teacher(teacher, store).model
    if not isinstance(model, CausalLM):
        raise ValueError(f"--keep-top measures the layers of a causal language model; the teacher {teacher} is "
                         f"{getattr(getattr(model, 'kdw_config', None), 'label', lambda: type(model).__name__)()}")
    layers = len(model.hf.model.layers)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < layers:
        raise ValueError(f"--keep-top keeps between 1 and {layers - 1} of the teacher's {layers} layers, got {n}")
    data = LanguageModelling().load(dataset, data_dir, tokenizer=model.kdw_vocab["tokenizer"], seq_len=seq_len,
                                    train_tokens=train_tokens, val_tokens=val_tokens)
    importance = block_influence(model, data.x_train[:CALIBRATION_BLOCKS])
    keep = tuple(sorted(sorted(range(layers), key=lambda i: -importance[i])[:n]))
    config = ModelConfig.from_dict(store.get(teacher).config["model"]) if store.exists(teacher) else \
        replace(model.kdw_config)
    return replace(config, depth=n, pretrained=False), keep, importance


# ---------------------------------------------------------------------------
# runs: curves and groups


def describe_config(c: TrainConfig) -> str:
    """The exact settings of one run, in one line, as the Train page shows them before launch."""
    labels = "all labels" if c.labels is None else (f"{c.labels:,} labels" if isinstance(c.labels, int)
                                                    else f"{100 * c.labels:g}% of the labels")
    if task_for(c.dataset, c.task).token_level:
        from workbench.data.lm import DEFAULT_SEQ_LEN, DEFAULT_TRAIN_TOKENS

        labels = (f"{c.train_tokens or DEFAULT_TRAIN_TOKENS:,} training tokens in blocks of "
                  f"{c.seq_len or DEFAULT_SEQ_LEN}")
        if c.keep_layers:
            labels += f", the teacher's layers {', '.join(map(str, c.keep_layers))}"
    size = f" at {c.image_size}px" if c.image_size else ""
    return (f"{ROLE_NAMES.get(c.kind, c.kind)} {c.model.label()}{size} ({c.objective()}) on {c.dataset}, "
            f"{plural(c.epochs, 'epoch')}, {labels}, lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}")


# ---------------------------------------------------------------------------
# the demo

@dataclass(frozen=True)
class DemoSetting:
    dataset: str
    teacher: str  # a shipped teacher's name
    student: ModelConfig
    labels: int | None  # visible training labels (None = all)
    epochs: int
    temperature: float
    alpha: float
    batch_size: int = 128
    lr: float = 3e-3
    why: str = ""


DEMOS = {
    "fashion-mnist": DemoSetting(
        dataset="fashion-mnist", teacher="fashion-mnist-cnn", student=ModelConfig("mlp", depth=1, width=64),
        labels=1000, epochs=10, temperature=4.0, alpha=0.9,
        why="1,000 visible labels; the teacher's soft targets cover the other 53,000 training images"),
    "digits": DemoSetting(
        dataset="digits", teacher="digits-cnn", student=ModelConfig("mlp", depth=1, width=32),
        labels=100, epochs=20, temperature=4.0, alpha=0.9, batch_size=64,
        why="100 visible labels; the teacher's soft targets cover the other training images"),
}


def demo_configs(setting: DemoSetting, seed: int, group: str, device: str = "auto") -> list[TrainConfig]:
    """[scratch twin, distilled run] of the demo for one seed."""
    kd = TrainConfig(kind="kd", dataset=setting.dataset, model=setting.student, teacher=setting.teacher,
                     method="kd", method_params={"temperature": setting.temperature, "alpha": setting.alpha},
                     epochs=setting.epochs, labels=setting.labels, batch_size=setting.batch_size, lr=setting.lr,
                     seed=seed, group=group, device=device)
    return distill_configs(kd)


# ---------------------------------------------------------------------------
# the classic recipe: a ResNet-50 teacher distilled into MobileNetV2

@dataclass(frozen=True)
class ClassicRecipe:
    """ResNet-50 → MobileNetV2, the textbook pair (torchvision models, ImageNet normalisation).

    The teacher is fine-tuned from `teacher_init` (ImageNet weights in the classic write-ups; any state dict
    or safetensors file) or from torchvision's own weights with `pretrained`; the student is distilled at
    `student_size`, which may be below the teacher's `teacher_size` (its logits are cached at its own size).
    """

    dataset: str  # cifar10, image-folder, csv, or fashion-mnist (seen in colour)
    data_dir: str | None = None
    teacher_size: int = 224  # 224 on a GPU; 32–64 on a CPU
    student_size: int = 224
    teacher_epochs: int = 5
    student_epochs: int = 10
    teacher_init: str | None = None  # a ResNet-50 state dict (its 1,000-class head is replaced)
    pretrained: bool = False  # torchvision's ImageNet weights instead (online, or torch's download cache)
    temperature: float = 4.0
    alpha: float = 0.9
    batch_size: int = 128
    lr: float = 1e-3  # fine-tuning: lower than training from scratch
    device: str = "auto"
    seed: int = 0

    def teacher_config(self, group: str) -> TrainConfig:
        return TrainConfig(kind="teacher", dataset=self.dataset, data_dir=self.data_dir,
                           model=parse_model("torchvision:resnet50", pretrained=self.pretrained),
                           init=self.teacher_init, image_size=self.teacher_size, channels=3,
                           epochs=self.teacher_epochs, batch_size=self.batch_size, lr=self.lr, device=self.device,
                           seed=self.seed, group=group)

    def student_configs(self, teacher: str, group: str, size: int | None = None) -> list[TrainConfig]:
        """[scratch twin, distilled] MobileNetV2 at `size` (default `student_size`), taught by run `teacher`."""
        kd = TrainConfig(kind="kd", dataset=self.dataset, data_dir=self.data_dir, teacher=teacher,
                         model=parse_model("torchvision:mobilenet_v2"), image_size=size or self.student_size,
                         channels=3, method="kd", method_params={"temperature": self.temperature,
                                                                 "alpha": self.alpha},
                         epochs=self.student_epochs, batch_size=self.batch_size, lr=3e-3, device=self.device,
                         seed=self.seed, group=group)
        return distill_configs(kd)
