"""Tabular classification: rows of numeric features, standardised on the training split, taught MLP to MLP."""

from __future__ import annotations

from workbench.data.tables import TABLE_DATASETS, load_table
from workbench.tasks.base import Task


class TabularClassification(Task):
    name = "tabular-classification"
    title = "Tabular"
    datasets = TABLE_DATASETS
    sample_kind = "features"
    feature_maps = False  # an MLP's hidden layers are vectors
    augmentations = ("none",)  # no augmentation is label-preserving for arbitrary features
    families = ("mlp", "factory")  # a conv net has no meaning on a row of features

    def load(self, name, data_dir=None, *, size=None, stream=None, label_column: str | None = None, **options):
        return load_table(name, data_dir, label_column=label_column)
