"""Image classification: (C, H, W) images, seen by each model at its own size, channels and normalisation."""

from __future__ import annotations

import torch
from torch import nn

from workbench.data.datasets import IMAGE_DATASETS, Dataset, load_dataset
from workbench.data.transforms import AUGMENTATIONS, convert
from workbench.errors import ModelError
from workbench.models.zoo import TEXT_FAMILIES, ZOO, check_input
from workbench.tasks.base import Task


class ImageClassification(Task):
    name = "image-classification"
    title = "Image"
    datasets = IMAGE_DATASETS
    sample_kind = "image"
    augmentations = AUGMENTATIONS

    def load(self, name, data_dir=None, *, size=None, stream=None, label_column=None, **options) -> Dataset:
        return load_dataset(name, data_dir, image_size=size, stream=stream, **options)

    def load_for(self, config, teacher_model=None) -> Dataset:
        # image folders decode once, at the larger of the student's and the teacher's sizes
        sizes = [s for s in (config.image_size, teacher_model is not None and teacher_model.kdw_input_shape[1]) if s]
        return self.load(config.dataset, config.data_dir, size=max(sizes) if sizes else None, stream=config.stream,
                         allow_outside=config.allow_outside)

    def prepare_student(self, student, dataset, shape) -> None:
        if getattr(student, "kdw_mean", None) is None:  # the zoo trains on the data set's own statistics
            student.kdw_mean, student.kdw_std = dataset.stats_for(shape[0])

    def student_shape(self, dataset, config) -> tuple[int, ...]:
        C, H, _ = dataset.input_shape
        return (config.channels or C, config.image_size or H, config.image_size or H)

    def view_for(self, dataset, model: nn.Module) -> Dataset:
        return dataset.view_for(model)

    def to_teacher(self, x: torch.Tensor, student_data, teacher_data) -> torch.Tensor:
        return convert(x, student_data.input_view(), teacher_data.input_view())  # the teacher's size and channels

    def cache_views(self, augment: str) -> tuple[str, ...]:
        return ("plain", "flip") if "flip" in augment else ("plain",)

    def check_family(self, family: str) -> None:
        if family in TEXT_FAMILIES:
            raise ModelError(f"a {family} model reads text (token ids), not images; use {', '.join(ZOO)}, "
                             "torchvision:NAME, timm:NAME or your own factory")

    def probe(self, model, shape) -> None:
        check_input(model, shape)  # a wrong channel count, or an image too small for the model

    def teacher_takes(self, shape, dataset, trained_on) -> bool:
        """A teacher whose data set is known (a shipped card, a teacher run) sees the images at its own size and
        channels (grey and colour convert); a teacher from a file must take them as they are."""
        c_data = dataset.input_shape[0]
        return len(shape) == 3 and (trained_on is not None or shape == tuple(dataset.input_shape)) \
            and (shape[0] == c_data or {shape[0], c_data} == {1, 3})
