"""Distillation losses as pure tensor functions.

Every function takes tensors and returns a scalar tensor. The docstrings give the
formula, the paper, and a checked example (run by the tests as doctests).

Our α convention (GUIDE.md): α weights the *distillation* term,

    L = (1 − α) · CE(z_s, y) + α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )

so α = 0 is the scratch baseline and α = 1 is pure distillation. torchdistill and
the Keras example put their α on the cross-entropy instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OBJECTIVE = "L = (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))"


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must be (B, K), got shape {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must match student_logits {tuple(student_logits.shape)}, "
                         f"got {tuple(teacher_logits.shape)}")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature T must be > 0, got {temperature}")


def check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = scratch, 1 = pure distillation), got {alpha}")


def softmax_t(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softened probabilities softmax(z / T). logits: (..., K).

    >>> softmax_t(torch.tensor([2.0, 1.0, 0.0]), 2.0).round(decimals=4)
    tensor([0.5065, 0.3072, 0.1863])
    """
    check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats, H(p) = −Σ p log p, over the last dimension.

    >>> entropy(torch.tensor([0.5, 0.5])).item() == torch.log(torch.tensor(2.0)).item()
    True
    """
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Hinton's distillation term: the T²-scaled KL from the teacher's softened distribution.

    .. math::
        \mathcal{L}_{KD} = T^2 \cdot \frac{1}{B} \sum_{b=1}^{B} \sum_{k=1}^{K}
            p^t_{bk} \left(\log p^t_{bk} - \log p^s_{bk}\right),
        \quad p^t = \mathrm{softmax}(z_t / T),\ p^s = \mathrm{softmax}(z_s / T)

    The KL is summed over classes and averaged over the batch (``batchmean``);
    a per-element mean would divide by K as well, a known bug in other toolkits.
    The factor T² keeps the gradient's scale independent of T (its gradient with
    respect to z_s is T·(p^s − p^t)/B, which tends to (z_s − z_t)/(K·B) for large T).

    Paper: G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural
    Network." NIPS Deep Learning Workshop, 2015. arXiv:1503.02531.

    Args:
        student_logits: (B, K) student logits z_s.
        teacher_logits: (B, K) teacher logits z_t; treated as constants (no gradient).
        temperature: T > 0.

    Returns:
        A scalar tensor.

    >>> z_s = torch.tensor([[1.0, 0.0, 0.0]])
    >>> z_t = torch.tensor([[0.0, 1.0, 0.0]])
    >>> round(kd_loss(z_s, z_t, 1.0).item(), 4)  # by hand: KL = (e − 1) / (e + 2)
    0.3642
    >>> round(kd_loss(z_s, z_t, 4.0).item(), 4)
    0.3459
    """
    _check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the samples whose target is not −1 (0 if there are none).

    Targets of −1 mark unlabelled samples (a label budget). Unlike
    ``F.cross_entropy(ignore_index=-1)`` this returns 0, not NaN, for a batch with
    no labels, and it never synchronises with the device.

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(masked_cross_entropy(logits, torch.tensor([0, -1])).item(), 4)
    0.1269
    >>> masked_cross_entropy(logits, torch.tensor([-1, -1])).item()
    0.0
    """
    labelled = targets >= 0
    total = F.cross_entropy(logits, targets.clamp_min(0), reduction="none")  # (B,)
    return (total * labelled).sum() / labelled.sum().clamp_min(1)


def distillation_objective(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                           targets: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    r"""The vanilla KD objective: (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    .. math::
        \mathcal{L} = (1-\alpha)\,\mathrm{CE}(z_s, y) + \alpha\,\mathcal{L}_{KD}(z_s, z_t; T)

    α = 0 is the scratch baseline (the teacher is ignored and may be None); α = 1 is
    pure distillation. Targets of −1 mark unlabelled samples of a label budget: the
    cross-entropy averages over the labelled ones, the KD term over the whole batch
    (Hinton et al.'s *transfer set*).

    Paper: G. Hinton, O. Vinyals, J. Dean. "Distilling the Knowledge in a Neural
    Network." arXiv:1503.02531, 2015.

    Args:
        student_logits: (B, K).
        teacher_logits: (B, K), or None when α = 0.
        targets: (B,) class indices, −1 for unlabelled.
        temperature: T > 0.
        alpha: weight of the KD term, in [0, 1].

    >>> z_s = torch.tensor([[1.0, 0.0, 0.0]])
    >>> z_t = torch.tensor([[0.0, 1.0, 0.0]])
    >>> y = torch.tensor([0])
    >>> round(distillation_objective(z_s, z_t, y, 4.0, 0.5).item(), 4)
    0.4487
    """
    check_temperature(temperature)
    check_alpha(alpha)
    if student_logits.ndim != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(f"expected student_logits (B, K) and targets (B,), got "
                         f"{tuple(student_logits.shape)} and {tuple(targets.shape)}")
    ce = masked_cross_entropy(student_logits, targets)
    if alpha == 0.0:
        return ce
    if teacher_logits is None:
        raise ValueError("alpha > 0 needs teacher_logits")
    return (1.0 - alpha) * ce + alpha * kd_loss(student_logits, teacher_logits, temperature)


class _FusedObjective(torch.autograd.Function):
    """`distillation_objective` from cached teacher log-probabilities, with its gradient in closed form.

    d/dz_s of (1 − α)·CE = (1 − α)·(softmax(z_s) − onehot(y))·[y labelled] / n_labelled
    d/dz_s of α·T²·KL   = α·T·(softmax(z_s/T) − p_t) / B
    """

    @staticmethod
    def forward(ctx, z_s, log_p_t, targets, temperature, alpha):
        B = z_s.shape[0]
        labelled = targets >= 0  # (B,)
        n_lab = labelled.sum().clamp_min(1).to(z_s.dtype)
        safe = targets.clamp_min(0)
        log_q = torch.log_softmax(z_s, 1)  # (B, K) for the cross-entropy
        ce = -(log_q.gather(1, safe[:, None]).squeeze(1) * labelled).sum() / n_lab
        log_s = torch.log_softmax(z_s / temperature, 1)  # (B, K) softened student
        p_t = log_p_t.exp()
        kl = (p_t * (log_p_t - log_s)).sum() / B
        ctx.save_for_backward(log_q, log_s, p_t, safe, labelled, n_lab)
        ctx.temperature, ctx.alpha = temperature, alpha
        return (1.0 - alpha) * ce + alpha * temperature ** 2 * kl

    @staticmethod
    def backward(ctx, grad_out):
        log_q, log_s, p_t, safe, labelled, n_lab = ctx.saved_tensors
        T, alpha = ctx.temperature, ctx.alpha
        B = log_q.shape[0]
        g_ce = log_q.exp()
        g_ce.scatter_add_(1, safe[:, None], -torch.ones_like(safe[:, None], dtype=g_ce.dtype))
        g_ce *= labelled[:, None] * ((1.0 - alpha) / n_lab)
        g_kd = (log_s.exp() - p_t) * (alpha * T / B)
        return grad_out * (g_ce + g_kd), None, None, None, None


def fused_distillation_objective(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor,
                                 targets: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    r"""The same value and gradient as `distillation_objective`, faster when the teacher is cached.

    Takes the teacher's *softened log-probabilities* log softmax(z_t/T) (computed once per cached
    view) instead of its logits, and computes the gradient with respect to the student's logits
    in closed form, so the autograd graph of the loss is one node. The training loop uses it for
    cached teachers; the tests check it against `distillation_objective` in value and gradient.

    Args:
        student_logits: (B, K).
        teacher_log_probs: (B, K) log softmax(z_t / T); constants.
        targets: (B,), −1 for unlabelled.
        temperature: T > 0.
        alpha: in [0, 1].

    >>> z_s, z_t, y = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0])
    >>> log_p_t = torch.log_softmax(z_t / 4.0, 1)
    >>> round(fused_distillation_objective(z_s, log_p_t, y, 4.0, 0.5).item(), 4)
    0.4487
    """
    check_temperature(temperature)
    check_alpha(alpha)
    _check_logits(student_logits, teacher_log_probs)
    return _FusedObjective.apply(student_logits, teacher_log_probs.detach(), targets, float(temperature), float(alpha))
