"""Sampling one token from logits: greedy, top-k, top-p, the sampled distribution, log-probs."""

import math

import pytest
import torch

from tirgrpo.rollout.sampling import HostCopy, filter_logits, sample_next

NEG = float("-inf")


def _logits(batch=3, vocab=11, seed=0):
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 2


# --------------------------------------------------------------------------- filter_logits


def test_filter_top_k_hand_case():
    out = filter_logits(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), top_k=2)
    assert out.tolist() == [[NEG, 4.0, NEG, 3.0]]


def test_filter_top_k_zero_or_vocab_is_identity():
    x = torch.tensor([[1.0, 4.0, 2.0, 3.0]])
    assert torch.equal(filter_logits(x, top_k=0), x)
    assert torch.equal(filter_logits(x, top_k=4), x)


def test_filter_top_p_hand_case():
    # probs 0.5, 0.3, 0.15, 0.05 (in a shuffled order); mass of the tokens ranked above each:
    # 0.5 -> 0, 0.3 -> 0.5, 0.15 -> 0.8, 0.05 -> 0.95
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    x = probs.log()
    # top_p 0.75: drop tokens whose "above" mass >= 0.75 -> keep 0.5 and 0.3
    assert torch.isinf(filter_logits(x, top_p=0.75)).tolist() == [[True, False, True, False]]
    # top_p 0.85: 0.15 (above = 0.8) is kept too
    assert torch.isinf(filter_logits(x, top_p=0.85)).tolist() == [[False, False, True, False]]
    # top_p 0.4: only the most likely token (always kept)
    assert torch.isinf(filter_logits(x, top_p=0.4)).tolist() == [[True, False, True, True]]
    # a tiny top_p still keeps the argmax
    assert torch.isinf(filter_logits(x, top_p=1e-9)).tolist() == [[True, False, True, True]]
    # kept logits are unchanged
    kept = filter_logits(x, top_p=0.85)
    assert kept[0, 0] == x[0, 0] and kept[0, 1] == x[0, 1] and kept[0, 3] == x[0, 3]


def test_filter_top_p_per_row():
    x = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]).log()
    # top_p 0.6: row 0 keeps 0.5 (above 0) and 0.3 (above 0.5); row 1 likewise, mirrored
    assert torch.isinf(filter_logits(x, top_p=0.6)).tolist() == [[False, False, True], [True, False, False]]


def test_filter_top_k_and_top_p_combined():
    x = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top_k 3 drops 0.1; renormalised 0.4/0.9, 0.3/0.9, 0.2/0.9 = 0.444, 0.333, 0.222;
    # top_p 0.7: above masses 0, 0.444, 0.778 -> the third is dropped
    assert torch.isinf(filter_logits(x, top_k=3, top_p=0.7)).tolist() == [[False, False, True, True]]


# --------------------------------------------------------------------------- sample_next


def test_greedy_is_argmax_with_unscaled_logprob():
    x = _logits()
    tok, lp = sample_next(x, temperature=0.0)
    assert torch.equal(tok, x.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(x, -1).gather(-1, tok[:, None])[:, 0])


def test_top_k_one_equals_greedy():
    x = _logits(batch=16, seed=1)
    g = torch.Generator().manual_seed(0)
    tok, _ = sample_next(x, temperature=1.3, top_k=1, generator=g)
    assert torch.equal(tok, x.argmax(-1))


def test_tiny_top_p_equals_greedy():
    x = _logits(batch=16, seed=2)
    g = torch.Generator().manual_seed(0)
    tok, _ = sample_next(x, temperature=1.0, top_p=1e-6, generator=g)
    assert torch.equal(tok, x.argmax(-1))


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 0), (1.5, 1.0, 5)])
def test_logprob_is_log_softmax_of_scaled_logits_before_filtering(temperature, top_p, top_k):
    x = _logits(batch=64, seed=3)
    g = torch.Generator().manual_seed(1)
    tok, lp = sample_next(x, temperature, top_p=top_p, top_k=top_k, generator=g)
    expected = torch.log_softmax(x / temperature, -1).gather(-1, tok[:, None])[:, 0]
    torch.testing.assert_close(lp, expected)
    if top_k:  # every sampled token survived the filter
        kth = torch.topk(x, top_k, -1).values[:, -1]
        assert bool((x.gather(-1, tok[:, None])[:, 0] >= kth).all())


def test_sampled_distribution_matches_softmax():
    # 4-token vocab, temperature 0.7: p = softmax([0, 1, 2, -1] / 0.7)
    #   exp([0, 1.4286, 2.8571, -1.4286]) = [1, 4.1722, 17.4117, 0.2397], sum 22.8236
    #   p = [0.0438, 0.1828, 0.7629, 0.0105]
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    p = torch.softmax(logits / 0.7, -1)
    torch.testing.assert_close(p, torch.tensor([0.0438, 0.1828, 0.7629, 0.0105]), atol=1e-4, rtol=0)
    n = 40_000
    g = torch.Generator().manual_seed(0)
    tok, _ = sample_next(logits.expand(n, 4), temperature=0.7, generator=g)
    freq = torch.bincount(tok, minlength=4).float() / n
    # binomial std <= sqrt(0.25 / 40000) = 0.0025; allow 4 std
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)
    assert tok.min() >= 0 and tok.max() <= 3


def test_sampled_distribution_with_top_p_renormalises():
    # probs 0.5, 0.3, 0.2; top_p 0.6 keeps 0.5 and 0.3 -> renormalised 0.625, 0.375, 0
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    n = 20_000
    tok, _ = sample_next(logits.expand(n, 3), temperature=1.0, top_p=0.6, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.625, 0.375, 0.0]), atol=0.015, rtol=0)


def test_same_generator_seed_same_tokens():
    x = _logits(batch=32, seed=4)
    a, _ = sample_next(x, 1.0, generator=torch.Generator().manual_seed(5))
    b, _ = sample_next(x, 1.0, generator=torch.Generator().manual_seed(5))
    c, _ = sample_next(x, 1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_never_samples_a_zero_probability_token():
    # token 2 is -inf (e.g. banned eos); many draws must never hit it
    logits = torch.tensor([0.0, 0.0, NEG, 0.0])
    tok, lp = sample_next(logits.expand(5000, 4), 1.0, generator=torch.Generator().manual_seed(0))
    assert not bool((tok == 2).any())
    torch.testing.assert_close(lp, torch.full((5000,), math.log(1 / 3)))


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_host_copy_returns_exact_token_ids_and_log_probs(device):
    """Token ids travel as fp32 beside the log-probs: exact below 2**24 (Qwen's largest id is
    151,935), handed back as ints; the buffer is reused by the next step's copy."""
    copy = HostCopy()
    tokens = torch.tensor([0, 7, 151935, 2**24 - 1], device=device)
    logp = torch.tensor([-0.5, -1.25, -3.0, 0.0], device=device)
    ids, lps = HostCopy.wait(copy.start(tokens, logp))
    assert ids == [0, 7, 151935, 2**24 - 1] and all(type(t) is int for t in ids)
    assert lps == [-0.5, -1.25, -3.0, 0.0]
    ids, lps = HostCopy.wait(copy.start(tokens[:2] + 1, logp[:2]))
    assert ids == [1, 8] and lps == [-0.5, -1.25]
    ids, _ = HostCopy.wait(copy.start(tokens, logp.bfloat16()))  # a 16-bit logp: the ids stay exact
    assert ids == [0, 7, 151935, 2**24 - 1]
