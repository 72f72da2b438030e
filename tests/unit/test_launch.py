"""The one launch path: every distinct setup checked once, before anything is queued, then the runs in order."""

from __future__ import annotations

from dataclasses import replace

import pytest

from workbench.errors import ModelError
from workbench.experiments import launch
from workbench.experiments.recipes import distill_configs
from workbench.experiments.strategies import takd_chain
from workbench.experiments.sweep import grid_configs
from workbench.models.zoo import ModelConfig
from workbench.store.runs import RunStore
from workbench.train.loop import TrainConfig

KD = TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", model=ModelConfig("mlp", 1, 16), epochs=1)


class Recorder:
    """A runner that keeps what it was given."""

    def __init__(self):
        self.jobs = []

    def submit(self, config, run_id=None, prefix="run"):
        rid = run_id or f"{prefix}-{len(self.jobs)}"
        self.jobs.append((rid, config))
        return rid


@pytest.fixture
def checks(monkeypatch):
    seen = []

    class _Session:
        teacher = "loaded"
        total_steps, loader = 100, range(10)  # enough steps: no warning

    monkeypatch.setattr(launch, "check_setup", lambda c, store=None, teacher=None: seen.append(c) or _Session())
    return seen


def test_a_sweep_is_checked_once_per_setup_not_once_per_run(checks):
    configs = grid_configs(KD, [1.0, 2.0, 4.0], [0.5, 0.9], [0, 1], "g")
    assert len(configs) == 14
    teachers = launch.check(configs)
    assert len(checks) == 2  # the distilled setup and its scratch twin; T, α and the seed change nothing checked
    assert teachers["digits-cnn"] == "loaded"


def test_a_string_hyperparameter_is_part_of_the_setup(checks):
    a = replace(KD, method="fitnet", method_params={"student_stage": "auto"})
    launch.check([a, a.with_params(student_stage="stage1"), a.with_params(beta=5.0)])
    assert len(checks) == 2


def test_a_chain_is_checked_at_its_first_run_and_queued_in_order(checks):
    chain = takd_chain(KD, ModelConfig("cnn", 1, 8), "g")
    runner = Recorder()
    ids = launch.launch(chain, RunStore("unused"), "test: chain", runner=runner)
    assert len(checks) == 1 and checks[0].teacher == "digits-cnn"  # the student's teacher does not exist yet
    assert ids == [rid for rid, _ in chain]
    assert [c["teacher"] for _, c in runner.jobs] == ["digits-cnn", ids[0]]
    assert all(c["command"] == "test: chain" for _, c in runner.jobs)


def test_a_group_ties_the_runs_together(checks):
    runner = Recorder()
    launch.launch(distill_configs(KD), RunStore("unused"), "nb", runner=runner, group="notebook-1")
    assert [c["kind"] for _, c in runner.jobs] == ["scratch", "kd"]
    assert {c["group"] for _, c in runner.jobs} == {"notebook-1"}


def test_a_setup_that_cannot_train_queues_nothing(tmp_path):
    runner = Recorder()
    wrong = replace(KD, dataset="wine")  # a digits teacher for wine
    with pytest.raises(ModelError, match="trained on digits"):
        launch.launch(distill_configs(wrong), RunStore(tmp_path), "t", runner=runner)
    assert runner.jobs == []
    with pytest.raises(ValueError, match="nothing to launch"):
        launch.check([])
