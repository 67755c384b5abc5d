"""Sampling one token per row in one pass over the logits (Triton), for the fast engine.

`rollout.sampling.sample_next` runs about eight kernels per decode step on CUDA (scale,
softmax, an exponential draw, a division, argmax, log-softmax, gather), each a pass over
[B, 151,936] logits: ~0.1 ms at batch 8 on an H200, 5% of the step. Here the logits are read
once: each row's vocabulary in blocks of BLOCK_V logits, one program each, which keeps three
values that a second kernel combines per row:

* the log-sum-exp of the scaled logits s = logits / T (max m, sum l of exp(s - m)),
  for the chosen token's log-prob s_token - (m + log l), the distribution the trainer
  recomputes (as `sample_next`: before any filter);
* the Gumbel-max race: argmax(s + g), g = -log(-log u), u uniform per (row, token) from
  Triton's counter-based generator keyed by one seed per call, a sample of softmax(s)
  (the same race as `sample_next`'s argmax(p / E) with E = -log u);
* greedy (T <= 0): argmax of the logits, log-prob under the unscaled softmax.

The seed is drawn from the caller's generator on the device (no host sync), so a seeded
generator gives reproducible samples; the stream differs from `sample_next`'s. top-k / top-p
need a sort: those calls go to `sample_next`.

One program per row was too few at batch 8 (8 programs on 132 SMs: 0.24 ms a step on an H200
against 0.10 ms for the torch kernels); split into blocks, 0.016 ms (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from tirgrpo.kernels.triton_compat import INTERPRETED, tl, triton
from tirgrpo.rollout.sampling import sample_next

BLOCK_V = 4096  # logits per program: a row's vocabulary is split over cdiv(V, BLOCK_V) programs


@triton.jit
def _sample_split_kernel(logits_ptr, part_ptr, seed_ptr, V, stride_b, n_splits, inv_temperature,
                         SAMPLE: tl.constexpr, BLOCK: tl.constexpr):
    # Program (row, split): one BLOCK of the row's logits -> five partials, stored as
    # part[row, quantity, split]: max m of s, sum l of exp(s - m), the best Gumbel key,
    # its token and its s.
    row = tl.program_id(0)
    split = tl.program_id(1)
    seed = tl.load(seed_ptr)
    offs = tl.arange(0, BLOCK)
    idx = split * BLOCK + offs
    inside = idx < V
    s = tl.load(logits_ptr + row.to(tl.int64) * stride_b + idx, mask=inside, other=float("-inf"))
    s = s.to(tl.float32) * inv_temperature
    m = tl.max(s, axis=0)
    # a block of -inf only (masked tail, or every logit forbidden) adds nothing
    l = tl.sum(tl.where(s == float("-inf"), 0.0, tl.exp(s - m)), axis=0)
    if SAMPLE:
        u = tl.rand(seed, row * V + idx)  # [0, 1); 0 would give key -inf: kept just above it
        key = s - tl.log(-tl.log(tl.maximum(u, 1e-20)))
    else:
        key = s
    key = tl.where(inside, key, float("-inf"))
    best_key = tl.max(key, axis=0)
    best = tl.argmax(key, axis=0)
    best_s = tl.max(tl.where(offs == best, s, float("-inf")), axis=0)
    base = part_ptr + (row * 5) * n_splits + split
    tl.store(base, m)
    tl.store(base + n_splits, l)
    tl.store(base + 2 * n_splits, best_key)
    tl.store(base + 3 * n_splits, (split * BLOCK + best).to(tl.float32))  # < 2**24: exact in fp32
    tl.store(base + 4 * n_splits, best_s)


@triton.jit
def _sample_combine_kernel(part_ptr, tokens_ptr, logp_ptr, n_splits, SPLITS_PAD: tl.constexpr):
    # Program (row): the row's log-sum-exp over its splits, and the split with the best key.
    row = tl.program_id(0)
    j = tl.arange(0, SPLITS_PAD)
    valid = j < n_splits
    base = part_ptr + (row * 5) * n_splits + j
    m = tl.load(base, mask=valid, other=float("-inf"))
    l = tl.load(base + n_splits, mask=valid, other=0.0)
    key = tl.load(base + 2 * n_splits, mask=valid, other=float("-inf"))
    token = tl.load(base + 3 * n_splits, mask=valid, other=0.0)
    s = tl.load(base + 4 * n_splits, mask=valid, other=float("-inf"))
    m_all = tl.max(m, axis=0)
    l_all = tl.sum(tl.where(m == float("-inf"), 0.0, l * tl.exp(m - m_all)), axis=0)
    best = tl.argmax(key, axis=0)  # the first split on a tie: the lowest token, as torch.argmax
    tl.store(tokens_ptr + row, tl.max(tl.where(j == best, token, -1.0), axis=0).to(tl.int64))
    tl.store(logp_ptr + row, tl.max(tl.where(j == best, s, float("-inf")), axis=0) - (m_all + tl.log(l_all)))


def sample_fused(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampling.sample_next` in two Triton kernels: tokens [B] long and their log-probs [B]
    float32 (nats) from logits [B, V] (any float dtype, rows contiguous). top_k / top_p
    filtering falls back to `sample_next`.

    The vocabulary is split over cdiv(V, BLOCK_V) programs per row (38 for Qwen's 151,936), so
    a batch of 8 rows still fills the GPU; a second kernel combines each row's partials."""
    if top_k > 0 or top_p < 1.0:
        return sample_next(logits, temperature, top_p, top_k, generator)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    B, V = logits.shape
    if V >= 2**24:
        raise ValueError(f"sample_fused: a vocabulary of {V} tokens; token ids are carried in fp32 (< 2**24)")
    tokens = torch.empty(B, dtype=torch.long, device=logits.device)
    logp = torch.empty(B, dtype=torch.float32, device=logits.device)
    sample = temperature > 0
    if sample:  # one seed per call from the caller's generator, on its device (the engine's: the logits')
        where = generator.device if generator is not None else logits.device
        seed = torch.randint(0, 2**31 - 1, (1,), generator=generator, device=where, dtype=torch.int32).to(logits.device)
    else:
        seed = torch.zeros(1, dtype=torch.int32, device=logits.device)
    if INTERPRETED and logits.dtype == torch.bfloat16:
        logits = logits.float()  # the interpreter computes on bf16 as raw integers; fp32 holds bf16 exactly
    n_splits = triton.cdiv(V, BLOCK_V)
    parts = torch.empty((B, 5, n_splits), dtype=torch.float32, device=logits.device)
    _sample_split_kernel[(B, n_splits)](logits, parts, seed, V, logits.stride(0), n_splits,
                                        1.0 / temperature if sample else 1.0, SAMPLE=sample, BLOCK=BLOCK_V)
    _sample_combine_kernel[(B,)](parts, tokens, logp, n_splits, SPLITS_PAD=max(2, triton.next_power_of_2(n_splits)))
    return tokens, logp
