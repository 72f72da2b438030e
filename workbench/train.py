"""One training loop for teachers, scratch students and distilled students.

    L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))

A `TrainConfig` says everything about a run; `train(config)` runs it and returns the
summary. kind = "teacher" and kind = "scratch" train on labels alone (α is 0); kind =
"kd" distils from a frozen teacher. With a label budget (`labels`), only that many
training labels are visible: teacher and scratch runs train on those alone, with as many
optimiser steps as a full epoch would take, while a KD run also sees every unlabelled
image, where the teacher's soft targets are its only signal (Hinton's transfer set).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from .data import AUGMENTATIONS, DATASETS, BatchLoader, label_mask, load_dataset
from .evaluate import classification_metrics, model_profile, predict_logits
from .hooks import FeatureHooks
from .losses import (OBJECTIVE, check_alpha, check_temperature, distillation_objective,
                     fused_distillation_objective)
from .methods import StepContext, build_method
from .models import ModelConfig, build_model, count_params, is_convnet
from .teachers import Teacher, cached_logits, check_fits, load_teacher

KINDS = ("teacher", "scratch", "kd")
OPTIMIZERS = ("adamw", "sgd")
DEVICES = ("auto", "cpu", "cuda", "mps")


class TrainingError(RuntimeError):
    """Training stopped (non-finite loss, bad setup); the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    kind: str = "kd"  # teacher | scratch | kd
    dataset: str = "digits"  # a name from workbench.data.DATASETS
    data_dir: str | None = None  # folder for image-folder / local copies
    model: ModelConfig = field(default_factory=lambda: ModelConfig("mlp", depth=1, width=64))  # the model trained
    teacher: str | None = None  # shipped teacher name, run id or .safetensors path (kd; scratch: for agreement)
    temperature: float = 4.0  # T, softens both distributions in the KD term
    alpha: float = 0.9  # weight of the KD term; 0 = scratch, 1 = pure distillation
    epochs: int = 10  # passes over the training set (over the transfer set with a label budget)
    batch_size: int = 128
    lr: float = 3e-3  # peak learning rate (warm-up, then cosine to 0)
    weight_decay: float = 5e-4
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9, Nesterov)
    labels: float | None = None  # visible training labels: a count, a fraction in (0, 1], or None for all
    augment: str = "auto"  # auto (the data set's default) | none | flip | crop | flip+crop
    seed: int = 0  # model init, batch order, augmentation and label subset
    device: str = "auto"  # auto = cuda, then mps, then cpu
    amp: bool = True  # bf16 autocast where the device supports it (CUDA)
    compile: bool = False  # torch.compile the student (opt-in)
    teacher_cache: bool = True  # look the teacher's logits up per view instead of running it on every batch
    group: str | None = None  # a tag that ties runs together (a demo, a sweep)
    profile: bool = True  # measure latency/throughput at the end
    method: str = "kd"  # a name from workbench.methods.METHODS (kd runs only)
    method_params: dict = field(default_factory=dict)  # overrides of the method's paper defaults
    teacher_weights: tuple | None = None  # weights of an ensemble teacher ("a,b"); equal if None

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown data set {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        check_temperature(self.temperature)
        check_alpha(self.alpha)
        from .methods import method_info

        info = method_info(self.method)
        if self.kind != "kd" and self.method != "kd":
            raise ValueError(f"method {self.method!r} applies to kd runs, not {self.kind} runs")
        if self.kind == "kd" and not self.teacher and info.needs_teacher:
            raise ValueError("a kd run needs a teacher")
        info(self.method_params)  # unknown hyperparameters are an error now, not mid-run
        if self.teacher_weights is not None:
            object.__setattr__(self, "teacher_weights", tuple(float(w) for w in self.teacher_weights))
        if self.kind != "kd" and self.alpha != 0.0:
            object.__setattr__(self, "alpha", 0.0)  # teacher and scratch runs never use the KD term
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.augment != "auto" and self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be auto or one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.labels is not None and not self.labels > 0:
            raise ValueError(f"labels must be a positive count or a fraction in (0, 1], got {self.labels}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        d["teacher_weights"] = list(self.teacher_weights) if self.teacher_weights is not None else None
        return d

    def record(self, command: str = "") -> dict:
        """What a run's config.json holds: the config, the student's label and how it was launched."""
        return self.to_dict() | {"model_label": self.model.label(), "command": command}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def pick_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu for 'auto'; a clear error for a device that is not here."""
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
    if requested == "mps" and not has_mps:
        raise TrainingError("device mps was asked for, but this machine has no Apple MPS; use --device cpu or auto")
    return torch.device(requested)


def available_devices() -> list[str]:
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        out.append("mps")
    return out


def autocast_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the device runs it fast (CUDA with bf16 support), else None (full fp32)."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def lr_at(step: int, total: int, peak: float, warmup_frac: float = 0.05) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to 0."""
    warm = max(1, int(warmup_frac * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, config: TrainConfig, extra: torch.nn.Module | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW or SGD over the model and a method's learnable parts (`extra`), no decay on 1-d parameters."""
    params = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def resolve_augment(config: TrainConfig, dataset) -> str:
    return dataset.default_augment if config.augment == "auto" else config.augment


class TqdmProgress:
    """A callback drawing a tqdm bar over the steps, with the epoch's validation accuracy beside it."""

    def __init__(self, desc: str = "training"):
        self.desc, self.bar = desc, None

    def __call__(self, event: dict) -> None:
        from tqdm.auto import tqdm

        if event["event"] == "start":
            self.bar = tqdm(total=event["total_steps"], desc=self.desc, unit="step", leave=True,
                            dynamic_ncols=True, mininterval=0.5)
        elif event["event"] == "step" and self.bar is not None:
            self.bar.update(1)
        elif event["event"] == "epoch" and self.bar is not None:
            self.bar.set_postfix(epoch=event["epoch"], loss=f"{event['train_loss']:.3f}",
                                 val_acc=f"{100 * event['val_acc']:.2f}%")
        elif event["event"] == "end" and self.bar is not None:
            self.bar.close()


def _emit(callbacks, event: dict) -> None:
    for cb in callbacks:
        cb(event)


def train(config: TrainConfig, *, run=None, callbacks=(), store=None, dataset=None) -> dict:
    """Train `config` to the end and return its summary (also written to `run` if given).

    `callbacks` are called with event dicts: {"event": "start" | "step" | "epoch" | "end", ...}.
    A non-finite loss raises TrainingError after recording the epoch's metrics.
    """
    t_setup = time.perf_counter()
    # ---- setup: device, seeds, data -------------------------------------------------
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir)
    ds = dataset.to(device)
    augment = resolve_augment(config, dataset)
    cache_dir = (store.cache_dir / "teacher-logits") if store is not None else None

    # ---- teacher: frozen, eval mode, logits cached per deterministic view ------------
    teacher: Teacher | None = None
    if config.teacher:
        teacher = load_teacher(config.teacher, store, temperature=config.temperature, weights=config.teacher_weights)
        check_fits(teacher.model, dataset)
        teacher.model.to(device)
    method = build_method(config.method, config.method_params, config.temperature, config.alpha) \
        if config.kind == "kd" else None
    cacheable = method is not None and method.logits_only and teacher is not None and config.teacher_cache \
        and "crop" not in augment
    views = ["plain", "flip"] if "flip" in augment else ["plain"]
    log_p_t = t_cache = None
    if cacheable and method.name == "kd":  # (views, N_train, K): log softmax(z_t / T), for the fused objective
        log_p_t = torch.stack([torch.log_softmax(cached_logits(teacher, dataset, "train", v, cache_dir, device)
                                                 / config.temperature, 1) for v in views])
    elif cacheable:  # (views, N_train, K) raw logits for the other logit methods
        t_cache = torch.stack([cached_logits(teacher, dataset, "train", v, cache_dir, device) for v in views])

    # ---- student ---------------------------------------------------------------------
    torch.manual_seed(config.seed)  # same init for a scratch student and its KD twin
    student = build_model(config.model, dataset.input_shape, dataset.num_classes).to(device)
    channels_last = device.type == "cuda" and is_convnet(student)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    s_hooks = t_hooks = None
    if method is not None:
        method.setup(student, teacher.model if teacher else None, dataset.input_shape, dataset.num_classes,
                     len(ds.x_train))
        method.to(device)
        if method.student_features:
            s_hooks = FeatureHooks(student, list(method.student_features)).add()
        if method.teacher_features:
            t_hooks = FeatureHooks(teacher.model, list(method.teacher_features)).add()
    # hooks need the eager module; torch.compile is for the plain logit path
    forward = torch.compile(student) if config.compile and s_hooks is None else student
    amp_dtype = autocast_dtype(device, config.amp)
    optimizer = make_optimizer(student, config, extra=method)

    # ---- label budget and batches ----------------------------------------------------
    visible = label_mask(dataset.y_train, config.labels, seed=config.seed).to(device)  # (N,) bool
    steps_per_epoch = len(ds.x_train) // min(config.batch_size, len(ds.x_train))
    if config.kind == "kd":  # the transfer set: every training image, labels where visible
        loader = BatchLoader(ds.x_train, ds.y_train, config.batch_size, augment=augment, seed=config.seed)
    else:  # labels alone, with the same number of steps as a full epoch
        loader = BatchLoader(ds.x_train, ds.y_train, config.batch_size, augment=augment, seed=config.seed,
                             indices=visible.nonzero().squeeze(1), steps=steps_per_epoch)
    steps_per_epoch = len(loader)
    total_steps = config.epochs * steps_per_epoch
    T, alpha = config.temperature, config.alpha

    val_teacher = test_teacher = None
    if teacher is not None:
        val_teacher = cached_logits(teacher, dataset, "val", "plain", cache_dir, "cpu")
        test_teacher = cached_logits(teacher, dataset, "test", "plain", cache_dir, "cpu")
    setup_s = time.perf_counter() - t_setup
    _emit(callbacks, {"event": "start", "total_steps": total_steps, "epochs": config.epochs,
                      "steps_per_epoch": steps_per_epoch, "device": str(device), "augment": augment,
                      "params": count_params(student), "visible_labels": int(visible.sum()),
                      "objective": OBJECTIVE, "setup_s": setup_s})

    best = {"val_acc": -1.0, "val_loss": math.inf, "epoch": 0, "state": None}
    history = []
    step = 0
    train_s = 0.0
    for epoch in range(1, config.epochs + 1):
        # ---- train one epoch (no host-device sync inside: sums stay on the device) ----
        student.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = torch.zeros((), device=device, dtype=torch.long)
        for x, y, idx, flip in loader:
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, total_steps, config.lr)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y_seen = torch.where(visible[idx], y, -1)  # (B,) -1 = label hidden by the budget
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = forward(x)  # (B, K)
            logits = logits.float()
            if config.kind != "kd":
                loss = distillation_objective(logits, None, y_seen, T, 0.0)  # cross-entropy alone
            elif log_p_t is not None:  # look the teacher up: flipped samples take the flipped view
                lp = log_p_t[0, idx] if flip is None else log_p_t[flip.long(), idx]  # (B, K)
                loss = fused_distillation_objective(logits, lp, y_seen, T, alpha)
            else:  # every other method, and views that cannot be enumerated (random crops)
                t_logits, t_feats = None, {}
                if t_cache is not None:
                    t_logits = t_cache[0, idx] if flip is None else t_cache[flip.long(), idx]
                elif teacher is not None and method.needs_teacher:  # the frozen teacher on this batch
                    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                                         enabled=amp_dtype is not None):
                        t_logits = teacher.model(x).float()
                    t_feats = t_hooks.pop() if t_hooks else {}
                ctx = StepContext(x=x, targets=y_seen, idx=idx, s_logits=logits, t_logits=t_logits,
                                  s_feats=s_hooks.pop() if s_hooks else {}, t_feats=t_feats,
                                  progress=step / total_steps)
                loss = method.loss(ctx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            labelled = y_seen >= 0
            correct += ((logits.detach().argmax(1) == y) & labelled).sum()
            seen += labelled.sum()
            step += 1
            _emit(callbacks, {"event": "step", "step": step, "total_steps": total_steps, "epoch": epoch})
        if device.type == "cuda":
            torch.cuda.synchronize()
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s

        # ---- evaluate on validation; keep the best epoch -------------------------------
        train_loss = (loss_sum / steps_per_epoch).item()  # one sync per epoch
        val_logits = predict_logits(forward, ds.x_val, device=device)
        val_y = dataset.y_val
        val_loss = torch.nn.functional.cross_entropy(val_logits, val_y).item()
        val_acc = (val_logits.argmax(1) == val_y).float().mean().item()
        row = {"epoch": epoch, "step": step, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, "train_acc": (correct.float() / seen.clamp_min(1)).item(),
               "val_loss": val_loss, "val_acc": val_acc, "epoch_s": epoch_s, "train_s": train_s}
        if val_teacher is not None:
            row["val_agreement"] = (val_logits.argmax(1) == val_teacher.argmax(1)).float().mean().item()
        history.append(row)
        if not math.isfinite(train_loss):
            _emit(callbacks, {"event": "epoch", **row})
            raise TrainingError(f"the loss became {train_loss} in epoch {epoch}: training diverged. "
                                f"Lower the learning rate (now {config.lr}) or the temperature.")
        # ties in accuracy (common on small validation sets) go to the lower validation loss
        improved = val_acc > best["val_acc"] or (val_acc == best["val_acc"] and val_loss < best["val_loss"])
        if improved:
            best = {"val_acc": val_acc, "val_loss": val_loss, "epoch": epoch,
                    "state": copy.deepcopy(student.state_dict())}
        if run is not None:
            if improved:
                run.save_weights(student, "best", epoch=epoch)
            run.save_weights(student, "last", epoch=epoch)
        _emit(callbacks, {"event": "epoch", **row, "best_epoch": best["epoch"]})

    # ---- test the best-validation and the last epoch ----------------------------------
    for hooks in (s_hooks, t_hooks):
        if hooks is not None:
            hooks.remove()
    last_state = copy.deepcopy(student.state_dict())
    k = dataset.num_classes
    last_test = classification_metrics(predict_logits(student, ds.x_test), dataset.y_test, k, test_teacher)
    student.load_state_dict(best["state"])
    best_test = classification_metrics(predict_logits(student, ds.x_test), dataset.y_test, k, test_teacher)
    summary = {
        "kind": config.kind,
        "model": config.model.to_dict(),
        "model_label": config.model.label(),
        "dataset": dataset.name,
        "best_epoch": best["epoch"],
        "epochs_done": config.epochs,
        "val_acc_best": best["val_acc"],
        "test": best_test,  # the best-validation epoch
        "test_last": last_test,  # the last epoch
        "train_s": train_s,
        "setup_s": setup_s,
        "visible_labels": int(visible.sum()),
        "augment": augment,
        "device": str(device),
    }
    if method is not None:
        summary["method"] = {"name": method.name, "params": method.p, "objective": method.objective_text(),
                             "title": method.title, "citation": method.citation}
    if config.profile:
        summary["profile"] = model_profile(copy.deepcopy(student).float(), dataset.input_shape, "cpu")
    if teacher is not None:
        summary["teacher"] = teacher_summary(teacher, dataset, test_teacher, config.profile)
    student.load_state_dict(last_state)
    if run is not None:
        run.write_summary(summary)
    _emit(callbacks, {"event": "end", "summary": summary})
    student.load_state_dict(best["state"])
    summary["_model"] = student  # for in-process callers; never serialised
    return summary


def teacher_summary(teacher: Teacher, dataset, test_logits: torch.Tensor, profile: bool = True) -> dict:
    """The teacher's test figures, measured in the same process as the student's (same device, threads)."""
    out = {
        "spec": teacher.spec, "source": teacher.source, "label": teacher.label, "digest": teacher.digest,
        "model": teacher.config.to_dict(),
        "test": classification_metrics(test_logits, dataset.y_test, dataset.num_classes),
        "params": sum(p.numel() for p in teacher.model.parameters()),  # frozen, so count them all
    }
    if profile:
        out["profile"] = teacher_profile(teacher, dataset.input_shape)
    return out


def teacher_profile(teacher: Teacher, input_shape) -> dict:
    """`model_profile` of a teacher on the CPU, counting its frozen parameters too."""
    prof = model_profile(copy.deepcopy(teacher.model).float(), input_shape, "cpu")
    prof["params"] = sum(p.numel() for p in teacher.model.parameters())
    return prof


def with_overrides(config: TrainConfig, **kw) -> TrainConfig:
    return replace(config, **kw)


def check_setup(config: TrainConfig, store=None) -> None:
    """Fail fast, before any run folder exists: the data set loads, the teacher loads and fits it,
    the device exists, and a label budget fits the training set."""
    pick_device(config.device)
    dataset = load_dataset(config.dataset, config.data_dir)
    teacher = None
    if config.teacher:
        teacher = load_teacher(config.teacher, store, temperature=config.temperature, weights=config.teacher_weights)
        check_fits(teacher.model, dataset)
    label_mask(dataset.y_train, config.labels, seed=config.seed)
    if config.kind == "kd":  # a method that cannot work with these models says so now (e.g. AT on an MLP)
        student = build_model(config.model, dataset.input_shape, dataset.num_classes)
        build_method(config.method, config.method_params, config.temperature, config.alpha).setup(
            student, teacher.model if teacher else None, dataset.input_shape, dataset.num_classes, len(dataset.x_train))
