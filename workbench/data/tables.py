"""Tabular data: rows of numeric features and a class label, as (N, F) tensors standardised on the training split.

- ``wine`` and ``breast-cancer``: scikit-learn's embedded copies of the UCI sets (178 × 13, 3 classes;
  569 × 30, 2 classes).
- ``table``: a CSV file of your own (``--data-dir FILE.csv``) with a header row, numeric feature columns and a
  label column (``--label-column``, default ``label``); the labels may be any text or numbers.

The test split (a stratified 20%) and the validation split are fixed and seeded, as for images.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch

from workbench.data.datasets import Dataset, fixed_splits
from workbench.data.readers import read_csv_rows
from workbench.errors import DataError

EMBEDDED_TABLES = ("wine", "breast-cancer")  # in scikit-learn's wheel: always there
TABLE_DATASETS = (*EMBEDDED_TABLES, "table")
DEFAULT_LABEL_COLUMN = "label"


def load_table(name: str, path=None, *, label_column: str | None = None, val_fraction: float = 0.1) -> Dataset:
    """A tabular data set by name; `path` is the CSV file for ``table``."""
    if name == "wine":
        from sklearn.datasets import load_wine

        bunch, source = load_wine(), "sklearn.datasets.load_wine"
        x, y, classes, columns = bunch.data, bunch.target, tuple(str(c) for c in bunch.target_names), \
            tuple(bunch.feature_names)
    elif name == "breast-cancer":
        from sklearn.datasets import load_breast_cancer

        bunch, source = load_breast_cancer(), "sklearn.datasets.load_breast_cancer"
        x, y, classes, columns = bunch.data, bunch.target, tuple(str(c) for c in bunch.target_names), \
            tuple(bunch.feature_names)
    elif name == "table":
        if not path:
            raise DataError("table needs a CSV file: --data-dir FILE.csv (numeric columns plus a label column)")
        x, y, classes, columns = read_csv_table(Path(path), label_column or DEFAULT_LABEL_COLUMN)
        source = str(path)
    else:
        raise DataError(f"unknown tabular data set {name!r}; choose one of {', '.join(TABLE_DATASETS)}")
    return assemble_table(name, np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64), classes, columns,
                          source, val_fraction)


def read_csv_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """(features, labels, class names, feature names) of a CSV with a header; DataError in one sentence."""
    rows = read_csv_rows(path, "table", "a header row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise DataError(f"table {path} has no column {label_column!r} (its columns: {', '.join(header[:8])}"
                        f"{' …' if len(header) > 8 else ''}); name the label column with --label-column")
    if len(rows) < 2:
        raise DataError(f"table {path} has a header but no samples")
    li = header.index(label_column)
    columns = tuple(h for i, h in enumerate(header) if i != li)
    if not columns:
        raise DataError(f"table {path} has no feature columns besides {label_column!r}")
    x = np.empty((len(rows) - 1, len(columns)), dtype=np.float64)
    labels = []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"table {path} line {n}: {len(row)} values for {len(header)} columns")
        labels.append(row[li].strip())
        for j, (i, v) in enumerate((i, v) for i, v in enumerate(row) if i != li):
            try:
                x[n - 2, j] = float(v)
            except ValueError:
                raise DataError(f"table {path}: column {header[i]!r} is not numeric ({v!r} on line {n}); "
                                "features must be numbers (encode categories as numbers first)") from None
            if not math.isfinite(x[n - 2, j]):
                raise DataError(f"table {path}: column {header[i]!r} holds {v!r} on line {n}; features must be "
                                "finite numbers")
    classes = tuple(sorted(set(labels), key=_label_key))
    if len(classes) < 2:
        raise DataError(f"table {path}: column {label_column!r} holds a single class ({classes[0]!r}); "
                        "classification needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    return x, np.array([index[v] for v in labels], dtype=np.int64), classes, columns


def _label_key(v: str):
    """Numeric labels in numeric order (2 before 10), others alphabetically."""
    try:
        return (0, float(v), v)
    except ValueError:
        return (1, 0.0, v)


def assemble_table(name, x: np.ndarray, y: np.ndarray, classes, columns, source, val_fraction=0.1) -> Dataset:
    """(N, F) features and labels -> a Dataset: a stratified 20% test split, a validation split, standardised."""
    splits = fixed_splits(y, classes, name, val_fraction)
    train_idx, val_idx, test_idx = splits["train"], splits["val"], splits["test"]
    mean = x[train_idx].mean(axis=0)
    std = x[train_idx].std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)  # a constant column stays 0 after centring

    def norm(idx):
        return torch.from_numpy(((x[idx] - mean) / std).astype(np.float32)).contiguous()  # (n, F)

    digest = hashlib.sha256(np.ascontiguousarray(x).tobytes() + y.tobytes() + repr(columns).encode())
    ds = Dataset(name=name, x_train=norm(train_idx), y_train=torch.from_numpy(y[train_idx]),
                 x_val=norm(val_idx), y_val=torch.from_numpy(y[val_idx]), x_test=norm(test_idx),
                 y_test=torch.from_numpy(y[test_idx]), classes=tuple(classes),
                 mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), default_augment="none",
                 fingerprint=digest.hexdigest()[:16], source=source, feature_names=tuple(columns))
    return ds
