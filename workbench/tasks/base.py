"""The Task seam: what belongs to one kind of data, so the loop, the methods, the store and the views never ask
"is this an image?".

A `Task` says which data sets it owns and how to load them, the input spec a student is built for, how a
model is probed to see that it fits, how a batch seen by the student is shown to the teacher, which views
of the training set the teacher-logit cache enumerates, the augmentations, the metrics, the export input
signature and how a sample is shown. Image classification (`tasks.image`) and tabular classification
(`tasks.table`) are the tasks today; a new modality is a new module here, with its data and models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.metrics import classification_metrics, predict_logits
from workbench.data.datasets import Dataset
from workbench.errors import ModelError
from workbench.models.zoo import build_model, sample_input


@dataclass(frozen=True)
class Score:
    """What a task's runs are judged by: the key of its validation and test figures, and which way is better."""

    key: str  # validation rows hold val_<key>; the summary's best is val_<key>_best
    title: str  # "accuracy", "perplexity"
    higher_is_better: bool

    @property
    def worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def better(self, row: dict, best: dict) -> bool:
        """Whether a validation row beats the best so far; ties (common on small validation sets) go to the lower
        validation loss."""
        v, b = row[f"val_{self.key}"], best[f"val_{self.key}"]
        if v != b:
            return v > b if self.higher_is_better else v < b
        return row["val_loss"] < best["val_loss"]


class Task:
    """Base class: a kind of data and what the workbench does with it. Subclasses set the attributes."""

    name = "base"  # the task's id, stored in every run's summary
    title = ""
    datasets: tuple[str, ...] = ()  # the data set names this task owns
    sample_kind = "image"  # how a front end shows one sample: image | features
    augmentations: tuple[str, ...] = ("none",)  # batch augmentations that make sense for these samples
    families: tuple[str, ...] | None = None  # zoo families that take these samples (None: any)
    feature_maps = True  # its models have spatial feature maps (what attention transfer matches)
    transformer_layers = False  # its models may be Transformers (what TinyBERT and MiniLM match)
    prunable = True  # torch-pruning's channel pruning applies to its models (deploy --prune)
    token_level = False  # its models predict next tokens: only methods whose terms take a TopK target distil them
    score = Score("acc", "accuracy", higher_is_better=True)
    default_topk: int | None = None  # set: the teacher cache holds its k largest logits per position, not all
    grad_clip: float | None = None  # the gradient-norm clip a run gets unless its config sets one (None: off)

    # -- data ---------------------------------------------------------------------------------------------
    def load(self, name: str, data_dir=None, *, size: int | None = None, stream: bool | None = None,
             **options) -> Dataset:
        """The data set `name` as tensors with its fixed validation and test splits."""
        raise NotImplementedError

    def load_run_data(self, config: dict, model: nn.Module) -> Dataset:
        """The data set a finished run (its config.json, its trained model) was trained on, to evaluate or export."""
        return self.load(config["dataset"], config.get("data_dir"), size=config.get("image_size"),
                         stream=config.get("stream"), label_column=config.get("label_column"))

    def load_for(self, config, teacher_model: nn.Module | None = None) -> Dataset:
        """The data set a run of `config` trains on (with the teacher that will teach it, if any)."""
        return self.load(config.dataset, config.data_dir, stream=config.stream, label_column=config.label_column)

    def build_student(self, model_config, shape: tuple[int, ...], dataset: Dataset) -> nn.Module:
        """The student that `model_config` (a ModelConfig) describes, for samples of `shape` of this data set."""
        return build_model(model_config, shape, dataset.num_classes)

    def student_from_teacher(self, teacher_model: nn.Module, keep_layers: tuple[int, ...]) -> nn.Module:
        """A student cut from its teacher: the teacher's architecture with only some of its layers."""
        raise ModelError(f"a student cut from its teacher (--student-from-teacher) is for Hugging Face text models, "
                         f"not {self.title.lower()} models")

    def prepare_student(self, student: nn.Module, dataset: Dataset, shape: tuple[int, ...]) -> None:
        """Whatever a student needs to know of the data before it trains (nothing, by default)."""

    def student_shape(self, dataset: Dataset, config) -> tuple[int, ...]:
        """The input shape a student of `config` is built for (one sample, without the batch)."""
        return tuple(dataset.input_shape)

    def view_for(self, dataset: Dataset, model: nn.Module) -> Dataset:
        """The data as `model` sees it (its own input shape and normalisation)."""
        return dataset

    def to_teacher(self, x: torch.Tensor, student_data: Dataset, teacher_data: Dataset) -> torch.Tensor:
        """A batch as the student sees it, as the teacher sees it."""
        return x

    def cache_views(self, augment: str) -> tuple[str, ...]:
        """The views of the training set whose teacher logits the cache holds (one per deterministic augmentation)."""
        return ("plain",)

    # -- models -------------------------------------------------------------------------------------------
    def check_family(self, family: str) -> None:
        if self.families is not None and family not in self.families:
            raise ModelError(f"a {family} model does not take {self.title.lower()} samples; use "
                             f"{' or '.join(self.families)}")

    def check_method(self, method) -> None:
        """ValueError unless `method` (a core.methods.Method) works on this task's models: logit and embedding
        methods work on any task; a method that needs spatial feature maps needs a task whose models have them."""
        if self.token_level and not method.token_level:
            raise ValueError(f"{method.name} ({method.title}) distils class logits or features; a language model "
                             "is distilled per next token: use kd, reverse_kl, jsd or skew_kl")
        if method.only_tokens and not self.token_level:
            raise ValueError(f"{method.name} ({method.title}) distils next-token distributions of language "
                             f"models, not {self.title.lower()} classifiers; use kd")
        if method.needs_transformer_layers and not self.transformer_layers:
            raise ValueError(f"{method.name} ({method.title}) matches Transformer layers, which "
                             f"{self.title.lower()} models have not; use a logit method such as kd")
        if method.needs_feature_maps and not self.feature_maps:
            raise ValueError(f"{method.name} ({method.title}) matches spatial feature maps, and "
                             f"{self.title.lower()} models have none; use a logit method such as kd")

    def method_names(self) -> list[str]:
        """The distillation methods that work on this task's models (what a front end offers)."""
        from workbench.core.methods import DISTILLATION_METHODS, build_method

        out = []
        for name in DISTILLATION_METHODS:
            try:
                self.check_method(build_method(name))
            except ValueError:
                continue
            out.append(name)
        return out

    def probe(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        """ModelError in one sentence unless `model` takes one sample of `shape` and returns (1, K) logits."""
        label = model.kdw_config.label() if hasattr(model, "kdw_config") else type(model).__name__
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(sample_input(model, shape))
        except Exception as e:  # models fail on a wrong input in many ways
            raise ModelError(f"{label} cannot take samples of shape {tuple(shape)} "
                             f"({(str(e).splitlines() or [type(e).__name__])[0]})") from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
            raise ModelError(f"{label} must return logits of shape (batch, classes)")

    def check_teacher(self, teacher_model: nn.Module, dataset: Dataset, trained_on: str | None,
                      here: str) -> None:
        """ModelError unless the teacher can teach on this data set: it learnt this one (when that is known), has
        its classes, and takes its samples (`teacher_takes`)."""
        shape, k = tuple(teacher_model.kdw_input_shape), teacher_model.kdw_num_classes
        if trained_on is not None and trained_on != here:
            raise ModelError(f"the teacher was trained on {trained_on}, not {here}; pick a teacher trained on "
                             f"{dataset.name} (`kdw teacher --dataset {dataset.name}`)")
        if k != dataset.num_classes or not self.teacher_takes(shape, dataset, trained_on):
            raise ModelError(
                f"the teacher expects input {shape} with {k} classes, but {dataset.name} has input "
                f"{tuple(dataset.input_shape)} with {dataset.num_classes} classes; pick a teacher "
                f"trained on {dataset.name} (`kdw teacher --dataset {dataset.name}`)")

    def teacher_takes(self, shape: tuple[int, ...], dataset: Dataset, trained_on: str | None) -> bool:
        """Whether a teacher built for inputs of `shape` can be shown this data set's samples."""
        return shape == tuple(dataset.input_shape)

    def adopt_cut(self, student: nn.Module, config, shape: tuple[int, ...], dataset: Dataset) -> None:
        """Check and label a student cut from its teacher (`student_from_teacher`) as the run's student."""
        if student.kdw_config != replace(config.model, pretrained=False):
            raise ValueError(f"the config's student is {config.model.label()}, but the teacher cut to layers "
                             f"{','.join(map(str, config.keep_layers))} is {student.kdw_config.label()}")
        student.kdw_input_shape, student.kdw_vocab = shape, dataset.vocab

    def check_pair(self, student: nn.Module, teacher_model: nn.Module | None, config) -> None:
        """ValueError unless the student can learn from this teacher (nothing to check, by default)."""

    # -- training -----------------------------------------------------------------------------------------
    def inputs_targets(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the student reads, (N,) targets with −1 where there is none) of a batch: the samples and their
        labels, for a classifier."""
        return x, y

    def flat_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The student's output as (N, K) rows, one per target of `inputs_targets`."""
        return logits

    def evaluate(self, model: nn.Module, data: Dataset, split: str, teacher_out=None, device=None) -> dict:
        """Loss, score and (with the teacher's outputs on the split) agreement of `model` on a split, unprefixed."""
        x, y = data.split(split)
        logits = predict_logits(model, x, device=device)  # (N, K) on the CPU
        out = {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(1) == y).float().mean().item()}
        if teacher_out is not None:
            out["agreement"] = (logits.argmax(1) == teacher_out.argmax(1)).float().mean().item()
        return out

    def test_metrics(self, model: nn.Module, data: Dataset, teacher_out=None, device=None) -> dict:
        """The summary's test figures of `model`."""
        return self.metrics(predict_logits(model, data.x_test, device=device), data.y_test, data.num_classes,
                            teacher_out)

    def teacher_test(self, teacher_out, data: Dataset) -> dict:
        """The teacher's own test figures, from its outputs on the test split."""
        return self.metrics(teacher_out, data.y_test, data.num_classes)

    def diverged(self, history: list[dict], data: Dataset, lr: float) -> str | None:
        """Why a finished run counts as diverged, or None: after two epochs or more, its validation accuracy is
        at chance level (at most 1.5/K) and its validation loss no better than guessing uniformly (0.9·ln K).

        >>> from types import SimpleNamespace
        >>> Task().diverged([{"val_acc": 0.16, "val_loss": 40.0}, {"val_acc": 0.11, "val_loss": 2.4}],
        ...                 SimpleNamespace(num_classes=10), 1.0)[:40]
        'validation accuracy ended at chance leve'
        """
        k = data.num_classes
        if len(history) < 2 or k < 2:
            return None
        last = history[-1]
        if last["val_acc"] <= 1.5 / k and last["val_loss"] >= 0.9 * math.log(k):
            return (f"validation accuracy ended at chance level ({100 * last['val_acc']:.1f}% with {k} "
                    f"classes): training diverged. Try a learning rate 10× lower (now {lr:g}).")
        return None

    def did_not_learn(self, summary: dict, config=None) -> str | None:
        """Why a finished run learnt nothing useful, recorded in its summary for every view to show, or None (a
        classifier's case is decided by `analysis.describe.did_not_learn` from its test figures)."""
        return None

    def summary_extra(self, model: nn.Module, data: Dataset, device, config=None, method=None) -> dict:
        """What a run's summary holds beyond the figures every task has (nothing, by default)."""
        return {}

    # -- results ------------------------------------------------------------------------------------------
    def metrics(self, logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                teacher_logits: torch.Tensor | None = None) -> dict:
        """The task's test figures: accuracy, ECE, confusion matrix (and agreement with the teacher)."""
        return classification_metrics(logits, targets, num_classes, teacher_logits)

    # -- export -------------------------------------------------------------------------------------------
    # a method's starting hyperparameters for this task where they differ from the method's own (a run that names
    # them keeps its own)
    method_defaults: dict = {}

    export_input_names: tuple[str, ...] = ("input",)  # the exported graph's inputs

    def export_module(self, model: nn.Module) -> nn.Module:
        """What the ONNX exporter traces: the model itself, taking the inputs `export_inputs` makes."""
        return model

    def export_example(self, model: nn.Module, input_shape) -> tuple[torch.Tensor, ...]:
        """The example inputs the exporter traces with: two samples of `input_shape`."""
        from workbench.models.zoo import sample_input

        return self.export_inputs(model, sample_input(model, input_shape, 2))

    def export_inputs(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stored samples (a batch of the data set's x) as the exported graph's inputs, in `export_input_names` order."""
        return (x,)

    def export_dynamic_shapes(self) -> tuple[dict, ...]:
        """The dynamic axes of each export input: the batch."""
        return ({0: torch.export.Dim("batch", min=1, max=65536)},)

    def timing_batch(self, model: nn.Module, dataset: Dataset, batch: int) -> torch.Tensor:
        """Samples to time a model or an artifact on: noise shaped like the data (images, features)."""
        return torch.randn(batch, *dataset.input_shape)

    def timed_sample(self, dataset: Dataset) -> str | None:
        """What one timed sample is, where the tables should say it (None: an image or a row, as the data set's)."""
        return None
