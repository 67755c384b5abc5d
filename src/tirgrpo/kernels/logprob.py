"""Triton kernel of the LM head's per-chunk softmax statistics (logprobs.softmax_stats).

For a chunk of C = 256 tokens the logits are a [256, 151936] fp32 block (155 MB). Its
log-sum-exp, target log-prob and entropy need one read of the block; compiled by
torch.compile the reduction ran one program per row (256 programs for 132 SMs, each
looping over 152K values) at ~136 GB/s: 1.1 ms a chunk, ~0.14 s of an H100 train phase.
Here the vocabulary is split in SPLIT-wide slices, one program per (row, slice), each
writing the slice's max m, sum of exp(z - m) and sum of exp(z - m)(z - m); a second small
kernel combines a row's slices:

    M = max_s m_s,  L = sum_s l_s e^(m_s - M),  A = sum_s e^(m_s - M) (a_s + (m_s - M) l_s)
    lse = M + log L,  entropy = log L - A / L,  logp = z_y - lse

The plain-torch version (the same results) is `logprobs.softmax_stats`, which runs on CPU
and is what tests/kernels/test_logprob_kernels.py compares this with (on CPU in Triton's
interpreter; tests/conftest.py sets TRITON_INTERPRET=1 there).
"""

from __future__ import annotations

import torch

from tirgrpo.kernels.triton_compat import kernels_available as available  # noqa: F401 (the module's API)
from tirgrpo.kernels.triton_compat import tl, triton

SPLIT = 8192  # vocabulary entries per program (152K / 8192 = 19 programs per row)


@triton.jit
def _slice_stats_kernel(z_ptr, m_ptr, l_ptr, a_ptr, V, stride_z, n_slices, SPLIT: tl.constexpr):
    row, s = tl.program_id(0), tl.program_id(1)
    cols = s * SPLIT + tl.arange(0, SPLIT)
    inside = cols < V
    z = tl.load(z_ptr + row.to(tl.int64) * stride_z + cols, mask=inside, other=-float("inf"))
    m = tl.max(z, axis=0)
    e = tl.where(inside, tl.exp(z - m), 0.0)
    out = row * n_slices + s
    tl.store(m_ptr + out, m)
    tl.store(l_ptr + out, tl.sum(e, axis=0))
    tl.store(a_ptr + out, tl.sum(tl.where(inside, e * (z - m), 0.0), axis=0))


@triton.jit
def _combine_kernel(z_ptr, targets_ptr, m_ptr, l_ptr, a_ptr, logp_ptr, ent_ptr, lse_ptr, stride_z, n_slices,
                    BLOCK_S: tl.constexpr):
    row = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    inside = s < n_slices
    m = tl.load(m_ptr + row * n_slices + s, mask=inside, other=-float("inf"))
    big = tl.max(m, axis=0)
    w = tl.where(inside, tl.exp(m - big), 0.0)
    l_s = tl.load(l_ptr + row * n_slices + s, mask=inside, other=0.0)
    a_s = tl.load(a_ptr + row * n_slices + s, mask=inside, other=0.0)
    total = tl.sum(l_s * w, axis=0)
    shifted_sum = tl.sum(tl.where(inside, w * (a_s + (m - big) * l_s), 0.0), axis=0)
    log_total = tl.log(total)
    lse = big + log_total
    target = tl.load(targets_ptr + row)
    z_y = tl.load(z_ptr + row.to(tl.int64) * stride_z + target)
    tl.store(logp_ptr + row, z_y - lse)
    tl.store(ent_ptr + row, log_total - shifted_sum / total)
    tl.store(lse_ptr + row, lse)


def softmax_stats(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z [C, V] fp32 logits (rows contiguous), targets [C] -> (logp [C], entropy [C], lse [C]), nats."""
    if z.dtype != torch.float32 or z.dim() != 2 or z.stride(1) != 1:
        raise ValueError(f"softmax_stats kernel: fp32 [C, V] logits with contiguous rows expected, got {z.dtype} "
                         f"{tuple(z.shape)} strides {z.stride()}")
    C, V = z.shape
    n_slices = triton.cdiv(V, SPLIT)
    part = torch.empty((3, C, n_slices), dtype=torch.float32, device=z.device)
    out = torch.empty((3, C), dtype=torch.float32, device=z.device)
    _slice_stats_kernel[(C, n_slices)](z, part[0], part[1], part[2], V, z.stride(0), n_slices, SPLIT=SPLIT,
                                       num_warps=8)
    _combine_kernel[(C,)](z, targets, part[0], part[1], part[2], out[0], out[1], out[2], z.stride(0), n_slices,
                          BLOCK_S=max(16, triton.next_power_of_2(n_slices)))
    return out[0], out[1], out[2]
