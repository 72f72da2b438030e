"""Losses by value: hand-worked cases, the α and T conventions, and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.core.losses import distillation_objective, entropy, kd_loss, masked_cross_entropy, softmax_t


def test_kd_loss_zero_when_logits_equal():
    z = torch.randn(8, 10)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_hand_worked_value():
    # p_t = (1, e, 1)/(e+2), p_s = (e, 1, 1)/(e+2): KL = p_t2 - p_t1 = (e - 1)/(e + 2)
    z_s, z_t = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx((math.e - 1) / (math.e + 2), rel=1e-6)
    # at T = 4 the logits are divided by 4 (log-ratios 1/4), then T^2 = 16 multiplies the KL
    e = math.exp(0.25)
    assert kd_loss(z_s, z_t, 4.0).item() == pytest.approx(16 * 0.25 * (e - 1) / (e + 2), rel=1e-5)


def test_kd_loss_is_batchmean_not_elementwise_mean():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(5, 7), torch.randn(5, 7)
    p_t = torch.softmax(z_t, 1)
    by_hand = (p_t * (torch.log(p_t) - torch.log_softmax(z_s, 1))).sum(1).mean()  # sum classes, mean batch
    assert kd_loss(z_s, z_t, 1.0).item() == pytest.approx(by_hand.item(), rel=1e-5)
    elementwise = F.kl_div(torch.log_softmax(z_s, 1), p_t, reduction="sum") / p_t.numel()
    assert elementwise.item() == pytest.approx(by_hand.item() / 7, rel=1e-5)  # the known bug divides by K


def test_objective_alpha_zero_is_cross_entropy():
    torch.manual_seed(1)
    z_s, z_t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert distillation_objective(z_s, z_t, y, 3.0, 0.0).item() == pytest.approx(F.cross_entropy(z_s, y).item())
    assert distillation_objective(z_s, None, y, 3.0, 0.0).item() == pytest.approx(F.cross_entropy(z_s, y).item())


def test_objective_alpha_one_is_pure_kd():
    torch.manual_seed(2)
    z_s, z_t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert distillation_objective(z_s, z_t, y, 2.0, 1.0).item() == pytest.approx(kd_loss(z_s, z_t, 2.0).item())


def test_objective_mixes_with_alpha_on_kd_term():
    torch.manual_seed(3)
    z_s, z_t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    want = 0.7 * F.cross_entropy(z_s, y) + 0.3 * kd_loss(z_s, z_t, 5.0)
    assert distillation_objective(z_s, z_t, y, 5.0, 0.3).item() == pytest.approx(want.item(), rel=1e-6)


def test_kd_gradient_scale_is_independent_of_temperature_thanks_to_t_squared():
    # d(T^2 KL)/dz_s = T (p_s - p_t) / B  ->  (z_s - z_t) / (K B) as T grows: the T^2 keeps it O(1).
    torch.manual_seed(4)
    z_s, z_t = torch.randn(16, 10), torch.randn(16, 10)
    norms, norms_without = {}, {}
    for T in (1.0, 4.0, 20.0, 100.0):
        z = z_s.clone().requires_grad_(True)
        kd_loss(z, z_t, T).backward()
        norms[T] = z.grad.norm().item()
        # the same gradient without the T^2 factor shrinks like 1/T^2
        norms_without[T] = norms[T] / T ** 2
        # check the closed form of the gradient
        p_s, p_t = torch.softmax(z_s / T, 1), torch.softmax(z_t / T, 1)
        assert torch.allclose(z.grad, T * (p_s - p_t) / 16, atol=1e-6)
    limit = ((z_s - z_s.mean(1, keepdim=True)) - (z_t - z_t.mean(1, keepdim=True))).norm().item() / (10 * 16)
    assert norms[100.0] == pytest.approx(limit, rel=0.02)
    assert 0.3 < norms[20.0] / norms[4.0] < 3.0  # same order of magnitude with T^2
    assert norms_without[20.0] / norms_without[4.0] < 0.05  # ~(4/20)^2 = 0.04 times smaller without it


def test_kd_loss_gradient_reaches_student_only():
    z_s = torch.randn(4, 5, requires_grad=True)
    z_t = torch.randn(4, 5, requires_grad=True)
    kd_loss(z_s, z_t, 2.0).backward()
    assert z_s.grad is not None and z_s.grad.abs().sum() > 0
    assert z_t.grad is None  # the teacher's logits are detached


def test_masked_cross_entropy_ignores_hidden_labels_and_never_nan():
    z = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, -1, -1])
    assert masked_cross_entropy(z, y).item() == pytest.approx(F.cross_entropy(z[:1], y[:1]).item())
    assert masked_cross_entropy(z, torch.full((3,), -1)).item() == 0.0


def test_objective_with_label_budget_uses_kd_on_all_ce_on_labelled():
    torch.manual_seed(5)
    z_s, z_t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, -1, -1, 2, -1])
    keep = y >= 0
    want = 0.5 * F.cross_entropy(z_s[keep], y[keep]) + 0.5 * kd_loss(z_s, z_t, 2.0)
    assert distillation_objective(z_s, z_t, y, 2.0, 0.5).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("T", [0.0, -1.0])
def test_losses_reject_non_positive_temperature(T):
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, T)
    with pytest.raises(ValueError, match="temperature"):
        distillation_objective(z, z, torch.tensor([0, 1]), T, 0.5)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_objective_rejects_alpha_outside_unit_interval(alpha):
    z = torch.randn(2, 3)
    with pytest.raises(ValueError, match="alpha"):
        distillation_objective(z, z, torch.tensor([0, 1]), 2.0, alpha)


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="must match"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        kd_loss(torch.randn(3), torch.randn(3), 1.0)


def test_softmax_t_flattens_with_temperature_and_entropy_grows():
    z = torch.tensor([4.0, 1.0, 0.0])
    h = [entropy(softmax_t(z, T)).item() for T in (1, 2, 5, 20)]
    assert h == sorted(h)
    assert h[-1] < math.log(3) + 1e-9


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.9), (8.0, 1.0), (2.0, 0.0)])
def test_fused_objective_matches_the_reference_in_value_and_gradient(T, alpha):
    from workbench.core.losses import fused_distillation_objective

    torch.manual_seed(7)
    z_s = torch.randn(32, 10, dtype=torch.float64)
    z_t = 3 * torch.randn(32, 10, dtype=torch.float64)
    y = torch.randint(0, 10, (32,))
    y[::3] = -1  # some unlabelled samples
    a = z_s.clone().requires_grad_(True)
    ref = distillation_objective(a, z_t, y, T, alpha)
    ref.backward()
    b = z_s.clone().requires_grad_(True)
    fused = fused_distillation_objective(b, torch.log_softmax(z_t / T, 1), y, T, alpha)
    fused.backward()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: fused_distillation_objective(z, torch.log_softmax(z_t / T, 1), y, T,
                                                                           alpha), (z_s.clone().requires_grad_(True),))


# ---------------------------------------------------------------------------
# Transformer layers (text): TinyBERT's hidden-state MSE, MiniLM's relation KL, on the tokens that are not padding

def test_hidden_state_mse_hand_worked_with_a_projection_and_padding():
    from workbench.core.losses import hidden_state_mse

    s = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])  # (1, 3, 2); the last token is padding
    t = torch.tensor([[[2.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])  # (1, 3, 3)
    proj = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))  # W h = (2 h1, h2, 0)
    # token 1: (2, 2, 0) - (2, 0, 0) -> 4; token 2: (6, 4, 0) - (6, 0, 1) -> 16 + 1; mean over 2 tokens × 3 dims
    value = hidden_state_mse(s, t, torch.tensor([[1, 1, 0]]), proj)
    assert value.item() == pytest.approx((4 + 17) / 6)
    with pytest.raises(ValueError, match="must match the teacher's"):
        hidden_state_mse(s, t, torch.ones(1, 3))


def _relation_kl_by_loops(a_s, b_s, a_t, b_t, mask, heads):
    """The definition, one head and one query at a time, with padding keys left out of each softmax."""
    total, count = 0.0, 0
    for b in range(a_s.shape[0]):
        keep = [j for j in range(a_s.shape[1]) if mask[b, j]]
        for h in range(heads):
            def rel(a, bb):
                d = a.shape[-1] // heads
                x, y = a[b, :, h * d:(h + 1) * d], bb[b, :, h * d:(h + 1) * d]
                return [torch.softmax(torch.stack([x[i] @ y[j] / math.sqrt(d) for j in keep]), 0) for i in keep]
            for p_s, p_t in zip(rel(a_s, b_s), rel(a_t, b_t)):
                total += float((p_t * (p_t.log() - p_s.log())).sum())
                count += 1
    return total / count


def test_relation_kl_equals_its_definition_with_different_widths_and_padding():
    from workbench.core.losses import relation_kl

    torch.manual_seed(0)
    q_s, k_s = torch.randn(2, 5, 4), torch.randn(2, 5, 4)  # the student: width 4
    q_t, k_t = torch.randn(2, 5, 6), torch.randn(2, 5, 6)  # the teacher: width 6; both split into 2 heads
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    value = relation_kl(q_s, k_s, q_t, k_t, mask, 2).item()
    assert value == pytest.approx(_relation_kl_by_loops(q_s, k_s, q_t, k_t, mask, 2), rel=1e-5)
    assert value > 0 and relation_kl(q_t, k_t, q_t, k_t, mask, 2).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="does not split into 4 heads"):
        relation_kl(q_s, k_s, q_t, k_t, mask, 4)


def test_relation_kl_sends_no_gradient_to_padding_or_the_teacher():
    from workbench.core.losses import relation_kl

    torch.manual_seed(1)
    v_s = torch.randn(1, 4, 4, requires_grad=True)
    v_t = torch.randn(1, 4, 4, requires_grad=True)
    relation_kl(v_s, v_s, v_t, v_t, torch.tensor([[1, 1, 0, 0]]), 2).backward()
    assert torch.isfinite(v_s.grad).all() and v_s.grad[0, :2].abs().sum() > 0
    assert v_s.grad[0, 2:].abs().sum() == 0 and v_t.grad is None
