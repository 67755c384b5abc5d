"""The split-vocabulary Triton sampler (kernels/sampling.py) against `rollout.sampling.sample_next`.

On a CPU it runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on
CUDA compiled; without triton the tests are skipped.
"""

from __future__ import annotations

import math

import pytest
import torch

from tirgrpo.kernels.sampling import BLOCK_V, sample_fused
from tirgrpo.rollout.sampling import sample_next
from triton_devices import on_devices


def generator(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


@on_devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_argmax_with_unscaled_log_prob(device, dtype):
    # V over one block and not a multiple of it; the row's best token in its second block
    V = BLOCK_V + 1000
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    logits[1, BLOCK_V + 7] = 40.0
    logits[2, 0] = float("-inf")  # a forbidden token (the engine masks eos so)
    tokens, logp = sample_fused(logits, 0.0)
    ref_tokens, ref_logp = sample_next(logits, 0.0)
    assert tokens.tolist() == ref_tokens.tolist() and tokens[1].item() == BLOCK_V + 7
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)


@on_devices
def test_samples_follow_the_tempered_softmax_and_their_log_probs(device):
    """Hand-made distribution: logits log([0.5, 0.3, 0.2, 0]) at T = 1, and the same at T = 2
    (probabilities proportional to sqrt(p)). 4,000 rows: each empirical frequency within 4
    standard errors; every log-prob is log_softmax(logits / T) at the drawn token."""
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(4000, 4).contiguous().to(device)
    for T, expected in ((1.0, probs), (2.0, probs.sqrt() / probs.sqrt().sum())):
        tokens, logp = sample_fused(logits, T, generator=generator(device))
        freq = torch.bincount(tokens.cpu(), minlength=4).double() / len(tokens)
        se = (expected * (1 - expected) / len(tokens)).sqrt().double()
        assert (freq - expected.double()).abs().le(4 * se + 1e-12).all(), (T, freq, expected)
        assert freq[3] == 0  # probability 0 is never drawn
        assert torch.allclose(logp.cpu(), expected.log()[tokens.cpu()], atol=1e-5)


@on_devices
def test_samples_across_blocks(device):
    """The mass in three blocks of the vocabulary, at the same offset in each (tokens 5,
    BLOCK_V + 5, 2 BLOCK_V + 5; probabilities 0.5, 0.3, 0.2): the combine must pick the block by
    its Gumbel key (not by its largest logit), and each block draw its own noise."""
    V, tokens = 3 * BLOCK_V, torch.tensor([5, BLOCK_V + 5, 2 * BLOCK_V + 5])
    expected = torch.tensor([0.5, 0.3, 0.2])
    logits = torch.full((2000, V), float("-inf"))
    logits[:, tokens] = expected.log()
    drawn, logp = sample_fused(logits.to(device), 1.0, generator=generator(device))
    drawn = drawn.cpu()
    assert torch.isin(drawn, tokens).all()
    freq = torch.stack([(drawn == t).double().mean() for t in tokens])
    se = (expected * (1 - expected) / len(drawn)).sqrt().double()
    assert (freq - expected.double()).abs().le(4 * se).all(), freq
    assert torch.allclose(logp.cpu(), logits[0, drawn], atol=1e-5)


@on_devices
def test_greedy_ties_go_to_the_lowest_token(device):
    """As torch.argmax: equal maxima in one block, and across a block boundary (on a CPU the
    interpreter breaks ties to the left whatever the kernel asks; the check bites on CUDA)."""
    logits = torch.zeros(3, 2 * BLOCK_V)
    logits[0, [7, 9]] = 3.0  # one block
    logits[1, [BLOCK_V - 1, BLOCK_V]] = 3.0  # the two sides of the boundary
    logits[2, [BLOCK_V + 2, 3]] = 3.0  # the later block's first
    tokens, logp = sample_fused(logits.to(device), 0.0)
    assert tokens.tolist() == [7, BLOCK_V - 1, 3]
    torch.testing.assert_close(logp, sample_next(logits.to(device), 0.0)[1], atol=1e-5, rtol=1e-5)


@on_devices
def test_seeded_generator_reproduces_and_calls_differ(device):
    logits = torch.zeros(64, 50, device=device)  # uniform: every token as likely
    a, _ = sample_fused(logits, 1.0, generator=generator(device, 3))
    b, _ = sample_fused(logits, 1.0, generator=generator(device, 3))
    g = generator(device, 3)
    c, _ = sample_fused(logits, 1.0, generator=g)
    d, _ = sample_fused(logits, 1.0, generator=g)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(c, d)  # the next call draws a new seed
    assert len(set(a.tolist())) > 20  # rows draw independently
    assert math.isclose(_[0].item(), -math.log(50), rel_tol=1e-5)


@on_devices
def test_filters_fall_back_to_sample_next(device):
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1)).to(device)
    for kwargs in ({"top_k": 3}, {"top_p": 0.5}):
        a = sample_fused(logits, 1.0, generator=generator(device), **kwargs)
        b = sample_next(logits, 1.0, generator=generator(device), **kwargs)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@on_devices
def test_engine_samples_with_it_and_log_probs_equal_the_trainers(device, tiny_model_dir, byte_tokenizer):
    """FastEngine with the Triton set samples through the Triton kernels: each sampled token's
    log-prob is the trainer's (token_logprobs at the same temperature), and a seeded generator
    gives the same completions twice."""
    from transformers import AutoModelForCausalLM

    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.engine import FastEngine
    from tirgrpo.train.logprobs import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)
    engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64,), kernels="triton")
    assert engine.kernels.sample is sample_fused
    ps = [byte_tokenizer(t)["input_ids"] for t in ("hello", "a longer prompt")]
    params = SamplingParams(max_new_tokens=10, temperature=0.7)
    groups = engine.generate(ps, 2, params, generator(device, 3))
    again = engine.generate(ps, 2, params, generator(device, 3))
    assert [[c.token_ids for c in g] for g in groups] == [[c.token_ids for c in g] for g in again]
    for p, group in zip(ps, groups):
        for c in group:
            ids = torch.tensor([p + c.token_ids], device=device)
            target = torch.zeros_like(ids, dtype=torch.bool)
            target[0, len(p):] = True
            logp, _ = token_logprobs(model, ids, torch.ones_like(ids), target, temperature=0.7)
            assert torch.allclose(logp[0, len(p):].cpu(), torch.tensor(c.logprobs), atol=1e-4)
