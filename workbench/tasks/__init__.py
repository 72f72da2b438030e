"""Tasks: what each kind of data owns (see `tasks.base.Task`). `task_for(dataset)` finds a data set's task."""

from __future__ import annotations

from workbench.tasks.base import Task
from workbench.tasks.image import ImageClassification
from workbench.tasks.table import TabularClassification
from workbench.tasks.text import TextClassification

TASKS: tuple[Task, ...] = (ImageClassification(), TabularClassification(), TextClassification())
DATASETS: tuple[str, ...] = tuple(d for t in TASKS for d in t.datasets)  # every data set, of every task


def task_for(dataset: str) -> Task:
    """The task that owns data set `dataset`; ValueError naming the choices for an unknown one."""
    for t in TASKS:
        if dataset in t.datasets:
            return t
    raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "TASKS", "Task", "task_for"]
