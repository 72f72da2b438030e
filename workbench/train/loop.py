"""One training loop for every run: teachers, scratch students and distilled students.

Every run has a Method (workbench.core.methods) that owns its objective: ``ce`` for teacher and
scratch runs, ``kd`` (L = (1 − α)·CE + α·T²·KL, T and α among its hyperparameters) or
another method for distilled students. The loop sums the method's named terms and logs each
one; it never branches on a method's name.

A `TrainConfig` says everything about a run; `train(config)` runs it in four stages, each a
function: `prepare` (device, data, teacher, method, student, batches; `check_setup` is this
stage, so a launch that checks first loads the teacher once), `start` (the teacher's cached
targets, hooks, optimiser), `train_epoch` and `evaluate` per epoch, and `finish` (test of the
best and the last epoch, summary, profile). With a label budget (`labels`), only that many
training labels are visible: teacher and scratch runs train on those alone, with as many
optimiser steps as a full epoch would take, while a KD run also sees every unlabelled image,
where the teacher's signal is all it gets (Hinton's transfer set).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from workbench.core.hooks import FeatureHooks
from workbench.core.methods import (
    DISTILLATION_METHODS,
    Method,
    StepContext,
    TopK,
    build_method,
    default_method,
    method_info,
)
from workbench.data.datasets import Dataset, label_mask
from workbench.data.images import StreamLoader
from workbench.data.lm import batch_topk
from workbench.data.loaders import BatchLoader
from workbench.data.transforms import AUGMENTATIONS
from workbench.errors import CheckpointDamaged
from workbench.evaluate.metrics import model_profile, profile_for
from workbench.io import atomic_write
from workbench.models.zoo import ModelConfig, count_params, is_convnet, load_weights
from workbench.store.runs import migrate_config
from workbench.tasks import DATASETS, infer_task, task_for
from workbench.train.steps import (  # noqa: F401 (pick_device, available_devices: this module's public names)
    _emit,
    autocast_dtype,
    available_devices,
    check_finite,
    lr_at,
    make_optimizer,
    pick_device,
    save_epoch_weights,
)
from workbench.train.teachers import (
    Teacher,
    cached_logits,
    data_identity,
    load_teacher,
    reading_rate,
    teacher_samples,
    teacher_topk,
)
from workbench.train.tracking import check_target

KINDS = ("teacher", "scratch", "kd")
MAX_EPOCHS = 100_000  # far beyond any run here; a typo of 99999999999 is refused, not queued
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "kd"  # teacher | scratch | kd: the run's role in a comparison
    dataset: str = "digits"  # a name from workbench.tasks.DATASETS (its task follows from it)
    data_dir: str | None = None  # folder for image-folder / local copies; the CSV file of csv and table
    label_column: str | None = None  # table: the CSV column that holds the class (None: "label")
    model: ModelConfig = field(default_factory=lambda: ModelConfig("mlp", depth=1, width=64))  # the model trained
    teacher: str | None = None  # shipped teacher name, run id or .safetensors path (kd; scratch: for agreement)
    method: str | None = None  # a name from workbench.core.methods.METHODS; default: ce (teacher, scratch), kd (kd)
    method_params: dict = field(default_factory=dict)  # the method's hyperparameters (T and α for kd); stored resolved
    epochs: int = 10  # passes over the training set (over the transfer set with a label budget)
    batch_size: int = 128
    lr: float = 3e-3  # peak learning rate (warm-up, then cosine to 0)
    weight_decay: float = 5e-4
    grad_clip: float | None = None  # max gradient norm (None: the task's default, 1.0 for language models; 0: off)
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, Nesterov)
    labels: int | float | None = None  # visible training labels: a count (int), a fraction in (0, 1] (float), or all
    augment: str = "auto"  # auto (the data set's default) | none | flip | crop | flip+crop
    seed: int = 0  # model init, batch order, augmentation and label subset
    device: str = "auto"  # auto = cuda, then mps, then cpu
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)
    compile: bool = False  # torch.compile the student (opt-in)
    teacher_cache: bool = True  # look the teacher's targets up per view instead of running it on every batch
    group: str | None = None  # a tag that ties runs together (a demo, a sweep)
    profile: bool = True  # measure latency/throughput at the end
    teacher_weights: tuple | None = None  # weights of an ensemble teacher ("a,b"); equal if None
    image_size: int | None = None  # the student's square input side (None: the data set's); the teacher keeps its own
    channels: int | None = None  # the student's input channels, 1 or 3 (None: the data set's; grey ↔ colour converts)
    max_length: int | None = None  # text: tokens per sample, longer ones truncated (None: 64)
    tokenizer: str | None = None  # text: a tokenizer folder (None: the teacher's, an hf: model's, else MiniLM's)
    keep_layers: tuple | None = None  # a student cut from its hf: teacher: the teacher's layers it keeps (0-based)
    init: str | None = None  # weights to start the student from: .safetensors or a .pth/.pt state dict
    trust_factory: bool = False  # a teacher file may name a factory, whose code then runs (--trust-factory)
    allow_outside: bool = False  # csv: the manifest may list images outside its own folder (--allow-outside)
    stream: bool | None = None  # image folders / CSV: stream from the disk cache (None: when they exceed the budget)
    nproc: int = 1  # data-parallel processes (torch.distributed.run): gloo on the CPU, NCCL on GPUs
    nnodes: str | None = None  # several machines: torch.distributed.run's --nnodes ("2", or "1:4" elastic)
    rdzv_endpoint: str | None = None  # several machines: host:port of the c10d rendezvous
    rdzv_id: str | None = None  # several machines: the same id on every machine (default: the run id)
    track: tuple = ()  # where else to log: "tensorboard[:DIR]", "mlflow[:URI]" (workbench.train.tracking)
    task: str | None = None  # the task's name, derived: the data set's (language modelling for a language model)
    seq_len: int | None = None  # language models: tokens a model reads per block (None: 128)
    train_tokens: int | None = None  # language models: the training corpus's cap in tokens (None: 20,000)
    val_tokens: int | None = None  # language models: tokens of the validation and of the test split (None: 4,096)
    topk: int | None = None  # language models: the teacher's logits cached per token (None: 32)

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        # the task follows from the data set, and for a data set of several (fortunes) from the model: always
        # derived, so a config copied with another data set or model has the right one
        object.__setattr__(self, "task", infer_task(self.dataset, self.model))
        task = task_for(self.dataset, self.task)
        lm = task.token_level
        if self.method is None:
            object.__setattr__(self, "method", default_method(self.kind))
        info = method_info(self.method)
        if self.kind != "kd" and info.distils:
            raise ValueError(f"{self.kind} runs train on labels alone (method {default_method(self.kind)}), "
                             f"not {self.method!r}")
        if self.kind == "kd" and self.method not in DISTILLATION_METHODS:
            raise ValueError(f"a kd run needs a distillation method ({', '.join(DISTILLATION_METHODS)}), "
                             f"not {self.method!r}")
        if self.kind == "kd" and not self.teacher and info.needs_teacher:
            raise ValueError(f"a kd run with {self.method} needs a teacher")
        # unknown or out-of-range hyperparameters are an error now, not mid-run; stored resolved
        given = {**task.method_defaults.get(self.method, {}), **self.method_params}  # a task's own starting values
        object.__setattr__(self, "method_params", info(given).p)
        if self.teacher_weights is not None:
            object.__setattr__(self, "teacher_weights", tuple(_finite("teacher weight", w)
                                                              for w in self.teacher_weights))
        if lm and self.kind == "teacher" and self.epochs == 0:
            pass  # a pretrained language model registered as a teacher: evaluated, not trained
        elif isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or not 1 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be a whole number from 1 to {MAX_EPOCHS:,}, got {self.epochs}"
                             + (" (0 only evaluates a pretrained language-model teacher)" if lm else ""))
        for key, low, high in (("seq_len", 2, 8192), ("train_tokens", 3, 10 ** 10), ("val_tokens", 3, 10 ** 9),
                               ("topk", 1, 10 ** 7)):
            v = getattr(self, key)
            if v is None:
                continue
            if not lm:
                raise ValueError(f"{key} is for language models, not {task.title.lower()} runs")
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise ValueError(f"{key} must be a whole number between {low:,} and {high:,}, got {v!r}")
        if lm and self.labels is not None:
            raise ValueError("a label budget is for classifiers; a language model learns from every token (cap the "
                             "corpus with train_tokens instead)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {self.batch_size}")
        if not _finite("lr", self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip is not None and _finite("grad_clip", self.grad_clip) < 0:
            raise ValueError(f"grad_clip must be a gradient norm >= 0 (0 switches clipping off), got {self.grad_clip}")
        if _finite("weight_decay", self.weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.augment != "auto" and self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be auto or one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.labels is not None:
            ok = (isinstance(self.labels, int) and not isinstance(self.labels, bool) and self.labels >= 1) or \
                 (isinstance(self.labels, float) and 0 < _finite("labels", self.labels) <= 1)
            if not ok:
                raise ValueError(f"labels must be a count (a whole number >= 1) or a fraction in (0, 1], "
                                 f"got {self.labels!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2 ** 63:
            raise ValueError(f"seed must be a whole number in [0, 2^63), got {self.seed}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or not 4 <= self.image_size <= 1024):
            raise ValueError(f"image_size must be a whole number of pixels between 4 and 1024, got {self.image_size}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or not 1 <= self.max_length <= 4096):
            raise ValueError(f"max_length must be a whole number of tokens between 1 and 4096, got {self.max_length}")
        if self.keep_layers is not None:
            keep = tuple(self.keep_layers)
            if not keep or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in keep) \
                    or len(set(keep)) != len(keep):
                raise ValueError(f"keep_layers must name distinct layers of the teacher (0, 2, 4), got {self.keep_layers}")
            if not self.teacher:
                raise ValueError("a student cut from its teacher (keep_layers) needs a teacher")
            object.__setattr__(self, "keep_layers", keep)
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (colour), got {self.channels}")
        if self.init is not None and not str(self.init).strip():
            raise ValueError("init must name a weights file")
        if isinstance(self.nproc, bool) or not isinstance(self.nproc, int) or self.nproc < 1:
            raise ValueError(f"nproc must be a whole number >= 1, got {self.nproc}")
        if self.nnodes is not None and not re.fullmatch(r"\d+(:\d+)?", str(self.nnodes)):
            raise ValueError(f"nnodes must be a number of machines (2) or a range (1:4), got {self.nnodes!r}")
        if self.rdzv_endpoint is not None and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", str(self.rdzv_endpoint)):
            raise ValueError(f"rdzv_endpoint must be host:port, got {self.rdzv_endpoint!r}")
        if self.rdzv_id is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(self.rdzv_id)):
            raise ValueError(f"rdzv_id must be 1-64 letters, digits, '_', '.' or '-', got {self.rdzv_id!r}")
        object.__setattr__(self, "track", tuple(self.track or ()))

        for target in self.track:
            check_target(target)

    @property
    def temperature(self) -> float | None:
        """The method's temperature (T for kd), or None for a method without one."""
        key = method_info(self.method).temperature_key
        return float(self.method_params[key]) if key else None

    def build_method(self) -> Method:
        return build_method(self.method, self.method_params)

    def objective(self) -> str:
        """The run's own objective with its values, as plain text."""
        return self.build_method().objective_text()

    def with_absolute_paths(self, cwd: str | os.PathLike | None = None) -> "TrainConfig":
        """This config with every path it names resolved against `cwd` (default: the current folder): the data
        folder or file, the weights to start from, a factory file, a Hugging Face or tokenizer folder and a teacher
        file. A queued job runs in the worker's folder, not the submitter's, so a relative path there would miss
        the data or, worse, find other data of the same name. Names that are not paths (data sets, shipped
        teachers, run ids, hub ids) stay as they are."""
        base = Path(cwd or os.getcwd())

        def path(p):
            return None if p is None else str((base / Path(str(p)).expanduser()).absolute())

        def existing(p):  # a folder or file if one of that name is here, else a name (a hub id, a run id)
            if p is None or Path(str(p)).expanduser().is_absolute():
                return p
            return path(p) if (base / Path(str(p)).expanduser()).exists() else p

        def teacher(spec):
            if not spec:
                return spec
            parts = []
            for part in spec.split(","):
                part = part.strip()
                if not part.startswith(("shipped:", "run:")) and (
                        part.endswith(".safetensors") or (base / Path(part).expanduser()).is_file()):
                    part = path(part)
                parts.append(part)
            return ",".join(parts)

        model = self.model
        if model.family == "factory" and model.name and ":" in model.name:
            where, fn = model.name.rsplit(":", 1)
            if where.endswith(".py") or "/" in where or os.sep in where:
                model = replace(model, name=f"{path(where)}:{fn}")
        elif model.family == "hf" and model.name:
            model = replace(model, name=existing(model.name))
        return replace(self, model=model, data_dir=path(self.data_dir), init=path(self.init),
                       tokenizer=existing(self.tokenizer), teacher=teacher(self.teacher))

    def with_params(self, **params) -> "TrainConfig":
        """This config with some of the method's hyperparameters changed."""
        return replace(self, method_params={**self.method_params, **params})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["teacher_weights"] = list(self.teacher_weights) if self.teacher_weights is not None else None
        d["track"] = list(self.track)
        d["keep_layers"] = list(self.keep_layers) if self.keep_layers is not None else None
        return d

    def record(self, command: str = "") -> dict:
        """What a run's config.json holds: the config, the student's label, the objective and how it was launched."""
        method = self.build_method()
        return self.to_dict() | {"model_label": self.model.label(), "objective": method.objective_text(),
                                 "method_label": method.label(), "task": self.task,
                                 "method_temperature": method.temperature,
                                 "method_weight": method.p[method.weight_key] if method.weight_key else None,
                                 "command": command}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a config.json of any schema version (older ones kept T and α on the config)."""
        d = migrate_config(d)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _finite(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return f


def resolve_augment(config: TrainConfig, dataset) -> str:
    return dataset.default_augment if config.augment == "auto" else config.augment


class TqdmProgress:
    """A callback drawing a tqdm bar over the steps, with the epoch's loss terms and validation accuracy."""

    def __init__(self, desc: str = "training"):
        self.desc, self.bar, self.stage, self.stage_text = desc, None, None, None

    def __call__(self, event: dict) -> None:
        from tqdm.auto import tqdm

        if event["event"] == "stage":  # before the first step: a bar of its own, in percent, with its ETA
            if event.get("text") != self.stage_text:
                if self.stage is not None:
                    self.stage.close()
                self.stage_text = event.get("text")
                tqdm.write(f"{self.desc}: {self.stage_text}", file=sys.stderr)
                self.stage = tqdm(total=100, desc=f"{self.desc} (preparing)", unit="%", leave=False,
                                  dynamic_ncols=True, mininterval=0.5, bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]")
            self.stage.n = 100 * float(event.get("fraction") or 0.0)
            self.stage.refresh()
            return
        if self.stage is not None:
            self.stage.close()
            self.stage = None
        if event["event"] == "start":
            tqdm.write(f"{self.desc}: {event['objective']}", file=sys.stderr)  # beside the bar, not in the table
            self.bar = tqdm(total=event["total_steps"], desc=self.desc, unit="step", leave=True,
                            dynamic_ncols=True, mininterval=0.5)
        elif event["event"] == "step" and self.bar is not None:
            self.bar.update(1)
        elif event["event"] == "epoch" and self.bar is not None:
            terms = {k[5:]: f"{v:.3f}" for k, v in event.items() if k.startswith("loss_")}
            score = {"val_ppl": f"{event['val_ppl']:.1f}"} if "val_ppl" in event else \
                {"val_acc": f"{100 * event['val_acc']:.2f}%"}
            self.bar.set_postfix(epoch=event["epoch"], **terms, **score)
        elif event["event"] == "end" and self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------
# the stages of a run

@dataclass
class Session:
    """Everything one run needs while it trains; made by `prepare`, completed by `start`."""

    config: TrainConfig
    device: torch.device
    dataset: Dataset  # on the CPU
    ds: Dataset  # the same tensors on the training device
    augment: str
    teacher: Teacher | None
    method: Method
    student: torch.nn.Module
    visible: torch.Tensor  # (N_train,) bool: labels the run may see
    loader: BatchLoader  # or images.StreamLoader for streamed data
    setup_s: float = 0.0
    teacher_data: Dataset | None = None  # the samples as the teacher sees them (its size, channels, normalisation)
    init: dict | None = None  # what load_weights reported: the source, and the layers that are new
    shape: tuple = ()  # one sample as the student reads it
    topk: int | None = None  # the teacher's logits cached per position, where the task caches only the top k
    # filled in by start()
    forward: torch.nn.Module | None = None  # the student, or its torch.compile'd (or DDP) version
    optimizer: torch.optim.Optimizer | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    t_targets: torch.Tensor | None = None  # (views, N_train, K) method.teacher_target of the cached logits
    t_topk: tuple | None = None  # (values, ids, _) (N_train, L, k) memory-mapped: the cached top k of the train split
    views: tuple[str, ...] = ("plain",)
    val_teacher: object = None  # the teacher's outputs on the validation split: (N_val, K) logits, or its top k
    test_teacher: object = None
    s_hooks: FeatureHooks | None = None
    t_hooks: FeatureHooks | None = None
    before: dict | None = None  # a student cut from its teacher: its test figures before any training (healing)
    # progress
    step: int = 0
    train_s: float = 0.0
    best: dict = field(default_factory=dict)  # val_<score>, val_loss, epoch, state of the best epoch so far
    history: list = field(default_factory=list)
    epoch: int = 0  # the last completed epoch
    rank: int = 0  # this process's rank, and how many train together (torch.distributed)
    world: int = 1
    task: object = None  # the workbench.tasks.Task of the data set

    @property
    def total_steps(self) -> int:
        return self.config.epochs * len(self.loader)

    @property
    def grad_clip(self) -> float | None:
        clip = self.config.grad_clip if self.config.grad_clip is not None else self.task.grad_clip
        return clip or None  # 0 switches it off


def _loader(config: TrainConfig, ds: Dataset, visible: torch.Tensor, method: Method, augment: str, device,
            rank: int, world: int):
    """The batches of a run: the transfer set (kd: every training sample, labels where visible) as slices of
    device tensors, or streamed from the disk cache for large image sets."""
    steps_per_epoch = len(ds.x_train) // min(config.batch_size, len(ds.x_train))
    kw = dict(augment=augment, seed=config.seed, shard=(rank, world))
    if world > 1 and config.batch_size % world:
        raise ValueError(f"the batch size ({config.batch_size}) must split evenly over {world} processes")
    if not method.learns_from_unlabelled:  # labels alone, with the same number of steps as a full epoch
        kw.update(indices=visible.nonzero().squeeze(1), steps=steps_per_epoch)
    if ds.streamed:  # images stay on disk; a DataLoader with workers reads and normalises each batch
        return StreamLoader(ds.x_train, ds.y_train, config.batch_size, device=device, **kw)
    return BatchLoader(ds.x_train, ds.y_train, config.batch_size, **kw)


def _student(config: TrainConfig, task, dataset: Dataset, teacher: Teacher | None, shape,
             student: torch.nn.Module | None) -> torch.nn.Module:
    """The run's student: cut from its teacher (DistilBERT-style), built from the config, or a module of the
    user's that sees the data at the config's size and channels."""
    if student is None and config.keep_layers is not None:
        student = task.student_from_teacher(teacher.model, config.keep_layers)
        task.adopt_cut(student, config, shape, dataset)
    elif student is None:
        task.check_family(config.model.family)
        student = task.build_student(config.model, shape, dataset)
    else:
        student.kdw_input_shape, student.kdw_num_classes = shape, dataset.num_classes
        student.kdw_config = getattr(student, "kdw_config", config.model)
    return student


def prepare(config: TrainConfig, store=None, dataset: Dataset | None = None, teacher: Teacher | None = None,
            student: torch.nn.Module | None = None) -> Session:
    """Stage 1: device, seeds, data, the frozen teacher, the method and the student, the batches.

    Cheap next to training, and complete enough to refuse what cannot work (a teacher that does
    not fit the data, a label budget larger than the training set, AT on an MLP), so `check_setup`
    is this function. Pass `teacher` to reuse one already loaded, and `student` to train a model you
    built yourself (a pruned student, say) instead of `config.model`.
    """
    t0 = time.perf_counter()
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = pick_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    task = task_for(config.dataset, config.task)
    method = config.build_method()
    task.check_method(method)
    if config.teacher and teacher is None:
        teacher = load_teacher(config.teacher, store, temperature=method.temperature or 1.0,
                               weights=config.teacher_weights, trust_factory=config.trust_factory)
    if dataset is None:  # image folders decode once at the larger of the student's and the teacher's sizes
        dataset = task.load_for(config, teacher.model if teacher is not None else None)
    teacher_data = None
    if teacher is not None:
        task.check_teacher(teacher.model, dataset, teacher.trained_on, data_identity(dataset.name, config.data_dir))
        teacher.model.to(device)
        teacher_data = task.view_for(dataset, teacher.model)  # the teacher sees the data its own way
    visible = label_mask(dataset.y_train, config.labels, seed=config.seed)  # (N,) bool
    augment = resolve_augment(config, dataset)
    if augment not in task.augmentations:
        raise ValueError(f"{task.title.lower()} samples take no {augment} augmentation; use "
                         f"{' or '.join(task.augmentations)}")

    torch.manual_seed(config.seed)  # the same init for a scratch student and its distilled twin
    shape = task.student_shape(dataset, config)
    student = _student(config, task, dataset, teacher, shape, student)
    task.check_pair(student, teacher.model if teacher is not None else None, config)
    task.prepare_student(student, dataset, shape)
    task.probe(student, shape)  # one sentence for a model that does not take these samples
    init = load_weights(student, config.init) if config.init else None
    data = task.view_for(dataset, student)  # what the student sees, on the CPU
    student = student.to(device)
    method.setup(student, teacher.model if teacher else None, data.input_shape, data.num_classes,
                 len(data.x_train))  # a method that cannot work with these models says so here
    method.to(device)
    ds = data.to(device)
    loader = _loader(config, ds, visible, method, augment, device, rank, world)
    return Session(config, device, data, ds, augment, teacher, method, student, visible.to(device), loader,
                   setup_s=time.perf_counter() - t0, teacher_data=teacher_data, init=init, rank=rank, world=world,
                   task=task, shape=tuple(shape), best={f"val_{task.score.key}": task.score.worst,
                                                        "val_loss": math.inf, "epoch": 0, "state": None},
                   topk=(config.topk or task.default_topk) if task.default_topk else None)


def check_setup(config: TrainConfig, store=None, teacher: Teacher | None = None) -> Session:
    """Fail fast, before any run folder exists: the data set loads, the teacher loads and fits it,
    the device exists, the label budget fits, and the method works with these models.
    Returns the prepared session, which `train(..., session=)` can go on with."""
    return prepare(config, store, teacher=teacher)


def _stage_reporter(callbacks, text: str, total: int):
    """progress(done, total) callbacks for the wait before the first step, as one bar over several parts."""
    t_stage, state = time.perf_counter(), {"done": 0}

    def part(size: int):
        base = state["done"]
        state["done"] += size

        def report(n, _):
            frac = (base + n) / max(1, total)
            spent = time.perf_counter() - t_stage
            _emit(callbacks, {"event": "stage", "text": text, "fraction": frac,
                              "eta_s": spent / frac * (1 - frac) if frac > 0 else None})
        return report
    return part


def _teacher_samples(s: Session, cache_dir, callbacks) -> None:
    """Sequence-level KD: the training split becomes the teacher's own continuations of its blocks."""
    n = len(s.dataset.x_train)
    part = _stage_reporter(callbacks, f"the teacher writes its own text for sequence-level KD: {n} blocks of "
                           f"{s.dataset.x_train.shape[1]:,} tokens (first run only, then cached)", n)
    samples = teacher_samples(s.teacher, s.dataset, cache_dir, s.device, s.config.seed, part(n))
    fp = hashlib.sha256(f"{s.dataset.fingerprint}|teacher-samples|{s.teacher.digest}|{s.config.seed}".encode())
    s.dataset = replace(s.dataset, x_train=samples, fingerprint=fp.hexdigest()[:16])
    s.teacher_data = s.dataset
    s.ds = replace(s.ds, x_train=samples.to(s.device), fingerprint=s.dataset.fingerprint)
    s.loader = _loader(s.config, s.ds, s.visible, s.method, s.augment, s.device, s.rank, s.world)


def _teacher_outputs(s: Session, store, callbacks) -> None:
    """The teacher's targets of the training split per view (when the method reads them and they can be cached)
    and its outputs on the validation and test splits: every logit, or the top k per token where the task caches
    only those; computed once into the store's cache, read from there by every later run."""
    config, method, teacher = s.config, s.method, s.teacher
    topk = s.topk is not None  # the task caches the teacher's top k per position, not every logit
    cacheable = method.teacher_input == "logits" and method.uses_teacher_targets and config.epochs > 0 \
        and (config.teacher_cache or topk) and "crop" not in s.augment  # random crops cannot be enumerated
    jobs = ([("train", v) for v in s.views] if cacheable else []) + [("val", "plain"), ("test", "plain")]
    sizes = {sp: len(getattr(s.teacher_data, f"x_{sp}")) for sp in ("train", "val", "test")}
    total = sum(sizes[j] for j, _ in jobs)
    if topk:
        n_tok = total * (s.teacher_data.x_train.shape[1] - 1)
        rate = reading_rate(store, teacher.spec)
        text = (f"caching the teacher's top-{s.topk} logits of {n_tok:,} tokens ({', '.join(j for j, _ in jobs)}"
                + (f"; about {n_tok / rate:,.0f} s at the {rate:,.0f} tokens/s its run read at" if rate else "")
                + "; first run only, every later run reads them)")
    else:
        text = "computing the teacher's logits (first run only; cached for every later run)"
    part = _stage_reporter(callbacks, text, total)
    targets = []
    for split, v in jobs:
        report = part(sizes[split])
        if topk:
            out = teacher_topk(teacher, s.teacher_data, split, s.topk, store.cache_dir if store else None, s.device,
                               report)
        else:
            out = cached_logits(teacher, s.teacher_data, split, v, (store.cache_dir / "teacher-logits")
                                if store is not None else None, s.device if split == "train" else "cpu",
                                progress=report)
        if split == "train" and topk:
            s.t_topk = out
        elif split == "train":  # (N_train, K): what the method asked for, once per view
            targets.append(method.teacher_target(out))
        elif split == "val":
            s.val_teacher = out
        else:
            s.test_teacher = out
    if targets:
        s.t_targets = torch.stack(targets)  # (views, N_train, K)


def start(s: Session, store=None, callbacks=()) -> None:
    """Stage 2: the teacher's cached targets (and, for sequence-level KD, its samples), feature hooks,
    compilation and the optimiser.

    Under torch.distributed, rank 0 computes the teacher's outputs into the disk cache first, and the other
    ranks read them from there: the teacher runs once, not once per rank.
    """
    t0 = time.perf_counter()
    if s.world > 1 and s.rank != 0:
        torch.distributed.barrier()  # rank 0 is filling the teacher's cache
    config, method, teacher = s.config, s.method, s.teacher
    s.views = s.task.cache_views(s.augment)
    if method.teacher_samples and teacher is not None and config.epochs > 0:
        _teacher_samples(s, store.cache_dir if store is not None else None, callbacks)
    if teacher is not None:
        _teacher_outputs(s, store, callbacks)
    if s.world > 1 and s.rank == 0:
        torch.distributed.barrier()  # the cache is on disk: the other ranks may read it
    s.channels_last = s.device.type == "cuda" and is_convnet(s.student)
    if s.channels_last:
        s.student = s.student.to(memory_format=torch.channels_last)
    if method.student_features:
        s.s_hooks = FeatureHooks(s.student, list(method.student_features)).add()
    if method.teacher_features and teacher is not None:
        s.t_hooks = FeatureHooks(teacher.model, list(method.teacher_features)).add()
    # hooks need the eager module; torch.compile is for the plain logit path
    s.forward = torch.compile(s.student) if config.compile and s.s_hooks is None and s.world == 1 else s.student
    if s.world > 1:  # gradients all-reduced by DDP; BatchNorm statistics broadcast from rank 0 every step
        s.forward = torch.nn.parallel.DistributedDataParallel(
            s.student, device_ids=[s.device.index] if s.device.type == "cuda" else None)
    s.amp_dtype = autocast_dtype(s.device, config.amp)
    s.optimizer = make_optimizer(s.student, config, extra=method)
    s.setup_s += time.perf_counter() - t0


def _autocast(s: Session):
    return torch.autocast(s.device.type, dtype=s.amp_dtype or torch.float32, enabled=s.amp_dtype is not None)


def teacher_batch(s: Session, x: torch.Tensor, idx: torch.Tensor, flip: torch.Tensor | None):
    """(target, features) of the teacher for one batch `x` (what the student reads): looked up in the cache, or
    the frozen teacher run on it. The target is (N, K), or the TopK per position where the task caches only that."""
    if s.method.teacher_input == "none" or s.teacher is None or not s.method.uses_teacher_targets:
        return None, {}
    if s.t_targets is not None:  # flipped samples take the flipped view
        return (s.t_targets[0, idx] if flip is None else s.t_targets[flip.long(), idx]), {}  # (B, K)
    if s.t_topk is not None:
        v, j = batch_topk(s.t_topk, idx.cpu().numpy(), s.device)  # (B, L, k) each
        return TopK(v.reshape(-1, v.shape[-1]), j.reshape(-1, j.shape[-1])), {}  # (B·L, k)
    x_t = s.task.to_teacher(x, s.dataset, s.teacher_data)  # as the teacher sees it (its size and channels)
    with torch.no_grad(), _autocast(s):
        z_t = s.task.flat_logits(s.teacher.model(x_t)).float()  # (N, K)
    if s.topk is not None:
        return TopK(*z_t.topk(s.topk, dim=-1)), (s.t_hooks.pop() if s.t_hooks else {})
    return s.method.teacher_target(z_t), (s.t_hooks.pop() if s.t_hooks else {})


def train_step(s: Session, x, y, idx, flip) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One forward/backward/update; returns the detached terms and the step's (logits (N, K), targets (N,)), with
    no host-device sync."""
    for g in s.optimizer.param_groups:  # learning rate: warm-up then cosine
        g["lr"] = lr_at(s.step, s.total_steps, s.config.lr)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y_seen = torch.where(s.visible[idx], y, -1)  # (B,) -1 = label hidden by the budget
    inputs, targets = s.task.inputs_targets(x, y_seen)  # targets (N,): a classifier's labels, or next tokens
    with _autocast(s):
        logits = s.task.flat_logits(s.forward(inputs))  # (N, K)
    logits = logits.float()
    t_target, t_feats = teacher_batch(s, inputs, idx, flip)
    ctx = StepContext(inputs=inputs, targets=targets, idx=idx, s_logits=logits, t_target=t_target,
                      s_feats=s.s_hooks.pop() if s.s_hooks else {}, t_feats=t_feats,
                      progress=s.step / s.total_steps)
    terms = s.method.terms(ctx)
    loss = sum(terms.values())
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.world > 1:  # a method's own learnable parts (adapters, heads) average their gradients like DDP does
        for p in s.method.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= s.world
    if s.grad_clip:
        torch.nn.utils.clip_grad_norm_(s.student.parameters(), s.grad_clip)
    s.optimizer.step()
    s.step += 1
    return {k: v.detach() for k, v in terms.items()}, (logits.detach(), targets)


def train_epoch(s: Session, epoch: int, callbacks=()) -> dict:
    """Stage 3a: one pass over the batches. Sums stay on the device; one sync at the end."""
    s.student.train()
    t0 = time.perf_counter()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    seen = torch.zeros((), device=s.device, dtype=torch.long)
    for x, y, idx, flip in s.loader:
        terms, (logits, targets) = train_step(s, x, y, idx, flip)
        for k, v in terms.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        labelled = targets >= 0
        correct += ((logits.argmax(1) == targets) & labelled).sum()
        seen += labelled.sum()
        _emit(callbacks, {"event": "step", "step": s.step, "total_steps": s.total_steps, "epoch": epoch})
    if s.device.type == "cuda":
        torch.cuda.synchronize()  # timing brackets the work, not its queueing
    epoch_s = time.perf_counter() - t0
    s.train_s += epoch_s
    n = len(s.loader)
    if s.world > 1:  # every rank's share of the epoch: the means over the global batches
        for t in [*sums.values(), correct, seen]:
            torch.distributed.all_reduce(t)
        sums = {k: v / s.world for k, v in sums.items()}
    term_means = {k: (v / n).item() for k, v in sums.items()}  # one sync per term per epoch
    return {"epoch": epoch, "step": s.step, "lr": s.optimizer.param_groups[0]["lr"],
            "train_loss": sum(term_means.values()), **{f"loss_{k}": v for k, v in term_means.items()},
            "train_acc": (correct.float() / seen.clamp_min(1)).item(), "epoch_s": epoch_s, "train_s": s.train_s}


def evaluate(s: Session) -> dict:
    """Stage 3b: validation loss and score (and agreement with the teacher) of the current student."""
    m = s.task.evaluate(s.forward, s.ds, "val", s.val_teacher, s.device)
    return {f"val_{k}": v for k, v in m.items()}


def run_summary(s: Session, best_test: dict, last_test: dict, profile: bool) -> dict:
    """The summary.json of a finished run: the same keys for every task, and what its task adds."""
    config, dataset, method, task = s.config, s.dataset, s.method, s.task
    key = f"val_{task.score.key}"
    summary = {
        "kind": config.kind, "task": task.name, "model": config.model.to_dict(), "model_label": config.model.label(),
        "dataset": dataset.name, "best_epoch": s.best["epoch"], "epochs_done": len(s.history), "steps": s.step,
        f"{key}_best": s.best[key],
        "test": best_test,  # the best-validation epoch
        "test_last": last_test,  # the last epoch
        "train_s": s.train_s, "setup_s": s.setup_s, "augment": s.augment, "device": str(s.device),
        "input_shape": list(s.shape),
        "method": {"name": method.name, "params": method.p, "objective": method.objective_text(),
                   "title": method.title, "citation": method.citation},
    }
    if dataset.num_classes:  # a data set with labels: how many the run could see
        summary["visible_labels"] = int(s.visible.sum())
    if s.init is not None:
        summary["init"] = s.init
    if dataset.skipped:
        summary["skipped_images"] = {"count": len(dataset.skipped), "first": dataset.skipped[:5]}
    summary.update(task.summary_extra(s.student, dataset, s.device, config, method))
    if profile:
        summary["profile"] = profile_for(task, copy.deepcopy(s.student).float(), dataset, "cpu")
    if s.teacher is not None:
        summary["teacher"] = teacher_summary(s.teacher, task, s.teacher_data, s.test_teacher, profile)
    if s.before is not None:
        summary["healing"] = healing(s.before, best_test, (summary.get("teacher") or {}).get("test") or {},
                                     task.score)
    why = task.did_not_learn(summary, config) if config.epochs > 0 else None  # a pretrained teacher is as it is
    if why:
        summary["did_not_learn"] = why
    return summary


def healing(before: dict, after: dict, teacher: dict, score) -> dict:
    """How much of the gap between a cut student and its teacher training closed, on the test set:

    .. math:: \\text{gap closed} = \\frac{s_{cut} - s_{student}}{s_{cut} - s_{teacher}}

    with s the task's score (perplexity for a language model; accuracy, signs and all, for a classifier): 0 is no
    healing, 1 is the teacher's quality, below 0 worse than the cut model. None where the cut was already as good
    as the teacher."""
    key = score.title if score.title in before else score.key
    cut, student, teacher_value = before.get(key), after.get(key), teacher.get(key)
    gap = None
    if None not in (cut, student, teacher_value) and cut != teacher_value:
        gap = (cut - student) / (cut - teacher_value)
    return {"before": {k: v for k, v in before.items() if isinstance(v, (int, float))}, "key": key,
            "cut": cut, "student": student, "teacher": teacher_value, "gap_closed": gap}


def finish(s: Session, run=None, profile: bool = True) -> dict:
    """Stage 4: test the best-validation and the last epoch, profile, write the summary."""
    for hooks in (s.s_hooks, s.t_hooks):
        if hooks is not None:
            hooks.remove()
    student = s.student
    last_state = copy.deepcopy(student.state_dict())
    last_test = s.task.test_metrics(student, s.ds, s.test_teacher, s.device)
    best_test = last_test
    if s.best["state"] is not None and s.best["epoch"] != s.epoch:  # else the same weights
        student.load_state_dict(s.best["state"])
        best_test = s.task.test_metrics(student, s.ds, s.test_teacher, s.device)
    summary = run_summary(s, best_test, last_test, profile)
    student.load_state_dict(last_state)
    if run is not None:
        run.write_summary(summary)
    if s.best["state"] is not None:
        student.load_state_dict(s.best["state"])
    return summary


def train(config: TrainConfig, *, run=None, callbacks=(), store=None, dataset=None, teacher: Teacher | None = None,
          session: Session | None = None, student: torch.nn.Module | None = None, resume=None) -> dict:
    """Train `config` to the end and return its summary (also written to `run` if given).

    `callbacks` are called with event dicts: {"event": "start" | "stage" | "step" | "epoch" | "end", ...}.
    `session` continues from `check_setup`; `teacher` reuses a loaded teacher; `student` trains that
    module instead of building `config.model`; `resume` (a checkpoint file) goes on from its epoch. After
    every epoch a run's folder gets a checkpoint that `kdw resume` continues from. A non-finite loss raises
    Diverged after recording the epoch's metrics. A pretrained language-model teacher with 0 epochs is only
    evaluated.
    """
    s = session if session is not None else prepare(config, store, dataset, teacher, student)
    if s.config != config:
        raise ValueError("the session was prepared for another config")
    start(s, store, callbacks)
    if resume:
        load_checkpoint_state(s, resume)
    _emit(callbacks, {"event": "start", "total_steps": s.total_steps, "epochs": config.epochs,
                      "steps_per_epoch": len(s.loader), "device": str(s.device), "augment": s.augment,
                      "params": count_params(s.student), "visible_labels": int(s.visible.sum()),
                      "method": s.method.name, "objective": s.method.objective_text(), "setup_s": s.setup_s,
                      "resumed_from": s.epoch if resume else None})
    if config.keep_layers and not resume and config.epochs > 0:  # the cut model before healing: where the gap starts
        s.before = s.task.test_metrics(s.student, s.ds, s.test_teacher, s.device)
    score = s.task.score
    for epoch in range(s.epoch + 1, config.epochs + 1):
        row = train_epoch(s, epoch, callbacks) | evaluate(s)
        s.history.append(row)
        check_finite(row, epoch, config.lr, callbacks, ", or a lower temperature")
        improved = score.better(row, s.best)  # evaluate/checkpoint: the best epoch by validation alone
        if improved:
            s.best = {f"val_{score.key}": row[f"val_{score.key}"], "val_loss": row["val_loss"], "epoch": epoch,
                      "state": copy.deepcopy(s.student.state_dict())}
        s.epoch = epoch
        _emit(callbacks, {"event": "epoch", **row, "best_epoch": s.best["epoch"]})  # its metrics first: a full
        save_epoch_weights(run, s.student, epoch, improved)  # disk may stop the weights, never the finished epoch
        if run is not None and s.rank == 0:
            save_checkpoint_state(s, run.checkpoint_path)  # everything `kdw resume` needs to go on from here
    if config.epochs == 0:  # a pretrained model registered as a teacher: evaluated, not trained
        row = evaluate(s)
        s.best = {f"val_{score.key}": row[f"val_{score.key}"], "val_loss": row["val_loss"], "epoch": 0,
                  "state": None}
        save_epoch_weights(run, s.student, 0, improved=True)
    summary = finish(s, run if s.rank == 0 else None, config.profile and s.rank == 0)
    why = s.task.diverged(s.history, s.dataset, config.lr)
    if why:
        summary["diverged"] = why
        if run is not None and s.rank == 0:
            run.write_summary({k: v for k, v in summary.items() if not k.startswith("_")})
    _emit(callbacks, {"event": "end", "summary": summary})
    summary["_model"] = s.student  # the best-validation weights, for in-process callers; never serialised
    return summary


# ---------------------------------------------------------------------------
# checkpoints that resume a run exactly


def save_checkpoint_state(s: Session, path) -> None:
    """Everything needed to go on after epoch `s.epoch` as if never stopped, written atomically.

    Tensors, numbers and strings only, so `torch.load(..., weights_only=True)` reads it (nothing unpickled).
    """
    state = {
        "version": 1, "epoch": s.epoch, "step": s.step, "train_s": s.train_s,
        "student": s.student.state_dict(), "method": s.method.state_dict(), "optimizer": s.optimizer.state_dict(),
        "best": {k: v for k, v in s.best.items()}, "history": s.history,
        "before": {k: v for k, v in (s.before or {}).items() if isinstance(v, (int, float))},
        "rng": {"torch": torch.get_rng_state(), "loader": s.loader.generator.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": s.config.to_dict(),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))


CHECKPOINT_KEYS = ("version", "epoch", "step", "train_s", "student", "method", "optimizer", "best", "history", "rng")


def read_checkpoint_state(path, epochs: int | None = None) -> dict:
    """A resume state written by `save_checkpoint_state`, checked before anything uses it: torch reads it with
    weights_only (nothing unpickled), it has every key, and its epoch, step and history agree with each other and
    lie within the run's budget of `epochs`. CheckpointDamaged (one sentence) otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointDamaged(path, "it does not exist") from None
    except Exception as e:  # EOFError, a zip error, an object weights_only refuses: never torch's own advice
        what = "it holds objects other than tensors and numbers" if "weights_only" in str(e) else \
            f"it cannot be read ({type(e).__name__}; truncated or not a checkpoint)"
        raise CheckpointDamaged(path, what) from None
    if not isinstance(state, dict):
        raise CheckpointDamaged(path, f"it holds a {type(state).__name__}, not a resume state")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointDamaged(path, "it has no " + ", ".join(missing))
    epoch, step, history = state["epoch"], state["step"], state["history"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0 or (epochs is not None and epoch > epochs):
        budget = f" (the run has {epochs} epochs)" if epochs is not None else ""
        raise CheckpointDamaged(path, f"its epoch {epoch!r} is not one of the run's{budget}")
    if not isinstance(history, list) or len(history) != epoch or not all(isinstance(r, dict) for r in history):
        raise CheckpointDamaged(path, f"its history does not hold one row for each of its {epoch} epochs")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointDamaged(path, f"its step {step!r} is not a whole number")
    if not isinstance(state["student"], dict) or not isinstance(state["best"], dict) \
            or not isinstance(state["rng"], dict):
        raise CheckpointDamaged(path, "its weights, best epoch or random states are not what a resume state holds")
    return state


def load_checkpoint_state(s: Session, path) -> None:
    """Put a started session back where `save_checkpoint_state` left it (weights, optimiser, RNGs, history),
    after `read_checkpoint_state`'s checks; weights of other shapes or a state that does not fit this session
    are CheckpointDamaged too."""
    state = read_checkpoint_state(path, s.config.epochs)
    want = {k: tuple(v.shape) for k, v in s.student.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state["student"].items() if isinstance(v, torch.Tensor)}
    wrong = [f"{k}: expected {want[k]}, found {found[k]}" for k in want if k in found and found[k] != want[k]]
    wrong += [f"{k}: missing" for k in want if k not in found] + [f"{k}: unexpected" for k in found if k not in want]
    if wrong:
        raise CheckpointDamaged(path, "its weights do not fit the run's student (" + "; ".join(wrong[:3]) + ")")
    try:
        s.student.load_state_dict(state["student"])
        s.method.load_state_dict(state["method"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.epoch, s.step, s.train_s = int(state["epoch"]), int(state["step"]), float(state["train_s"])
        s.best, s.history = dict(state["best"]), list(state["history"])
        s.before = dict(state.get("before") or {}) or None
        torch.set_rng_state(state["rng"]["torch"])
        s.loader.generator.set_state(state["rng"]["loader"])
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        first = (str(e).splitlines() or [""])[0][:160]
        raise CheckpointDamaged(path, f"it does not fit this run ({type(e).__name__}: {first})") from None


def teacher_summary(teacher: Teacher, task, dataset, test_out, profile: bool = True) -> dict:
    """The teacher's test figures, measured in the same process as the student's (same device, threads)."""
    out = {
        "spec": teacher.spec, "source": teacher.source, "label": teacher.label, "digest": teacher.digest,
        "model": teacher.config.to_dict(),
        "test": task.teacher_test(test_out, dataset),
        "params": sum(p.numel() for p in teacher.model.parameters()),  # frozen, so count them all
    }
    if profile:
        out["profile"] = profile_for(task, copy.deepcopy(teacher.model).float(), dataset, "cpu")
        out["profile"]["params"] = out["params"]
    return out


def teacher_profile(teacher: Teacher, input_shape) -> dict:
    """`model_profile` of a teacher on the CPU, counting its frozen parameters too."""
    prof = model_profile(copy.deepcopy(teacher.model).float(), input_shape, "cpu")
    prof["params"] = sum(p.numel() for p in teacher.model.parameters())
    return prof
