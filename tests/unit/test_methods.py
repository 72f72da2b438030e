"""Method breadth: every loss by value and by its invariances, hooks on any module, every method and
strategy by a short real run on digits."""

import json
import math

import pytest
import torch
from fixtures.loss_cases import FIXTURE, cases
from torch import nn

from workbench.core import losses
from workbench.core.hooks import FeatureHooks, feature_shapes
from workbench.core.methods import METHODS, build_method, parse_params
from workbench.experiments.strategies import born_again_chain, takd_chain, teacher_model_config
from workbench.jobs.queue import run_in_process
from workbench.models.zoo import ModelConfig
from workbench.train.loop import TrainConfig, train

# ---------------------------------------------------------------------------
# committed values: a missing entry is an error, and only tests/fixtures/loss_cases.py --write rewrites them

EXPECTED = json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("name", sorted(cases()))
def test_loss_matches_committed_value(name):
    assert name in EXPECTED, f"{name} has no committed value: run tests/fixtures/loss_cases.py --write on purpose"
    assert cases()[name]().item() == pytest.approx(EXPECTED[name], rel=1e-9, abs=1e-12)


def test_fixture_has_no_stale_entries():
    assert set(EXPECTED) == set(cases())


# ---------------------------------------------------------------------------
# hand-worked values

def test_lskd_hand_worked_and_invariant_to_shift_and_scale():
    z_s, z_t = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    # z-scores (unbiased std 1/sqrt(3)) differ by sqrt(3)/2 between classes 0 and 1 after dividing by T = 2
    d = math.sqrt(3) / 2
    want = 4 * d * (math.exp(d) - 1) / (math.exp(d) + 2)
    assert losses.logit_standardized_kd_loss(z_s, z_t, 2.0).item() == pytest.approx(want, rel=1e-5)
    torch.manual_seed(0)
    a, b = torch.randn(8, 10), torch.randn(8, 10)
    base = losses.logit_standardized_kd_loss(a, b, 2.0).item()
    assert losses.logit_standardized_kd_loss(3 * a + 7, 0.5 * b - 2, 2.0).item() == pytest.approx(base, rel=1e-4)
    assert losses.logit_standardized_kd_loss(a, a.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dkd_hand_worked():
    z_s, z_t = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[3.0, 0.0, 1.0]])
    p_s = torch.softmax(z_s, 1)[0].tolist()
    p_t = torch.softmax(z_t, 1)[0].tolist()
    b_s, b_t = [p_s[0], 1 - p_s[0]], [p_t[0], 1 - p_t[0]]
    tckd = sum(t * math.log(t / s) for t, s in zip(b_t, b_s))
    q_s = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]  # non-target logits (1, 0)
    q_t = q_s[::-1]  # non-target logits (0, 1)
    nckd = sum(t * math.log(t / s) for t, s in zip(q_t, q_s))
    got = losses.dkd_loss(z_s, z_t, torch.tensor([0]), 1.0, 8.0, 1.0).item()
    assert got == pytest.approx(tckd + 8 * nckd, rel=1e-5)
    assert losses.dkd_loss(z_s, z_s.clone(), torch.tensor([0]), 1.0, 8.0, 4.0).item() == pytest.approx(0, abs=1e-6)
    assert losses.dkd_loss(z_s, z_t, torch.tensor([-1]), 1.0, 8.0, 4.0).item() == 0.0  # no label: no target class


def test_dist_hand_worked_reversed_probabilities():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]])
    # each column pair of two samples correlates -1, +1, -1: intra = 1 - (-1/3) = 4/3
    y_s = torch.softmax(z, 1)

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a @ b / (a.norm() * b.norm())).item()

    inter = 1 - sum(pearson(y_s[i], y_s[i].flip(0)) for i in range(2)) / 2
    assert losses.dist_loss(z, z.flip(1)).item() == pytest.approx(inter + 4 / 3, rel=1e-5)
    assert losses.dist_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_fitnet_with_an_identity_adapter_is_the_mse():
    s, t = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    adapter = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        adapter.weight.copy_(torch.eye(2))
    assert losses.fitnet_loss(s, t, adapter).item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match="must match"):
        losses.fitnet_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_at_hand_worked_and_pools_the_larger_map():
    s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]])
    assert losses.at_loss(s, t).item() == pytest.approx(0.5)  # maps [1,0,0,0] and [0,0,0,1]
    big = torch.rand(2, 3, 8, 8)
    small = torch.nn.functional.adaptive_avg_pool2d(big, 4)
    assert losses.at_loss(big, small.repeat(1, 5, 1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_pkt_hand_worked():
    e_s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    want = (0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))) / 2
    assert losses.pkt_loss(e_s, e_t).item() == pytest.approx(want, rel=1e-4)


def test_rkd_distance_term_hand_worked_and_scale_invariant():
    e_s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    e_t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    d_s = torch.tensor([1.0, 1.0, math.sqrt(2)])
    d_t = torch.tensor([1.0, 2.0, math.sqrt(5)])
    diff = d_s / d_s.mean() - d_t / d_t.mean()  # all below 1: smooth L1 = d^2 / 2
    want = 2 * (0.5 * diff.pow(2)).sum().item() / 9  # each pair twice in the 3x3 matrix
    assert losses.rkd_loss(e_s, e_t, 1.0, 0.0).item() == pytest.approx(want, rel=1e-5)
    torch.manual_seed(1)
    a, b = torch.randn(6, 5), torch.randn(6, 3)
    assert losses.rkd_loss(4 * a, b).item() == pytest.approx(losses.rkd_loss(a, 0.1 * b).item(), rel=1e-4)


def test_sp_hand_worked():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    want = (2 * (r - 1) ** 2 + 2 * r ** 2) / 4
    assert losses.sp_loss(s, t).item() == pytest.approx(want, rel=1e-6)


def test_crd_nce_hand_worked():
    scores = torch.tensor([[0.5, 0.01, 0.03]])
    want = -(math.log(0.5 / 0.52) + math.log(0.02 / 0.03) + math.log(0.02 / 0.05))
    assert losses.crd_nce_loss(scores, 100).item() == pytest.approx(want, rel=1e-5)


GRAD_CASES = {
    "kd": lambda s, t: losses.kd_loss(s, t, 4.0),
    "lskd": lambda s, t: losses.logit_standardized_kd_loss(s, t, 2.0),
    "dkd": lambda s, t: losses.dkd_loss(s, t, torch.tensor([0, 1, 2, 0]), 1.0, 8.0, 4.0),
    "dist": lambda s, t: losses.dist_loss(s, t),
    "fitnet": lambda s, t: losses.fitnet_loss(s, t),
    "pkt": lambda s, t: losses.pkt_loss(s, t),
    "rkd": lambda s, t: losses.rkd_loss(s, t),
    "sp": lambda s, t: losses.sp_loss(s, t),
    "at": lambda s, t: losses.at_loss(s.view(4, 1, 1, 3), t.view(4, 1, 1, 3)),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_gradient_reaches_the_student_only(name):
    torch.manual_seed(3)
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    GRAD_CASES[name](s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


@pytest.mark.parametrize("name", ["lskd", "dkd", "dist", "fitnet", "pkt", "rkd", "sp", "at"])
def test_loss_is_zero_when_the_student_equals_the_teacher(name):
    torch.manual_seed(4)
    s = torch.randn(4, 3)
    assert GRAD_CASES[name](s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------
# hooks

class UserNet(nn.Module):
    """A model KD Workbench has never seen."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(self.encoder(x).mean((2, 3)))


def test_hooks_capture_any_submodule_of_a_user_model_by_path():
    net = UserNet()
    x = torch.randn(2, 1, 8, 8)
    hooks = FeatureHooks(net, ["encoder.0", "encoder", "head:in"]).add()
    net(x)
    feats = hooks.pop()
    assert feats["encoder.0"].shape == (2, 4, 8, 8) and feats["encoder"].shape == (2, 6, 8, 8)
    assert feats["head:in"].shape == (2, 6)
    with pytest.raises(RuntimeError, match="run a forward pass"):
        hooks.pop()
    hooks.remove()
    net(x)
    assert hooks._store == {} and all(not m._forward_hooks for m in net.modules())
    assert feature_shapes(net, ["encoder"], (1, 8, 8)) == {"encoder": (6, 8, 8)}


def test_hooks_name_an_unknown_module_clearly():
    with pytest.raises(ValueError, match="no submodule 'layer9'"):
        FeatureHooks(UserNet(), ["layer9"])


def test_zoo_models_name_their_stages_and_embedding():
    from workbench.models.zoo import build_model

    m = build_model(ModelConfig("resnet", depth=8), (1, 8, 8), 10)
    with FeatureHooks(m, ["stage1", "stage3", "embedding"]) as hooks:
        m(torch.randn(2, 1, 8, 8))
        f = hooks.pop()
    assert f["stage1"].shape[1] == 16 and f["stage3"].shape[1] == 64 and f["embedding"].shape == (2, 64)


# ---------------------------------------------------------------------------
# methods and strategies, by short real runs on digits

CNN = ModelConfig("cnn", depth=1, width=8)
BASE = dict(kind="kd", dataset="digits", model=CNN, teacher="digits-cnn", epochs=4, batch_size=64, profile=False)


# the hyperparameters that switch each method's distillation off; a method missing here fails the test below
ZERO_DISTILLATION = {"kd": {"alpha": 0.0}, "lskd": {"kd_weight": 0.0}, "dkd": {"alpha": 0.0, "beta": 0.0},
                     "dist": {"beta": 0.0, "gamma": 0.0}, "fitnet": {"beta": 0.0}, "at": {"beta": 0.0},
                     "pkt": {"beta": 0.0}, "rkd": {"beta": 0.0}, "sp": {"beta": 0.0}, "crd": {"beta": 0.0},
                     "dml": {"mutual_weight": 0.0}}


@pytest.mark.parametrize("name", [m for m in METHODS if m != "ce" and not METHODS[m].needs_transformer_layers
                                  and not METHODS[m].only_tokens])  # those two: tests/integration/test_text, test_lm
def test_every_method_trains_and_its_distillation_term_matters(store, name):
    """Beats chance on digits, logs a non-zero distillation term, and differs measurably from the same run with
    that term's weight at zero (same seed): a method whose distillation term silently dropped out would fail."""
    assert name in ZERO_DISTILLATION, f"say which hyperparameters switch {name}'s distillation off"
    cfg = TrainConfig(**{**BASE, "method": name, "teacher": None if name == "dml" else "digits-cnn"})
    run = run_in_process(store, cfg)
    sm = run.summary
    assert sm["test"]["accuracy"] > 0.5, sm["test"]["accuracy"]  # chance is 0.1
    assert sm["method"]["name"] == name and sm["method"]["objective"].startswith("L = ")
    rows = run.metrics()
    distill = [k for k in rows[0] if k.startswith("loss_") and k != "loss_ce"]
    assert distill and all(abs(r[k]) > 1e-6 for r in rows for k in distill), rows
    # learnable parts of a method (adapters, heads, peers) never reach the exported student
    loaded = run.load_model("best")
    assert set(loaded.state_dict()) == set(run.load_model("last").state_dict())
    assert not any(k.startswith(("adapter", "embed", "peers", "memory")) for k in loaded.state_dict())

    off_rows = []
    off = train(cfg.with_params(**ZERO_DISTILLATION[name]), store=store,
                callbacks=[lambda e: off_rows.append(e) if e["event"] == "epoch" else None])
    assert all(r[k] == 0.0 for r in off_rows for k in distill)
    real, switched_off = loaded.state_dict(), off["_model"].state_dict()  # both: the best-validation weights
    gap = max((real[k].float() - switched_off[k].float()).abs().max().item() for k in real
              if real[k].is_floating_point())
    assert gap > 1e-3, f"{name} trains the same with its distillation weight at zero (max parameter gap {gap})"
    assert abs(rows[-1]["val_loss"] - off_rows[-1]["val_loss"]) > 1e-4


def test_method_hyperparameters_are_validated_and_parsed():
    assert parse_params(["beta=100", "stage=stage3", "peers=3"]) == {"beta": 100, "stage": "stage3", "peers": 3}
    with pytest.raises(ValueError, match="has no hyperparameters"):
        TrainConfig(**{**BASE, "method": "fitnet", "method_params": {"gamma": 1.0}})
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(**{**BASE, "method": "magic"})
    assert build_method("rkd", {"angle_weight": 0}).p["angle_weight"] == 0.0
    for bad, message in [({"peers": 2.5}, "whole number"), ({"temperature": float("nan")}, "finite"),
                         ({"peers": "two"}, "must be a number"), ({"peers": 1}, "at least 2 peers")]:
        with pytest.raises(ValueError, match=message):
            build_method("dml", bad)


def test_attention_transfer_on_an_mlp_student_says_why_not(store):
    from workbench.train.loop import check_setup

    with pytest.raises(ValueError, match="needs convolutional stages"):
        check_setup(TrainConfig(**{**BASE, "method": "at", "model": ModelConfig("mlp", depth=1, width=8)}), store)


def test_multi_teacher_averages_softened_distributions(store):
    from workbench.train.teachers import load_teacher

    a = load_teacher("digits-cnn", store)
    ens = load_teacher("digits-cnn,digits-cnn", store, temperature=4.0, weights=(1.0, 3.0))
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        p_single = torch.softmax(a.model(x) / 4.0, 1)
        p_ens = torch.softmax(ens.model(x) / 4.0, 1)
    assert torch.allclose(p_single, p_ens, atol=1e-6)  # a mixture of one distribution with itself
    run = run_in_process(store, TrainConfig(**{**BASE, "teacher": "digits-cnn,digits-cnn", "teacher_weights": (1, 3)}))
    assert run.summary["test"]["accuracy"] > 0.5
    assert run.summary["teacher"]["label"].startswith("ensemble(")


def test_born_again_generations_chain_through_their_predecessors(store):
    base = TrainConfig(**{**BASE, "epochs": 3})
    chain = born_again_chain(base, 2, teacher_model_config("digits-cnn", store), "ban-test")
    assert chain[1][1].teacher == chain[0][0] and chain[0][1].model == ModelConfig("cnn", depth=2, width=32)
    runs = [run_in_process(store, cfg, run_id=rid) for rid, cfg in chain]
    assert all(r.summary["test"]["accuracy"] > 0.5 for r in runs)
    assert runs[1].summary["teacher"]["source"] == "run"


def test_teacher_assistant_chain_runs_teacher_assistant_student(store):
    base = TrainConfig(**{**BASE, "model": ModelConfig("mlp", depth=1, width=32), "epochs": 6})
    chain = takd_chain(base, ModelConfig("cnn", depth=1, width=16), "takd-test")
    runs = [run_in_process(store, cfg, run_id=rid) for rid, cfg in chain]
    assert runs[1].config["teacher"] == runs[0].run_id
    assert all(r.summary["test"]["accuracy"] > 0.5 for r in runs)
    from workbench.analysis.compare import comparison_rows

    rows = comparison_rows(runs)  # the assistant is listed once, as a KD run, not again as a teacher
    assert [r["role"] for r in rows].count("teacher") == 1 and len(rows) == 3
    assert rows[0]["run_id"] == base.teacher


def test_dml_needs_no_teacher_and_trains_its_peers(store):
    cfg = TrainConfig(**{**BASE, "method": "dml", "teacher": None, "method_params": {"peers": 3}})
    run = run_in_process(store, cfg)
    assert run.summary["test"]["accuracy"] > 0.5 and "teacher" not in run.summary


def test_crd_scores_by_matmul_equal_the_gathered_rows():
    from workbench.core.methods import CRD

    torch.manual_seed(0)
    bank, v = torch.randn(50, 8), torch.randn(4, 8)
    idx = torch.randint(0, 50, (4, 6))
    want = torch.bmm(bank[idx], v[:, :, None]).squeeze(2)
    assert torch.allclose(CRD._scores(bank, v, idx), want, atol=1e-5)


@pytest.mark.parametrize("name, reference", [
    ("kd", lambda s, t, y: losses.distillation_objective(s, t, y, 4.0, 0.9)),
    ("lskd", lambda s, t, y: 0.1 * losses.masked_cross_entropy(s, y) + 9.0 * losses.logit_standardized_kd_loss(s, t, 2.0)),
    ("dkd", lambda s, t, y: losses.masked_cross_entropy(s, y) + losses.dkd_loss(s, t, y, 1.0, 8.0, 4.0)),
    ("dist", lambda s, t, y: losses.masked_cross_entropy(s, y) + losses.dist_loss(s, t)),
])
def test_logit_methods_on_their_teacher_targets_equal_the_pure_losses(name, reference):
    """A method fed `teacher_target(z_t)` (what the cache holds) gives the loss functions' value and gradient."""
    from workbench.core.methods import StepContext

    torch.manual_seed(5)
    z_s, z_t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    y = torch.tensor([0, 3, -1, 9, 2, -1])
    m = build_method(name)
    ctx = StepContext(inputs=torch.zeros(6, 1), targets=y, idx=torch.arange(6), s_logits=z_s, t_target=m.teacher_target(z_t),
                      progress=1.0)
    got = m.loss(ctx)
    (g_got,) = torch.autograd.grad(got, z_s)
    want = reference(z_s, z_t, y)
    (g_want,) = torch.autograd.grad(want, z_s)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(g_got, g_want, atol=1e-6)
