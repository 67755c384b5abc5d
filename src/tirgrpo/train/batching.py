"""Packing sequences into micro-batches by a token budget, and padding them."""

from __future__ import annotations

import torch


def pack_by_tokens(lengths: list[int], budget: int) -> list[list[int]]:
    """Group sequence indices into micro-batches whose padded size rows * max_len <= budget.

    Longest first, so rows of similar length share a micro-batch and padding stays small.
    A sequence longer than the budget gets a micro-batch of its own. budget <= 0: one batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if budget <= 0:
        return [order] if order else []
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def right_pad(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int, device=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate prompt + completion per row and right-pad.

    Returns input_ids [B, T] long, attention_mask [B, T] long, completion_mask [B, T] bool
    (true at positions holding completion tokens: the targets of the loss).
    """
    rows = [p + c for p, c in zip(prompts, completions)]
    T = max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    comp = torch.zeros((B, T), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, : len(p) + len(c)] = 1
        comp[i, len(p) : len(p) + len(c)] = True
    return ids.to(device), attn.to(device), comp.to(device)

