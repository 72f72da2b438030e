"""The search used as Optuna and Ray intend: TPE's random start sized to the budget, failed trials failed, fANOVA
over the searched distributions, RAY_ADDRESS honoured. None of these starts Ray."""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")

from workbench.experiments import search  # noqa: E402
from workbench.models.zoo import ModelConfig  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402
from workbench.train.loop import TrainConfig  # noqa: E402


def test_tpe_starts_modelling_within_every_budget_that_allows_it():
    assert [search.tpe_startup_trials(n) for n in (1, 4, 8, 12, 30, 100)] == [2, 2, 2, 4, 10, 10]
    assert all(search.tpe_startup_trials(n) < n for n in range(3, 200))  # the default budgets (4, 8) leave random
    assert search.tpe_note(8) is None
    assert "every trial is drawn at random" in search.tpe_note(2) and "at least 3 trials" in search.tpe_note(2)


def test_a_failed_trial_is_an_error_for_the_sampler_not_a_score(tmp_path):
    store = RunStore(tmp_path / "runs")
    base = TrainConfig(kind="kd", dataset="digits", teacher="digits-cnn", method="fitnet", epochs=1, profile=False,
                       model=ModelConfig("mlp", 1, 16), method_params={"student_stage": "no_such_layer"})
    with pytest.raises(search.TrialFailed, match="failed"):
        search._trainable({"beta": 10.0, "_store": str(store.root), "_base": base.to_dict(), "_command": "t"})
    (run,) = store.list()
    assert run.state == "failed" and run.config["search_values"] == {"beta": 10.0}


def test_importances_are_fanova_over_the_searched_distributions(monkeypatch):
    import optuna

    seen = {}

    def capture(study, evaluator=None, **kw):
        seen["study"], seen["evaluator"] = study, evaluator
        return {"lr": 0.7, "width": 0.3}

    import sys

    import optuna.importance  # noqa: F401  (optuna.importance is a lazy proxy; patch the module itself)

    monkeypatch.setattr(sys.modules["optuna.importance"], "get_param_importances", capture)
    trials = [{"values": {"lr": lr, "width": w}, "val_acc": a}
              for lr, w, a in ((1e-3, 16, 0.8), (3e-3, 32, 0.85), (1e-2, 64, 0.7), (5e-4, 24, 0.75))]
    ranges = [search.parse_range("lr=1e-4:1e-1:log"), search.parse_range("width=8:128:int")]
    assert search.importances(trials, ranges) == {"lr": 0.7, "width": 0.3}
    assert type(seen["evaluator"]).__name__ == "FanovaImportanceEvaluator"
    dists = seen["study"].trials[0].distributions
    assert dists["lr"].log and (dists["lr"].low, dists["lr"].high) == (1e-4, 1e-1)
    assert isinstance(dists["width"], optuna.distributions.IntDistribution) and dists["width"].high == 128
    assert "fANOVA" in search.IMPORTANCE_METHOD


def test_ray_address_from_the_environment_joins_that_cluster(monkeypatch):
    calls = []

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kw):
            calls.append(kw)

    monkeypatch.setattr(search, "require_ray", lambda: FakeRay())
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    search.connect()
    assert calls == [{"log_to_driver": False}]  # ray.init reads RAY_ADDRESS; never a private address="local"
    monkeypatch.delenv("RAY_ADDRESS")
    search.connect(num_cpus=2)
    assert calls[-1]["address"] == "local" and calls[-1]["num_cpus"] == 2 and not calls[-1]["include_dashboard"]
