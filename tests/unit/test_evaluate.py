"""Metrics by value, and model figures measured as docs/conventions.md defines them."""

import pytest
import torch

from workbench.core.metrics import (
    accuracy,
    agreement,
    classification_metrics,
    confusion_matrix,
    expected_calibration_error,
    kl_to_teacher,
    per_class_accuracy,
)
from workbench.evaluate.metrics import flops_per_sample, latency_ms, model_profile
from workbench.models.zoo import ModelConfig, build_model


def test_confusion_matrix_rows_are_true_classes():
    logits = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    y = torch.tensor([0, 0, 1, 2])
    cm = confusion_matrix(logits, y, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert per_class_accuracy(logits, y, 3) == [0.5, 1.0, 1.0]
    assert accuracy(logits, y) == 0.75


def test_ece_by_hand_with_fifteen_bins():
    # three samples: confidences ~0.9 (right), ~0.9 (wrong), 0.6 (right)
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    logits = torch.log(p)
    y = torch.tensor([0, 1, 0])
    # bin (0.8667, 0.9333]: acc 0.5, conf 0.9 -> |gap| * 2/3; bin (0.5333, 0.6]: acc 1, conf 0.6 -> 0.4 * 1/3
    want = (2 / 3) * 0.4 + (1 / 3) * 0.4
    assert expected_calibration_error(logits, y) == pytest.approx(want, abs=1e-6)


def test_ece_is_zero_for_a_perfectly_calibrated_confident_model():
    logits = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    assert expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_agreement_and_kl_to_teacher():
    s = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[5.0, 1.0], [4.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert agreement(s, t) == 0.75
    assert kl_to_teacher(t, t) == pytest.approx(0.0, abs=1e-7)
    assert kl_to_teacher(s, t) > 0
    m = classification_metrics(s, torch.tensor([0, 1, 0, 1]), 2, t)
    assert m["accuracy"] == 1.0 and m["agreement"] == 0.75 and len(m["confusion_matrix"]) == 2


def test_flops_count_a_multiply_add_as_two():
    model = build_model(ModelConfig("mlp", depth=1, width=32), (1, 8, 8), 10)
    assert flops_per_sample(model, (1, 8, 8)) == 2 * (64 * 32 + 32 * 10)


def test_model_profile_names_device_dtype_threads_and_file_size():
    model = build_model(ModelConfig("mlp", depth=1, width=16), (1, 8, 8), 10)
    prof = model_profile(model, (1, 8, 8), "cpu")
    assert prof["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert prof["size_mb"] == prof["size_bytes"] / 1e6 and prof["size_bytes"] > 4 * prof["params"]
    assert prof["device"] == "cpu" and prof["dtype"] == "float32" and prof["threads"] == torch.get_num_threads()
    assert prof["latency_ms"] > 0 and prof["throughput"] > 0


def test_latency_refuses_fewer_passes_than_the_conventions_ask():
    model = build_model(ModelConfig("mlp", depth=1, width=16), (1, 8, 8), 10)
    with pytest.raises(ValueError, match=">= 5 warm-up and >= 30"):
        latency_ms(model, (1, 8, 8), reps=10)


def test_time_forward_times_at_least_reps_and_keeps_going_for_fast_models():
    from workbench.evaluate.metrics import time_forward

    model = build_model(ModelConfig("mlp", depth=1, width=16), (1, 8, 8), 10)
    x = torch.randn(1, 1, 8, 8)
    assert len(time_forward(model, x, warmup=1, reps=30)) == 30  # no time floor: exactly reps
    times = time_forward(model, x, warmup=1, reps=30, min_time_s=0.05, max_reps=5000)
    assert len(times) > 30 and (sum(times) >= 0.05 or len(times) == 5000)
    assert len(time_forward(model, x, warmup=1, reps=30, min_time_s=10.0, max_reps=40)) == 40  # capped


def test_first_correct_index_skips_images_the_model_gets_wrong(digits):
    from workbench.core.explain import first_correct_index
    from workbench.train.teachers import load_teacher

    model = load_teacher("digits-cnn").model
    idx = first_correct_index(model, digits)
    x, y = digits.split("test")
    preds = model(x[: idx + 1]).argmax(1)
    assert preds[idx] == y[idx] and bool((preds[:idx] != y[:idx]).all())


def test_healing_reports_the_share_of_the_gap_to_the_teacher_that_closed():
    from workbench.tasks.base import Score
    from workbench.train.loop import healing

    ppl = Score("ppl", "perplexity", higher_is_better=False)
    h = healing({"perplexity": 300.0, "nll": 5.7}, {"perplexity": 120.0}, {"perplexity": 100.0}, ppl)
    assert h["gap_closed"] == pytest.approx(0.9) and h["cut"] == 300.0 and h["before"] == {"perplexity": 300.0,
                                                                                             "nll": 5.7}
    assert healing({"perplexity": 300.0}, {"perplexity": 350.0}, {"perplexity": 100.0}, ppl)["gap_closed"] < 0
    acc = Score("acc", "accuracy", higher_is_better=True)  # signs and all: the same formula for accuracy
    assert healing({"accuracy": 0.5}, {"accuracy": 0.8}, {"accuracy": 0.9}, acc)["gap_closed"] == pytest.approx(0.75)
    assert healing({"perplexity": 100.0}, {"perplexity": 90.0}, {"perplexity": 100.0}, ppl)["gap_closed"] is None
