"""Every run's objective is a Method: cross-entropy alone, vanilla KD, and the rest, behind one interface.

A method declares what it needs from the teacher (`teacher_input`: nothing, its logits, or
named features of both models), how it wants the teacher's logits presented
(`teacher_target`, e.g. log softmax(z_t/T) for KD), its hyperparameters with the defaults of
its paper or its authors' code, and its objective as named, weighted terms (`terms`). The
training loop sums the terms, logs each one, and never looks at a method's name: a method
whose teacher input is "logits" gets its targets from the teacher-logit cache when the
augmentation allows it, and from the teacher on the batch otherwise.

Learnable pieces (FitNets' regressor, CRD's embedding heads and memory, DML's peers) live in
the method, are trained with the student, and are left out of the exported student.

``ce`` is the objective of teacher and scratch runs. ``kd`` uses the project's α convention
(docs/conventions.md), L = (1 − α)·CE + α·T²·KL, with T and α as its own hyperparameters;
the others use their papers' weights, listed in each class and in docs/methods.md.
``METHODS`` maps names to classes; ``build_method`` makes one for a run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core import losses
from workbench.core.hooks import feature_shapes

MAX_TEMPERATURE = 100.0  # beyond this every softened distribution is uniform to float precision, and T² overflows


class TopK(NamedTuple):
    """The teacher's k largest logits per position and their ids, (N, k) each: what a language model's teacher
    target is (its vocabulary is too large to cache every logit). Each token loss says how it treats the rest."""

    values: torch.Tensor  # (N, k) float
    ids: torch.Tensor  # (N, k) long


@dataclass
class StepContext:
    """What a method sees at one training step, whatever the task: N scored rows (N = B for a classifier,
    B·L next-token positions for a language model) of K classes (the vocabulary, for a language model)."""

    inputs: torch.Tensor  # (B, ...) the (augmented) batch as the student sees it: images, rows of features, tokens
    targets: torch.Tensor  # (N,) classes, −1 where the label budget hides one (or a position is padding)
    idx: torch.Tensor  # (B,) positions in the training split
    s_logits: torch.Tensor  # (N, K)
    t_target: torch.Tensor | TopK | None = None  # (N, K) method.teacher_target(teacher logits), or the teacher's
    # cached TopK where the task caches only the top k (language models); None without a teacher
    s_feats: dict = field(default_factory=dict)
    t_feats: dict = field(default_factory=dict)
    progress: float = 0.0  # fraction of all training steps done


def _coerce(method: str, key: str, default, value):
    """`value` as the type of `default`: a finite float, a whole number, or a string; else ValueError."""
    if isinstance(default, str):
        return str(value).strip()
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{method}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{method}: {key} must be a finite number, got {value!r}")
    if isinstance(default, int):
        if f != int(f):
            raise ValueError(f"{method}: {key} must be a whole number, got {value!r}")
        return int(f)
    return f


class Method(nn.Module):
    """Base class. Subclasses set the class attributes and implement `terms`."""

    name = "base"
    title = ""
    citation = ""
    description = ""
    defaults: dict = {}
    help: dict = {}
    needs_teacher = True  # False: the method trains without a pretrained teacher (ce, dml)
    teacher_input = "logits"  # none | logits | features (features: the teacher runs on every batch, with hooks)
    temperature_key: str | None = None  # the hyperparameter that softens distributions (-T), if there is one
    weight_key: str | None = None  # the weight in [0, 1] of the distillation term, whose 0 is scratch (--alpha)
    primary: tuple[str, ...] = ()  # the hyperparameters that drive sliders, -T/--alpha and run labels
    search_first: str | None = None  # the hyperparameter a search form offers first (None: beta, the first primary)
    distils = True  # False: the label-only objective of teacher and scratch runs (ce)
    learns_from_unlabelled = True  # sees every training sample (the teacher's signal where labels are hidden)
    needs_feature_maps = False  # True: only for tasks whose models have spatial feature maps (images)
    needs_transformer_layers = False  # True: only for tasks whose models are Transformers (text)
    token_level = False  # True: its terms also take a TopK teacher target (next-token distributions of language models)
    only_tokens = False  # True: next-token distributions only (reverse KL, JSD, skew KL)
    teacher_samples = False  # True: the run trains on the teacher's own samples instead of the corpus (seqkd)
    note = ""  # one line a front end shows beside the objective (what a knob means, a convention)
    SYMBOLS = {"temperature": "T", "alpha": "α", "beta": "β", "gamma": "γ"}  # short names in labels

    def __init__(self, params: dict | None = None):
        super().__init__()
        params = dict(params or {})
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name} has no hyperparameters {sorted(unknown)}; it takes "
                             f"{', '.join(sorted(self.defaults)) or 'none'}")
        self.p = {k: _coerce(self.name, k, d, params.get(k, d)) for k, d in self.defaults.items()}
        if self.temperature_key and not 0 < self.p[self.temperature_key] <= MAX_TEMPERATURE:
            raise ValueError(f"{self.name}: temperature T must be > 0 and at most {MAX_TEMPERATURE:g}, "
                             f"got {self.p[self.temperature_key]:g}")
        self.check()

    # features each model must expose (names for workbench.core.hooks), decided in setup()
    student_features: tuple[str, ...] = ()
    teacher_features: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise ValueError for hyperparameters out of range (called at construction)."""

    @property
    def temperature(self) -> float | None:
        return float(self.p[self.temperature_key]) if self.temperature_key else None

    def setup(self, student: nn.Module, teacher: nn.Module | None, input_shape, num_classes: int,
              n_train: int) -> None:
        """Build learnable parts from the models' feature shapes (called once, before training)."""

    @property
    def uses_teacher_targets(self) -> bool:
        """Whether a step reads the teacher's targets of the training samples (from the cache, where it can)."""
        return self.teacher_input != "none"

    def teacher_target(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """What the method wants to see of the teacher's logits (B, K) -> (B, K); per sample, so it is
        computed once over the cached logits of the whole training set. The identity by default."""
        return teacher_logits

    def terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """The objective as named, weighted scalar terms; the training loop sums them."""
        raise NotImplementedError

    def loss(self, ctx: StepContext) -> torch.Tensor:
        return sum(self.terms(ctx).values())

    def objective_text(self) -> str:
        """The objective with this method's values filled in, as plain text."""
        return ""

    def objective_latex(self) -> str | None:
        """The same as LaTeX where a page wants to typeset it (None: show the text)."""
        return None

    def label(self) -> str:
        """A short name for runs of this method with its primary values: "dkd T=4 α=1"."""
        return " ".join([self.name, *self.primary_text()])

    def primary_text(self) -> list[str]:
        keys = self.primary or ((self.temperature_key,) if self.temperature_key else ())
        return [f"{self.SYMBOLS.get(k, k)}={self.p[k]:g}" if isinstance(self.p[k], (int, float)) else f"{k}={self.p[k]}"
                for k in keys]

    def ce(self, ctx: StepContext) -> torch.Tensor:
        """The cross-entropy term on the visible labels, weighted by the method's ``ce_weight`` where it has one."""
        ce = losses.masked_cross_entropy(ctx.s_logits, ctx.targets)
        return self.p["ce_weight"] * ce if "ce_weight" in self.p else ce


class CE(Method):
    """Cross-entropy on the visible labels: the objective of teacher runs and of scratch students."""

    name = "ce"
    title = "Cross-entropy (no teacher)"
    citation = "The supervised baseline: the student trained without the teacher (α = 0 in vanilla KD)."
    description = "cross-entropy on the visible labels only"
    needs_teacher = False
    teacher_input = "none"
    distils = False
    learns_from_unlabelled = False  # labels alone: a scratch student never sees the samples whose labels are hidden

    token_level = True

    def terms(self, ctx):
        return {"ce": self.ce(ctx)}

    def objective_text(self):
        return "L = CE(z_s, y)"

    def objective_latex(self):
        return r"\mathcal{L} = \mathrm{CE}(z_s, y)"


def _ce(p: dict) -> str:
    """The cross-entropy part of an objective's text, with its weight when it is not 1."""
    w = p.get("ce_weight", 1.0)
    return "CE" if w == 1 else f"{w:g}·CE"


def _stage(model: nn.Module, wanted: str, fallback: str = "embedding") -> str:
    stages = getattr(model, "stages", {})
    if wanted != "auto":
        return wanted
    return "stage2" if "stage2" in stages else fallback


# ---------------------------------------------------------------------------
# logit methods

class KD(Method):
    """Vanilla KD: (1 − α)·CE + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)).

    Its teacher target is the softened log-probabilities log softmax(z_t/T), cached once per
    view. With `closed_form` (the default) the two terms come from one autograd node whose
    gradient is written out (`losses.fused_kd_terms`); the tests check it against the plain
    autograd path in value, gradient and parameters after an optimiser step.
    """

    name = "kd"
    title = "Vanilla KD"
    citation = "Hinton, Vinyals, Dean. Distilling the Knowledge in a Neural Network. arXiv:1503.02531, 2015."
    description = "match the teacher's softened probabilities: (1 − α)·CE + α·T²·KL"
    defaults = {"temperature": 4.0, "alpha": 0.9}
    help = {"temperature": "T > 0 softens both distributions in the KD term",
            "alpha": "weight of the KD term in [0, 1]: 0 = scratch, 1 = pure distillation"}
    temperature_key = "temperature"
    weight_key = "alpha"
    primary = ("temperature", "alpha")
    note = ("α weights the distillation term: α = 0 is the student trained without the teacher (scratch), α = 1 is "
            "pure distillation. (torchdistill and Keras put their α on the cross-entropy.)")
    closed_form = True  # False: the same terms through plain autograd (for tests and debugging)
    token_level = True  # on a language model: token-level forward KL to the teacher's top k (losses.token_forward_kl)

    def check(self):
        losses.check_temperature(self.p["temperature"])
        losses.check_alpha(self.p["alpha"])

    def label(self) -> str:
        return " ".join(self.primary_text())  # the workbench's default method: "T=4 α=0.9"

    def teacher_target(self, teacher_logits):
        return torch.log_softmax(teacher_logits.float() / self.p["temperature"], 1)  # (B, K) log p_t

    def terms(self, ctx):
        T, a = self.p["temperature"], self.p["alpha"]
        if isinstance(ctx.t_target, TopK):  # next tokens: forward KL to the teacher's top k, one pass with the CE
            ce, kl = losses.token_ce_and_kl(ctx.s_logits, ctx.t_target.values, ctx.t_target.ids, ctx.targets, T)
            return {"ce": (1.0 - a) * ce, "kd": a * T ** 2 * kl}
        if self.closed_form:
            ce, kd = losses.fused_kd_terms(ctx.s_logits, ctx.t_target, ctx.targets, T, a)
        else:
            ce, kd = (1.0 - a) * self.ce(ctx), a * losses.soft_kl(ctx.s_logits, ctx.t_target, T)
        return {"ce": ce, "kd": kd}

    def objective_text(self):
        T, a = f"{self.p['temperature']:g}", f"{self.p['alpha']:g}"
        return f"L = (1 − {a})·CE(z_s, y) + {a}·{T}²·KL(softmax(z_t/{T}) ‖ softmax(z_s/{T}))"

    def objective_latex(self):
        T, a = f"{self.p['temperature']:g}", f"{self.p['alpha']:g}"
        return (rf"\begin{{aligned}}\mathcal{{L}} &= (1 - {a})\,\mathrm{{CE}}(z_s, y) \\ &\quad + {a}\cdot {T}^2\,"
                rf"\mathrm{{KL}}(p_t \,\|\, p_s) \\ p_t &= \mathrm{{softmax}}(z_t/{T}) \\ "
                rf"p_s &= \mathrm{{softmax}}(z_s/{T})\end{{aligned}}")  # one definition per line: fits 1024 px


class LSKD(Method):
    name = "lskd"
    search_first = "kd_weight"
    title = "Logit-standardised KD"
    citation = "Sun, Ren, Li, Wang, Cao. Logit Standardization in Knowledge Distillation. CVPR 2024."
    description = "KD on z-scored logits: the student matches the teacher's logit relations, not their scale"
    defaults = {"ce_weight": 0.1, "kd_weight": 9.0, "temperature": 2.0}
    help = {"ce_weight": "weight of the cross-entropy (authors' code: 0.1)",
            "kd_weight": "weight of the KD term (README: --kd-weight 9)",
            "temperature": "base temperature (README: --base-temp 2)"}
    temperature_key = "temperature"

    def check(self):
        losses.check_temperature(self.p["temperature"])

    def teacher_target(self, teacher_logits):
        return torch.log_softmax(losses.zscore(teacher_logits.float()) / self.p["temperature"], 1)

    def terms(self, ctx):
        ls = losses.soft_kl(losses.zscore(ctx.s_logits), ctx.t_target, self.p["temperature"])
        return {"ce": self.ce(ctx), "kd": self.p["kd_weight"] * ls}

    def objective_text(self):
        return (f"L = {self.p['ce_weight']:g}·CE + {self.p['kd_weight']:g}·T²·KL(z-scored logits), "
                f"T = {self.p['temperature']:g}")


class DKD(Method):
    name = "dkd"
    title = "Decoupled KD"
    citation = "Zhao, Cui, Song, Qiu, Liang. Decoupled Knowledge Distillation. CVPR 2022."
    description = "separate weights for the target-class and the non-target-class parts of KD"
    defaults = {"ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 20 / 240}
    help = {"alpha": "TCKD weight", "beta": "NCKD weight", "temperature": "T",
            "warmup": "fraction of training over which the DKD weight ramps up (paper: 20 of 240 epochs)"}
    temperature_key = "temperature"

    def check(self):
        losses.check_temperature(self.p["temperature"])
        if not 0 <= self.p["warmup"] < 1:
            raise ValueError(f"dkd: warmup is a fraction of training in [0, 1), got {self.p['warmup']}")

    def terms(self, ctx):
        ramp = min(ctx.progress / self.p["warmup"], 1.0) if self.p["warmup"] > 0 else 1.0
        tckd, nckd = losses.dkd_terms(ctx.s_logits, ctx.t_target, ctx.targets, self.p["temperature"])
        return {"ce": self.ce(ctx), "tckd": ramp * self.p["alpha"] * tckd,
                "nckd": ramp * self.p["beta"] * nckd}

    def objective_text(self):
        return (f"L = {_ce(self.p)} + warm-up·({self.p['alpha']:g}·TCKD + {self.p['beta']:g}·NCKD), "
                f"T = {self.p['temperature']:g}")


class DIST(Method):
    name = "dist"
    title = "DIST"
    citation = "Huang, You, Wang, Qian, Xu. Knowledge Distillation from A Stronger Teacher. NeurIPS 2022."
    description = "match inter- and intra-class relations (Pearson correlation) instead of exact probabilities"
    defaults = {"ce_weight": 1.0, "beta": 1.0, "gamma": 1.0, "tau": 1.0}
    help = {"beta": "inter-class weight", "gamma": "intra-class weight", "tau": "temperature"}
    temperature_key = "tau"

    def check(self):
        losses.check_temperature(self.p["tau"])

    def terms(self, ctx):
        tau = self.p["tau"]
        return {"ce": self.ce(ctx),
                "inter": losses.dist_loss(ctx.s_logits, ctx.t_target, self.p["beta"], 0.0, tau),
                "intra": losses.dist_loss(ctx.s_logits, ctx.t_target, 0.0, self.p["gamma"], tau)}

    def objective_text(self):
        return (f"L = {_ce(self.p)} + τ²·({self.p['beta']:g}·inter + {self.p['gamma']:g}·intra), "
                f"τ = {self.p['tau']:g}")


# ---------------------------------------------------------------------------
# feature methods

def make_adapter(student_shape: tuple, teacher_shape: tuple) -> nn.Module:
    """FitNets' regressor: a 1×1 conv (with BN) for maps, a linear layer for vectors."""
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        return nn.Sequential(nn.Conv2d(student_shape[0], teacher_shape[0], 1, bias=False),
                             nn.BatchNorm2d(teacher_shape[0]))
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(student_shape), math.prod(teacher_shape)),
                         nn.Unflatten(1, teacher_shape) if len(teacher_shape) > 1 else nn.Identity())


class FitNet(Method):
    name = "fitnet"
    title = "FitNets"
    citation = "Romero et al. FitNets: Hints for Thin Deep Nets. ICLR 2015."
    description = "regress an intermediate teacher feature (the hint) from the student's, through an adapter"
    defaults = {"ce_weight": 1.0, "beta": 100.0, "student_stage": "auto", "teacher_stage": "auto"}
    help = {"beta": "hint weight (RepDistiller: -b 100)", "student_stage": "stage name (auto: stage2, else embedding)"}
    teacher_input = "features"

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        s_name, t_name = _stage(student, self.p["student_stage"]), _stage(teacher, self.p["teacher_stage"])
        self.student_features, self.teacher_features = (s_name,), (t_name,)
        s_shape = feature_shapes(student, [s_name], input_shape)[s_name]
        t_shape = feature_shapes(teacher, [t_name], input_shape)[t_name]
        if len(s_shape) == 3 and len(t_shape) == 3 and s_shape[1:] != t_shape[1:]:
            t_shape = (t_shape[0], min(s_shape[1], t_shape[1]), min(s_shape[2], t_shape[2]))
        self.adapter = make_adapter(s_shape, t_shape)

    def terms(self, ctx):
        (s,), (t,) = ctx.s_feats.values(), ctx.t_feats.values()
        if s.ndim == 4 and t.ndim == 4:
            s, t = losses.match_spatial(s.float(), t.float())
        return {"ce": self.ce(ctx),
                "hint": self.p["beta"] * losses.fitnet_loss(s.float(), t.float(), self.adapter)}

    def objective_text(self):
        return f"L = {_ce(self.p)} + {self.p['beta']:g}·‖r(f_s) − f_t‖² (hint)"


class AT(Method):
    name = "at"
    needs_feature_maps = True  # attention maps are spatial
    title = "Attention transfer"
    citation = "Zagoruyko, Komodakis. Paying More Attention to Attention. ICLR 2017."
    description = "match the spatial attention maps (channel mean of squared activations) of each stage"
    defaults = {"ce_weight": 1.0, "beta": 1000.0, "p": 2}
    help = {"beta": "weight (RepDistiller: -b 1000)", "p": "power of the activations"}
    teacher_input = "features"

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        common = [n for n in ("stage1", "stage2", "stage3", "stage4") if n in getattr(student, "stages", {})
                  and n in getattr(teacher, "stages", {})]
        if common:
            s_shapes = feature_shapes(student, common, input_shape)
            t_shapes = feature_shapes(teacher, common, input_shape)
            common = [n for n in common if len(s_shapes[n]) == 3 and len(t_shapes[n]) == 3]
        if not common:
            raise ValueError("attention transfer needs convolutional stages in both models; "
                             "pick a cnn, resnet or torchvision student (an MLP has no feature maps)")
        self.student_features = self.teacher_features = tuple(common)

    def terms(self, ctx):
        at = sum(losses.at_loss(ctx.s_feats[n].float(), ctx.t_feats[n].float(), self.p["p"])
                 for n in self.student_features)
        return {"ce": self.ce(ctx), "at": self.p["beta"] * at}

    def objective_text(self):
        return f"L = {_ce(self.p)} + {self.p['beta']:g}·Σ_stages mean(a(f_s) − a(f_t))²"


class _EmbeddingMethod(Method):
    """A relation method on the pooled embeddings (or another named stage)."""

    teacher_input = "features"
    stage_default = "embedding"

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        s = self.p.get("stage", self.stage_default)
        self.student_features = self.teacher_features = (s,)

    def pair(self, ctx):
        (s,), (t,) = ctx.s_feats.values(), ctx.t_feats.values()
        return s.float(), t.float()


class PKT(_EmbeddingMethod):
    name = "pkt"
    title = "Probabilistic knowledge transfer"
    citation = "Passalis, Tefas. Learning Deep Representations with Probabilistic Knowledge Transfer. ECCV 2018."
    description = "match the batch's conditional similarity distributions (cosine kernel) of the embeddings"
    defaults = {"ce_weight": 1.0, "beta": 30000.0, "stage": "embedding"}
    help = {"beta": "weight (RepDistiller: -b 30000)"}

    def terms(self, ctx):
        return {"ce": self.ce(ctx), "pkt": self.p["beta"] * losses.pkt_loss(*self.pair(ctx))}

    def objective_text(self):
        return f"L = {_ce(self.p)} + {self.p['beta']:g}·KL(P_t ‖ P_s) over cosine similarities"


class RKD(_EmbeddingMethod):
    name = "rkd"
    title = "Relational KD"
    citation = "Park, Kim, Lu, Cho. Relational Knowledge Distillation. CVPR 2019."
    description = "match pairwise distances and triplet angles between the samples' embeddings"
    defaults = {"ce_weight": 1.0, "beta": 1.0, "distance_weight": 25.0, "angle_weight": 50.0, "stage": "embedding"}
    help = {"distance_weight": "w_D (paper: 25)", "angle_weight": "w_A (paper: 50)"}

    def terms(self, ctx):
        return {"ce": self.ce(ctx), "rkd": self.p["beta"] * losses.rkd_loss(
            *self.pair(ctx), self.p["distance_weight"], self.p["angle_weight"])}

    def objective_text(self):
        return (f"L = {_ce(self.p)} + {self.p['beta']:g}·({self.p['distance_weight']:g}·distance + "
                f"{self.p['angle_weight']:g}·angle) (smooth L1)")


class SP(_EmbeddingMethod):
    name = "sp"
    title = "Similarity-preserving KD"
    citation = "Tung, Mori. Similarity-Preserving Knowledge Distillation. ICCV 2019."
    description = "match the batch's row-normalised similarity matrices of the last stage's features"
    defaults = {"ce_weight": 1.0, "beta": 3000.0, "stage": "auto"}
    help = {"beta": "weight (RepDistiller: -b 3000)", "stage": "auto: the last conv stage, else the embedding"}

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        def last(model):
            if self.p["stage"] != "auto":
                return self.p["stage"]
            stages = [n for n in ("stage4", "stage3", "stage2", "stage1") if n in getattr(model, "stages", {})]
            return stages[0] if stages else "embedding"
        self.student_features, self.teacher_features = (last(student),), (last(teacher),)

    def terms(self, ctx):
        return {"ce": self.ce(ctx), "sp": self.p["beta"] * losses.sp_loss(*self.pair(ctx))}

    def objective_text(self):
        return f"L = {_ce(self.p)} + {self.p['beta']:g}·‖G_t − G_s‖²_F / B²"


class CRD(_EmbeddingMethod):
    """Contrastive representation distillation with its memory bank and NCE, as in RepDistiller.

    Each model's embedding goes through a linear head to `feat_dim` and is L2-normalised. Two
    memory banks (N × feat_dim) hold every training sample's last student and teacher embedding,
    updated with momentum `nce_m`. For each sample, the student embedding is scored against the
    teacher bank at its own index (the positive) and `nce_k` uniformly drawn indices (negatives),
    and vice versa; scores are exp(⟨·,·⟩ / nce_t) divided by a constant Z fixed on the first
    batch (mean score × N), and both directions pay `losses.crd_nce_loss`. RepDistiller's CIFAR
    runs draw negatives from other classes ('exact' mode); we draw uniformly (its memory's
    default), since with a label budget most classes are unknown.
    """

    name = "crd"
    title = "Contrastive representation distillation"
    citation = "Tian, Krishnan, Isola. Contrastive Representation Distillation. ICLR 2020."
    description = "contrast each student embedding with its teacher embedding against many negatives (memory bank)"
    defaults = {"ce_weight": 1.0, "beta": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5,
                "stage": "embedding"}
    help = {"beta": "weight (RepDistiller: -b 0.8)", "nce_k": "negatives per sample", "nce_t": "NCE temperature",
            "nce_m": "memory momentum", "feat_dim": "embedding head size"}

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        super().setup(student, teacher, input_shape, num_classes, n_train)
        s_dim = math.prod(feature_shapes(student, list(self.student_features), input_shape)[self.student_features[0]])
        t_dim = math.prod(feature_shapes(teacher, list(self.teacher_features), input_shape)[self.teacher_features[0]])
        d = int(self.p["feat_dim"])
        self.embed_s, self.embed_t = nn.Linear(s_dim, d), nn.Linear(t_dim, d)
        self.n_data = n_train
        self.k = min(int(self.p["nce_k"]), n_train - 1)
        stdv = 1.0 / math.sqrt(d / 3)
        self.register_buffer("memory_s", torch.rand(n_train, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_train, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # normalising constants, set on the first batch

    def terms(self, ctx):
        s, t = self.pair(ctx)
        v_s = F.normalize(self.embed_s(s.flatten(1)), dim=1)  # (B, d)
        v_t = F.normalize(self.embed_t(t.flatten(1)), dim=1)
        B = len(v_s)
        idx = torch.randint(0, self.n_data, (B, self.k + 1), device=v_s.device)
        idx[:, 0] = ctx.idx  # the positive
        out_s = torch.exp(self._scores(self.memory_t, v_s, idx) / self.p["nce_t"])  # student anchor vs teacher bank
        out_t = torch.exp(self._scores(self.memory_s, v_t, idx) / self.p["nce_t"])  # teacher anchor vs student bank
        with torch.no_grad():
            if self.z[0] < 0:
                self.z[0] = out_s.mean() * self.n_data
                self.z[1] = out_t.mean() * self.n_data
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                pos = bank[ctx.idx] * self.p["nce_m"] + v.detach() * (1 - self.p["nce_m"])
                bank[ctx.idx] = F.normalize(pos, dim=1)
        nce = losses.crd_nce_loss(out_s / self.z[0], self.n_data) + losses.crd_nce_loss(out_t / self.z[1], self.n_data)
        return {"ce": self.ce(ctx), "crd": self.p["beta"] * nce}

    @staticmethod
    def _scores(bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """⟨bank[idx[b, k]], v[b]⟩ as (B, K+1). With a small bank, one (B, N) matmul and a gather
        beat materialising the (B, K+1, d) rows (the same numbers, ~30× faster on a CPU)."""
        bank = bank.detach()
        if bank.shape[0] * v.shape[0] <= 50_000_000:
            return (v @ bank.t().clone()).gather(1, idx)  # (B, N) -> (B, K+1); the clone survives the bank update
        return torch.bmm(bank[idx], v[:, :, None]).squeeze(2)

    def objective_text(self):
        return f"L = {_ce(self.p)} + {self.p['beta']:g}·(NCE_student + NCE_teacher), K = {self.k if hasattr(self, 'k') else self.p['nce_k']}"


# ---------------------------------------------------------------------------
# online distillation

def _fresh_copy(model: nn.Module) -> nn.Module:
    """The same architecture as `model`, newly initialised: every submodule's own `reset_parameters`."""
    peer = copy.deepcopy(model)
    for m in peer.modules():
        if hasattr(m, "reset_parameters") and m is not peer:
            m.reset_parameters()
    return peer


class DML(Method):
    """Deep mutual learning: `peers` students (this run's student is peer 0) learn from each other.

    Each peer i minimises CE(z_i, y) + 1/(n−1)·Σ_{j≠i} KL(p_j ‖ p_i) with p = softmax(z) and the
    other peers' distributions held constant. The paper alternates the peers' updates; we update
    them together from one summed loss, which gives every peer the same gradient as its own loss.
    Only peer 0 is evaluated and exported.
    """

    name = "dml"
    search_first = "mutual_weight"
    title = "Deep mutual learning"
    citation = "Zhang, Xiang, Hospedales, Lu. Deep Mutual Learning. CVPR 2018."
    description = "two or more students learn from each other online, with no pretrained teacher"
    defaults = {"peers": 2, "temperature": 1.0, "mutual_weight": 1.0}
    help = {"peers": "number of students, this one included", "temperature": "T of the mutual KL",
            "mutual_weight": "weight of the mutual KL terms (paper: 1)"}
    needs_teacher = False
    teacher_input = "none"
    temperature_key = "temperature"

    def check(self):
        if self.p["peers"] < 2:
            raise ValueError(f"dml needs at least 2 peers, got {self.p['peers']}")
        losses.check_temperature(self.p["temperature"])

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        self.peers = nn.ModuleList([_fresh_copy(student) for _ in range(int(self.p["peers"]) - 1)])

    def terms(self, ctx):
        T = self.p["temperature"]
        logits = [ctx.s_logits] + [peer(ctx.inputs).float() for peer in self.peers]
        n = len(logits)
        ce = sum(losses.masked_cross_entropy(z, ctx.targets) for z in logits)
        mutual = sum(losses.kd_loss(z, logits[j].detach(), T) for i, z in enumerate(logits)
                     for j in range(n) if j != i) / (n - 1)
        return {"ce": ce, "mutual": self.p["mutual_weight"] * mutual}

    def objective_text(self):
        return (f"L = Σ_i [CE(z_i) + {self.p['mutual_weight']:g}·mean_j KL(p_j ‖ p_i)], "
                f"{int(self.p['peers'])} peers, T = {self.p['temperature']:g}")


# ---------------------------------------------------------------------------
# Transformer layers (text): the models expose `transformer_layers()` (per layer, the module paths of its output
# and its query, key and value projections) and `attention_heads` (workbench.models.text)

def _transformer_parts(model: nn.Module | None, who: str, method: str) -> tuple[list[dict], int]:
    if model is None or not hasattr(model, "transformer_layers"):
        raise ValueError(f"{method} matches Transformer layers, and the {who} has none; use an hf: model or the "
                         "transformer family on both sides, or a logit method such as kd")
    return model.transformer_layers(), int(model.attention_heads)


def _relation_heads(s_width: int, s_heads: int, t_heads: int) -> int:
    """The relation heads both models split into: the teacher's where the student's width allows it."""
    return t_heads if s_width % t_heads == 0 else math.gcd(s_heads, t_heads)


class _TransformerMethod(Method):
    """Matches layers of a Transformer student to layers of a Transformer teacher, on the tokens that are not
    padding (the mask comes from the batch's ids and the student's pad id)."""

    teacher_input = "features"
    needs_transformer_layers = True

    def _setup_parts(self, student, teacher):
        self.s_layers, self.s_heads = _transformer_parts(student, "student", self.name)
        self.t_layers, self.t_heads = _transformer_parts(teacher, "teacher", self.name)
        self.pad_id = int(getattr(student, "pad_id", 0))

    def mask(self, ctx: StepContext, length: int) -> torch.Tensor:
        return (ctx.inputs[:, :length] != self.pad_id).long()  # (B, L): the batch as the models cut it


class TinyBERT(_TransformerMethod):
    name = "tinybert"
    title = "TinyBERT"
    citation = ("Jiao et al. TinyBERT: Distilling BERT for Natural Language Understanding. Findings of EMNLP 2020 "
                "(arXiv:1909.10351).")
    description = ("match each student layer's hidden states (through a learned projection) and attention "
                   "distributions to its teacher layer, and the softened logits")
    defaults = {"temperature": 1.0, "alpha": 0.5, "beta": 1.0, "gamma": 1.0}
    help = {"temperature": "T of the logit term (TinyBERT: 1)", "alpha": "weight of the logit KD term in [0, 1]",
            "beta": "weight of the hidden-state MSE", "gamma": "weight of the attention KL"}
    temperature_key = "temperature"
    primary = ("temperature", "beta", "gamma")
    note = ("Student layer m (of M) learns from teacher layer m·N/M (of N), TinyBERT's uniform mapping; the attention "
            "term is a KL of distributions (the paper's MSE of scores, in the form MiniLM uses).")

    def check(self):
        losses.check_temperature(self.p["temperature"])
        losses.check_alpha(self.p["alpha"])
        for k in ("beta", "gamma"):
            if self.p[k] < 0:
                raise ValueError(f"tinybert: {k} must be >= 0, got {self.p[k]:g}")

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        self._setup_parts(student, teacher)
        M, N = len(self.s_layers), len(self.t_layers)
        self.pairs = [(m, (m + 1) * N // M - 1) for m in range(M)] if M <= N else [(m, m * N // M) for m in range(M)]
        s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
        adapters = []
        for m, n in self.pairs:
            d_s, d_t = s_mods[self.s_layers[m]["query"]].in_features, t_mods[self.t_layers[n]["query"]].in_features
            proj = nn.Linear(d_s, d_t)
            if d_s == d_t:  # a student cut from its teacher starts aligned
                nn.init.eye_(proj.weight)
                nn.init.zeros_(proj.bias)
            adapters.append(proj)
        self.projections = nn.ModuleList(adapters)
        self.heads = [_relation_heads(s_mods[self.s_layers[m]["query"]].out_features, self.s_heads, self.t_heads)
                      for m, _ in self.pairs]
        need = ("hidden", "query", "key")
        self.student_features = tuple(self.s_layers[m][r] for m, _ in self.pairs for r in need)
        self.teacher_features = tuple(self.t_layers[n][r] for _, n in self.pairs for r in need)

    def teacher_target(self, teacher_logits):
        return torch.log_softmax(teacher_logits.float() / self.p["temperature"], 1)

    def terms(self, ctx):
        T, a = self.p["temperature"], self.p["alpha"]
        hidden = attention = 0.0
        for (m, n), proj, heads in zip(self.pairs, self.projections, self.heads):
            s, t = self.s_layers[m], self.t_layers[n]
            hs, ht = ctx.s_feats[s["hidden"]].float(), ctx.t_feats[t["hidden"]].float()
            mask = self.mask(ctx, hs.shape[1])
            hidden = hidden + losses.hidden_state_mse(hs, ht, mask, proj)
            attention = attention + losses.relation_kl(ctx.s_feats[s["query"]].float(), ctx.s_feats[s["key"]].float(),
                                                       ctx.t_feats[t["query"]].float(), ctx.t_feats[t["key"]].float(),
                                                       mask, heads)
        return {"ce": (1.0 - a) * self.ce(ctx), "kd": a * losses.soft_kl(ctx.s_logits, ctx.t_target, T),
                "hidden": self.p["beta"] * hidden, "attention": self.p["gamma"] * attention}

    def objective_text(self):
        T, a = f"{self.p['temperature']:g}", f"{self.p['alpha']:g}"
        return (f"L = (1 − {a})·CE + {a}·{T}²·KL(p_t ‖ p_s) + {self.p['beta']:g}·Σ_m MSE(W_m h_s^m, h_t^g(m)) "
                f"+ {self.p['gamma']:g}·Σ_m KL(A_t^g(m) ‖ A_s^m)")


class MiniLM(_TransformerMethod):
    name = "minilm"
    title = "MiniLM"
    citation = ("Wang et al. MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained "
                "Transformers. NeurIPS 2020 (arXiv:2002.10957).")
    description = ("match the last layer's self-attention distributions and value relations (softmax(VVᵀ/√d)) of "
                   "the teacher")
    defaults = {"ce_weight": 1.0, "beta": 1.0}
    help = {"beta": "weight of the attention and value-relation KL terms", "ce_weight": "weight of CE on labels"}
    primary = ("beta",)
    note = ("Only the last layers are matched, so the student's depth and width are free; both split into the "
            "teacher's heads where the student's width allows it (MiniLMv2's relation heads).")

    def check(self):
        if self.p["beta"] < 0:
            raise ValueError(f"minilm: beta must be >= 0, got {self.p['beta']:g}")

    def setup(self, student, teacher, input_shape, num_classes, n_train):
        self._setup_parts(student, teacher)
        s, t = self.s_layers[-1], self.t_layers[-1]
        width = dict(student.named_modules())[s["query"]].out_features
        self.heads = _relation_heads(width, self.s_heads, self.t_heads)
        self.student_features = tuple(s[r] for r in ("query", "key", "value"))
        self.teacher_features = tuple(t[r] for r in ("query", "key", "value"))

    def terms(self, ctx):
        s, t = self.s_layers[-1], self.t_layers[-1]
        q_s, k_s, v_s = (ctx.s_feats[s[r]].float() for r in ("query", "key", "value"))
        q_t, k_t, v_t = (ctx.t_feats[t[r]].float() for r in ("query", "key", "value"))
        mask = self.mask(ctx, q_s.shape[1])
        return {"ce": self.ce(ctx),
                "attention": self.p["beta"] * losses.relation_kl(q_s, k_s, q_t, k_t, mask, self.heads),
                "value": self.p["beta"] * losses.relation_kl(v_s, v_s, v_t, v_t, mask, self.heads)}

    def objective_text(self):
        b = f"{self.p['beta']:g}"
        return (f"L = {_ce(self.p)} + {b}·KL(softmax(Q_tK_tᵀ/√d) ‖ softmax(Q_sK_sᵀ/√d)) + "
                f"{b}·KL(softmax(V_tV_tᵀ/√d) ‖ softmax(V_sV_sᵀ/√d)), last layers")


# ---------------------------------------------------------------------------
# divergences for language models: next-token distributions only, from the teacher's cached top k

class _TokenMethod(Method):
    """(1 − α)·CE + α·T²·D(teacher ‖ student) per next token, for a divergence D of `core.losses`."""

    token_level = True
    only_tokens = True
    temperature_key = "temperature"
    weight_key = "alpha"
    divergence = ""  # how D reads in the objective

    def check(self):
        losses.check_temperature(self.p["temperature"])
        losses.check_alpha(self.p["alpha"])

    def terms(self, ctx):
        if not isinstance(ctx.t_target, TopK):
            raise ValueError(f"{self.name} distils next-token distributions of language models, not class logits")
        a, t = self.p["alpha"], ctx.t_target
        return {"ce": (1.0 - a) * losses.token_cross_entropy(ctx.s_logits, ctx.targets),
                self.name: a * self.divergence_term(ctx.s_logits, t.values, t.ids, ctx.targets)}

    def divergence_term(self, s_logits, topk_values, topk_ids, targets) -> torch.Tensor:
        raise NotImplementedError

    def objective_text(self):
        T, a = f"{self.p['temperature']:g}", f"{self.p['alpha']:g}"
        return f"L = (1 − {a})·CE(z_s, y) + {a}·{T}²·{self.divergence.format(**self.p)}, per next token"


class ReverseKL(_TokenMethod):
    name = "reverse_kl"
    title = "Reverse KL (MiniLLM)"
    citation = "Gu, Dong, Wei, Huang. MiniLLM: Knowledge Distillation of Large Language Models. ICLR 2024."
    description = "mode-seeking: KL(student ‖ teacher) per next token, over the teacher's top k"
    defaults = {"temperature": 1.0, "alpha": 0.5}
    help = {"temperature": "T > 0 softens both next-token distributions",
            "alpha": "weight of the divergence in [0, 1]: 0 = scratch"}
    primary = ("temperature", "alpha")
    divergence = "KL(q̃_s ‖ p̃_t)"

    def divergence_term(self, s_logits, topk_values, topk_ids, targets):
        return losses.token_reverse_kl(s_logits, topk_values, topk_ids, targets, self.p["temperature"])


class JSD(_TokenMethod):
    name = "jsd"
    title = "Generalised JSD (GKD)"
    citation = ("Agarwal, Vieillard, Zhou, Stanczyk, Ramos Garea, Geist, Bachem. On-Policy Distillation of Language "
                "Models: Learning from Self-Generated Mistakes. ICLR 2024.")
    description = "β·KL(p ‖ m) + (1 − β)·KL(q ‖ m) with m = β·p + (1 − β)·q, per next token"
    defaults = {"temperature": 1.0, "alpha": 0.5, "beta": 0.5}
    help = {"temperature": "T > 0 softens both next-token distributions",
            "alpha": "weight of the divergence in [0, 1]: 0 = scratch",
            "beta": "β in (0, 1): the teacher's share of the mixture m (GKD: 0.5 is the symmetric JSD)"}
    primary = ("temperature", "alpha", "beta")
    search_first = "beta"
    divergence = "JSD_β={beta:g}(p_t ‖ q_s)"

    def check(self):
        super().check()
        losses.check_beta(self.p["beta"])

    def divergence_term(self, s_logits, topk_values, topk_ids, targets):
        return losses.token_jsd(s_logits, topk_values, topk_ids, targets, self.p["temperature"], self.p["beta"])


class SeqKD(_TokenMethod):
    name = "seqkd"
    title = "Sequence-level KD (Kim & Rush)"
    citation = "Kim, Rush. Sequence-Level Knowledge Distillation. EMNLP 2016."
    description = ("train on the teacher's own text: each training block's first tokens continued by the teacher, "
                   "then cross-entropy on it (α > 0 adds token-level KD on the same text)")
    defaults = {"temperature": 1.0, "alpha": 0.0}
    help = {"temperature": "T > 0 of the token-level term (α > 0 only)",
            "alpha": "weight of token-level KD on the teacher's text in [0, 1]: 0 = pure sequence-level KD"}
    primary = ("alpha",)
    divergence = "KL(p̃_t ‖ q_s)"
    teacher_samples = True  # the training blocks are the teacher's samples (workbench.train.teachers.teacher_samples)

    @property
    def uses_teacher_targets(self) -> bool:
        return self.p["alpha"] > 0

    def divergence_term(self, s_logits, topk_values, topk_ids, targets):
        return losses.token_forward_kl(s_logits, topk_values, topk_ids, targets, self.p["temperature"])

    def terms(self, ctx):
        if self.p["alpha"] == 0:
            return {"ce": losses.token_cross_entropy(ctx.s_logits, ctx.targets)}
        return super().terms(ctx)

    def objective_text(self):
        if self.p["alpha"] == 0:
            return "L = CE(z_s, ŷ) on the teacher's samples ŷ, per next token"
        return super().objective_text().replace("CE(z_s, y)", "CE(z_s, ŷ)") + " of the teacher's samples ŷ"


class SkewKL(_TokenMethod):
    name = "skew_kl"
    title = "Skew KL (DistiLLM)"
    citation = "Ko, Kim, Chen, Yun. DistiLLM: Towards Streamlined Distillation for Large Language Models. ICML 2024."
    description = "KL(p ‖ λ·p + (1 − λ)·q) per next token: forward KL kept bounded where the student gives ~0"
    defaults = {"temperature": 1.0, "alpha": 0.5, "skew": 0.1}
    help = {"temperature": "T > 0 softens both next-token distributions",
            "alpha": "weight of the divergence in [0, 1]: 0 = scratch",
            "skew": "λ in [0, 1): the teacher's share mixed into the student (DistiLLM: 0.1; 0 = forward KL)"}
    primary = ("temperature", "alpha", "skew")
    divergence = "KL(p_t ‖ {skew:g}·p_t + (1 − {skew:g})·q_s)"

    def check(self):
        super().check()
        losses.check_skew(self.p["skew"])

    def divergence_term(self, s_logits, topk_values, topk_ids, targets):
        return losses.token_skew_kl(s_logits, topk_values, topk_ids, targets, self.p["temperature"], self.p["skew"])


METHODS: dict[str, type[Method]] = {m.name: m for m in (CE, KD, LSKD, DKD, DIST, FitNet, AT, PKT, RKD, SP, CRD,
                                                        DML, TinyBERT, MiniLM, ReverseKL, JSD, SkewKL, SeqKD)}
DISTILLATION_METHODS = tuple(n for n, m in METHODS.items() if m.distils)  # what a kd run may use
DEFAULT_METHODS = {"teacher": "ce", "scratch": "ce", "kd": "kd"}  # a run's method when its config names none


def default_method(kind: str) -> str:
    """The method of a teacher, scratch or kd run whose config names none."""
    return DEFAULT_METHODS[kind]


def first_searched(name: str) -> str | None:
    """The hyperparameter a search of method `name` starts from: its own choice, else `beta` (the weight of the
    distillation term in most papers' notation), else its first primary, else its first."""
    m = method_info(name)
    return m.search_first or ("beta" if "beta" in m.defaults else None) or next(iter(m.primary), None) or \
        next(iter(m.defaults), None)


def method_info(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, params: dict | None = None) -> Method:
    return method_info(name)(params)


def parse_params(pairs: list[str] | None) -> dict:
    """['beta=100', 'stage=stage3'] -> {'beta': 100.0, 'stage': 'stage3'} (numbers parsed)."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"method parameters look like name=value, got {pair!r}")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            out[k.strip()] = v.strip()
    return out
