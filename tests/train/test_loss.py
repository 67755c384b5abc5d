"""The GRPO loss pieces against numbers worked out by hand (arithmetic in the comments)."""

import math

import pytest
import torch

from tirgrpo.config import GRPOConfig
from tirgrpo.train.loss import aggregate, clipped_surrogate, group_advantages, grpo_loss, importance_ratio, kl_k3

E03 = math.exp(0.3)  # 1.3498588...


# --------------------------------------------------------------------------- group_advantages


def test_group_advantages_mean_only():
    # group 1: [1, 0, 0, 1], mean 0.5 -> [0.5, -0.5, -0.5, 0.5]
    # group 2: [2, 2, 2, 2], no spread -> [0, 0, 0, 0], counted
    adv, zero = group_advantages(torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2]), group_size=4, scale_by_std=False)
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert zero == 1


def test_group_advantages_scaled_by_unbiased_std():
    # group 1: deviations +-0.5, unbiased var = 4 * 0.25 / (4 - 1) = 1/3, std = 0.5773503
    #   adv = +-0.5 / (0.5773503 + 1e-4) = +-0.8658754
    # group 2: [3, 1, 2, 2]: mean 2, deviations [1, -1, 0, 0], var = 2 / 3, std = 0.8164966
    #   adv = [1, -1, 0, 0] / 0.8165966 = [1.2245949, -1.2245949, 0, 0]
    adv, zero = group_advantages(torch.tensor([1.0, 0, 0, 1, 3, 1, 2, 2]), group_size=4, scale_by_std=True)
    expected = [0.8658754, -0.8658754, -0.8658754, 0.8658754, 1.2245949, -1.2245949, 0.0, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-6, rtol=0)
    assert zero == 0


def test_group_advantages_leave_out_excluded_completions():
    # group 1: [1, 0, -1(out), 0] -> included [1, 0, 0], mean 1/3 -> [2/3, -1/3, 0, -1/3]
    # group 2: [-1(out), -1(out), 0, 0]: the included rewards are equal -> zeros, counted
    # group 3: [1(out), 0, (out), (out)]: one included -> zeros, counted
    r = torch.tensor([1.0, 0, -1, 0, -1, -1, 0, 0, 1, 0, 1, 1])
    include = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    adv, zero = group_advantages(r, group_size=4, scale_by_std=False, include=include)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, 0, -1 / 3] + [0.0] * 8), atol=1e-6, rtol=0)
    assert zero == 2
    # scaled: included deviations [2/3, -1/3, -1/3], unbiased var = (4/9 + 1/9 + 1/9) / 2 = 1/3,
    # std 0.5773503, + eps 1e-4 = 0.5774503: adv = [1.1545006, -0.5772503, 0, -0.5772503]
    adv, _ = group_advantages(r[:4], group_size=4, scale_by_std=True, include=include[:4])
    torch.testing.assert_close(adv, torch.tensor([1.1545006, -0.5772503, 0.0, -0.5772503]), atol=1e-6, rtol=0)
    # all included == no mask
    full, _ = group_advantages(r, 4, True)
    same, _ = group_advantages(r, 4, True, include=torch.ones(12, dtype=torch.bool))
    assert torch.equal(full, same)


def test_group_advantages_flat_group_is_exactly_zero_and_counted():
    # in float32, mean(0.9, 0.9, 0.9) = 0.9 - 6e-8: a plain r - mean would leave 6e-8, and
    # std scaling (6e-8 / (7e-8 + 1e-4)) would turn it into 6e-4; flat groups must be 0.
    r = torch.tensor([0.9, 0.9, 0.9, 0.7, 0.7, 0.7, 0.0, 1.0, 0.5])
    for scale in (False, True):
        adv, zero = group_advantages(r, group_size=3, scale_by_std=scale)
        assert adv[:6].tolist() == [0.0] * 6
        assert zero == 2
        # third group [0, 1, 0.5]: mean 0.5, deviations [-0.5, 0.5, 0]; std (unbiased) = 0.5
        expected = [-0.5, 0.5, 0.0] if not scale else [-0.5 / 0.5001, 0.5 / 0.5001, 0.0]
        torch.testing.assert_close(adv[6:], torch.tensor(expected), atol=1e-6, rtol=0)


def test_group_advantages_group_of_one_and_bad_shapes():
    # G = 1: every group is flat (no one to compare with) -> all zeros, N groups counted
    adv, zero = group_advantages(torch.tensor([3.0, -1.0]), group_size=1, scale_by_std=True)
    assert adv.tolist() == [0.0, 0.0] and zero == 2
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), group_size=4, scale_by_std=False)


# --------------------------------------------------------------------------- ratio, surrogate, kl


def test_importance_ratio_values_and_old_is_constant():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.3, -2.0]], requires_grad=True)
    r = importance_ratio(logp, old)
    # exp(-1 - -1.3) = exp(0.3); exp(0) = 1
    torch.testing.assert_close(r, torch.tensor([[E03, 1.0]]))
    r.sum().backward()
    # d exp(logp - old) / d logp = r; old gets nothing (it is a recorded constant)
    torch.testing.assert_close(logp.grad, torch.tensor([[E03, 1.0]]))
    assert old.grad is None


def test_clipped_surrogate_by_hand():
    # eps_low 0.2 -> lower bound 0.8; eps_high 0.28 -> upper bound 1.28
    ratio = torch.tensor([[E03, 1.0, 0.7], [E03, 1.0, 0.7]], requires_grad=True)
    adv = torch.tensor([1.0, -2.0])
    loss, low, high = clipped_surrogate(ratio, adv, 0.2, 0.28)
    # row 0, A = +1:
    #   r = 1.3499: min(1.3499 * 1, 1.28 * 1) = 1.28 -> loss -1.28, high-clipped
    #   r = 1.0   : -1.0
    #   r = 0.7   : min(0.7, 0.8) = 0.7 -> -0.7 (below 0.8 but A > 0: not clipped)
    # row 1, A = -2:
    #   r = 1.3499: min(-2.6997, 1.28 * -2 = -2.56) = -2.6997 -> loss 2.6997, not clipped
    #   r = 1.0   : 2.0
    #   r = 0.7   : min(-1.4, 0.8 * -2 = -1.6) = -1.6 -> loss 1.6, low-clipped
    expected = torch.tensor([[-1.28, -1.0, -0.7], [2 * E03, 2.0, 1.6]])
    torch.testing.assert_close(loss, expected)
    assert high.tolist() == [[True, False, False], [False, False, False]]
    assert low.tolist() == [[False, False, False], [False, False, True]]
    # clipped tokens give no gradient; the others d loss / d r = -A
    loss.sum().backward()
    torch.testing.assert_close(ratio.grad, torch.tensor([[0.0, -1.0, -1.0], [2.0, 2.0, 0.0]]))


def test_kl_k3_by_hand():
    logp = torch.tensor([[-1.0, -1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -0.5, -2.0]])
    # d = ref - logp = [-0.5, 0.5, 0]
    # k3 = exp(d) - d - 1 = [0.6065307 + 0.5 - 1, 1.6487213 - 0.5 - 1, 0] = [0.1065307, 0.1487213, 0]
    k = kl_k3(logp, ref)
    torch.testing.assert_close(k, torch.tensor([[0.1065307, 0.1487213, 0.0]]))
    # d k3 / d logp = 1 - exp(d) = [0.3934693, -0.6487213, 0]: pulls logp toward ref
    k.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.3934693, -0.6487213, 0.0]]))


# --------------------------------------------------------------------------- aggregate

# sequence 0 has 4 tokens, sequence 1 has 2; the 100s are padding and must not count
PER_TOKEN = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 100.0, 100.0]]
MASK = [[1, 1, 1, 1], [1, 1, 0, 0]]


@pytest.mark.parametrize(
    "loss_type, value, token_weights",
    [
        # grpo: seq means 10/4 = 2.5 and 11/2 = 5.5, batch mean 4.0;
        #   a token weighs 1/(|o_i| * B): 1/8 in the long sequence, 1/4 in the short one
        ("grpo", 4.0, [[1 / 8] * 4, [1 / 4, 1 / 4, 0, 0]]),
        # dr_grpo: (10 + 11) / (B * max_completion_tokens) = 21 / (2 * 8) = 1.3125; every token 1/16
        ("dr_grpo", 1.3125, [[1 / 16] * 4, [1 / 16, 1 / 16, 0, 0]]),
        # dapo: 21 / 6 real tokens = 3.5; every token 1/6
        ("dapo", 3.5, [[1 / 6] * 4, [1 / 6, 1 / 6, 0, 0]]),
    ],
)
def test_aggregate_by_hand(loss_type, value, token_weights):
    per_token = torch.tensor(PER_TOKEN, requires_grad=True)
    out = aggregate(per_token, torch.tensor(MASK), loss_type, max_completion_tokens=8)
    assert out.item() == pytest.approx(value)
    # the gradient is each token's weight in the batch loss: this is where the biases live
    out.backward()
    torch.testing.assert_close(per_token.grad, torch.tensor(token_weights))


def test_aggregate_rejects_unknown_type():
    with pytest.raises(ValueError, match="loss_type"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "mean", 1)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batch_losses_sum_to_full_batch(loss_type):
    g = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 5, generator=g)
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()
    full = aggregate(per_token, mask, loss_type, max_completion_tokens=5)
    n_seq, n_tok = 6, mask.sum()
    parts = [(0, 2), (2, 5), (5, 6)]
    summed = sum(
        aggregate(per_token[a:b], mask[a:b], loss_type, 5, num_sequences=n_seq, num_tokens=n_tok) for a, b in parts
    )
    torch.testing.assert_close(summed, full, atol=1e-6, rtol=0)
    # without the whole-batch normaliser the micro-batch means do NOT add up (the test has teeth)
    naive = sum(aggregate(per_token[a:b], mask[a:b], loss_type, 5) for a, b in parts)
    assert abs(naive.item() - full.item()) > 1e-3


# --------------------------------------------------------------------------- grpo_loss


def test_grpo_loss_by_hand():
    cfg = GRPOConfig(beta=0.1, epsilon=0.2, epsilon_high=0.28, loss_type="dapo")
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    old = torch.tensor([[-1.3, -2.0], [-0.5, -3.0]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -3.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = grpo_loss(logp, old, ref, adv, mask, cfg, max_completion_tokens=2)
    # (0,0): r = e^0.3 > 1.28 with A = +1 -> pg = -1.28 (high-clipped); kl: d = -0.5 -> 0.1065307
    #        total -1.28 + 0.1 * 0.1065307 = -1.2693469
    # (0,1): r = 1, A = +1 -> -1; kl 0
    # (1,0): r = 1, A = -1 -> +1; kl 0
    # (1,1): padding
    # dapo: (-1.2693469 - 1 + 1) / 3 = -0.4231156
    assert loss.item() == pytest.approx(-0.4231156, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(0.1065307 / 3, abs=1e-6)
    assert stats["clip_high"].item() == pytest.approx(1 / 3)
    assert stats["clip_low"].item() == 0.0
    assert stats["clip_region"].item() == pytest.approx(1 / 3)
    assert stats["ratio_mean"].item() == pytest.approx((E03 + 2) / 3, abs=1e-6)
    assert stats["ratio_max"].item() == pytest.approx(E03, abs=1e-6)
    assert stats["ratio_min"].item() == pytest.approx(1.0)
    assert stats["num_tokens"].item() == 3
    # gradient: (0,0) is clipped, only the KL acts: 0.1 * (1 - e^-0.5) / 3 = 0.0131156
    # (0,1): d(-r A)/dlogp = -r A = -1, / 3; (1,0): +1 / 3; (1,1) padding: 0
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0131156, -1 / 3], [1 / 3, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_loss_gradient_sign(loss_type):
    # on-policy, no KL: a positive-advantage token's logp gets a negative gradient (so a
    # descent step raises it) and raising it lowers the loss; the opposite for A < 0
    cfg = GRPOConfig(beta=0.0, loss_type=loss_type)
    logp = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    loss, _ = grpo_loss(logp, None, None, adv, mask, cfg, max_completion_tokens=2)
    loss.backward()
    assert (logp.grad[0] < 0).all() and (logp.grad[1] > 0).all()
    old = logp.detach().clone()
    bumped = old.clone()
    bumped[0, 0] += 0.05  # make the positive-advantage token more likely
    loss_bumped, _ = grpo_loss(bumped, old, None, adv, mask, cfg, max_completion_tokens=2)
    loss_same, _ = grpo_loss(old, old, None, adv, mask, cfg, max_completion_tokens=2)
    assert loss_bumped.item() < loss_same.item()


def test_grpo_loss_micro_batches_give_full_batch_gradient():
    cfg = GRPOConfig(beta=0.05, loss_type="dapo")
    g = torch.Generator().manual_seed(1)
    logp0 = -torch.rand(4, 6, generator=g) * 3
    old = logp0 + 0.2 * torch.randn(4, 6, generator=g)
    ref = logp0 + 0.2 * torch.randn(4, 6, generator=g)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    mask = (torch.arange(6)[None, :] < torch.tensor([6, 2, 4, 5])[:, None]).float()
    for lt in ("grpo", "dr_grpo", "dapo"):
        cfg.loss_type = lt
        full = logp0.clone().requires_grad_(True)
        loss, _ = grpo_loss(full, old, ref, adv, mask, cfg, 6)
        loss.backward()
        acc = logp0.clone().requires_grad_(True)
        total = 0.0
        for a, b in [(0, 1), (1, 4)]:
            part, _ = grpo_loss(acc[a:b], old[a:b], ref[a:b], adv[a:b], mask[a:b], cfg, 6, 4, mask.sum())
            part.backward()
            total += part.item()
        assert total == pytest.approx(loss.item(), abs=1e-6)
        torch.testing.assert_close(acc.grad, full.grad, atol=1e-7, rtol=0)


def test_grpo_loss_kl_requires_ref_and_beta_zero_only_logs_it():
    logp = torch.tensor([[-1.0]])
    ref = torch.tensor([[-1.5]])
    adv, mask = torch.tensor([1.0]), torch.ones(1, 1)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, None, None, adv, mask, GRPOConfig(beta=0.1), 1)
    loss_ref, stats = grpo_loss(logp, None, ref, adv, mask, GRPOConfig(beta=0.0), 1)
    loss_none, _ = grpo_loss(logp, None, None, adv, mask, GRPOConfig(beta=0.0), 1)
    assert loss_ref.item() == loss_none.item() == -1.0  # -(r=1 * A=1)
    assert stats["kl"].item() == pytest.approx(0.1065307, abs=1e-6)


def test_grpo_loss_decision_credit_by_hand():
    # on-policy (ratio 1): pg per token = -A. Sequence 0 (A = +1, 3 tokens) credits its last
    # 2 tokens, sequence 1 (A = -1, 2 tokens) all of its tokens (an invalid completion).
    # pg: seq 0 mean over credited = -1, seq 1 mean = +1 -> (-1 + 1) / 2 = 0
    # KL (beta 0.1, dapo over all 5 tokens): only (0,0) differs, d = ref - logp = -0.5,
    #   k3 = e^-0.5 + 0.5 - 1 = 0.1065307 -> 0.1 * 0.1065307 / 5 = 0.0021306
    cfg = GRPOConfig(beta=0.1, loss_type="dapo", credit="decision")
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.5, -3.0, 0.0]], requires_grad=True)
    ref = logp.detach().clone()
    ref[0, 0] = -1.5
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    credit = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    loss, _ = grpo_loss(logp, None, ref, adv, mask, cfg, max_completion_tokens=3, credit=credit)
    assert loss.item() == pytest.approx(0.0021306, abs=1e-6)
    loss.backward()
    # d/dlogp: seq 0 credited tokens -A / (2 tokens * 2 sequences) = -0.25; seq 1 +1 / (2 * 2) = 0.25
    # (0,0) uncredited: only the KL, 0.1 * (1 - e^-0.5) / 5 = 0.0078694; (1,2) padding: 0
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0078694, -0.25, -0.25], [0.25, 0.25, 0.0]]),
                               atol=1e-6, rtol=0)


def test_grpo_loss_all_credit_equals_plain_grpo_sequence_mean():
    # crediting every token is the `grpo` (sequence-mean) loss
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(3, 4, generator=g)
    old = logp + 0.1 * torch.randn(3, 4, generator=g)
    adv = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    plain, _ = grpo_loss(logp, old, None, adv, mask, GRPOConfig(beta=0.0, loss_type="grpo"), 4)
    credited, _ = grpo_loss(logp, old, None, adv, mask, GRPOConfig(beta=0.0, loss_type="dapo", credit="decision"),
                            4, credit=torch.ones(3, 4))
    assert credited.item() == pytest.approx(plain.item(), abs=1e-7)
