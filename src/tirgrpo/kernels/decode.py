"""Fused kernels of FastEngine's decode step: Triton versions and plain-torch references.

A decode step at batch 8 is ~1.5 ms of weight reads, but written as ordinary torch ops it
was ~1,400 tiny kernels (an HF RMSNorm alone is ~8) at 2-3 us each. Each Triton kernel
here replaces one such group of ops; each has a torch function with the same math and the
same signature (`*_torch`), which is what runs on CPUs, what `kernels="torch"` runs on
CUDA, and what tests/kernels/test_decode_kernels.py compares the kernels against.

The attention over the KV cache (prompt slots shared by their rows, completions per row) is
in kernels/decode_attention.py; its functions are importable from here too.

Triton is optional: without it only the `*_torch` functions can be used
(`select_kernels("triton")` then fails with a message saying so). Set TRITON_INTERPRET=1 before this module is first
imported to run the Triton kernels on CPU tensors (slowly; for tests).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from tirgrpo.errors import TirgrpoError
from tirgrpo.kernels import KERNEL_CHOICES, gemv, sampling
# The attention lives in its own module; its names stay importable from here.
# (KEYS_PER_SPLIT and PROMPT_BATCH_MIN_ROWS are read from decode_attention at each call: set them there.)
from tirgrpo.kernels.decode_attention import (ATTN_BLOCK_N, _require_contiguous,  # noqa: F401
                                              decode_attention, decode_attention_torch, no_prompt_rows,
                                              prompt_rows, prompt_rows_from_min_batch, prompt_rows_torch)
from tirgrpo.kernels.triton_compat import HAVE_TRITON, INTERPRETED, libdevice, tl, triton
from tirgrpo.rollout.sampling import sample_next


def triton_interpreting() -> bool:
    """True when the Triton kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return INTERPRETED


# ---------------------------------------------------------------------------- residual add + RMSNorm


def add_rmsnorm_torch(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm, exactly as HF's Qwen2/Llama RMSNorm computes it.

    h, delta: [B, H] (delta None: no add, for the first layer); weight: [H].
    Returns (h + delta, weight * normalized(h + delta)), both [B, H] in h's dtype.
    """
    if delta is not None:
        h = h + delta
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return h, weight * x.to(h.dtype)


@triton.jit
def _add_rmsnorm_kernel(h_ptr, delta_ptr, w_ptr, h_out_ptr, x_out_ptr, H, eps,
                        HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    h = tl.load(h_ptr + row * H + cols, mask=mask, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + row * H + cols, mask=mask, other=0.0)
        # Round the sum to the model dtype, as the bf16 `h + delta` of the HF layer does.
        h = (h.to(tl.float32) + delta.to(tl.float32)).to(h_out_ptr.dtype.element_ty)
        tl.store(h_out_ptr + row * H + cols, h, mask=mask)
    x = h.to(tl.float32)
    x = x * tl.rsqrt(tl.sum(x * x, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    # HF rounds the normalized row to the model dtype before scaling by the weight.
    x = w * x.to(h_out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(x_out_ptr + row * H + cols, x.to(x_out_ptr.dtype.element_ty), mask=mask)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `add_rmsnorm_torch`: one program per row. h, delta: [B, H] contiguous; weight: [H]."""
    B, H = h.shape
    _require_contiguous(h=h, delta=delta, weight=weight)
    h_out = torch.empty_like(h) if delta is not None else h
    x_out = torch.empty_like(h)
    _add_rmsnorm_kernel[(B,)](h, delta if delta is not None else h, weight, h_out, x_out, H, eps,
                              HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(H))
    return h_out, x_out


# ---------------------------------------------------------------------------- rotary + cache write


def rotary_cache_write_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                             v_cache: torch.Tensor, pos: torch.Tensor, cache_pos: torch.Tensor,
                             inv_freq: torch.Tensor, scaling: float) -> None:
    """Rotary embedding (HF rotate-half) on q in place and on k; k and v written to the cache.

    q: [B, Hq, D]; k, v: [B, Hkv, D]; k_cache, v_cache: [B_cap >= B, Hkv, N_cap, D];
    pos: [B] long, the absolute positions (for the rotation); cache_pos: [B] long, the slot in
    each row's cache; inv_freq: [D/2] fp32; scaling: the rotary's attention_scaling.
    cos/sin are computed in fp32 and rounded to the model dtype, as HF does.
    """
    freqs = pos[:, None].float() * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * scaling).to(q.dtype)[:, None, :], (emb.sin() * scaling).to(q.dtype)[:, None, :]

    def rotate(x):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    q.copy_(rotate(q))
    rows = torch.arange(q.shape[0], device=q.device)
    k_cache[rows, :, cache_pos] = rotate(k)
    v_cache[rows, :, cache_pos] = v


@triton.jit
def _rotary_cache_write_kernel(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, cache_pos_ptr, inv_freq_ptr,
                               scaling, stride_q, stride_k, stride_v, stride_cb, stride_ch, stride_cn,
                               HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, INTERPRETED: tl.constexpr):
    # Program (b, j): j < HQ rotates query head j in place; the next HKV rotate key heads and
    # write them to the cache; the last HKV copy value heads to the cache.
    b = tl.program_id(0)
    j = tl.program_id(1)
    offs = tl.arange(0, HALF)
    dtype = q_ptr.dtype.element_ty
    if j < HQ + HKV:
        freqs = tl.load(pos_ptr + b).to(tl.float32) * tl.load(inv_freq_ptr + offs)
        # Angles reach thousands of radians: libdevice's cos/sin are CUDA's accurate ones (as
        # torch uses), where tl.cos may lower to the approximate hardware instruction, whose
        # error grows with the angle. The interpreter has no libdevice.
        if INTERPRETED:
            cos, sin = tl.cos(freqs), tl.sin(freqs)
        else:
            cos, sin = libdevice.cos(freqs), libdevice.sin(freqs)
        # HF rounds cos/sin to the model dtype and rounds after every op of x*cos + rot(x)*sin.
        cos = (cos * scaling).to(dtype).to(tl.float32)
        sin = (sin * scaling).to(dtype).to(tl.float32)
        if j < HQ:
            src = q_ptr + b * stride_q + j * (2 * HALF)
        else:
            src = k_ptr + b * stride_k + (j - HQ) * (2 * HALF)
        x1 = tl.load(src + offs).to(tl.float32)
        x2 = tl.load(src + HALF + offs).to(tl.float32)
        y1 = ((x1 * cos).to(dtype).to(tl.float32) - (x2 * sin).to(dtype).to(tl.float32)).to(dtype)
        y2 = ((x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)).to(dtype)
        if j < HQ:
            dst = src
        else:
            slot = tl.load(cache_pos_ptr + b)
            dst = kc_ptr + b * stride_cb + (j - HQ) * stride_ch + slot * stride_cn
        tl.store(dst + offs, y1)
        tl.store(dst + HALF + offs, y2)
    else:
        slot = tl.load(cache_pos_ptr + b)
        src = v_ptr + b * stride_v + (j - HQ - HKV) * (2 * HALF)
        dst = vc_ptr + b * stride_cb + (j - HQ - HKV) * stride_ch + slot * stride_cn
        tl.store(dst + offs, tl.load(src + offs))
        tl.store(dst + HALF + offs, tl.load(src + HALF + offs))


def rotary_cache_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                       v_cache: torch.Tensor, pos: torch.Tensor, cache_pos: torch.Tensor,
                       inv_freq: torch.Tensor, scaling: float) -> None:
    """Triton `rotary_cache_write_torch` (same arguments and shapes), one kernel for q, k and v."""
    B, Hq, D = q.shape
    Hkv = k.shape[1]
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(2) != 1 or t.stride(1) != D:
            raise ValueError(f"rotary_cache_write: {name} must have contiguous heads [B, H, D], strides {t.stride()}")
    _require_contiguous(k_cache=k_cache, v_cache=v_cache, inv_freq=inv_freq)
    if k_cache.stride() != v_cache.stride():
        raise ValueError("rotary_cache_write: k_cache and v_cache must have the same layout")
    _rotary_cache_write_kernel[(B, Hq + 2 * Hkv)](
        q, k, v, k_cache, v_cache, pos, cache_pos, inv_freq, scaling, q.stride(0), k.stride(0), v.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), HQ=Hq, HKV=Hkv, HALF=D // 2,
        INTERPRETED=triton_interpreting())


# ---------------------------------------------------------------------------- SiLU(gate) * up


def silu_mul_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up, the Qwen2/Llama MLP's activation. gate, up: [B, I] -> [B, I]."""
    return F.silu(gate) * up


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    gate = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dtype = out_ptr.dtype.element_ty
    # Round SiLU's result to the model dtype before the product, as the two torch ops do.
    act = (gate * tl.sigmoid(gate)).to(dtype).to(tl.float32)
    tl.store(out_ptr + offs, (act * up).to(dtype), mask=mask)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Triton `silu_mul_torch`. gate, up: [B, I] contiguous -> [B, I]."""
    _require_contiguous(gate=gate, up=up)
    out = torch.empty_like(gate)
    block = 1024
    _silu_mul_kernel[(triton.cdiv(gate.numel(), block),)](gate, up, out, gate.numel(), BLOCK=block)
    return out


# ---------------------------------------------------------------------------- choosing a set


class Kernels(NamedTuple):
    """The operations of a decode step, all torch or all Triton.

    linears / gate_up_silu: the projections (kernels/gemv.py), which the engine sends there
    for plain nn.Linear modules at batch sizes up to gemv_max_batch (0: never; the modules
    themselves, i.e. cuBLAS, run instead). sample: the next token from the logits
    (`rollout.sampling.sample_next`, or its Triton kernels, kernels/sampling.py).
    prompt_rows: (prefix_slot, prefix_len, n_slots, group) -> the rows-of-slot index that
    decode_attention takes as its 9th argument, built once per step (kernels/decode_attention.py),
    or None: each row reads its prompt itself (the torch set; triton-perrow).
    """

    name: str
    add_rmsnorm: Callable
    rotary_cache_write: Callable
    decode_attention: Callable
    silu_mul: Callable
    linears: Callable
    gate_up_silu: Callable
    gemv_max_batch: int
    sample: Callable
    prompt_rows: Callable


TORCH_KERNELS = Kernels("torch", add_rmsnorm_torch, rotary_cache_write_torch, decode_attention_torch, silu_mul_torch,
                        gemv.linears_torch, gemv.gate_up_silu_torch, 0, sample_next, no_prompt_rows)
TRITON_KERNELS = Kernels("triton", add_rmsnorm, rotary_cache_write, decode_attention, silu_mul, gemv.linears,
                         gemv.gate_up_silu, gemv.GEMV_MAX_BATCH, sampling.sample_fused, prompt_rows_from_min_batch)
# The Triton decode kernels with every projection run by its module (cuBLAS) and the torch
# sampler: the set before kernels/gemv.py and kernels/sampling.py, for comparing the two in one
# call (`tirgrpo bench rollout --kernels ...`).
TRITON_NOGEMV_KERNELS = TRITON_KERNELS._replace(name="triton-nogemv", gemv_max_batch=0, sample=sample_next)
# The Triton set with each row reading its prompt's keys itself at every batch size (the
# attention before the rows-of-slot index), for a same-call comparison.
TRITON_PERROW_KERNELS = TRITON_KERNELS._replace(name="triton-perrow", prompt_rows=no_prompt_rows)


def select_kernels(kind: str, device: torch.device) -> Kernels:
    """The kernels for `kind`: torch, triton, triton-nogemv (triton without the small-batch
    projections of kernels/gemv.py and the Triton sampler of kernels/sampling.py),
    triton-perrow (triton without the rows-of-slot index: every row reads its prompt itself)
    or auto (triton on CUDA when it imports, else torch)."""
    if kind == "auto":
        kind = "triton" if device.type == "cuda" and HAVE_TRITON else "torch"
    if kind == "torch":
        return TORCH_KERNELS
    if kind not in ("triton", "triton-nogemv", "triton-perrow"):
        raise TirgrpoError(f"system.kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}, not {kind!r}")
    if not HAVE_TRITON:
        raise TirgrpoError(f"system.kernels={kind!r} needs the triton package (pip install triton)")
    if device.type != "cuda" and not triton_interpreting():
        raise TirgrpoError(f"system.kernels={kind!r} runs on CUDA devices, not {device.type} "
                         "(or on CPU tensors with TRITON_INTERPRET=1 set before import, for tests)")
    return {"triton": TRITON_KERNELS, "triton-nogemv": TRITON_NOGEMV_KERNELS, "triton-perrow": TRITON_PERROW_KERNELS}[kind]
