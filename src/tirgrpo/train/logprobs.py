"""Per-token log-probs and entropies without materialising [batch, seq, vocab] logits.

With a vocabulary of 151,936, the logits of 4 x 4,096 tokens are 10 GB in float32, and
autograd would keep them (and their softmax) for the backward pass. Here the decoder runs
without its LM head; only the hidden states of positions that predict a completion token
are gathered (prompt positions never meet the LM head), and `ChunkedTokenLogProbs` pushes
them through the head `chunk_tokens` rows at a time, keeping one [chunk, V] block alive.

Math, for one token with hidden h, head W [V, H] (bias b), temperature tau, target y:

    z      = (W h + b) / tau              [V] logits, float32
    lse    = logsumexp(z)
    logp   = z_y - lse
    p      = exp(z - lse)                 softmax
    H      = lse - sum_v p_v z_v          entropy of p
    dlogp/dz = onehot(y) - p   =>   dlogp/dh = W^T (onehot(y) - p) / tau,
                                    dlogp/dW = (onehot(y) - p) h^T / tau,  dlogp/db = (onehot(y) - p) / tau

The forward saves only hidden, W, targets and lse [N]; the backward recomputes each
chunk's logits (one extra matmul, the same trade as activation checkpointing).
"""

from __future__ import annotations

import torch

from tirgrpo.kernels import logprob as logprob_kernels

WEIGHT_GRAD_TOKENS = 1024  # tokens whose logit gradients go into one addmm of the LM-head weight gradient

# --------------------------------------------------------------------------- matmul helpers


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the LM-head matmul: autocast's when active, else the wider of the two."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


_CUDA_OUT_DTYPE_OK: bool | None = None  # does torch.mm(..., out_dtype=float32) work here?


def _mm_f32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with a float32 result (added in place into the fp32 `acc` when given).

    a and b share a dtype. For bf16/fp16 on CUDA, `out_dtype=float32` keeps tensor-core speed
    but returns the fp32 accumulator instead of rounding logits to bf16 (bf16 rounding of a
    logit of 20 is off by up to 0.06 nats, a third of the clip range). Elsewhere the
    operands are upcast.
    """
    global _CUDA_OUT_DTYPE_OK
    if a.dtype == torch.float32:
        return a @ b if acc is None else acc.addmm_(a, b)
    if a.is_cuda and _CUDA_OUT_DTYPE_OK is not False:
        try:
            if acc is None:
                out = torch.mm(a, b, out_dtype=torch.float32)
            else:  # accumulate in place: no [V, H] temporary per chunk
                out = torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            _CUDA_OUT_DTYPE_OK = True
            return out
        except torch.OutOfMemoryError:
            raise  # a real failure, not a missing kernel
        except (RuntimeError, TypeError, NotImplementedError):
            _CUDA_OUT_DTYPE_OK = False
    out = (a @ b).float() if a.is_cuda else a.float() @ b.float()  # CUDA fallback: as the HF head
    return out if acc is None else acc.add_(out)


def _chunk_logits(
    h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """z = (h W^T + b) / tau as float32: [C, H], [V, H] -> [C, V]."""
    z = _mm_f32(h, w.t())
    if bias is not None:
        z += bias.float()
    if temperature != 1.0:
        z /= temperature
    return z


# --------------------------------------------------------------------------- per-chunk softmax math


def _on_cuda_compiled(fn):
    """`fn` compiled on CUDA tensors, eager elsewhere.

    Eagerly each line below is one pass over a [C, V] fp32 block (~0.16 GB at C = 256) with a
    temporary of that size; compiled, the elementwise steps fuse into one kernel.
    """
    compiled = None

    def call(z, *args, **kwargs):
        nonlocal compiled
        if not z.is_cuda:
            return fn(z, *args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True)
        return compiled(z, *args, **kwargs)

    call.__doc__ = fn.__doc__
    return call


def softmax_stats(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """z [C, V] fp32 logits, targets [C] -> (logp [C], entropy [C], lse [C]), nats.

    lse = logsumexp(z); logp = z_y - lse; entropy = lse - sum_v p_v z_v with p = softmax(z).
    On CUDA a Triton kernel (kernels/logprob.py, one read of z), elsewhere `softmax_stats_torch`.
    """
    if z.is_cuda and logprob_kernels.available(z.device):
        return logprob_kernels.softmax_stats(z, targets)
    return softmax_stats_torch(z, targets)


def softmax_stats_torch(z: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`softmax_stats` in plain torch, computed from z - max(z) so exp never overflows."""
    z_max = z.amax(dim=-1, keepdim=True)
    shifted = z - z_max
    q = shifted.exp()
    total = q.sum(dim=-1)
    log_total = total.log()
    logp = shifted.gather(1, targets[:, None]).squeeze(1) - log_total
    entropy = log_total - (q * shifted).sum(dim=-1) / total
    return logp, entropy, z_max.squeeze(1) + log_total


@_on_cuda_compiled
def logit_grad(z: torch.Tensor, lse: torch.Tensor, g: torch.Tensor, targets: torch.Tensor, tau: float,
               dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """d(sum_n g_n logp_n)/dz for one chunk: g * (onehot(y) - softmax(z)) / tau, as `dtype`.

    z [C, V] fp32 logits (already divided by tau), lse [C], g [C] upstream gradient, targets [C];
    out: a [C, V] `dtype` tensor to write into (compiled, no temporary), else a new one.
    """
    p = (z - lse[:, None]).exp()
    hit = torch.arange(z.shape[1], device=z.device)[None, :] == targets[:, None]
    grad = (g[:, None] * (hit.to(z.dtype) - p) / tau).to(dtype)
    return grad if out is None else out.copy_(grad)


# --------------------------------------------------------------------------- autograd function


class ChunkedTokenLogProbs(torch.autograd.Function):
    """(hidden [N, H], weight [V, H], bias [V] | None, targets [N]) -> (logp [N], entropy [N]).

    Differentiable in hidden, weight and bias (logp only; entropy is a diagnostic)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_tokens, temperature):
        n = hidden.shape[0]
        cd = _compute_dtype(hidden, weight)
        dev = hidden.device.type
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            w = weight.to(cd)  # no copy when it already is cd
            for s in range(0, n, chunk_tokens):
                e = min(s + chunk_tokens, n)
                z = _chunk_logits(hidden[s:e].to(cd), w, bias, temperature)  # [C, V] fp32
                logp[s:e], entropy[s:e], lse[s:e] = softmax_stats(z, targets[s:e])
                del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_tokens = chunk_tokens
        ctx.temperature = temperature
        ctx.cd = cd
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if grad_logp is None or not (need_h or need_w or need_b):
            return None, None, None, None, None, None
        n, cd, tau = hidden.shape[0], ctx.cd, ctx.temperature
        dev = hidden.device.type
        grad_h = torch.empty_like(hidden) if need_h else None
        # weight/bias gradients accumulate over chunks in fp32 so a bf16 head loses nothing
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        g_all = grad_logp.float()
        chunk = ctx.chunk_tokens
        # The weight gradient is a [V, H] fp32 accumulator (0.9 GB for 152K x 1536) that each
        # addmm reads and writes whole: done per 256-token chunk on an H100 it is bound by
        # that traffic (~0.9 ms each), so on CUDA the logit gradients of WEIGHT_GRAD_TOKENS
        # tokens are gathered (in the compute dtype) and added in one matmul.
        group = max(chunk, WEIGHT_GRAD_TOKENS // chunk * chunk) if need_w and weight.is_cuda else chunk
        with torch.no_grad(), torch.autocast(dev, enabled=False):
            w = weight.to(cd)
            for gs in range(0, n, group):
                ge = min(gs + group, n)
                dz_group = torch.empty((ge - gs, w.shape[0]), dtype=cd, device=w.device) if need_w else None
                for s in range(gs, ge, chunk):
                    e = min(s + chunk, ge)
                    h = hidden[s:e].to(cd)
                    # the logits are recomputed rather than kept: one [C, V] block at a time
                    z = _chunk_logits(h, w, bias, tau)
                    slot = dz_group[s - gs:e - gs] if need_w else None  # written in place: no extra [C, V]
                    if need_b:  # the bias gradient is summed in fp32 before the cast
                        dz32 = logit_grad(z, lse[s:e], g_all[s:e], targets[s:e], tau, torch.float32)
                        grad_b += dz32.sum(dim=0)
                        dz = dz32.to(cd) if slot is None else slot.copy_(dz32)
                        del dz32
                    else:
                        dz = logit_grad(z, lse[s:e], g_all[s:e], targets[s:e], tau, cd, out=slot)
                    del z
                    if need_h:
                        grad_h[s:e] = _mm_f32(dz, w).to(hidden.dtype)  # [C, V] @ [V, H]
                    del dz, slot
                if need_w:
                    _mm_f32(dz_group.t(), hidden[gs:ge].to(cd), acc=grad_w)  # += [V, G] @ [G, H]
                del dz_group
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        if need_b:
            grad_b = grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax((hidden @ weight.T + bias) / temperature)[targets], chunk by chunk.

    hidden [N, H], weight [V, H], targets [N] long, bias [V] or None.
    Returns (logp [N] float32, differentiable in hidden/weight/bias;
             entropy [N] float32, no gradient).
    At most [chunk_tokens, V] logits exist at any time (on CUDA the backward also gathers the
    logit gradients of WEIGHT_GRAD_TOKENS tokens, in the compute dtype, for the weight
    gradient); the log-softmax is float32 even when hidden/weight are bf16.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden [N, H] and weight [V, H] expected, got {tuple(hidden.shape)}, {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must be [N] = [{hidden.shape[0]}], got {tuple(targets.shape)}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return ChunkedTokenLogProbs.apply(hidden, weight, bias, targets.long(), int(chunk_tokens), float(temperature))


# --------------------------------------------------------------------------- model wrapper


def _decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The decoder stack (final norm included, LM head excluded) and the LM head module.

    A peft PeftModel is unwrapped to its transformers model, whose layers already hold the
    injected LoRA modules, so disabling adapters (the reference policy) still applies.
    """
    base = model
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        base = model.get_base_model()
    cfg = getattr(base, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(f"token_logprobs: models with config.{attr} are not supported")
    decoder = base.get_decoder()
    head = base.get_output_embeddings()
    if decoder is base or head is None:
        raise NotImplementedError(f"token_logprobs: {type(base).__name__} has no separate decoder and LM head")
    # a LoRA (or other tuner) layer on the head: its `.weight` is the base weight without the
    # adapter delta, so the chunked head would compute the wrong logits
    if hasattr(head, "base_layer") and not getattr(head, "disable_adapters", True):
        raise NotImplementedError("token_logprobs: adapters on the LM head are not supported; train it fully or not at all")
    # sharded across ranks (train/dist.py): the decoder through the root unit's FSDP hooks
    return getattr(base, "sharded_decoder", decoder), head  # dist.SHARDED_DECODER


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor,
    chunk_tokens: int = 1024,
    temperature: float = 1.0,
    position_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and entropies of the target tokens of a padded batch.

    input_ids [B, T] long, attention_mask [B, T] (1 = real token, left or right padding),
    target_mask [B, T] bool (the completion tokens to score; never position 0).
    Returns (logp [B, T] float32, entropy [B, T] float32): logp[b, t] = log p(input_ids[b, t]
    | input_ids[b, :t]) under softmax(logits / temperature) where target_mask[b, t], else 0;
    entropy[b, t] is that next-token distribution's entropy (no gradient), else 0.
    position_ids [B, T]: defaults to cumsum(attention_mask) - 1, so left padding gives the
    same positions as an unpadded sequence.
    Works for transformers causal LMs (Qwen2, Llama, ...) and peft PeftModels around them.
    """
    if input_ids.shape != attention_mask.shape or input_ids.shape != target_mask.shape:
        raise ValueError("input_ids, attention_mask and target_mask must all be [B, T]")
    target_mask = target_mask.bool()
    if target_mask[:, 0].any():
        raise ValueError("target_mask[:, 0] is set: the first token has no context to be predicted from")
    decoder, head = _decoder_and_head(model)
    if position_ids is None:
        position_ids = (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)
    out = decoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, T, H]

    # hidden at t-1 predicts token t: select the predicting positions of the targets only
    b, t = input_ids.shape
    pred_mask = target_mask[:, 1:]  # [B, T-1], True where position t-1 predicts a target t
    h_sel = hidden[:, :-1][pred_mask]  # [N, H]
    y = input_ids[:, 1:][pred_mask]  # [N]
    logp_sel, ent_sel = chunked_token_logprobs(
        h_sel, head.weight, y, chunk_tokens, temperature, getattr(head, "bias", None)
    )

    # scatter back to [B, T] (out of place, so the gradient flows to logp_sel)
    flat_idx = target_mask.reshape(-1).nonzero().squeeze(1)  # row-major, same order as the selection
    logp = torch.zeros(b * t, dtype=torch.float32, device=hidden.device).index_put((flat_idx,), logp_sel)
    entropy = torch.zeros(b * t, dtype=torch.float32, device=hidden.device).index_put((flat_idx,), ent_sel)
    return logp.view(b, t), entropy.view(b, t)
