"""Training by short real runs on digits: KD, scratch, the frozen teacher, caching, budgets, failures."""

import json

import pytest
import torch

from workbench import teachers as teachers_mod
from workbench import train as train_mod
from workbench.jobs import execute_run
from workbench.models import ModelConfig, ModelError, build_model, save_checkpoint
from workbench.train import TrainConfig, TrainingError, autocast_dtype, pick_device, train

TINY = dict(dataset="digits", model=ModelConfig("mlp", depth=1, width=32), epochs=3, batch_size=64,
            teacher="digits-cnn", profile=False)


def _run(store, **kw):
    cfg = TrainConfig(**{**TINY, **kw})
    run = store.create(cfg.to_dict(), prefix=cfg.kind)
    state = execute_run(run, store)
    return run, state


def test_kd_run_on_digits_writes_the_whole_run_folder_and_beats_chance(store):
    run, state = _run(store, kind="kd", temperature=4.0, alpha=0.9)
    assert state == "done", run.status()
    files = {p.name for p in run.path.iterdir()}
    assert {"config.json", "status.json", "metrics.jsonl", "summary.json", "student.safetensors",
            "last.safetensors"} <= files
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("train_loss", "val_loss", "val_acc", "val_agreement", "lr"))
    sm = run.summary
    assert sm["test"]["accuracy"] > 0.5 and sm["test_last"]["accuracy"] > 0.5  # chance is 0.1
    assert 1 <= sm["best_epoch"] <= 3 and sm["teacher"]["test"]["accuracy"] > 0.9
    assert 0 <= sm["test"]["agreement"] <= 1 and "ece" in sm["test"]
    loaded = run.load_model("best")
    assert loaded.kdw_config == ModelConfig("mlp", depth=1, width=32)


def test_scratch_ignores_the_teacher_term_and_records_agreement(store):
    run, state = _run(store, kind="scratch", alpha=0.7)
    assert state == "done"
    assert run.config["alpha"] == 0.0  # scratch is alpha = 0, whatever was passed
    assert "agreement" in run.summary["test"]


def test_teacher_stays_frozen_in_eval_mode(store, monkeypatch):
    held = {}
    real = train_mod.load_teacher

    def spy(spec, store=None, config=None, **kw):
        t = real(spec, store, config, **kw)
        held["teacher"] = t
        held["before"] = {k: v.clone() for k, v in t.model.state_dict().items()}
        return t

    monkeypatch.setattr(train_mod, "load_teacher", spy)
    # with crops the teacher runs on every batch: the strictest case for BatchNorm statistics
    run, state = _run(store, kind="kd", augment="crop", epochs=1)
    assert state == "done"
    t = held["teacher"]
    assert not t.model.training and not any(p.requires_grad for p in t.model.parameters())
    after = t.model.state_dict()
    assert all(torch.equal(held["before"][k], after[k]) for k in after)  # incl. BN running stats


def test_seeded_runs_repeat_exactly_on_cpu(store, digits):
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 2})
    a = train(cfg, store=store, dataset=digits)
    b = train(cfg, store=store, dataset=digits)
    assert a["test"]["accuracy"] == b["test"]["accuracy"]
    assert a["test"]["confusion_matrix"] == b["test"]["confusion_matrix"]
    c = train(TrainConfig(**{**TINY, "kind": "kd", "epochs": 2, "seed": 1}), store=store, dataset=digits)
    assert c["test"]["confusion_matrix"] != a["test"]["confusion_matrix"]


def test_teacher_logits_are_computed_once_and_cached_on_disk(store, digits, monkeypatch):
    teachers_mod._MEMORY.clear()
    calls = []
    real = teachers_mod.compute_logits
    monkeypatch.setattr(teachers_mod, "compute_logits", lambda *a, **k: calls.append(a[2] if len(a) > 2 else "plain") or real(*a, **k))
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 1})
    train(cfg, store=store, dataset=digits)
    first = len(calls)
    assert first == 3  # train, val, test (digits has no flip view)
    cached = list((store.cache_dir / "teacher-logits").glob("*.safetensors"))
    assert len(cached) == 3
    train(cfg, store=store, dataset=digits)  # same process: memory cache
    teachers_mod._MEMORY.clear()
    train(TrainConfig(**{**TINY, "kind": "kd", "epochs": 1, "temperature": 2.0}), store=store, dataset=digits)
    assert len(calls) == first  # disk cache, even for another T


def test_flip_augmentation_caches_both_views_and_uses_them(store, digits):
    teachers_mod._MEMORY.clear()
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 1, "augment": "flip"})
    train(cfg, store=store, dataset=digits)
    names = sorted(p.name for p in (store.cache_dir / "teacher-logits").glob("*.safetensors"))
    assert any(n.endswith("-train-flip.safetensors") for n in names)
    assert any(n.endswith("-train-plain.safetensors") for n in names)


def test_label_budget_scratch_sees_only_n_labels_kd_sees_every_image(store):
    s_run, _ = _run(store, kind="scratch", labels=50)
    k_run, _ = _run(store, kind="kd", labels=50)
    assert s_run.summary["visible_labels"] == 50 and k_run.summary["visible_labels"] == 50
    # the same number of optimiser steps per epoch for both arms
    assert s_run.metrics()[0]["step"] == k_run.metrics()[0]["step"]


def test_non_finite_loss_stops_the_run_and_marks_it_failed(store, monkeypatch):
    def nan_loss(s, t, y, T, a):
        return (s * float("nan")).sum()

    monkeypatch.setattr(train_mod, "distillation_objective", nan_loss)
    monkeypatch.setattr(train_mod, "fused_distillation_objective", nan_loss)
    run, state = _run(store, kind="kd")
    assert state == "failed"
    assert "diverged" in run.status()["error"]
    assert len(run.metrics()) == 1  # the epoch that diverged is still recorded


def test_ctrl_c_leaves_the_run_cancelled_with_metrics_so_far(store):
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 5})
    run = store.create(cfg.to_dict())

    def interrupt(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            raise KeyboardInterrupt

    assert execute_run(run, store, [interrupt]) == "cancelled"
    assert run.status()["state"] == "cancelled"
    assert [r["epoch"] for r in run.metrics()] == [1, 2]
    json.loads((run.path / "status.json").read_text())  # whole, valid JSON


def test_teacher_that_does_not_fit_the_dataset_is_refused(store, tmp_path):
    wrong = build_model(ModelConfig("mlp", depth=1, width=8), (1, 28, 28), 10)
    path = tmp_path / "fmnist-teacher.safetensors"
    save_checkpoint(wrong, path)
    run, state = _run(store, kind="kd", teacher=str(path))
    assert state == "failed"
    assert "expects input (1, 28, 28)" in run.status()["error"]


def test_teacher_with_the_wrong_class_count_is_refused(digits, tmp_path):
    wrong = build_model(ModelConfig("mlp", depth=1, width=8), (1, 8, 8), 5)
    with pytest.raises(ModelError, match="with 5 classes"):
        teachers_mod.check_fits(wrong, digits)


def test_unknown_teacher_lists_what_exists(store):
    with pytest.raises(ModelError, match="digits-cnn"):
        teachers_mod.load_teacher("no-such-teacher", store)


@pytest.mark.parametrize("kw, message", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -2.0}, "temperature"),
    ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"),
    ({"dataset": "imagenet"}, "unknown data set"), ({"epochs": 0}, "epochs"),
    ({"device": "tpu"}, "device"), ({"labels": -3}, "labels"), ({"kind": "kd", "teacher": None}, "needs a teacher"),
])
def test_train_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, "kind": "kd", **kw})


def test_device_selection_and_autocast(monkeypatch):
    assert pick_device("cpu").type == "cpu"
    assert autocast_dtype(torch.device("cpu")) is None  # no autocast on the CPU path
    if not torch.cuda.is_available():
        with pytest.raises(TrainingError, match="no CUDA GPU"):
            pick_device("cuda")
        assert pick_device("auto").type in ("cpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_device("auto").type == "cuda"
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(torch.device("cuda"), enabled=False) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda")) is None  # e.g. pre-Ampere GPUs: plain fp32


def test_train_config_round_trips_through_json():
    cfg = TrainConfig(**{**TINY, "kind": "kd", "labels": 100})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
