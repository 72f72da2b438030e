"""The numbers behind the teaching views: softened probabilities, entropy, and the T² factor.

Shared by the app's Dark knowledge page, `widgets.TemperatureExplorer` and notebook 01,
so that all three show exactly the same computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.core.losses import entropy, kd_loss, softmax_t


@dataclass
class SoftenedView:
    """What a teacher says about one image at T = 1 and at T."""

    classes: tuple[str, ...]
    true_class: int
    logits: torch.Tensor  # (K,)
    temperature: float
    probs_t1: torch.Tensor  # (K,) softmax(z)
    probs_T: torch.Tensor  # (K,) softmax(z / T)
    entropy_t1: float  # nats
    entropy_T: float
    wrong_ranking: list[tuple[str, float]]  # wrong classes by probability at T, highest first

    @property
    def predicted(self) -> int:
        return int(self.logits.argmax())


def soften(logits: torch.Tensor, temperature: float, classes, true_class: int) -> SoftenedView:
    """Softened probabilities of one logit vector (K,), with entropies and the dark-knowledge ranking."""
    logits = logits.detach().float().flatten()
    p1, pT = softmax_t(logits, 1.0), softmax_t(logits, temperature)
    ranking = sorted(((str(classes[i]), float(pT[i])) for i in range(len(classes)) if i != true_class),
                     key=lambda t: -t[1])
    return SoftenedView(tuple(str(c) for c in classes), int(true_class), logits, float(temperature), p1, pT,
                        entropy(p1).item(), entropy(pT).item(), ranking)


@torch.inference_mode()
def teacher_view(model: torch.nn.Module, dataset, index: int, temperature: float, split: str = "test") -> SoftenedView:
    """`soften` applied to the model's logits for image `index` of a split."""
    x, y = dataset.split(split)
    if not 0 <= index < len(x):
        raise ValueError(f"image index must be in [0, {len(x) - 1}], got {index}")
    model.eval()
    device = next(model.parameters()).device
    logits = model(x[index:index + 1].to(device))[0].cpu()
    return soften(logits, temperature, dataset.classes, int(y[index]))


@torch.inference_mode()
def first_correct_index(model: torch.nn.Module, dataset, split: str = "test", limit: int = 256) -> int:
    """The first image of a split that the model classifies correctly (0 if none of the first `limit` is).

    The teaching views open on it, so that the first thing a class sees is a confident, right
    teacher whose small probabilities carry the dark knowledge; a wrong one is a click away.
    """
    x, y = dataset.split(split)
    x, y = x[:limit], y[:limit]
    model.eval()
    device = next(model.parameters()).device
    right = (model(x.to(device)).argmax(1).cpu() == y).nonzero().flatten()
    return int(right[0]) if len(right) else 0


def t_squared_scaling(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperatures) -> dict:
    """The KD term and the norm of its gradient w.r.t. the student's logits, with and without T², per T.

    Without T² the gradient shrinks like 1/T²; with it, it tends to a constant, so the KD
    term keeps the same weight relative to the cross-entropy whatever T is.
    """
    out = {"temperature": [], "kd_with": [], "kd_without": [], "grad_with": [], "grad_without": []}
    for T in temperatures:
        z = student_logits.detach().clone().float().requires_grad_(True)
        loss = kd_loss(z, teacher_logits.float(), float(T))
        (grad,) = torch.autograd.grad(loss, z)
        out["temperature"].append(float(T))
        out["kd_with"].append(loss.item())
        out["kd_without"].append(loss.item() / T ** 2)
        out["grad_with"].append(grad.norm().item())
        out["grad_without"].append(grad.norm().item() / T ** 2)
    return out


@dataclass
class NextTokenView:
    """What a language model says about the next token after a prompt, at T = 1 and at T."""

    ids: list[int]  # the shown tokens: the reference model's top k at T = 1, most likely first
    logits: torch.Tensor  # (V,) the model's next-token logits
    temperature: float
    probs_t1: list[float]  # its probabilities of `ids` at T = 1 and at T (over the whole vocabulary)
    probs_T: list[float]
    entropy_t1: float  # nats, of the whole next-token distribution
    entropy_T: float
    shown_mass_t1: float  # the share of the probability the shown tokens hold
    shown_mass_T: float


def next_token_view(logits: torch.Tensor, temperature: float, k: int = 20, ids: list[int] | None = None
                    ) -> NextTokenView:
    """Softened next-token probabilities of one logit vector (V,), for its own top k (or the tokens `ids`, to show
    a student's view of the teacher's choices).

    >>> v = next_token_view(torch.tensor([3.0, 1.0, 0.0, 0.0]), 2.0, k=2)
    >>> v.ids, [round(p, 3) for p in v.probs_t1], [round(p, 3) for p in v.probs_T]
    ([0, 1], [0.81, 0.11], [0.551, 0.203])
    """
    logits = logits.detach().float().flatten()
    if ids is None:
        ids = logits.topk(min(k, logits.numel())).indices.tolist()
    p1, pT = softmax_t(logits, 1.0), softmax_t(logits, temperature)
    sel = torch.tensor(ids, dtype=torch.long)
    return NextTokenView(list(ids), logits, float(temperature), p1[sel].tolist(), pT[sel].tolist(),
                         entropy(p1).item(), entropy(pT).item(), float(p1[sel].sum()), float(pT[sel].sum()))
