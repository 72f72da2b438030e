"""Tasks: what each kind of data owns (see `tasks.base.Task`). `task_for(dataset)` finds a data set's task."""

from __future__ import annotations

from workbench.tasks.base import Task
from workbench.tasks.image import ImageClassification
from workbench.tasks.lm import LanguageModelling
from workbench.tasks.table import TabularClassification
from workbench.tasks.text import TextClassification

TASKS: tuple[Task, ...] = (ImageClassification(), TabularClassification(), TextClassification(), LanguageModelling())
DATASETS: tuple[str, ...] = tuple(dict.fromkeys(d for t in TASKS for d in t.datasets))  # every data set, of every task


def task_for(dataset: str, task: str | None = None) -> Task:
    """The task that owns data set `dataset` (the task named `task` where a data set has several: fortunes and
    hf-dataset are texts to classify or a corpus to model); ValueError naming the choices for an unknown one."""
    owners = [t for t in TASKS if dataset in t.datasets]
    if not owners:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    if task is None:
        return owners[0]
    for t in owners:
        if t.name == task:
            return t
    raise ValueError(f"the data set {dataset} is not one of the {task} task's "
                     f"(it is for {' or '.join(t.name for t in owners)})")


def infer_task(dataset: str, model, teacher_is_lm: bool = False) -> str:
    """The task a run of `model` (a ModelConfig) on `dataset` is: the data set's, or, for a data set of several
    tasks, language modelling when the model is a language model (llama, an hf: causal LM) or its teacher is."""
    owners = [t for t in TASKS if dataset in t.datasets]
    if len(owners) <= 1:
        return task_for(dataset).name
    lm = model.family == "llama" or teacher_is_lm
    if not lm and model.family == "hf":
        from workbench.models.lm import is_causal

        lm = is_causal(model.name)
    wanted = "language-modelling" if lm else next(t.name for t in owners if t.name != "language-modelling")
    return task_for(dataset, wanted).name


__all__ = ["DATASETS", "TASKS", "Task", "infer_task", "task_for"]
