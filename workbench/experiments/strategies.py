"""Training strategies that chain runs: born-again generations and teacher-assistant chains.

Both are lists of ordinary KD runs whose teacher is the previous run of the chain. The run
ids are made up front, so the chain can be queued as jobs at once (`experiments.launch`): the queue runs them in
order, and each one loads its predecessor's best weights as its teacher when it starts.
(Multi-teacher ensembles are a teacher spec, ``"a,b"``; deep mutual learning is the ``dml``
method; see workbench.core.methods.)

- Born-again networks (Furlanello et al., ICML 2018): the student has the teacher's
  architecture; generation k is taught by generation k − 1. The paper trains each
  generation on the KD term alone, which is α = 1 here.
- Teacher-assistant KD (Mirzadeh et al., AAAI 2020): teacher → assistant → student, where
  the assistant sits between the two in size.
"""

from __future__ import annotations

from dataclasses import replace

from workbench.models.zoo import ModelConfig
from workbench.store.runs import new_run_id
from workbench.train.loop import TrainConfig
from workbench.train.teachers import load_teacher


def born_again_chain(base: TrainConfig, generations: int, teacher_model: ModelConfig, group: str
                     ) -> list[tuple[str, TrainConfig]]:
    """(run id, config) for each generation; the student architecture is the teacher's."""
    if generations < 1:
        raise ValueError(f"generations must be >= 1, got {generations}")
    chain, teacher = [], base.teacher
    for g in range(1, generations + 1):
        rid = new_run_id(f"ban{g}")
        chain.append((rid, replace(base, kind="kd", model=teacher_model, teacher=teacher, group=group)))
        teacher = rid
    return chain


def takd_chain(base: TrainConfig, assistant: ModelConfig, group: str) -> list[tuple[str, TrainConfig]]:
    """(run id, config) for the assistant (taught by the teacher), then the student (taught by the assistant)."""
    rid = new_run_id("assistant")
    return [(rid, replace(base, kind="kd", model=assistant, group=group)),
            (new_run_id("kd"), replace(base, kind="kd", teacher=rid, group=group))]


def teacher_model_config(spec: str, store=None, trust_factory: bool = False) -> ModelConfig:
    return load_teacher(spec, store, trust_factory=trust_factory).config

