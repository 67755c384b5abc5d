"""The GRPO objective as pure functions of tensors.

Shapes: N = completions in a rollout batch (prompts * G), B = completions in the
(micro-)batch being trained, T = padded completion length. `mask` [B, T] marks real
completion tokens (1) against padding (0). All log-probs are per token, float32.

The loss of one completion token t of sequence i is

    r    = exp(logp - old_logp)                                   importance ratio
    L_pg = -min(r * A_i, clip(r, 1 - eps_low, 1 + eps_high) * A_i)  clipped surrogate
    L_kl = exp(ref - logp) - (ref - logp) - 1                      k3 estimate of KL(pi || ref)
    L    = L_pg + beta * L_kl

and `aggregate` turns the [B, T] per-token losses into one scalar (docs/algorithm.md
explains the three normalisations and the bias of each).
"""

from __future__ import annotations

import torch

from tirgrpo.config import LOSS_TYPES, GRPOConfig


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool, eps: float = 1e-4,
    include: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Advantage of each completion relative to its group.

    rewards: [N] float, groups are consecutive blocks of `group_size` (N % group_size == 0).
    include: [N] bool or None (all): completions that take part (`grpo.mask_truncated` leaves
    out the truncated ones); the others get advantage 0 and are not in their group's mean/std.
    Returns (adv [N] float32, num_zero_std_groups).

    adv = r - mean(group); with `scale_by_std`, divided by (std(group) + eps), where std is
    the unbiased sample std (divisor G - 1), as `torch.std` and TRL compute it, so runs are
    comparable with TRL's. A group whose rewards are all equal (or with fewer than two
    completions included) carries no learning signal: its advantages are set to exactly 0 (not
    left to float rounding of r - mean) and it is counted in `num_zero_std_groups`.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.detach().float().view(-1, group_size)  # [N/G, G]
    keep = torch.ones_like(r, dtype=torch.bool) if include is None else include.view(-1, group_size).bool()
    w = keep.float()
    n = w.sum(dim=1, keepdim=True)  # [N/G, 1] completions in each group's statistics
    mean = (r * w).sum(dim=1, keepdim=True) / n.clamp(min=1.0)
    adv = (r - mean) * w
    if scale_by_std:
        var = ((r - mean) ** 2 * w).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1.0)
        adv = adv / (var.sqrt() + eps)
    # "zero spread": every included reward identical (max == min over the included), or < 2 included
    big = torch.finfo(r.dtype).max
    flat = (torch.where(keep, r, -big).amax(dim=1) == torch.where(keep, r, big).amin(dim=1)) | (n.squeeze(1) < 2)
    adv = torch.where(flat.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.view(-1), int(flat.sum().item())


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """r = pi(token) / pi_old(token) = exp(logp - old_logp).  [B, T] -> [B, T].

    old_logp is detached: it is the constant recorded at rollout time, so the gradient of r
    is r * d logp (at r = 1, the plain policy gradient).
    """
    return torch.exp(logp - old_logp.detach())


def clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped objective with separate lower/upper clip (DAPO's clip-higher).

    ratio: [B, T], adv: [B] (one advantage per sequence, broadcast over its tokens).
    Returns (per_token_loss [B, T], clipped_low [B, T] bool, clipped_high [B, T] bool).

    loss = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A). A token is "clipped" when
    the clipped branch is the one taken and carries no gradient: low when r < 1 - eps_low
    with A < 0 (already made less likely enough), high when r > 1 + eps_high with A > 0
    (already made more likely enough) -- the same indicators TRL logs.
    """
    a = adv.unsqueeze(1)  # [B, 1]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * a
    per_token_loss = -torch.min(unclipped, clipped)
    clipped_low = (ratio < 1.0 - eps_low) & (a < 0)
    clipped_high = (ratio > 1.0 + eps_high) & (a > 0)
    return per_token_loss, clipped_low, clipped_high


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (Schulman): [B, T] -> [B, T].

    With d = ref_logp - logp, k3 = exp(d) - d - 1 >= 0; its mean over tokens sampled from pi
    is an unbiased, low-variance estimate of the KL. ref_logp is a constant (detached).
    """
    d = ref_logp.detach() - logp
    return torch.exp(d) - d - 1.0


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    max_completion_tokens: int,
    num_sequences: int | None = None,
    num_tokens: float | int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce per-token losses [B, T] under mask [B, T] to a scalar.

    grpo:    sum_i (sum_t m_it L_it / |o_i|) / num_sequences   (sequence mean, then batch mean)
    dr_grpo: sum_it m_it L_it / (num_sequences * max_completion_tokens)
    dapo:    sum_it m_it L_it / num_tokens                      (token mean over the batch)

    num_sequences / num_tokens default to this batch's B / mask.sum(). For gradient
    accumulation pass the WHOLE batch's counts: every formula above is then a plain sum of
    per-micro-batch terms, so the micro-batch losses add up to the full-batch loss exactly
    and so do their gradients.
    """
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if num_sequences is None:
        num_sequences = per_token.shape[0]
    if loss_type == "grpo":
        # |o_i| clamped to 1 so an empty completion contributes 0 instead of 0/0
        per_seq = masked.sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # [B]
        return per_seq.sum() / num_sequences
    if loss_type == "dr_grpo":
        return masked.sum() / (num_sequences * max_completion_tokens)
    if loss_type == "dapo":
        if num_tokens is None:
            num_tokens = m.sum().clamp(min=1.0)
        return masked.sum() / num_tokens
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    adv: torch.Tensor,
    mask: torch.Tensor,
    cfg: GRPOConfig,
    max_completion_tokens: int,
    num_sequences: int | None = None,
    num_tokens: float | int | torch.Tensor | None = None,
    credit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of one (micro-)batch and its diagnostics.

    logp [B, T] (requires grad), old_logp [B, T] or None, ref_logp [B, T] or None, adv [B],
    mask [B, T]. old_logp None means on-policy (first update of a rollout with
    num_iterations == 1): the ratio is exp(logp - logp.detach()) = 1 with gradient d logp.
    The KL term is added when cfg.beta > 0 (ref_logp is then required: a silently dropped
    penalty would be a wrong run); with beta == 0 a given ref_logp is only logged.
    num_sequences / num_tokens: the whole batch's counts under gradient accumulation (see
    `aggregate`).
    credit [B, T] 0/1 or None (`grpo.credit`, score/credit.py): None, every token carries the
    advantage, aggregated by cfg.loss_type. Given: the policy term is averaged over each
    sequence's credited tokens, then over sequences (the `grpo` form, whatever loss_type: a
    few decision tokens per sequence, so there is no length to normalise), and the KL term
    over all tokens by cfg.loss_type (the anchor applies to the whole completion).

    Returns (loss scalar, stats): detached 0-dim tensors, means over this micro-batch's
    masked tokens (combine micro-batches weighted by stats["num_tokens"]):
    kl, clip_low, clip_high, clip_region (either), ratio_mean, ratio_min, ratio_max,
    num_tokens. Kept as tensors so logging does not force a GPU sync per micro-batch.
    """
    if old_logp is None:
        old_logp = logp.detach()
    use_kl = cfg.beta > 0
    if use_kl and ref_logp is None:
        raise ValueError(f"beta = {cfg.beta} > 0 needs ref_logp (reference model log-probs)")

    ratio = importance_ratio(logp, old_logp)
    per_token, clipped_low, clipped_high = clipped_surrogate(ratio, adv, cfg.epsilon, cfg.epsilon_high)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else None
    if credit is None:
        if use_kl:
            per_token = per_token + cfg.beta * kl
        loss = aggregate(per_token, mask, cfg.loss_type, max_completion_tokens, num_sequences, num_tokens)
    else:
        loss = aggregate(per_token, mask * credit.to(per_token.dtype), "grpo", max_completion_tokens, num_sequences)
        if use_kl:
            loss = loss + aggregate(cfg.beta * kl, mask, cfg.loss_type, max_completion_tokens, num_sequences,
                                    num_tokens)

    with torch.no_grad():
        m = mask.bool()
        n = m.sum()
        denom = n.clamp(min=1).float()

        def masked_mean(x: torch.Tensor) -> torch.Tensor:
            return (x.float() * m).sum() / denom

        r = ratio.detach()
        big = torch.finfo(r.dtype).max
        stats = {
            "kl": masked_mean(kl.detach()) if kl is not None else torch.zeros((), device=logp.device),
            "clip_low": masked_mean(clipped_low),
            "clip_high": masked_mean(clipped_high),
            "clip_region": masked_mean(clipped_low | clipped_high),
            "ratio_mean": masked_mean(r),
            # min/max over real tokens only; an all-padding batch reports 1 (no update)
            "ratio_min": torch.where(n > 0, torch.where(m, r, big).min(), 1.0),
            "ratio_max": torch.where(n > 0, torch.where(m, r, -big).max(), 1.0),
            "num_tokens": n.float(),
        }
    return loss, stats
