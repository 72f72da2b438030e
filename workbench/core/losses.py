"""Distillation losses as pure tensor functions.

Every function takes tensors and returns a scalar tensor. The docstrings give the
formula, the paper, and a checked example (run by the tests as doctests).

Our α convention (docs/conventions.md): α weights the *distillation* term,

    L = (1 − α) · CE(z_s, y) + α · T² · KL( softmax(z_t / T) ‖ softmax(z_s / T) )

so α = 0 is the scratch baseline and α = 1 is pure distillation. torchdistill and
the Keras example put their α on the cross-entropy instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workbench.core.objective import OBJECTIVE  # noqa: F401 (this module's public name too)


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
    return soft_kl(student_logits, F.log_softmax(teacher_logits.detach() / temperature, dim=-1), temperature)


def soft_kl(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""`kd_loss` with the teacher given as its softened log-probabilities log softmax(z_t/T).

    .. math::
        T^2 \cdot \frac{1}{B} \sum_{b,k} p^t_{bk}\left(\log p^t_{bk} - \log\mathrm{softmax}(z_s/T)_{bk}\right),
        \quad \log p^t = \texttt{teacher\_log\_probs}

    This is the form a cached teacher takes: its targets are computed once per data set and view.

    Args:
        student_logits: (B, K).
        teacher_log_probs: (B, K) log-probabilities; constants.
        temperature: T > 0.

    >>> z_s, z_t = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    >>> round(soft_kl(z_s, torch.log_softmax(z_t / 4.0, 1), 4.0).item(), 4)  # = kd_loss(z_s, z_t, 4.0)
    0.3459
    """
    _check_logits(student_logits, teacher_log_probs)
    check_temperature(temperature)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_s, teacher_log_probs.detach(), reduction="batchmean", log_target=True)
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


class _FusedKD(torch.autograd.Function):
    """((1 − α)·CE, α·T²·KL) from cached teacher log-probabilities, with the gradient in closed form.

    d/dz_s of (1 − α)·CE = (1 − α)·(softmax(z_s) − onehot(y))·[y labelled] / n_labelled
    d/dz_s of α·T²·KL   = α·T·(softmax(z_s/T) − p_t) / B
    The weights are applied inside, in double precision, as the single-objective form always did, so
    that splitting the objective into its two terms changes no bit of a training run.
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
        return (1.0 - alpha) * ce, alpha * temperature ** 2 * kl

    @staticmethod
    def backward(ctx, grad_ce, grad_kd):
        log_q, log_s, p_t, safe, labelled, n_lab = ctx.saved_tensors
        T, alpha = ctx.temperature, ctx.alpha
        B = log_q.shape[0]
        g_ce = log_q.exp()
        g_ce.scatter_add_(1, safe[:, None], -torch.ones_like(safe[:, None], dtype=g_ce.dtype))
        g_ce *= labelled[:, None] * ((1.0 - alpha) / n_lab)
        g_kd = (log_s.exp() - p_t) * (alpha * T / B)
        return grad_ce * g_ce + grad_kd * g_kd, None, None, None, None


def fused_kd_terms(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, targets: torch.Tensor,
                   temperature: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Vanilla KD's two weighted terms, ((1 − α)·CE, α·T²·KL), as one autograd node.

    .. math::
        \mathrm{CE} = \frac{1}{n_\text{lab}}\sum_{b:\,y_b \ne -1} -\log\mathrm{softmax}(z_s)_{b,y_b},\qquad
        \mathrm{KL} = \frac{1}{B}\sum_{b,k} p^t_{bk}\left(\log p^t_{bk} - \log\mathrm{softmax}(z_s/T)_{bk}\right)

    Equal in value and gradient to (1 − α)·`masked_cross_entropy(z_s, y)` and α·`soft_kl(z_s, log p_t, T)`;
    the gradient with respect to the student's logits is written out, so the loss's autograd graph is one
    node. The teacher comes as its softened log-probabilities log softmax(z_t/T), as the cache holds them.

    Args:
        student_logits: (B, K).
        teacher_log_probs: (B, K) log softmax(z_t / T); constants.
        targets: (B,), −1 for unlabelled.
        temperature: T > 0.
        alpha: weight of the KD term, in [0, 1].

    >>> z_s, y = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0])
    >>> ce, kd = fused_kd_terms(z_s, torch.log_softmax(torch.tensor([[0.0, 1.0, 0.0]]) / 4.0, 1), y, 4.0, 0.5)
    >>> round(ce.item(), 4), round(kd.item(), 4)  # 0.5·CE and 0.5·kd_loss(z_s, z_t, 4.0)
    (0.2757, 0.173)
    """
    check_temperature(temperature)
    check_alpha(alpha)
    _check_logits(student_logits, teacher_log_probs)
    if targets.shape != student_logits.shape[:1]:
        raise ValueError(f"targets must be (B,) = {tuple(student_logits.shape[:1])}, got {tuple(targets.shape)}")
    return _FusedKD.apply(student_logits, teacher_log_probs.detach(), targets, float(temperature), float(alpha))


def fused_distillation_objective(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor,
                                 targets: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    r"""The same value and gradient as `distillation_objective`, from cached teacher log-probabilities.

    The sum of the two terms of `fused_kd_terms`.

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
    ce, kd = fused_kd_terms(student_logits, teacher_log_probs, targets, temperature, alpha)
    return ce + kd


# ---------------------------------------------------------------------------
# logit methods beyond vanilla KD

def zscore(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(z − mean) / (eps + std) over the last dimension, with the unbiased std (the LS-KD authors' code).

    >>> zscore(torch.tensor([[1.0, 2.0, 3.0]])).round(decimals=4).tolist()
    [[-1.0, 0.0, 1.0]]
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased (n − 1)
    return (logits - mean) / (eps + std)


def logit_standardized_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                               temperature: float) -> torch.Tensor:
    r"""Logit-standardised KD: vanilla KD on z-scored logits.

    .. math::
        \tilde z = \frac{z - \mathrm{mean}(z)}{\epsilon + \mathrm{std}(z)},\quad
        \mathcal{L} = T^2\,\mathrm{KL}\big(\mathrm{softmax}(\tilde z_t/T)\,\|\,\mathrm{softmax}(\tilde z_s/T)\big)

    std is the unbiased standard deviation over classes and ε = 1e-7, as in the authors' code
    (``normalize`` in sunshangquan/logit-standardization-KD); T is their *base temperature*
    (2 on CIFAR-100). The loss is invariant to shifting or scaling either model's logits.

    Paper: S. Sun, W. Ren, J. Li, R. Wang, X. Cao. "Logit Standardization in Knowledge
    Distillation." CVPR 2024. arXiv:2403.01427.

    Args:
        student_logits, teacher_logits: (B, K).
        temperature: T > 0.

    >>> z_s = torch.tensor([[1.0, 0.0, 0.0]])
    >>> z_t = torch.tensor([[0.0, 1.0, 0.0]])
    >>> round(logit_standardized_kd_loss(z_s, z_t, 2.0).item(), 4)
    1.09
    >>> round(logit_standardized_kd_loss(10 * z_s + 3, z_t - 1, 2.0).item(), 4)  # shift and scale: same
    1.09
    """
    _check_logits(student_logits, teacher_logits)
    return kd_loss(zscore(student_logits), zscore(teacher_logits.detach()), temperature)


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    r"""Decoupled KD: target-class (TCKD) and non-target-class (NCKD) terms, weighted separately.

    .. math::
        \mathrm{TCKD} = T^2\,\mathrm{KL}\big([p^t_{y}, 1 - p^t_{y}]\,\|\,[p^s_{y}, 1 - p^s_{y}]\big),\quad
        \mathrm{NCKD} = T^2\,\mathrm{KL}\big(\hat p^t_{\setminus y}\,\|\,\hat p^s_{\setminus y}\big),\quad
        \mathcal{L} = \alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD}

    with p = softmax(z/T) and \hat p_{\setminus y} the softmax over the non-target classes only
    (computed, as in the authors' code, by subtracting 1000 from the target logit). Both KLs are
    summed over classes and averaged over the batch. The warm-up of the paper (the weight ramps
    linearly over the first epochs) is applied by the training loop, not here. Samples with an
    unknown label (−1) have no target class and are skipped.

    Paper: B. Zhao, Q. Cui, R. Song, Y. Qiu, J. Liang. "Decoupled Knowledge Distillation."
    CVPR 2022. arXiv:2203.08679. Defaults there: α = 1, β = 8, T = 4.

    Args:
        student_logits, teacher_logits: (B, K).
        targets: (B,) class indices (−1: unlabelled, skipped).
        alpha, beta: weights of TCKD and NCKD; temperature: T > 0.

    >>> z_s = torch.tensor([[2.0, 1.0, 0.0]])
    >>> z_t = torch.tensor([[3.0, 0.0, 1.0]])
    >>> round(dkd_loss(z_s, z_t, torch.tensor([0]), 1.0, 8.0, 1.0).item(), 4)
    3.7785
    """
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, temperature)
    return alpha * tckd + beta * nckd


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two unweighted parts of `dkd_loss`, (TCKD, NCKD), each including its T² factor.

    Args:
        student_logits, teacher_logits: (B, K).
        targets: (B,) class indices (−1: unlabelled, skipped).
        temperature: T > 0.

    >>> z_s, z_t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]])
    >>> tckd, nckd = dkd_terms(z_s, z_t, torch.tensor([0]), 1.0)
    >>> round((tckd + 8 * nckd).item(), 4)  # = dkd_loss(z_s, z_t, y, 1.0, 8.0, 1.0)
    3.7785
    """
    _check_logits(student_logits, teacher_logits)
    check_temperature(temperature)
    keep = targets >= 0
    if not bool(keep.all()):
        student_logits, teacher_logits, targets = student_logits[keep], teacher_logits[keep], targets[keep]
    if len(targets) == 0:
        zero = student_logits.sum() * 0.0
        return zero, zero
    z_s, z_t = student_logits / temperature, teacher_logits.detach() / temperature
    gt = F.one_hot(targets, z_s.shape[1]).bool()  # (B, K)
    p_s, p_t = torch.softmax(z_s, 1), torch.softmax(z_t, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], 1)  # (B, 2) target vs the rest
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], 1)
    tckd = (b_t * (torch.log(b_t.clamp_min(1e-12)) - torch.log(b_s.clamp_min(1e-12)))).sum(1).mean()
    log_q_s = torch.log_softmax(z_s - 1000.0 * gt, 1)  # softmax over the non-target classes
    log_q_t = torch.log_softmax(z_t - 1000.0 * gt, 1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return temperature ** 2 * tckd, temperature ** 2 * nckd


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0,
              gamma: float = 1.0, tau: float = 1.0) -> torch.Tensor:
    r"""DIST: match inter-class and intra-class *relations* with Pearson correlation.

    .. math::
        Y = \mathrm{softmax}(Z/\tau),\quad
        \mathcal{L}_{inter} = 1 - \frac{1}{B}\sum_i \rho(Y^s_{i,:}, Y^t_{i,:}),\quad
        \mathcal{L}_{intra} = 1 - \frac{1}{K}\sum_j \rho(Y^s_{:,j}, Y^t_{:,j}),\quad
        \mathcal{L} = \tau^2 (\beta\,\mathcal{L}_{inter} + \gamma\,\mathcal{L}_{intra})

    ρ is the Pearson correlation (a cosine of centred vectors, ε = 1e-8), as in the authors'
    code (hunto/DIST_KD, ``dist_kd.py``: β = γ = τ = 1 by default). Invariant to a positive
    affine map of each row of the student's probabilities' relations.

    Paper: T. Huang, S. You, F. Wang, C. Qian, C. Xu. "Knowledge Distillation from A Stronger
    Teacher." NeurIPS 2022. arXiv:2205.10536.

    >>> z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    >>> round(dist_loss(z, z).item(), 6)
    0.0
    >>> round(dist_loss(z, z.flip(1)).item(), 4)
    3.0838
    """
    _check_logits(student_logits, teacher_logits)
    check_temperature(tau)
    y_s = torch.softmax(student_logits / tau, 1)
    y_t = torch.softmax(teacher_logits.detach() / tau, 1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


# ---------------------------------------------------------------------------
# feature and relation methods

def _check_batch(s: torch.Tensor, t: torch.Tensor) -> None:
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student and teacher features need the same batch size, got {s.shape[0]} and {t.shape[0]}")


def _flat(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(f.shape[0], -1)


def match_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two (B, C, H, W) maps to the other's size."""
    if s.ndim == 4 and t.ndim == 4 and s.shape[2:] != t.shape[2:]:
        if s.shape[2] * s.shape[3] > t.shape[2] * t.shape[3]:
            s = F.adaptive_avg_pool2d(s, t.shape[2:])
        else:
            t = F.adaptive_avg_pool2d(t, s.shape[2:])
    return s, t


def fitnet_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor,
                adapter: torch.nn.Module | None = None) -> torch.Tensor:
    r"""FitNets hint: mean squared error between the adapted student feature and the teacher's.

    .. math:: \mathcal{L} = \frac{1}{N}\,\| r(f_s) - f_t \|_2^2

    r is the learnable *regressor* (a 1×1 convolution for maps, a linear layer for vectors;
    identity when None), trained with the student and dropped from the exported student. The
    mean is over every element (``MSELoss``), as in RepDistiller's ``HintLoss``. If the maps'
    spatial sizes differ, the larger is average-pooled to the smaller (the paper's regressor
    is convolutional with a matching receptive field; pooling is our simplification for
    arbitrary architectures).

    Paper: A. Romero, N. Ballas, S. E. Kahou, A. Chassang, C. Gatta, Y. Bengio. "FitNets:
    Hints for Thin Deep Nets." ICLR 2015. arXiv:1412.6550.

    >>> s = torch.ones(2, 3)
    >>> t = torch.zeros(2, 3)
    >>> fitnet_loss(s, t).item()
    1.0
    """
    _check_batch(student_feature, teacher_feature)
    s = adapter(student_feature) if adapter is not None else student_feature
    s, t = match_spatial(s, teacher_feature.detach())
    if s.shape != t.shape:
        raise ValueError(f"after the adapter the student feature {tuple(s.shape)} must match the teacher's "
                         f"{tuple(t.shape)}")
    return F.mse_loss(s, t)


def attention_map(f: torch.Tensor, p: int = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, H·W): the channel mean of |f|^p, L2-normalised per sample."""
    return F.normalize(f.pow(p).mean(1).reshape(f.shape[0], -1), dim=1)


def at_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, p: int = 2) -> torch.Tensor:
    r"""Attention transfer, the authors' code variant.

    .. math::
        a(f) = \frac{\mathrm{vec}(\mathrm{mean}_c f^{\,p})}{\|\mathrm{vec}(\mathrm{mean}_c f^{\,p})\|_2},\quad
        \mathcal{L} = \mathrm{mean}\big((a(f_s) - a(f_t))^2\big)

    p = 2, the channel *mean* (not sum) and an element-wise mean of the squared difference, as
    in szagoruyko/attention-transfer's ``at_loss`` (the paper writes a p-norm of the difference).
    When the maps' sizes differ the larger map is average-pooled to the smaller before a(·).
    The loss ignores the channel count, so no adapter is needed.

    Paper: S. Zagoruyko, N. Komodakis. "Paying More Attention to Attention: Improving the
    Performance of Convolutional Neural Networks via Attention Transfer." ICLR 2017. arXiv:1612.03928.

    >>> f = torch.rand(2, 4, 3, 3)
    >>> at_loss(f, 5 * f).item() < 1e-12  # scale-invariant
    True
    """
    _check_batch(student_feature, teacher_feature)
    if student_feature.ndim != 4 or teacher_feature.ndim != 4:
        raise ValueError(f"at_loss needs (B, C, H, W) maps, got {tuple(student_feature.shape)} and "
                         f"{tuple(teacher_feature.shape)}")
    s, t = match_spatial(student_feature, teacher_feature.detach())
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def pkt_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    r"""Probabilistic knowledge transfer with the cosine kernel.

    .. math::
        K_{ij} = \tfrac12\big(1 + \cos(f_i, f_j)\big),\quad P_{ij} = \frac{K_{ij}}{\sum_j K_{ij}},\quad
        \mathcal{L} = \mathrm{mean}_{ij}\; P^t_{ij}\,\log\frac{P^t_{ij} + \epsilon}{P^s_{ij} + \epsilon}

    As in the authors' code (passalis/probabilistic_kt, used unchanged by RepDistiller): the
    embeddings are L2-normalised (ε = 1e-7 guards zero vectors), the kernel is the cosine
    similarity rescaled to [0, 1], each row is normalised into a conditional distribution, and
    the KL terms are averaged over all B² entries.

    Paper: N. Passalis, A. Tefas. "Learning Deep Representations with Probabilistic Knowledge
    Transfer." ECCV 2018. arXiv:1803.10837.

    >>> f = torch.randn(4, 8)
    >>> abs(pkt_loss(f, 3 * f).item()) < 1e-6  # invariant to the embedding's scale
    True
    """
    _check_batch(student_embedding, teacher_embedding)

    def cond(f):
        f = _flat(f)
        f = f / (f.norm(dim=1, keepdim=True) + eps)
        k = (f @ f.t() + 1.0) / 2.0
        return k / k.sum(1, keepdim=True)

    p_s, p_t = cond(student_embedding), cond(teacher_embedding.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    d = d.clone()
    d[range(len(e)), range(len(e))] = 0
    return d


def rkd_loss(student_embedding: torch.Tensor, teacher_embedding: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    r"""Relational KD: match pairwise distances and triplet angles of the embeddings.

    .. math::
        \psi_D(i,j) = \frac{\|e_i - e_j\|_2}{\mu},\ \mu = \mathrm{mean}_{i \ne j}\|e_i - e_j\|_2,\qquad
        \psi_A(i,j,k) = \Big\langle \frac{e_i - e_j}{\|e_i - e_j\|}, \frac{e_k - e_j}{\|e_k - e_j\|}\Big\rangle

    .. math::
        \mathcal{L} = w_D\,\mathrm{mean}\,\ell_\delta(\psi_D^s, \psi_D^t) + w_A\,\mathrm{mean}\,\ell_\delta(\psi_A^s, \psi_A^t)

    ℓ_δ is the smooth L1 (Huber, δ = 1) loss averaged over all pairs / triplets; w_D = 25 and
    w_A = 50 are the paper's weights, as in the authors' code (lenscloth/RKD). Invariant to a
    rescaling of either embedding.

    Paper: W. Park, D. Kim, Y. Lu, M. Cho. "Relational Knowledge Distillation." CVPR 2019.
    arXiv:1904.05068.

    >>> e = torch.randn(5, 4)
    >>> rkd_loss(e, 2 * e).item() < 1e-6
    True
    """
    _check_batch(student_embedding, teacher_embedding)
    s, t = _flat(student_embedding), _flat(teacher_embedding.detach())
    loss = s.new_zeros(())
    if distance_weight:
        d_s, d_t = _pairwise_distances(s), _pairwise_distances(t)
        off = d_t > 0
        d_s = d_s / d_s[off].mean()
        d_t = d_t / d_t[off].mean()
        loss = loss + distance_weight * F.smooth_l1_loss(d_s, d_t)
    if angle_weight:
        def angles(e):
            diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # (B, B, D): e_j - e_i
            return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)  # (B·B·B,)
        loss = loss + angle_weight * F.smooth_l1_loss(angles(s), angles(t))
    return loss


def sp_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    r"""Similarity-preserving KD: match the batch's row-normalised similarity matrices.

    .. math::
        G = \mathrm{rownorm}\big(f f^\top\big),\ f \in \mathbb{R}^{B \times (C H W)},\qquad
        \mathcal{L} = \frac{1}{B^2}\,\| G_t - G_s \|_F^2

    Each row of G is L2-normalised (the paper's Eq. 2–3, as in RepDistiller's ``Similarity``).
    Works for any pair of feature shapes, since G is B × B.

    Paper: F. Tung, G. Mori. "Similarity-Preserving Knowledge Distillation." ICCV 2019.
    arXiv:1907.09682.

    >>> f = torch.randn(4, 6)
    >>> sp_loss(f, 2 * f).item() < 1e-12
    True
    """
    _check_batch(student_feature, teacher_feature)

    def gram(f):
        f = _flat(f)
        return F.normalize(f @ f.t(), dim=1)

    B = student_feature.shape[0]
    return (gram(teacher_feature.detach()) - gram(student_feature)).pow(2).sum() / (B * B)


def crd_nce_loss(scores: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    r"""The NCE loss of CRD on normalised scores (B, K + 1), column 0 the positive.

    .. math::
        P_n = 1/N,\quad
        \mathcal{L} = -\frac{1}{B}\sum_b\Big[\log\frac{s_{b0}}{s_{b0} + K P_n + \epsilon}
        + \sum_{k=1}^{K}\log\frac{K P_n}{s_{bk} + K P_n + \epsilon}\Big]

    As RepDistiller's ``ContrastLoss``. The scores come from `workbench.core.methods.CRD`, which keeps
    the memory banks of both models' embeddings and the normalising constants.

    Paper: Y. Tian, D. Krishnan, P. Isola. "Contrastive Representation Distillation." ICLR 2020.
    arXiv:1910.10699.
    """
    B, k1 = scores.shape
    m_pn = (k1 - 1) / n_data
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + m_pn + eps))
    log_d0 = torch.log(m_pn / (scores[:, 1:] + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / B


# ---------------------------------------------------------------------------
# Transformer layers (text): hidden states, attention distributions and value relations, over the tokens that
# are not padding. `mask` is (B, L), 1 for a token and 0 for padding.

def hidden_state_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor,
                     projection: torch.nn.Module | None = None) -> torch.Tensor:
    r"""TinyBERT's hidden-state loss: the mean squared error between the projected student hidden states and the
    teacher's, over the tokens that are not padding.

    .. math:: \mathcal{L}_{hidn} = \frac{1}{n\,d}\sum_{i:\ m_i = 1} \| W_h\,h^S_i - h^T_i \|_2^2

    with n the number of tokens, d the teacher's width, and W_h a learnable projection (a linear layer from the
    student's width to the teacher's; identity when None), trained with the student and dropped from the exported
    student.

    Paper: X. Jiao, Y. Yin, L. Shang, X. Jiang, X. Chen, L. Li, F. Wang, Q. Liu. "TinyBERT: Distilling BERT for
    Natural Language Understanding." Findings of EMNLP 2020. arXiv:1909.10351 (eq. 8).

    >>> s, t = torch.ones(1, 3, 2), torch.zeros(1, 3, 2)
    >>> hidden_state_mse(s, t, torch.tensor([[1, 1, 0]])).item()  # the padded token does not count
    1.0
    """
    _check_batch(student_hidden, teacher_hidden)
    s = projection(student_hidden) if projection is not None else student_hidden
    t = teacher_hidden.detach()
    if s.shape != t.shape:
        raise ValueError(f"after the projection the student hidden states {tuple(s.shape)} must match the "
                         f"teacher's {tuple(t.shape)}")
    m = mask[:, :s.shape[1]].to(s.dtype).unsqueeze(-1)  # (B, L, 1)
    return ((s - t).pow(2) * m).sum() / (m.sum().clamp_min(1.0) * s.shape[-1])


def relation_distributions(a: torch.Tensor, b: torch.Tensor, heads: int, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-head log distributions log softmax(A_h B_hᵀ / √d_h) over the tokens that are not padding, (B, H, L, L).

    With a, b the queries and keys this is log self-attention; with the values twice, MiniLM's value relation.
    The width splits into `heads` heads of d_h = d / heads.

    >>> a = torch.zeros(1, 2, 4)
    >>> relation_distributions(a, a, 2, torch.tensor([[1, 1]])).exp()[0, 0, 0].tolist()
    [0.5, 0.5]
    """
    B, L, D = a.shape
    if D % heads:
        raise ValueError(f"a width of {D} does not split into {heads} heads")
    d = D // heads
    ah = a.reshape(B, L, heads, d).transpose(1, 2)  # (B, H, L, d)
    bh = b.reshape(B, L, heads, d).transpose(1, 2)
    scores = ah.float() @ bh.float().transpose(-1, -2) / math.sqrt(d)  # (B, H, L, L)
    keys = mask[:, :L].bool()[:, None, None, :]  # padding is never attended to
    return torch.log_softmax(scores.masked_fill(~keys, float("-inf")), dim=-1)


def relation_kl(student_a: torch.Tensor, student_b: torch.Tensor, teacher_a: torch.Tensor, teacher_b: torch.Tensor,
                mask: torch.Tensor, heads: int) -> torch.Tensor:
    r"""KL(teacher ‖ student) between relation distributions, summed over the keys and averaged over the heads and
    the tokens that are not padding.

    .. math::
        R = \mathrm{softmax}\Big(\frac{A B^\top}{\sqrt{d_h}}\Big),\quad
        \mathcal{L} = \frac{1}{H\,n}\sum_{h}\sum_{i:\ m_i = 1}\mathrm{KL}\big(R^T_{h,i}\,\|\,R^S_{h,i}\big)

    Both models' widths split into the same `heads` relation heads, so their widths and head counts may differ
    (MiniLMv2's relation heads). With (A, B) = (Q, K) this is the attention-distribution transfer of MiniLM (and
    the KL form of TinyBERT's attention loss, which the paper writes as an MSE of the scores); with (V, V) it is
    MiniLM's value-relation transfer.

    Papers: W. Wang, F. Wei, L. Dong, H. Bao, N. Yang, M. Zhou. "MiniLM: Deep Self-Attention Distillation for
    Task-Agnostic Compression of Pre-Trained Transformers." NeurIPS 2020. arXiv:2002.10957 (eqs. 5-7);
    W. Wang, H. Bao, S. Huang, L. Dong, F. Wei. "MiniLMv2: Multi-Head Self-Attention Relation Distillation for
    Compressing Pretrained Transformers." Findings of ACL 2021. arXiv:2012.15828.

    >>> q = torch.randn(2, 5, 8)
    >>> m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    >>> relation_kl(q, q, q, q, m, 2).item()  # the same relations: no loss
    0.0
    """
    _check_batch(student_a, teacher_a)
    log_s = relation_distributions(student_a, student_b, heads, mask)
    log_t = relation_distributions(teacher_a.detach(), teacher_b.detach(), heads, mask)
    keys = mask[:, :log_s.shape[-1]].bool()[:, None, None, :]
    kl = torch.where(keys, log_t.exp() * (log_t - log_s), 0.0).sum(-1)  # (B, H, L); padding keys: 0·log 0 = 0
    queries = mask[:, :kl.shape[-1]].to(kl.dtype)[:, None, :]  # (B, 1, L)
    return (kl * queries).sum() / (queries.sum().clamp_min(1.0) * heads)


# ---------------------------------------------------------------------------
# token-level distillation of language models, from the teacher's cached top-k logits
#
# A language model's teacher target is its next-token distribution at every position, over a vocabulary of
# tens of thousands of tokens. The cache keeps only the teacher's k largest logits per token (values and ids),
# so every loss below says what it does with the teacher's mass outside them:
# - the teacher's distribution is its top k renormalised, p̃ = softmax(v/T) over the k ids (mass outside: 0);
# - the student keeps its full distribution q = softmax(z_s/T), whose mass outside the teacher's k ids is one
#   *tail bucket* q_tail = 1 − Σ_k q_k, where the teacher has 0 (forward KL, JSD, skew KL), or is renormalised
#   over the same k ids, q̃ (reverse KL, where the teacher's 0 would make the tail infinite).
# With k = V every one equals its dense form; tests/unit bound the error for smaller k on a tiny model.
# Positions whose target is −1 (padding) are left out; the mean is over the remaining tokens.

def check_beta(beta: float) -> None:
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1), got {beta:g}; β → 0 is forward KL (kd), β → 1 reverse KL "
                         "(reverse_kl)")


def check_skew(skew: float) -> None:
    if not 0.0 <= skew < 1.0:
        raise ValueError(f"skew λ must be in [0, 1), got {skew:g}")


def _token_mask(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = (targets >= 0).float()
    return mask, mask.sum().clamp_min(1.0)


def _student_on_topk(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q at the teacher's k ids (N, k), log q_tail (N,)) with q = softmax(z_s/T) over the whole vocabulary."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_q_k = log_q.gather(-1, ids.long())
    tail = (1.0 - log_q_k.exp().sum(-1)).clamp_min(1e-12)
    return log_q_k, tail.log()


def token_forward_kl(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_ids: torch.Tensor,
                     targets: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Token-level KD: T²·KL(p̃_t ‖ q_s) per next token, averaged over the tokens.

    .. math::
        \mathcal{L} = T^2 \frac{1}{N} \sum_{n} \sum_{k \in \mathrm{top}_k} \tilde p_{nk}
            (\log \tilde p_{nk} - \log q_{nk}),\quad \tilde p = \mathrm{softmax}(v/T),\ q = \mathrm{softmax}(z_s/T)

    The student's full distribution, so its mass outside the teacher's top k (where the teacher has 0) is pushed
    down through the normalisation. Word-level KD in Kim & Rush, "Sequence-Level Knowledge Distillation",
    EMNLP 2016 (arXiv:1606.07947); the T² factor and the α convention as for `kd_loss`.

    Args: student_logits (N, V); topk_values, topk_ids (N, k) of the teacher; targets (N,) with −1 for padding.

    >>> z = torch.tensor([[2.0, 0.0, 0.0]])
    >>> round(token_forward_kl(z, torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0, 1, 2]]),
    ...                        torch.tensor([0]), 1.0).item(), 6)  # the same distribution: 0
    0.0
    >>> round(token_forward_kl(z, torch.tensor([[0.0]]), torch.tensor([[1]]), torch.tensor([0]), 1.0).item(), 4)
    2.2395
    """
    check_temperature(temperature)
    mask, n = _token_mask(targets)
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    log_q_k, _ = _student_on_topk(student_logits, topk_ids, temperature)
    kl = (log_p.exp() * (log_p - log_q_k)).sum(-1)
    return temperature ** 2 * (kl * mask).sum() / n


class _TokenCEAndKL(torch.autograd.Function):
    """The forward pass and hand-written backward of `token_ce_and_kl` (one softmax per temperature in backward,
    nothing of size (N, V) kept from the forward but the logits themselves)."""

    @staticmethod
    def forward(ctx, z, targets, log_p, ids, temperature):
        mask, n = _token_mask(targets)
        lse1 = torch.logsumexp(z, dim=-1)
        safe = targets.clamp_min(0).long()
        ce = ((lse1 - z.gather(-1, safe[:, None])[:, 0]) * mask).sum() / n
        lse_t = lse1 if temperature == 1.0 else torch.logsumexp(z * (1.0 / temperature), dim=-1)
        log_q_k = z.gather(-1, ids) / temperature - lse_t[:, None]
        kl = ((log_p.exp() * (log_p - log_q_k)).sum(-1) * mask).sum() / n
        ctx.save_for_backward(z, safe, log_p, ids, mask, lse1, lse_t)
        ctx.temperature, ctx.n = temperature, n
        return ce, kl

    @staticmethod
    def backward(ctx, g_ce, g_kl):
        z, safe, log_p, ids, mask, lse1, lse_t = ctx.saved_tensors
        T, w = ctx.temperature, mask[:, None] / ctx.n
        # d CE / dz = softmax(z) − onehot(y);  d KL(p̃ ‖ softmax(z/T)) / dz = (softmax(z/T) − scatter(p̃)) / T
        if T == 1.0:
            grad = (z - lse1[:, None]).exp_().mul_(float(g_ce + g_kl))
        else:
            grad = (z - lse1[:, None]).exp_().mul_(float(g_ce))
            grad.add_((z * (1.0 / T)).sub_(lse_t[:, None]).exp_(), alpha=float(g_kl) / T)
        grad.scatter_add_(-1, safe[:, None], torch.full_like(safe[:, None], -float(g_ce), dtype=grad.dtype))
        grad.scatter_add_(-1, ids, log_p.exp() * (-float(g_kl) / T))
        return grad.mul_(w), None, None, None, None


def token_ce_and_kl(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_ids: torch.Tensor,
                    targets: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(CE, KL(p̃_t ‖ q_s)) per next token, averaged over the real tokens, in one pass: the two terms of token-level
    KD, ``(1 − α)·CE + α·T²·KL``, exactly `token_cross_entropy` and `token_forward_kl` / T².

    .. math::
        \mathrm{CE} = \frac{1}{N}\sum_n \big(\log\textstyle\sum_v e^{z_{nv}} - z_{n y_n}\big),\quad
        \mathrm{KL} = \frac{1}{N}\sum_n \sum_{k} \tilde p_{nk}(\log \tilde p_{nk} - z_{nk}/T
            + \log\textstyle\sum_v e^{z_{nv}/T})

    Written as one autograd function because on a CPU the (N, V) passes over a large vocabulary, not the model,
    dominate a small student's step: the separate losses make four of them (a log-softmax forward and backward
    each), this makes one per temperature in the forward (a log-sum-exp) and one in the backward (the softmax
    the gradient needs), so a distilled step costs about a scratch step at T = 1 (benchmarks/lm.py).

    >>> z, v, j, y = torch.randn(3, 7), torch.randn(3, 2), torch.tensor([[0, 1]] * 3), torch.tensor([1, 2, -1])
    >>> ce, kl = token_ce_and_kl(z, v, j, y, 2.0)
    >>> torch.allclose(ce, token_cross_entropy(z, y)), torch.allclose(4 * kl, token_forward_kl(z, v, j, y, 2.0))
    (True, True)
    """
    check_temperature(temperature)
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    return _TokenCEAndKL.apply(student_logits.float(), targets, log_p, topk_ids.long(), float(temperature))


def token_reverse_kl(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_ids: torch.Tensor,
                     targets: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Reverse KL, T²·KL(q̃_s ‖ p̃_t): mode-seeking, the student puts its mass where the teacher's is largest.

    .. math::
        \mathcal{L} = T^2 \frac{1}{N} \sum_{n} \sum_{k} \tilde q_{nk} (\log \tilde q_{nk} - \log \tilde p_{nk}),
        \quad \tilde q = \mathrm{softmax}(z_s[\mathrm{top}_k]/T)

    Both distributions renormalised over the teacher's top k ids (outside them the teacher's 0 would make the KL
    infinite). Paper: Y. Gu, L. Dong, F. Wei, M. Huang, "MiniLLM: Knowledge Distillation of Large Language
    Models", ICLR 2024 (arXiv:2306.08543), here token-level on fixed text rather than its policy gradient.

    >>> round(token_reverse_kl(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[1.0, 0.0]]),
    ...                        torch.tensor([[0, 1]]), torch.tensor([0]), 1.0).item(), 4)  # q̃ = (½, ½), p̃ ∝ (e, 1)
    0.1201
    """
    check_temperature(temperature)
    mask, n = _token_mask(targets)
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.gather(-1, topk_ids.long()) / temperature, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)
    return temperature ** 2 * (kl * mask).sum() / n


def _mixture_kl_terms(log_p: torch.Tensor, log_q_k: torch.Tensor, log_q_tail: torch.Tensor, beta: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p ‖ m), KL(q ‖ m)) per token for m = β·p + (1 − β)·q over the k ids and the tail bucket (p_tail = 0)."""
    log_m_k = torch.logaddexp(log_p + math.log(beta), log_q_k + math.log(1.0 - beta))
    log_m_tail = log_q_tail + math.log(1.0 - beta)
    kl_p = (log_p.exp() * (log_p - log_m_k)).sum(-1)
    kl_q = (log_q_k.exp() * (log_q_k - log_m_k)).sum(-1) + log_q_tail.exp() * (log_q_tail - log_m_tail)
    return kl_p, kl_q


def token_jsd(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_ids: torch.Tensor,
              targets: torch.Tensor, temperature: float, beta: float = 0.5) -> torch.Tensor:
    r"""Generalised Jensen–Shannon divergence with β (GKD): T²·[β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)].

    .. math::
        m = \beta\, \tilde p + (1 - \beta)\, q, \quad 0 < \beta < 1

    β = ½ is the symmetric JSD; β → 0 behaves like forward KL and β → 1 like reverse KL, up to scale (use
    ``kd`` and ``reverse_kl`` for those ends). The student's mass outside the teacher's top k is a tail bucket
    where p̃ is 0. Paper: R. Agarwal et al., "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024 (arXiv:2306.13649); the same mixture as TRL's
    ``generalized_jsd_loss``.

    >>> z = torch.tensor([[1.0, 0.0]])
    >>> abs(round(token_jsd(z, z, torch.tensor([[0, 1]]), torch.tensor([0]), 1.0).item(), 6))
    0.0
    >>> round(token_jsd(torch.tensor([[0.0, 0.0]]), torch.tensor([[9.0, 0.0]]), torch.tensor([[0, 1]]),
    ...                 torch.tensor([0]), 1.0).item(), 4)  # at most log 2 = 0.6931 for β = ½
    0.2152
    """
    check_temperature(temperature)
    check_beta(beta)
    mask, n = _token_mask(targets)
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    log_q_k, log_q_tail = _student_on_topk(student_logits, topk_ids, temperature)
    kl_p, kl_q = _mixture_kl_terms(log_p, log_q_k, log_q_tail, beta)
    return temperature ** 2 * ((beta * kl_p + (1.0 - beta) * kl_q) * mask).sum() / n


def token_skew_kl(student_logits: torch.Tensor, topk_values: torch.Tensor, topk_ids: torch.Tensor,
                  targets: torch.Tensor, temperature: float, skew: float = 0.1) -> torch.Tensor:
    r"""Skew KL (DistiLLM): T²·KL(p̃ ‖ λ·p̃ + (1 − λ)·q), with λ = ``skew``.

    Mixing a little of the teacher into the student's distribution keeps the divergence and its gradient bounded
    where the student gives the teacher's tokens almost no mass (KL(p ‖ m) ≤ −log λ). λ = 0 is forward KL. The
    student's mass outside the teacher's top k is a tail bucket. Paper: J. Ko, S. Kim, T. Chen, S.-Y. Yun,
    "DistiLLM: Towards Streamlined Distillation for Large Language Models", ICML 2024 (arXiv:2402.03898);
    λ = 0.1 is its default.

    >>> p = torch.tensor([[9.0, 0.0]])
    >>> kd = token_forward_kl(torch.tensor([[0.0, 9.0]]), p, torch.tensor([[0, 1]]), torch.tensor([0]), 1.0)
    >>> skl = token_skew_kl(torch.tensor([[0.0, 9.0]]), p, torch.tensor([[0, 1]]), torch.tensor([0]), 1.0)
    >>> round(kd.item(), 3), round(skl.item(), 3), skl.item() <= -math.log(0.1)
    (8.998, 2.3, True)
    """
    check_skew(skew)
    if skew == 0.0:
        return token_forward_kl(student_logits, topk_values, topk_ids, targets, temperature)
    mask, n = _token_mask(targets)
    log_p = F.log_softmax(topk_values.float() / temperature, dim=-1)
    log_q_k, _ = _student_on_topk(student_logits, topk_ids, temperature)
    log_m_k = torch.logaddexp(log_p + math.log(skew), log_q_k + math.log(1.0 - skew))
    kl = (log_p.exp() * (log_p - log_m_k)).sum(-1)
    return temperature ** 2 * (kl * mask).sum() / n


def token_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The next-token cross-entropy (N, V) against (N,) targets, −1 for padding, averaged over the real tokens;
    exp of it on held-out text is the perplexity.

    >>> round(token_cross_entropy(torch.zeros(2, 4), torch.tensor([1, -1])).item(), 4)  # log 4
    1.3863
    """
    return F.cross_entropy(student_logits.float(), targets.long(), ignore_index=-1)
