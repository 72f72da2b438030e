"""Training by short real runs on digits: KD, scratch, the frozen teacher, caching, budgets, failures."""

import json

import pytest
import torch

from workbench.errors import ModelError, TrainingError
from workbench.jobs.queue import execute_run
from workbench.models.zoo import ModelConfig, build_model, save_checkpoint
from workbench.train import loop as train_mod
from workbench.train import teachers as teachers_mod
from workbench.train.loop import TrainConfig, autocast_dtype, pick_device, train

TINY = dict(dataset="digits", model=ModelConfig("mlp", depth=1, width=32), epochs=3, batch_size=64,
            teacher="digits-cnn", profile=False)


def _run(store, **kw):
    cfg = TrainConfig(**{**TINY, **kw})
    run = store.create(cfg.record(), prefix=cfg.kind)
    state = execute_run(run, store)
    return run, state


def test_kd_run_on_digits_writes_the_whole_run_folder_and_beats_chance(store):
    run, state = _run(store, kind="kd", method_params={"temperature": 4.0, "alpha": 0.9})
    assert state == "done", run.status()
    files = {p.name for p in run.path.iterdir()}
    assert {"config.json", "status.json", "metrics.jsonl", "summary.json", "student.safetensors",
            "last.safetensors"} <= files
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("train_loss", "val_loss", "val_acc", "val_agreement", "lr", "loss_ce", "loss_kd"))
    for r in rows:  # the terms add up to the objective
        assert r["loss_ce"] + r["loss_kd"] == pytest.approx(r["train_loss"], rel=1e-6)
    assert run.config["objective"].startswith("L = (1 − 0.9)·CE") and sm_objective(run) == run.config["objective"]
    sm = run.summary
    assert sm["test"]["accuracy"] > 0.5 and sm["test_last"]["accuracy"] > 0.5  # chance is 0.1
    assert 1 <= sm["best_epoch"] <= 3 and sm["teacher"]["test"]["accuracy"] > 0.9
    assert 0 <= sm["test"]["agreement"] <= 1 and "ece" in sm["test"]
    loaded = run.load_model("best")
    assert loaded.kdw_config == ModelConfig("mlp", depth=1, width=32)


def sm_objective(run) -> str:
    return run.summary["method"]["objective"]


def test_scratch_trains_with_the_ce_method_and_records_agreement(store):
    run, state = _run(store, kind="scratch")
    assert state == "done"
    assert run.config["method"] == "ce" and run.config["method_params"] == {}
    assert sm_objective(run) == "L = CE(z_s, y)"
    rows = run.metrics()
    assert [k for k in rows[0] if k.startswith("loss_")] == ["loss_ce"] and rows[0]["loss_ce"] == rows[0]["train_loss"]
    assert "agreement" in run.summary["test"]
    with pytest.raises(ValueError, match="labels alone"):
        TrainConfig(**{**TINY, "kind": "scratch", "method": "kd"})


def test_every_run_kind_logs_its_named_terms(store):
    """teacher and scratch: ce; kd: ce and kd; a method with three terms logs three."""
    want = {"teacher": ["loss_ce"], "scratch": ["loss_ce"], "kd": ["loss_ce", "loss_kd"]}
    for kind, keys in want.items():
        run, state = _run(store, kind=kind, epochs=1)
        assert state == "done" and [k for k in run.metrics()[0] if k.startswith("loss_")] == keys
    run, _ = _run(store, kind="kd", method="dkd", epochs=1)
    assert [k for k in run.metrics()[0] if k.startswith("loss_")] == ["loss_ce", "loss_tckd", "loss_nckd"]


def test_old_configs_with_t_and_alpha_on_the_config_still_load(store):
    old = {"kind": "kd", "dataset": "digits", "model": {"family": "mlp", "depth": 1, "width": 8},
           "teacher": "digits-cnn", "temperature": 2.0, "alpha": 0.5, "method": "kd", "method_params": {},
           "schema_version": 1}
    cfg = TrainConfig.from_dict(old)
    assert cfg.method_params == {"temperature": 2.0, "alpha": 0.5} and cfg.temperature == 2.0
    scratch = TrainConfig.from_dict({**old, "kind": "scratch", "alpha": 0.0})
    assert scratch.method == "ce"


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
    train(TrainConfig(**{**TINY, "kind": "kd", "epochs": 1, "method_params": {"temperature": 2.0}}), store=store,
          dataset=digits)
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


def test_non_finite_loss_stops_the_run_and_marks_it_diverged(store, monkeypatch):
    from workbench.core.methods import KD

    monkeypatch.setattr(KD, "terms", lambda self, ctx: {"kd": (ctx.s_logits * float("nan")).sum()})
    run, state = _run(store, kind="kd")
    assert state == "diverged" and run.state == "diverged"
    assert "diverged" in run.status()["error"] and "10× lower" in run.status()["error"]
    assert len(run.metrics()) == 1  # the epoch that diverged is still recorded


def test_a_run_stuck_at_chance_is_marked_diverged_not_done(store):
    """lr = 1.0 drives a digits student to chance: that is not a green Finished."""
    run, state = _run(store, kind="scratch", lr=1.0, epochs=3)
    assert state == "diverged", (run.status(), [r["val_acc"] for r in run.metrics()])
    assert "chance level" in run.status()["error"] and run.summary.get("diverged")


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
    ({"method_params": {"temperature": 0.0}}, "temperature"), ({"method_params": {"temperature": -2.0}}, "temperature"),
    ({"method_params": {"alpha": 1.5}}, "alpha"), ({"method_params": {"alpha": -0.1}}, "alpha"),
    ({"method_params": {"temperature": float("inf")}}, "finite"), ({"lr": float("inf")}, "finite"),
    ({"weight_decay": float("nan")}, "finite"), ({"seed": 2 ** 64}, "seed"), ({"method": "ce"}, "distillation method"),
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


# ---------------------------------------------------------------------------
# one loop: the stages, the cache and the closed-form gradient, inside real training steps

def test_a_warm_cache_means_the_teacher_never_runs(store, digits, monkeypatch):
    """A second KD run with the teacher's logits cached on disk must not call the teacher's forward at all."""
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 1})
    teachers_mod._MEMORY.clear()
    train(cfg, store=store, dataset=digits)  # fills this store's disk cache
    teachers_mod._MEMORY.clear()
    calls = []
    real = teachers_mod.load_teacher

    def counting(*a, **k):
        t = real(*a, **k)
        t.model.register_forward_pre_hook(lambda m, inp: calls.append(inp[0].shape))
        return t

    monkeypatch.setattr(train_mod, "load_teacher", counting)
    summary = train(cfg, store=store, dataset=digits)
    assert calls == [] and summary["test"]["accuracy"] > 0.3
    teachers_mod._MEMORY.clear()
    train(TrainConfig(**{**TINY, "kind": "kd", "epochs": 1, "teacher_cache": False}), store=store, dataset=digits)
    assert len(calls) > 10  # the counter works: without the cache the teacher runs on every batch


def test_check_setup_returns_the_session_train_goes_on_with(store, digits, monkeypatch):
    loads = []
    real = teachers_mod.load_teacher
    monkeypatch.setattr(train_mod, "load_teacher", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 1})
    session = train_mod.check_setup(cfg, store)
    summary = train(cfg, store=store, session=session)
    assert loads == ["digits-cnn"] and summary["epochs_done"] == 1  # the teacher loaded once for check and run


def _one_step(store, digits, closed_form: bool, labels=None):
    """A real training step (`train_step`) on the first batch of a fresh session; returns the session."""
    from workbench.core.methods import KD

    cfg = TrainConfig(**{**TINY, "kind": "kd", "epochs": 1, "labels": labels,
                         "method_params": {"temperature": 3.0, "alpha": 0.7}})
    s = train_mod.prepare(cfg, store, digits)
    train_mod.start(s, store)
    assert isinstance(s.method, KD)
    s.method.closed_form = closed_form
    x, y, idx, flip = next(iter(s.loader))
    terms, _ = train_mod.train_step(s, x, y, idx, flip)
    return s, terms, (x, y, idx)


@pytest.mark.parametrize("labels", [None, 100])
def test_closed_form_and_plain_kd_give_the_same_step(store, digits, labels):
    """The fused KD step and the plain autograd step agree in terms and in parameters after one AdamW step,
    and both equal a step on `distillation_objective` with the teacher run on the batch."""
    from workbench.core.losses import distillation_objective

    torch.manual_seed(0)
    fused, t_fused, (x, y, idx) = _one_step(store, digits, True, labels)
    plain, t_plain, _ = _one_step(store, digits, False, labels)
    for k in ("ce", "kd"):
        assert t_fused[k].item() == pytest.approx(t_plain[k].item(), rel=1e-5)
    for (name, a), b in zip(fused.student.named_parameters(), plain.student.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    # the reference: a fresh student, the teacher on the batch, the textbook objective
    ref = train_mod.prepare(fused.config, store, digits)
    train_mod.start(ref, store)
    y_seen = torch.where(ref.visible[idx], y, -1)
    with torch.no_grad():
        z_t = ref.teacher.model(x)
    loss = distillation_objective(ref.student(x), z_t, y_seen, 3.0, 0.7)
    assert loss.item() == pytest.approx((t_fused["ce"] + t_fused["kd"]).item(), rel=1e-5)
    for g in ref.optimizer.param_groups:
        g["lr"] = train_mod.lr_at(0, ref.total_steps, ref.config.lr)
    ref.optimizer.zero_grad()
    loss.backward()
    ref.optimizer.step()
    for a, b in zip(fused.student.parameters(), ref.student.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_loop_never_branches_on_a_method_name():
    """Comparisons with a method's name never appear in the loop's stages; a run's role (kind) may."""
    import ast
    import inspect

    from workbench.core.methods import METHODS

    stages = (train_mod.prepare, train_mod._loader, train_mod._student, train_mod.start, train_mod._teacher_outputs,
              train_mod.teacher_batch, train_mod.train_step, train_mod.train_epoch, train_mod.evaluate,
              train_mod.run_summary, train_mod.finish, train_mod.train)
    tree = ast.Module(body=[ast.parse(inspect.getsource(f)) for f in stages], type_ignores=[])
    compared = [ast.unparse(side) for n in ast.walk(tree) if isinstance(n, ast.Compare)
                if any(isinstance(c, ast.Constant) and c.value in METHODS for c in [n.left, *n.comparators])
                for side in [n.left, *n.comparators] if not isinstance(side, ast.Constant)]
    assert not compared, compared  # labels alone or the transfer set: the method's learns_from_unlabelled decides
    assert "learns_from_unlabelled" in inspect.getsource(train_mod._loader)  # the batches prepare() makes
