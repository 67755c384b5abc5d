"""Sampling one token per row in one pass over the logits (Triton), for the fast engine.

`rollout.sampling.sample_next` runs about eight kernels per decode step on CUDA (scale,
softmax, an exponential draw, a division, argmax, log-softmax, gather), each a pass over
[B, 151,936] logits: ~0.1 ms at batch 8 on an H200, 5% of the step. Here one program per row
streams its logits once and keeps three running values:

* the log-sum-exp of the scaled logits s = logits / T (online: max m, sum l of exp(s - m)),
  for the chosen token's log-prob s_token - (m + log l), the distribution the trainer
  recomputes (as `sample_next`: before any filter);
* the Gumbel-max race: argmax(s + g), g = -log(-log u), u uniform per (row, token) from
  Triton's counter-based generator keyed by one seed per call, a sample of softmax(s)
  (the same race as `sample_next`'s argmax(p / E) with E = -log u);
* greedy (T <= 0): argmax of the logits, log-prob under the unscaled softmax.

The seed is drawn from the caller's generator on the device (no host sync), so a seeded
generator gives reproducible samples; the stream differs from `sample_next`'s. top-k / top-p
need a sort: those calls go to `sample_next`.
"""

from __future__ import annotations

import torch

from tirgrpo.kernels.triton_compat import INTERPRETED, tl, triton
from tirgrpo.rollout.sampling import sample_next

BLOCK_V = 4096  # logits per loop iteration of a row's program


@triton.jit
def _sample_kernel(logits_ptr, tokens_ptr, logp_ptr, seed_ptr, V, stride_b, inv_temperature,
                   SAMPLE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    seed = tl.load(seed_ptr)
    m = tl.full([], float("-inf"), tl.float32)  # running max of s
    l = tl.full([], 0.0, tl.float32)  # running sum of exp(s - m)
    best_key = tl.full([], float("-inf"), tl.float32)
    best_s = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], 0, tl.int32)
    offs = tl.arange(0, BLOCK)
    for v0 in range(0, V, BLOCK):
        idx = v0 + offs
        inside = idx < V
        s = tl.load(logits_ptr + row.to(tl.int64) * stride_b + idx, mask=inside, other=float("-inf"))
        s = s.to(tl.float32) * inv_temperature
        block_max = tl.max(s, axis=0)
        m_new = tl.maximum(m, block_max)
        # a block of -inf only (masked tail, or every logit forbidden) adds nothing
        scale = tl.where(m_new == float("-inf"), 1.0, tl.exp(m - m_new))
        l = l * scale + tl.sum(tl.where(s == float("-inf"), 0.0, tl.exp(s - m_new)), axis=0)
        m = m_new
        if SAMPLE:
            u = tl.rand(seed, row * V + idx)  # [0, 1); 0 would give key -inf: kept just above it
            key = s - tl.log(-tl.log(tl.maximum(u, 1e-20)))
        else:
            key = s
        key = tl.where(inside, key, float("-inf"))
        block_best = tl.max(key, axis=0)
        block_idx = tl.argmax(key, axis=0)
        block_s = tl.max(tl.where(offs == block_idx, s, float("-inf")), axis=0)
        better = block_best > best_key
        best_idx = tl.where(better, v0 + block_idx, best_idx)
        best_s = tl.where(better, block_s, best_s)
        best_key = tl.maximum(best_key, block_best)
    tl.store(tokens_ptr + row, best_idx.to(tl.int64))
    tl.store(logp_ptr + row, best_s - (m + tl.log(l)))


def sample_fused(logits: torch.Tensor, temperature: float, top_p: float = 1.0, top_k: int = 0,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sampling.sample_next` in one Triton kernel: tokens [B] long and their log-probs [B]
    float32 (nats) from logits [B, V] (any float dtype, rows contiguous). top_k / top_p
    filtering falls back to `sample_next`."""
    if top_k > 0 or top_p < 1.0:
        return sample_next(logits, temperature, top_p, top_k, generator)
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    B, V = logits.shape
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
    _sample_kernel[(B,)](logits, tokens, logp, seed, V, logits.stride(0), 1.0 / temperature if sample else 1.0,
                         SAMPLE=sample, BLOCK=BLOCK_V)
    return tokens, logp
