"""`grpo_update`, the one place an update happens, on hand-made micro-batches of both kinds:
padded rows and packed groups (shared prefix) give the same loss, gradient norm, statistics
and parameters after the step."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.config import GRPOConfig
from tirgrpo.train.optim import AdamW
from tirgrpo.train.prefix import PackedGroup, use_prefix_attention
from tirgrpo.train.step import (GRPOObjective, PaddedRows, build_micro_batches, credit_layout, grpo_update,
                                micro_batch_logprobs, reference_logprobs, rollout_objective)

GROUP = 3
PAD = 0


def hand_made_rollout():
    """Two groups of three completions: prompts of 7 and 5 tokens, completions of 1 to 6
    tokens (so rows are padded), advantages of both signs and one group at zero."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 250, (n,), generator=g).tolist() for n in (7, 5)]
    lengths = [4, 1, 6, 3, 5, 2]
    completions = [torch.randint(1, 250, (n,), generator=g).tolist() for n in lengths]
    prompt_ids = [prompts[i // GROUP] for i in range(len(completions))]
    advantages = torch.tensor([0.9, -0.3, -0.6, 0.5, 0.0, -0.5])
    return prompt_ids, completions, advantages


def tiny_policy(model_dir, lora: bool, prefix: str):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if prefix in ("block", "split"):
        use_prefix_attention(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        for n, p in model.named_parameters():  # non-zero adapters, so LoRA changes the output from the start
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    return model


def perturbed_copy(model):
    """A frozen copy of `model` with seeded noise added: a reference that differs from the policy."""
    reference = copy.deepcopy(model).requires_grad_(False)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return reference


def two_updates(model_dir, lora: bool, prefix: str, budget: int):
    """Two updates of one rollout (the second off-policy: ratio != 1, clipping active), with a
    KL term to a reference (a perturbed frozen copy, or the LoRA base). Returns the two
    `UpdateResult`s, the trainable parameters after, and the micro-batches."""
    model = tiny_policy(model_dir, lora, prefix)
    reference = None if lora else perturbed_copy(model)
    prompt_ids, completions, advantages = hand_made_rollout()
    batches = build_micro_batches(prompt_ids, completions, GROUP, budget, prefix, PAD, "cpu")
    cfg = GRPOConfig(beta=0.1, epsilon=0.02, epsilon_high=0.03)  # narrow clip: the second update clips
    refs = [reference_logprobs(model, reference, b, 4, 1.0) for b in batches]
    objective = GRPOObjective(cfg, [advantages[b.rows] for b in batches], refs, max_completion_tokens=6,
                              num_sequences=len(completions), num_tokens=sum(map(len, completions)))
    optimizer = AdamW(model.parameters(), lr=1e-2)
    model.train()
    results = [grpo_update(model, optimizer, batches, objective, max_grad_norm=1.0, chunk_tokens=4)
               for _ in range(2)]
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return results, params, batches


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("prefix", ["dense", "split"])
def test_packed_groups_update_as_padded_rows(tiny_model_dir, lora, prefix):
    # budget 13: the 7-token prompt's group splits into parts that repeat the prompt
    rows, rows_params, row_batches = two_updates(tiny_model_dir, lora, "off", budget=40)
    packed, packed_params, packed_batches = two_updates(tiny_model_dir, lora, prefix, budget=13)
    assert all(isinstance(b.inputs, PaddedRows) for b in row_batches)
    assert all(isinstance(b.inputs, PackedGroup) and b.inputs.form == prefix for b in packed_batches)
    assert len(packed_batches) > 2  # a group split in parts
    assert sum(b.tokens for b in packed_batches) < sum(b.tokens for b in row_batches)
    assert all(r.applied for r in rows + packed)
    assert rows[1].stats["clip_low"] + rows[1].stats["clip_high"] > 0  # the second update clipped
    for a, b in zip(rows, packed):
        assert b.loss == pytest.approx(a.loss, abs=1e-6)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-4)
        assert b.num_tokens == a.num_tokens == 21
        assert b.stats.keys() == a.stats.keys()
        for key in ("kl", "clip_low", "clip_high", "clip_region", "ratio_mean", "entropy"):  # token means
            assert b.stats[key] == pytest.approx(a.stats[key], abs=1e-5), key
    # Adam divides by sqrt(v): where a gradient is ~0 rounding moves the update by up to ~lr,
    # so the weights are compared at a fraction of one step (lr 1e-2) and, tightly, on average.
    assert rows_params.keys() == packed_params.keys()
    for name in rows_params:
        diff = (rows_params[name] - packed_params[name]).abs()
        assert diff.max() < 2e-3 and diff.mean() < 1e-5, (name, diff.max(), diff.mean())


def test_credit_layout_puts_each_weight_on_its_token():
    # the last two tokens of each completion credited; in both layouts the log-prob of
    # completion token j of row r sits where the mask's j-th True of row r is
    prompt_ids, completions, _ = hand_made_rollout()
    weights = [[0.0] * max(0, len(c) - 2) + [1.0] * min(2, len(c)) for c in completions]
    for prefix, budget in (("off", 40), ("dense", 13)):
        for b in build_micro_batches(prompt_ids, completions, GROUP, budget, prefix, PAD, "cpu"):
            out = credit_layout(b.mask, [weights[r] for r in b.rows])
            for i, r in enumerate(b.rows):
                assert out[i][b.mask[i].bool()].tolist() == weights[r]
            assert out[~b.mask.bool()].abs().sum() == 0
    with pytest.raises(ValueError, match="credit weights"):
        credit_layout(torch.ones(1, 3, dtype=torch.bool), [[1.0, 1.0]])


def test_decision_credit_updates_packed_as_padded(tiny_model_dir):
    # the same rollout, credits on the last two tokens: one update in both layouts, same loss
    prompt_ids, completions, advantages = hand_made_rollout()
    weights = [[0.0] * max(0, len(c) - 2) + [1.0] * min(2, len(c)) for c in completions]
    cfg = GRPOConfig(beta=0.0, credit="decision")
    losses = []
    for prefix, budget in (("off", 40), ("dense", 13)):
        model = tiny_policy(tiny_model_dir, False, prefix)
        batches = build_micro_batches(prompt_ids, completions, GROUP, budget, prefix, PAD, "cpu")
        credits = [credit_layout(b.mask, [weights[r] for r in b.rows]) for b in batches]
        objective = GRPOObjective(cfg, [advantages[b.rows] for b in batches], [None] * len(batches), 6,
                                  len(completions), sum(map(len, completions)), credits)
        result = grpo_update(model, AdamW(model.parameters(), lr=1e-3), batches, objective, 1.0, 4)
        losses.append((result.loss, result.grad_norm))
    # on-policy, ratio 1: loss = mean over sequences of -A (each credited mean of -A is -A),
    # whichever tokens are credited; the gradient shows whether the right ones were
    assert losses[0][0] == pytest.approx(-float(advantages.mean()), abs=1e-6)
    assert losses[1][0] == pytest.approx(losses[0][0], abs=1e-6)
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-4)
    model = tiny_policy(tiny_model_dir, False, "off")
    batches = build_micro_batches(prompt_ids, completions, GROUP, 40, "off", PAD, "cpu")
    first_two = [[1.0] * min(2, len(c)) + [0.0] * max(0, len(c) - 2) for c in completions]  # other tokens
    objective = GRPOObjective(cfg, [advantages[b.rows] for b in batches], [None] * len(batches), 6, len(completions),
                              sum(map(len, completions)), [credit_layout(b.mask, [first_two[r] for r in b.rows])
                                                           for b in batches])
    other = grpo_update(model, AdamW(model.parameters(), lr=1e-3), batches, objective, 1.0, 4)
    assert other.loss == pytest.approx(losses[0][0], abs=1e-6) and abs(other.grad_norm - losses[0][1]) > 1e-4


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
@pytest.mark.parametrize("prefix", ["off", "dense"])
def test_left_out_completions_update_as_if_never_sampled(tiny_model_dir, loss_type, prefix):
    # completions 1 and 4 left out (`include`): the update equals the update of the rollout
    # without them -- same loss, same gradient, same weights after the step
    prompt_ids, completions, advantages = hand_made_rollout()
    include = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    cfg = GRPOConfig(beta=0.0, loss_type=loss_type)
    results, params = [], []
    for rows, inc in ((list(range(6)), include), ([0, 2, 3, 5], None)):
        model = tiny_policy(tiny_model_dir, False, prefix)
        p_ids, c_ids = [prompt_ids[r] for r in rows], [completions[r] for r in rows]
        group = GROUP if inc is not None else 1  # the reduced rollout's groups are no longer whole
        # the full rollout in several micro-batches (budget 13), the reduced one in one
        batches = build_micro_batches(p_ids, c_ids, group, 13 if inc is not None else 0,
                                      prefix if inc is not None else "off", PAD, "cpu")
        objective = rollout_objective(cfg, batches, [None] * len(batches), advantages[rows], c_ids, 6, include=inc)
        results.append(grpo_update(model, AdamW(model.parameters(), lr=1e-2), batches, objective, 1.0, 4))
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert results[0].num_tokens == results[1].num_tokens == 4 + 6 + 3 + 2
    assert results[0].loss == pytest.approx(results[1].loss, abs=1e-6)
    assert results[0].grad_norm == pytest.approx(results[1].grad_norm, rel=1e-4)
    assert results[0].stats["entropy"] == pytest.approx(results[1].stats["entropy"], rel=1e-5)
    for name in params[0]:
        assert (params[0][name] - params[1][name]).abs().max() < 2e-3, name


def test_nothing_kept_is_a_zero_loss_not_a_nan(tiny_model_dir):
    # every completion left out (all truncated): loss 0 and a finite, applied step
    prompt_ids, completions, advantages = hand_made_rollout()
    model = tiny_policy(tiny_model_dir, False, "off")
    batches = build_micro_batches(prompt_ids, completions, GROUP, 0, "off", PAD, "cpu")
    objective = rollout_objective(GRPOConfig(beta=0.0, loss_type="dapo"), batches, [None] * len(batches),
                                  torch.zeros(6), completions, 6, include=torch.zeros(6, dtype=torch.bool))
    result = grpo_update(model, AdamW(model.parameters(), lr=1e-2), batches, objective, 1.0, 4)
    assert result.applied and result.loss == 0.0 and result.grad_norm == 0.0 and result.num_tokens == 0


def test_grpo_update_on_padded_rows_by_hand(tiny_model_dir):
    """One micro-batch of two padded rows: the result's loss is the objective's, the gradient
    norm is clip_grad_norm's, and the parameters move by AdamW's first step (lr * sign)."""
    model = tiny_policy(tiny_model_dir, lora=False, prefix="off")
    batches = build_micro_batches([[5, 6, 7], [5, 6, 7]], [[8, 9], [10]], 2, 0, "off", PAD, "cpu")
    (mb,) = batches
    assert mb.inputs.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 10, PAD]]
    assert int(mb.mask.sum()) == 3

    def objective(i, micro, logp, entropy):  # mean negative log-likelihood of the completion tokens
        return -(logp * micro.mask).sum() / micro.mask.sum(), {}

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected_loss = float(objective(0, mb, *micro_batch_logprobs(model, mb, 4, 1.0, grad=False))[0])
    result = grpo_update(model, AdamW(model.parameters(), lr=1e-3), batches, objective, max_grad_norm=1e9,
                         chunk_tokens=4)
    assert result.applied and result.num_tokens == 3
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.grad_norm > 0 and "entropy" in result.stats
    moved = [(p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()]
    assert max(moved) == pytest.approx(1e-3, rel=1e-3)  # Adam's first step: lr * m / sqrt(v) = lr * sign(g)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # gradients zeroed after


def test_grpo_update_skips_a_non_finite_step(tiny_model_dir):
    model = tiny_policy(tiny_model_dir, lora=False, prefix="off")
    batches = build_micro_batches([[5, 6, 7]], [[8, 9]], 1, 0, "off", PAD, "cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def objective(i, micro, logp, entropy):
        return (logp * micro.mask).sum() * float("nan"), {}

    result = grpo_update(model, AdamW(model.parameters(), lr=1e-3), batches, objective, 1.0, 4)
    assert not result.applied
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
