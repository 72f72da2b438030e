"""Metrics of predictions as pure tensor functions: accuracy, agreement, calibration, confusion.

Definitions (docs/conventions.md): *agreement* is the fraction of samples whose student top-1 equals the
teacher's top-1; *ECE* is the expected calibration error over 15 equal-width confidence bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ECE_BINS = 15


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 1024,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Logits of `model` (switched to eval mode) on all of `x`, returned as a (N, K) float32 CPU tensor."""
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = [model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1].

    >>> accuracy(torch.tensor([[2., 1.], [0., 3.], [1., 0.]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    if logits.ndim != 2 or len(logits) != len(targets):
        raise ValueError(f"expected logits (N, K) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    return (logits.argmax(1) == targets.to(logits.device)).sum().item() / len(targets)


def confusion_matrix(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) int64 counts; row = true class, column = predicted class."""
    pred = logits.argmax(1).cpu()
    idx = targets.cpu() * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> list[float]:
    """Recall of each class (diagonal / row sums of the confusion matrix); NaN for an absent class."""
    cm = confusion_matrix(logits, targets, num_classes).double()
    return (cm.diag() / cm.sum(1)).tolist()


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """Fraction of samples where the student's top-1 class equals the teacher's.

    >>> agreement(torch.tensor([[2., 1.], [0., 3.]]), torch.tensor([[5., 1.], [4., 3.]]))
    0.5
    """
    return (student_logits.argmax(1) == teacher_logits.argmax(1)).sum().item() / len(student_logits)


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> float:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over samples (nats)."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, 1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, 1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True).item()


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    r"""ECE with `n_bins` equal-width confidence bins (Guo et al., ICML 2017).

    .. math:: \mathrm{ECE} = \sum_m \frac{|B_m|}{n} \left| \mathrm{acc}(B_m) - \mathrm{conf}(B_m) \right|

    Bin m holds the samples whose top-1 probability lies in ((m−1)/M, m/M].

    >>> logits = torch.tensor([[0., 0.], [10., 0.]])  # confidences 0.5 and ~1.0
    >>> round(expected_calibration_error(logits, torch.tensor([1, 0])), 4)  # (|0 - 0.5| + |1 - 1.0|) / 2
    0.25
    """
    probs = torch.softmax(logits.float(), 1)
    conf, pred = probs.max(1)
    correct = (pred == targets.to(pred.device)).float()
    bins = torch.clamp(torch.ceil(conf * n_bins).long() - 1, 0, n_bins - 1)  # (N,) bin of each sample
    count = torch.bincount(bins, minlength=n_bins).float()
    conf_sum = torch.bincount(bins, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    gap = (acc_sum - conf_sum).abs()  # = count * |acc - conf| per bin
    return (gap.sum() / count.sum()).item()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           teacher_logits: torch.Tensor | None = None) -> dict:
    """Accuracy, per-class accuracy, confusion matrix, ECE, and agreement/KL with the teacher if given."""
    out = {
        "accuracy": accuracy(logits, targets),
        "per_class_accuracy": per_class_accuracy(logits, targets, num_classes),
        "confusion_matrix": confusion_matrix(logits, targets, num_classes).tolist(),
        "ece": expected_calibration_error(logits, targets),
    }
    if teacher_logits is not None:
        out["agreement"] = agreement(logits, teacher_logits)
        out["kl_to_teacher"] = kl_to_teacher(logits, teacher_logits)
    return out
