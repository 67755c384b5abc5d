"""Shared-prefix attention without a mask: two attention calls merged by log-sum-exp.

A packed group [prompt | c_1 | ... | c_G] (prefix.py) needs prompt tokens causal among
themselves and every completion token attending to the whole prompt plus its own
completion's past. That is the union of two attentions that need no mask:

  1. prompt part: every token against the prompt's P keys, causal aligned top-left
     (query i sees keys 0..i): the prompt rows are causal, and every completion row
     (i >= P) sees the whole prompt. One cuDNN call for one group (19,456 queries x 3,072
     keys at G = 16, 3072 + 1024); two flash-attention calls for several (below);
  2. own part: each completion causal on its own keys: one variable-length ("varlen")
     flash-attention call over the completions.

A completion row's softmax runs over both key sets. Each call returns its output o_i and
the log-sum-exp l_i of its scaled scores; the exact result is their weighted mix

    l = log(e^l1 + e^l2),    o = o1 e^(l1 - l) + o2 e^(l2 - l)        (`merge_partials`)

The backward needs no merge. An attention kernel's backward of one part, given the
*merged* o and l, recomputes P = exp(s - l), the true probabilities over all keys, and
D = rowsum(dO * o); so each part's backward gives exactly its share of dq and the whole
dk, dv of its own keys (the identity ring attention relies on). A completion row's dq is
the sum of the two parts' dq; the prompt part gives the prompt's keys their gradients and
the own part the completions' keys.

Several groups in one pass (`split_layout`): the prompts first, then every group's
completions, group after group: [p_1 | p_2 | ... | c_1,1 ... c_1,G | c_2,1 ...]. The prompt
part is then two variable-length flash-attention calls (prompt rows causal over their own
prompt; each group's completion rows over its prompt's keys, no mask), the own part one, so
the projections and MLP of every group run as one large matmul while attention still
computes only the visible pairs.

Only visible query-key pairs are computed (a block mask also runs the partial tiles on
segment boundaries), on torch's fastest kernels for each shape; they take bf16/fp16 only.
Without cuDNN attention the prompt part runs as two flash-attention calls (flash aligns
causal masks bottom-right). On CPU, and for other dtypes, both parts run as plain-torch
attention with flash's math (`attend`, `attend_backward`), which the tests compare with
masked attention differentiated by autograd.

Layout: [tokens, heads, head_dim] (flash's varlen layout); lse [heads, tokens] float32.
The segments travel as one int32 tensor (`split_layout`) and their sizes as host integers
(`SplitSizes`): the kernels need them on the device, their grids need them on the host.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch

aten = torch.ops.aten


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """Softmax attention of queries q [Lq, Hq, D] over keys/values k, v [Lk, Hkv, D].

    Hq must be a multiple of Hkv (grouped-query attention). causal: query i sees keys
    0..i + Lk - Lq (bottom-right aligned, as flash-attention). Returns (out [Lq, Hq, D] in
    q's dtype, lse [Hq, Lq] float32 or float64: log-sum-exp of the scaled scores).
    """
    p, lse, vv = _probabilities(q, k, v, causal, scale)
    out = torch.einsum("hqk,khd->qhd", p, vv)
    return out.to(q.dtype), lse


def attend_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, causal: bool, scale: float):
    """Gradients (dq, dk, dv) of one part of an attention whose rows may attend elsewhere too.

    out [Lq, Hq, D] and lse [Hq, Lq] are the rows' *whole* output and log-sum-exp (over this
    part's keys and any others); for a single part they are its own. dq is this part's
    share, dk and dv are complete for these keys. Shapes as in `attend`.
    """
    f = torch.promote_types(q.dtype, torch.float32)
    rep = q.shape[1] // k.shape[1]
    s, vv, kk = _scores(q, k, v, causal, scale)
    p = torch.exp(s - lse.to(f)[..., None])  # masked scores are -inf: p = 0
    dout, out = dout.to(f), out.to(f)
    dp = torch.einsum("qhd,khd->hqk", dout, vv)
    d_row = (dout * out).sum(-1).transpose(0, 1)  # [Hq, Lq]
    ds = p * (dp - d_row[..., None])
    dq = torch.einsum("hqk,khd->qhd", ds, kk) * scale
    dk = torch.einsum("hqk,qhd->khd", ds, q.to(f)) * scale
    dv = torch.einsum("hqk,qhd->khd", p, dout)
    # grouped-query attention: a KV head's gradient sums over the query heads that share it
    dk, dv = (x.unflatten(1, (k.shape[1], rep)).sum(2) for x in (dk, dv))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _scores(q, k, v, causal, scale):
    f = torch.promote_types(q.dtype, torch.float32)
    rep = q.shape[1] // k.shape[1]
    kk, vv = (x.to(f).repeat_interleave(rep, dim=1) for x in (k, v))
    s = torch.einsum("qhd,khd->hqk", q.to(f), kk) * scale
    if causal:
        lq, lk = q.shape[0], k.shape[0]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        s = s.masked_fill(~keep, float("-inf"))
    return s, vv, kk


def _probabilities(q, k, v, causal, scale):
    s, vv, _ = _scores(q, k, v, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]), lse, vv


def merge_weight(lse1: torch.Tensor, lse2: torch.Tensor):
    """Log-sum-exps [H, L] of two partial attentions of the same rows over disjoint keys ->
    (w [L, H, 1]: the second part's share e^(lse2 - lse) of each row, lse = log(e^lse1 + e^lse2))."""
    lse = torch.logaddexp(lse1, lse2)
    return torch.exp(lse2 - lse).transpose(0, 1)[..., None], lse


def merge_partials(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor):
    """Merge two partial attentions: o1, o2 [L, H, D], lse1, lse2 [H, L] -> (o [L, H, D], lse [H, L]),
    o = o1 (1 - w) + o2 w (`merge_weight`)."""
    w, lse = merge_weight(lse1, lse2)
    # lerp computes in float32 even for bf16 tensors; w is rounded to o's dtype (2^-9 relative in bf16)
    return torch.lerp(o1, o2, w.to(o1.dtype)), lse


# --------------------------------------------------------------------------- the two parts

_state: dict[str, object] = {"cudnn": None}  # cuDNN attention usable for the prompt part (None: not tried yet)


def _fast(q) -> bool:
    """Do the CUDA kernels take these tensors? (flash-attention and cuDNN: bf16/fp16 only)"""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


def _use_cudnn() -> bool:
    return bool(_state["cudnn"] is not False and torch.backends.cuda.cudnn_sdp_enabled())


def _bhsd(x):  # [L, H, D] -> [1, H, L, D] view
    return x.transpose(0, 1)[None]


def _no_dropout_state(device):
    """The RNG state flash-attention's backward takes (unused without dropout), as torch's varlen_attn passes it."""
    return torch.zeros(2, dtype=torch.uint64, device=device), torch.empty(0, device=device)


def _flash(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
    out, lse, *_ = aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale)
    return out, lse


def _flash_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, causal: bool, scale: float):
    rng, unused = _no_dropout_state(q.device)
    return aten._flash_attention_backward(dout, q, k, v, out, lse.contiguous(), cu_q, cu_k, max_q, max_k, 0.0, causal,
                                          rng, unused, scale=scale)


class SplitSizes(NamedTuple):
    """The host-side sizes of a split layout (`split_layout`)."""

    groups: int  # packed groups n
    prompt_tokens: int  # the prompts fill rows [0, prompt_tokens), the completions the rest
    longest_prompt: int
    longest_block: int  # most completion tokens of one group
    longest: int  # the longest completion


def split_layout(prompts: list[int], completions: list[list[int]]) -> tuple[list[int], SplitSizes]:
    """Segment offsets of packed groups: prompts[g] tokens of prompt g, completions[g] the
    lengths of its completions (empty ones take no tokens).

    Returns (bounds, sizes): bounds = cu_prompt [n + 1] (prompt starts, from row 0), then
    cu_block [n + 1] (each group's first completion row, counted from `prompt_tokens`), then
    cu_own [m + 1] (each non-empty completion's first row, from `prompt_tokens`).
    E.g. prompts [3, 2], completions [[2, 0, 3], [1]] -> [0, 3, 5,  0, 5, 6,  0, 2, 5, 6].
    """
    if len(prompts) != len(completions) or not prompts or min(prompts) < 1:
        raise ValueError(f"split layout: one non-empty prompt per group, got {prompts} and {len(completions)} groups")
    cu_p, cu_b, cu_own = [0], [0], [0]
    for p, lengths in zip(prompts, completions):
        cu_p.append(cu_p[-1] + p)
        cu_b.append(cu_b[-1] + sum(lengths))
        for n in lengths:
            if n:
                cu_own.append(cu_own[-1] + n)
    own = [b - a for a, b in zip(cu_own, cu_own[1:])]
    sizes = SplitSizes(groups=len(prompts), prompt_tokens=cu_p[-1], longest_prompt=max(prompts),
                       longest_block=max(sum(c) for c in completions), longest=max(own, default=0))
    return cu_p + cu_b + cu_own, sizes


def _offsets(bounds: torch.Tensor, groups: int):
    """(cu_prompt, cu_block, cu_own) views of a `split_layout` tensor."""
    n = groups + 1
    return bounds[:n], bounds[n : 2 * n], bounds[2 * n :]


def _host_pairs(cu: torch.Tensor):
    b = cu.tolist()
    return list(zip(b[:-1], b[1:]))


def _prompt_part(q, kp, vp, bounds, sizes: SplitSizes, scale: float):
    """Every query q [T, Hq, D] over its group's prompt keys kp, vp [Pn, Hkv, D] (the prompts
    concatenated): prompt rows causal, completion rows over their whole prompt.
    -> (out [T, Hq, D], lse [Hq, T])"""
    P, T = sizes.prompt_tokens, q.shape[0]
    if _fast(q) and sizes.groups == 1 and _use_cudnn():
        try:
            # cuDNN's causal mask is aligned top-left (query i sees keys 0..i): with T queries
            # and P keys that is exactly this part, as every completion row has i >= P.
            r = aten._scaled_dot_product_cudnn_attention(_bhsd(q), _bhsd(kp), _bhsd(vp), None, True, 0.0, True, False,
                                                         scale=scale)
            _state["cudnn"] = True
            return r[0][0].transpose(0, 1), r[1].reshape(q.shape[1], T)
        except RuntimeError as e:  # a cuDNN without this shape or GQA: flash-attention from now on
            if _state["cudnn"]:
                raise
            warnings.warn(f"split attention: cuDNN attention unavailable ({str(e)[:120]}); using flash-attention")
            _state["cudnn"] = False
    cu_p, cu_b, _ = _offsets(bounds, sizes.groups)
    # flash-attention aligns causal masks bottom-right: prompt rows and completion rows separately
    if _fast(q):
        parts = [_flash(q[:P], kp, vp, cu_p, cu_p, sizes.longest_prompt, sizes.longest_prompt, True, scale)]
        if T > P:
            parts.append(_flash(q[P:], kp, vp, cu_b, cu_p, sizes.longest_block, sizes.longest_prompt, False, scale))
    else:
        prompts, blocks = _host_pairs(cu_p), _host_pairs(cu_b)
        parts = [attend(q[s:e], kp[s:e], vp[s:e], True, scale) for s, e in prompts]
        parts += [attend(q[P + s : P + e], kp[ps:pe], vp[ps:pe], False, scale)
                  for (s, e), (ps, pe) in zip(blocks, prompts) if e > s]
    return torch.cat([o for o, _ in parts]), torch.cat([lse for _, lse in parts], dim=1)


def _prompt_part_backward(dout, q, kp, vp, out, lse, bounds, sizes: SplitSizes, scale: float):
    """(dq [T, Hq, D], dkp, dvp [Pn, Hkv, D]) of `_prompt_part`, given the rows' merged out and lse."""
    P, T = sizes.prompt_tokens, q.shape[0]
    if _fast(q) and sizes.groups == 1 and _state["cudnn"]:
        no_seed = torch.empty((), dtype=torch.int64, device=q.device)
        dq, dk, dv = aten._scaled_dot_product_cudnn_attention_backward(
            _bhsd(dout), _bhsd(q), _bhsd(kp), _bhsd(vp), _bhsd(out), lse.contiguous().view(1, lse.shape[0], T, 1),
            no_seed, no_seed, None, None, None, T, P, 0.0, True, scale=scale)
        return dq[0].transpose(0, 1), dk[0].transpose(0, 1), dv[0].transpose(0, 1)
    cu_p, cu_b, _ = _offsets(bounds, sizes.groups)
    if _fast(q):
        rows = [(slice(0, P), cu_p, sizes.longest_prompt, True)]
        if T > P:
            rows.append((slice(P, T), cu_b, sizes.longest_block, False))
        grads = [_flash_backward(dout[r], q[r], kp, vp, out[r], lse[:, r], cu_q, cu_p, n, sizes.longest_prompt, causal,
                                 scale) for r, cu_q, n, causal in rows]
        return torch.cat([g[0] for g in grads]), sum(g[1] for g in grads), sum(g[2] for g in grads)
    dq, dk, dv = torch.empty_like(q), torch.zeros_like(kp), torch.zeros_like(vp)
    for (s, e), (bs, be) in zip(_host_pairs(cu_p), _host_pairs(cu_b)):
        r = slice(s, e)
        parts = [(r, True)] + ([(slice(P + bs, P + be), False)] if be > bs else [])
        for rr, causal in parts:
            g = attend_backward(dout[rr], q[rr], kp[r], vp[r], out[rr], lse[:, rr], causal, scale)
            dq[rr] = g[0]
            dk[r] += g[1]
            dv[r] += g[2]
    return dq, dk, dv


def _own_part(qc, kc, vc, cu_own, longest: int, scale: float):
    """Each completion causal on its own keys: qc [Tc, Hq, D], kc, vc [Tc, Hkv, D], cu_own
    [m + 1] int32 completion starts from 0. -> (out [Tc, Hq, D], lse [Hq, Tc])"""
    if _fast(qc):
        return _flash(qc, kc, vc, cu_own, cu_own, longest, longest, True, scale)
    parts = [attend(qc[s:e], kc[s:e], vc[s:e], True, scale) for s, e in _host_pairs(cu_own)]
    return torch.cat([o for o, _ in parts]), torch.cat([lse for _, lse in parts], dim=1)


def _own_part_backward(dout, qc, kc, vc, out, lse, cu_own, longest: int, scale: float):
    if _fast(qc):
        return _flash_backward(dout, qc, kc, vc, out, lse, cu_own, cu_own, longest, longest, True, scale)
    grads = [attend_backward(dout[s:e], qc[s:e], kc[s:e], vc[s:e], out[s:e], lse[:, s:e], True, scale)
             for s, e in _host_pairs(cu_own)]
    return tuple(torch.cat(g) for g in zip(*grads))


# --------------------------------------------------------------------------- the operator

@torch.library.custom_op("tirgrpo::split_prefix_attention", mutates_args=())
def _split_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor, groups: int,
                   prompt_tokens: int, longest_prompt: int, longest_block: int, longest: int,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    # An opaque operator to torch.compile: the compiled decoder layers call it as one node.
    # (Integers, not a SplitSizes: custom operators take tensors and scalars only.)
    sizes = SplitSizes(groups, prompt_tokens, longest_prompt, longest_block, longest)
    P, T = prompt_tokens, q.shape[0]
    out, lse = _prompt_part(q, k[:P], v[:P], bounds, sizes, scale)
    out, lse = out.contiguous(), lse.contiguous()
    if T > P:
        o2, l2 = _own_part(q[P:], k[P:], v[P:], _offsets(bounds, groups)[2], longest, scale)
        w, lse[:, P:] = merge_weight(lse[:, P:], l2)
        out[P:].lerp_(o2, w.to(out.dtype))  # one pass over the completion rows, in place (`merge_partials`)
    return out, lse


@_split_forward.register_fake
def _(q, k, v, bounds, groups, prompt_tokens, longest_prompt, longest_block, longest, scale):
    lse_dtype = torch.promote_types(q.dtype, torch.float32)  # float32 for bf16 inputs, as the kernels return
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=lse_dtype)


@torch.library.custom_op("tirgrpo::split_prefix_attention_backward", mutates_args=())
def _split_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                    lse: torch.Tensor, bounds: torch.Tensor, groups: int, prompt_tokens: int, longest_prompt: int,
                    longest_block: int, longest: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sizes = SplitSizes(groups, prompt_tokens, longest_prompt, longest_block, longest)
    P, T = prompt_tokens, q.shape[0]
    dq, dk, dv = _prompt_part_backward(dout, q, k[:P], v[:P], out, lse, bounds, sizes, scale)
    dq = dq.contiguous()
    if T > P:  # the prompt part gave the prompts' keys their gradient, the own part gives the completions'
        dq2, dk2, dv2 = _own_part_backward(dout[P:], q[P:], k[P:], v[P:], out[P:], lse[:, P:],
                                           _offsets(bounds, groups)[2], longest, scale)
        dq[P:] += dq2
        dk, dv = torch.cat([dk, dk2]), torch.cat([dv, dv2])
    return dq, dk.contiguous(), dv.contiguous()


@_split_backward.register_fake
def _(dout, q, k, v, out, lse, bounds, groups, prompt_tokens, longest_prompt, longest_block, longest, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, bounds, *args = inputs
    ctx.save_for_backward(q, k, v, bounds, *output)
    ctx.args = tuple(args)


def _backward(ctx, dout, _dlse):
    q, k, v, bounds, out, lse = ctx.saved_tensors
    dq, dk, dv = _split_backward(dout.contiguous(), q, k, v, out, lse, bounds, *ctx.args)
    return (dq, dk, dv) + (None,) * (1 + len(ctx.args))


_split_forward.register_autograd(_backward, setup_context=_setup_context)


def split_prefix_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor,
                           sizes: SplitSizes, scale: float | None = None) -> torch.Tensor:
    """Attention of packed groups: q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D].

    bounds, sizes: `split_layout` of the packed groups (bounds as an int32 tensor on q's
    device): the prompts in rows [0, sizes.prompt_tokens), then each group's completions.
    Differentiable in q, k, v.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _split_forward(q, k, v, bounds, sizes.groups, sizes.prompt_tokens, sizes.longest_prompt,
                          max(1, sizes.longest_block), max(1, sizes.longest), float(scale))[0]
