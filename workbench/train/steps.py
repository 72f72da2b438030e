"""What the training loop (`workbench.train.loop`) uses beside its stages: the device, the learning-rate schedule,
the optimiser, and how events reach the callbacks."""

from __future__ import annotations

import math

import torch

from workbench.errors import Diverged, TrainingError


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


def make_optimizer(model: torch.nn.Module, config, extra: torch.nn.Module | None = None
                   ) -> torch.optim.Optimizer:
    """AdamW or SGD over the model and a method's learnable parts (`extra`), no decay on 1-d parameters."""
    params = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
    decay = [p for p in params if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def _emit(callbacks, event: dict) -> None:
    for cb in callbacks:
        cb(event)


def check_finite(row: dict, epoch: int, lr: float, callbacks=(), hint: str = "") -> None:
    """Diverged, after the epoch's row reaches the callbacks, when the epoch's loss is not a finite number."""
    if not math.isfinite(row["train_loss"]):
        _emit(callbacks, {"event": "epoch", **row})
        raise Diverged(f"the loss became {row['train_loss']} in epoch {epoch}: training diverged. "
                       f"Try a learning rate 10× lower (now {lr:g}){hint}.")


def save_epoch_weights(run, model, epoch: int, improved: bool) -> None:
    """The run's last weights after an epoch, and its best ones when the epoch improved on them."""
    if run is None:
        return
    if improved:
        run.save_weights(model, "best", epoch=epoch)
    run.save_weights(model, "last", epoch=epoch)
