"""Triton kernels of the AdamW update in optim.py: one launch per parameter tensor.

The update is one pass over memory (read weight, gradient and moments, write them back):
~10 ms for the 1.78B bf16 parameters of a 1.5B Qwen2 on an H100. As a torch.compile'd
function called once per parameter tensor (339 of them) it took ~60 ms, almost all of it
host time per call; a Triton launch costs a few microseconds. The plain-torch version of
the same math is `optim.AdamW._update` (what runs on CPU); tests/kernels/test_adamw_kernels.py
compares the two (on CPU in Triton's interpreter).

Triton is optional (triton_compat.py): without it `available()` is False and optim.py runs
its torch code.
"""

from __future__ import annotations

import torch

from tirgrpo.kernels.triton_compat import kernels_available as available  # noqa: F401 (the module's API)
from tirgrpo.kernels.triton_compat import tl, triton

BLOCK = 2048  # elements per program


@triton.jit
def _stochastic_round(x, r):
    """fp32 x -> bf16, up or down at random so that E[result] == x (r: random uint32).

    bf16 is the top 16 bits of fp32: adding 16 random bits to the bit pattern and
    truncating rounds away from the lower neighbour with probability equal to the distance.
    """
    bits = x.to(tl.int32, bitcast=True)
    noise = (r & 0xFFFF).to(tl.int32)
    return ((bits + noise) & -65536).to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _adamw_math(offs, mask, w_ptr, g_ptr, m_ptr, v_ptr, lr, b1, b2, bc1, bc2, eps, wd):
    """AdamW in fp32 on one block -> (new weight, new m, new v); w, m, v stored as bf16 or fp32."""
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(tl.float32) * b1 + g * (1 - b1)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32) * b2 + g * g * (1 - b2)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return w - lr * ((m / bc1) / (tl.sqrt(v / bc2) + eps) + wd * w), m, v


@triton.jit
def _adamw_stochastic_kernel(p_ptr, g_ptr, m_ptr, v_ptr, n, lr, b1, b2, bc1, bc2, eps, wd, seed,
                             BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    new, m, v = _adamw_math(offs, mask, p_ptr, g_ptr, m_ptr, v_ptr, lr, b1, b2, bc1, bc2, eps, wd)
    r_w, r_m, r_v, _ = tl.randint4x(seed, offs)
    tl.store(p_ptr + offs, _stochastic_round(new, r_w), mask=mask)
    tl.store(m_ptr + offs, _stochastic_round(m, r_m), mask=mask)
    tl.store(v_ptr + offs, _stochastic_round(v, r_v), mask=mask)


@triton.jit
def _adamw_master_kernel(p_ptr, g_ptr, m_ptr, v_ptr, w_ptr, n, lr, b1, b2, bc1, bc2, eps, wd,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    w, m, v = _adamw_math(offs, mask, w_ptr, g_ptr, m_ptr, v_ptr, lr, b1, b2, bc1, bc2, eps, wd)
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(w_ptr + offs, w, mask=mask)
    tl.store(p_ptr + offs, w.to(p_ptr.dtype.element_ty), mask=mask)


def _check(n: int, **tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not t.is_contiguous() or t.numel() != n:
            raise ValueError(f"AdamW kernel: {name} must be contiguous with {n} elements, got {tuple(t.shape)}")
    if n >= 2**31:  # offsets are int32
        raise ValueError(f"AdamW kernel: tensors of {n} elements (>= 2^31) must be updated in slices")


def adamw_stochastic_(p, grad, m, v, lr: float, betas: tuple[float, float], bias_corr: tuple[float, float],
                      eps: float, weight_decay: float, seed: int) -> None:
    """AdamW on bf16 p, m, v (any shape, contiguous) with stochastically rounded results, in place.

    bias_corr = (1 - b1^t, 1 - b2^t); seed (< 2^31) picks the rounding noise.
    """
    n = p.numel()
    _check(n, grad=grad, m=m, v=v, p=p)
    _adamw_stochastic_kernel[(triton.cdiv(n, BLOCK),)](p, grad, m, v, n, lr, betas[0], betas[1], bias_corr[0],
                                                      bias_corr[1], eps, weight_decay, seed, BLOCK=BLOCK)


def adamw_master_(p, grad, m, v, master, lr: float, betas: tuple[float, float], bias_corr: tuple[float, float],
                  eps: float, weight_decay: float) -> None:
    """AdamW on an fp32 master copy with fp32 moments, in place; p (bf16) gets the rounded master."""
    n = p.numel()
    _check(n, grad=grad, m=m, v=v, master=master, p=p)
    _adamw_master_kernel[(triton.cdiv(n, BLOCK),)](p, grad, m, v, master, n, lr, betas[0], betas[1], bias_corr[0],
                                                  bias_corr[1], eps, weight_decay, BLOCK=BLOCK)
