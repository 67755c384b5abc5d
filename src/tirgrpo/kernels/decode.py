"""Fused kernels of FastEngine's decode step: Triton versions and plain-torch references.

A decode step at batch 8 is ~1.5 ms of weight reads, but written as ordinary torch ops it
was ~1,400 tiny kernels (an HF RMSNorm alone is ~8) at 2-3 us each. Each Triton kernel
here replaces one such group of ops; each has a torch function with the same math and the
same signature (`*_torch`), which is what runs on CPUs, what `kernels="torch"` runs on
CUDA, and what tests/kernels/test_decode_kernels.py compares the kernels against.

KV cache layout (see engine.py): a prompt's keys/values are stored once, in a *prompt cache*
[n_slots, Hkv, P_cap, D] (one layer), and each row's own generated keys/values in a
*completion cache* [B_cap, Hkv, N_cap, D]. Row b sees prompt slot prefix_slot[b], keys
0..prefix_len[b]-1, followed by its completion keys 0..comp_len[b]-1.

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
from tirgrpo.kernels.triton_compat import HAVE_TRITON, INTERPRETED, libdevice, tl, triton
from tirgrpo.rollout.sampling import sample_next

# Keys one attention program reads (a multiple of ATTN_BLOCK_N). Smaller means more programs
# (more parallelism at small batch) but more partial results to combine.
KEYS_PER_SPLIT = 256
ATTN_BLOCK_N = 64


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


# ---------------------------------------------------------------------------- decode attention


def decode_attention_torch(q: torch.Tensor, k_prompt: torch.Tensor, v_prompt: torch.Tensor, k_comp: torch.Tensor,
                           v_comp: torch.Tensor, prefix_slot: torch.Tensor, prefix_len: torch.Tensor,
                           comp_len: torch.Tensor) -> torch.Tensor:
    """One query per row over its prompt's keys then its own completion keys (grouped-query).

    q: [B, Hq, D]; k_prompt, v_prompt: [n_slots, Hkv, P_cap, D]; k_comp, v_comp:
    [B_cap >= B, Hkv, N_cap, D]; prefix_slot, prefix_len, comp_len: [B] long, comp_len >= 1.
    Row b attends to k_prompt[prefix_slot[b], :, :prefix_len[b]] and k_comp[b, :, :comp_len[b]].
    Softmax in fp32, scale D**-0.5. Returns [B, Hq, D] in q's dtype.

    The prompt's keys are gathered per row (a copy), then scored in two matmuls whose scores
    share one masked softmax.
    """
    B, Hq, D = q.shape
    Hkv, P, N = k_comp.shape[1], k_prompt.shape[2], k_comp.shape[2]
    qg = q.view(B, Hkv, Hq // Hkv, D)
    k_p, v_p = k_prompt[prefix_slot], v_prompt[prefix_slot]  # [B, Hkv, P, D]
    k_c, v_c = k_comp[:B], v_comp[:B]
    scale = D**-0.5
    scores_p = torch.matmul(qg, k_p.transpose(-1, -2)).float() * scale  # [B, Hkv, group, P]
    scores_c = torch.matmul(qg, k_c.transpose(-1, -2)).float() * scale  # [B, Hkv, group, N]
    hidden_p = torch.arange(P, device=q.device)[None, :] >= prefix_len[:, None]
    hidden_c = torch.arange(N, device=q.device)[None, :] >= comp_len[:, None]
    scores = torch.cat((scores_p.masked_fill(hidden_p[:, None, None, :], float("-inf")),
                        scores_c.masked_fill(hidden_c[:, None, None, :], float("-inf"))), dim=-1)
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.matmul(probs[..., :P], v_p) + torch.matmul(probs[..., P:], v_c)
    return out.reshape(B, Hq, D)


@triton.jit
def _decode_attention_split_kernel(
        q_ptr, kp_ptr, vp_ptr, kc_ptr, vc_ptr, slot_ptr, plen_ptr, clen_ptr, acc_ptr, m_ptr, l_ptr,
        stride_qb, stride_pb, stride_ph, stride_cb, stride_ch, n_prompt_splits, n_splits, scale,
        HQ: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
        KEYS_PER_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
        INTERPRETED: tl.constexpr):
    # Program (b, kv head, split). Splits [0, n_prompt_splits) cover the prompt cache, the rest
    # the completion cache, KEYS_PER_SPLIT keys each. A split past the row's length runs no
    # loop iteration and only writes an empty partial (max -inf, sum 0).
    b = tl.program_id(0)
    hk = tl.program_id(1)
    s = tl.program_id(2)
    if s < n_prompt_splits:
        start = s * KEYS_PER_SPLIT
        end = tl.minimum(start + KEYS_PER_SPLIT, tl.load(plen_ptr + b).to(tl.int32))
        base = tl.load(slot_ptr + b).to(tl.int64) * stride_pb + hk * stride_ph
        k_base, v_base = kp_ptr + base, vp_ptr + base
    else:
        start = (s - n_prompt_splits) * KEYS_PER_SPLIT
        end = tl.minimum(start + KEYS_PER_SPLIT, tl.load(clen_ptr + b).to(tl.int32))
        base = b.to(tl.int64) * stride_cb + hk * stride_ch
        k_base, v_base = kc_ptr + base, vc_ptr + base

    # The GROUP query heads that share this kv head, padded to >= 16 rows for tl.dot.
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D)
    g_mask = g < GROUP
    q = tl.load(q_ptr + b * stride_qb + (hk * GROUP + g)[:, None] * D + d[None, :], mask=g_mask[:, None], other=0.0)
    if INTERPRETED:  # Triton's CPU interpreter multiplies bf16 as raw integers; fp32 holds bf16 exactly.
        q = q.to(tl.float32)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + n
        valid = keys < end
        k = tl.load(k_base + keys[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_base + keys[:, None] * D + d[None, :], mask=valid[:, None], other=0.0)
        if INTERPRETED:
            k, v = k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [GROUP_PAD, BLOCK_N] fp32
        scores = tl.where(valid[None, :], scores, float("-inf"))
        # Online softmax: every block has a valid key, so m_new is finite.
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # The probabilities are rounded to the cache dtype, as the torch version's are.
        p = p.to(vc_ptr.dtype.element_ty).to(v.dtype)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
        m_i = m_new

    # Partials are laid out [B, HQ, n_splits(, D)] so the combine reads one head's splits.
    head = b * HQ + hk * GROUP + g  # [GROUP_PAD]
    tl.store(m_ptr + head * n_splits + s, m_i, mask=g_mask)
    tl.store(l_ptr + head * n_splits + s, l_i, mask=g_mask)
    tl.store(acc_ptr + (head * n_splits + s)[:, None] * D + d[None, :], acc, mask=g_mask[:, None])


@triton.jit
def _decode_attention_combine_kernel(acc_ptr, m_ptr, l_ptr, out_ptr, n_splits,
                                     D: tl.constexpr, SPLITS_PAD: tl.constexpr):
    # Program (b * HQ + h): rescale each split's partial to the global max and normalize.
    head = tl.program_id(0)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, D)
    s_mask = s < n_splits
    m = tl.load(m_ptr + head * n_splits + s, mask=s_mask, other=float("-inf"))
    l = tl.load(l_ptr + head * n_splits + s, mask=s_mask, other=0.0)
    acc = tl.load(acc_ptr + (head * n_splits + s)[:, None] * D + d[None, :], mask=s_mask[:, None], other=0.0)
    w = tl.exp(m - tl.max(m, axis=0))  # empty splits (m = -inf) weigh 0
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + head * D + d, out.to(out_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, k_prompt: torch.Tensor, v_prompt: torch.Tensor, k_comp: torch.Tensor,
                     v_comp: torch.Tensor, prefix_slot: torch.Tensor, prefix_len: torch.Tensor, comp_len: torch.Tensor,
                     keys_per_split: int = KEYS_PER_SPLIT, block_n: int = ATTN_BLOCK_N) -> torch.Tensor:
    """Triton `decode_attention_torch` (same arguments and shapes), split-K (flash-decoding).

    Grid (B, Hkv, splits), splits sized by the caches' capacities (P_cap, N_cap), not by the
    rows' lengths, so the grid is fixed for a CUDA graph; programs past a row's length write
    an empty partial and stop. A second kernel combines the splits. Rows of one prompt are
    adjacent in the grid, so they read the prompt's keys from L2 after the first.
    """
    B, Hq, D = q.shape
    n_slots, Hkv, P, _ = k_prompt.shape
    N = k_comp.shape[2]
    if Hq % Hkv or keys_per_split % block_n:
        raise ValueError(f"decode_attention: Hq={Hq} must be a multiple of Hkv={Hkv}, keys_per_split="
                         f"{keys_per_split} a multiple of block_n={block_n}")
    if q.stride(2) != 1 or q.stride(1) != D:
        raise ValueError(f"decode_attention: q must have contiguous heads [B, Hq, D], strides {q.stride()}")
    _require_contiguous(k_prompt=k_prompt, v_prompt=v_prompt, k_comp=k_comp, v_comp=v_comp)
    group = Hq // Hkv
    n_prompt_splits = triton.cdiv(P, keys_per_split)
    n_splits = n_prompt_splits + triton.cdiv(N, keys_per_split)
    acc = torch.empty((B, Hq, n_splits, D), dtype=torch.float32, device=q.device)
    m = torch.empty((B, Hq, n_splits), dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    _decode_attention_split_kernel[(B, Hkv, n_splits)](
        q, k_prompt, v_prompt, k_comp, v_comp, prefix_slot, prefix_len, comp_len, acc, m, l,
        q.stride(0), k_prompt.stride(0), k_prompt.stride(1), k_comp.stride(0), k_comp.stride(1),
        n_prompt_splits, n_splits, D**-0.5, HQ=Hq, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        D=D, KEYS_PER_SPLIT=keys_per_split, BLOCK_N=block_n,
        # fp32 models get full-precision products; tf32 (the default) only matters for them.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", INTERPRETED=triton_interpreting())
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    _decode_attention_combine_kernel[(B * Hq,)](acc, m, l, out, n_splits, D=D,
                                                SPLITS_PAD=triton.next_power_of_2(n_splits))
    return out


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
    (`rollout.sampling.sample_next`, or its one-pass kernel, kernels/sampling.py).
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


TORCH_KERNELS = Kernels("torch", add_rmsnorm_torch, rotary_cache_write_torch, decode_attention_torch, silu_mul_torch,
                        gemv.linears_torch, gemv.gate_up_silu_torch, 0, sample_next)
TRITON_KERNELS = Kernels("triton", add_rmsnorm, rotary_cache_write, decode_attention, silu_mul, gemv.linears,
                         gemv.gate_up_silu, gemv.GEMV_MAX_BATCH, sampling.sample_fused)
# The Triton decode kernels with every projection run by its module (cuBLAS) and the torch
# sampler: the set before kernels/gemv.py and kernels/sampling.py, for comparing the two in one
# call (`tirgrpo bench rollout --kernels ...`).
TRITON_NOGEMV_KERNELS = TRITON_KERNELS._replace(name="triton-nogemv", gemv_max_batch=0, sample=sample_next)


def select_kernels(kind: str, device: torch.device) -> Kernels:
    """The kernels for `kind`: torch, triton, triton-nogemv (triton without the small-batch
    projections of kernels/gemv.py and the one-pass sampler of kernels/sampling.py) or auto
    (triton on CUDA when it imports, else torch)."""
    if kind == "auto":
        kind = "triton" if device.type == "cuda" and HAVE_TRITON else "torch"
    if kind == "torch":
        return TORCH_KERNELS
    if kind not in ("triton", "triton-nogemv"):
        raise TirgrpoError(f"system.kernels must be one of {', '.join(map(repr, KERNEL_CHOICES))}, not {kind!r}")
    if not HAVE_TRITON:
        raise TirgrpoError(f"system.kernels={kind!r} needs the triton package (pip install triton)")
    if device.type != "cuda" and not triton_interpreting():
        raise TirgrpoError(f"system.kernels={kind!r} runs on CUDA devices, not {device.type} "
                         "(or on CPU tensors with TRITON_INTERPRET=1 set before import, for tests)")
    return TRITON_KERNELS if kind == "triton" else TRITON_NOGEMV_KERNELS


def _require_contiguous(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()})")
