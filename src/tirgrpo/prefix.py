"""Shared-prefix training: one forward pass over each group's prompt.

The G completions of a group share one long prompt. Instead of G rows
[prompt, completion_i] (G copies of the prompt in the forward and the backward), a group
is packed as one sequence

    [prompt | completion_1 | completion_2 | ... | completion_G]

with an attention mask in which prompt tokens are causal among themselves and each
completion token sees the whole prompt and its own completion's past only, and position
ids that restart at the prompt's end for every completion. Every completion token then has
exactly the context (keys, values, positions) it has in the unshared layout, so its
log-prob and its gradients are the same, for 3072 + 16 x 1024 = 19,456 tokens instead of
16 x 4096 = 65,536. The first token of every completion is predicted from the last prompt
position, so log-probs are read at an explicit source index, not at t - 1.

The mask is a dense boolean [1, 1, T, T] tensor, which transformers' `sdpa` and `eager`
attention take as a custom 4D mask (a FlexAttention block mask that skips the masked blocks
is the faster path on GPU; not built yet).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tirgrpo.errors import TirgrpoError


@dataclass
class PackedGroup:
    """One packed sequence: a prompt and some of its completions.

    input_ids, position_ids: [1, T]; mask: [1, 1, T, T] bool (True = may attend);
    source, targets, row, col: [N] long — completion token n is targets[n], predicted from
    the hidden state at source[n]; it belongs at (row[n], col[n]) of the [rows, width]
    completion layout. completion_mask: [rows, width] bool.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor
    targets: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[1]


def group_attention_mask(segment: torch.Tensor) -> torch.Tensor:
    """[T] segment ids (0 = prompt, i = completion i) -> [T, T] bool: causal, and a
    completion token sees the prompt and its own segment only."""
    t = torch.arange(segment.numel(), device=segment.device)
    causal = t[:, None] >= t[None, :]
    return causal & ((segment[None, :] == 0) | (segment[:, None] == segment[None, :]))


def pack_group(prompt: list[int], completions: list[list[int]], width: int, device=None) -> PackedGroup:
    """Pack one prompt and its completions (token ids); width = columns of the completion layout."""
    if not prompt:
        raise TirgrpoError("shared prefix: empty prompt")
    P = len(prompt)
    ids, seg, pos = list(prompt), [0] * P, list(range(P))
    source, targets, row, col = [], [], [], []
    for i, comp in enumerate(completions):
        start = len(ids)
        for j, tok in enumerate(comp):
            source.append(P - 1 if j == 0 else start + j - 1)
            targets.append(tok)
            row.append(i)
            col.append(j)
        ids += comp
        seg += [i + 1] * len(comp)
        pos += list(range(P, P + len(comp)))
    cmask = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, comp in enumerate(completions):
        cmask[i, : len(comp)] = True
    seg_t = torch.tensor(seg)
    as_long = dict(dtype=torch.long, device=device)
    return PackedGroup(
        input_ids=torch.tensor([ids], **as_long),
        position_ids=torch.tensor([pos], **as_long),
        mask=group_attention_mask(seg_t)[None, None].to(device),
        source=torch.tensor(source, **as_long),
        targets=torch.tensor(targets, **as_long),
        row=torch.tensor(row, **as_long),
        col=torch.tensor(col, **as_long),
        completion_mask=cmask.to(device),
    )


def split_group(prompt_len: int, lengths: list[int], budget: int) -> list[list[int]]:
    """Indices of a group's completions per packed micro-batch, each within `budget` tokens.

    A group that does not fit is split; each part repeats the prompt (the prompt's forward
    is recomputed per part). A completion that alone exceeds the budget gets its own part.
    budget <= 0: the whole group in one part.
    """
    parts: list[list[int]] = [[]]
    used = prompt_len
    for i, n in enumerate(lengths):
        if budget > 0 and parts[-1] and used + n > budget:
            parts.append([])
            used = prompt_len
        parts[-1].append(i)
        used += n
    return parts


def packed_logprobs(model, group: PackedGroup, chunk_tokens: int = 1024, temperature: float = 1.0):
    """Per-token log-probs and entropies [rows, width] of a packed group's completion tokens.

    Gradients flow to the model as in `tirgrpo.logprobs.token_logprobs`.
    """
    from tirgrpo.logprobs import _decoder_and_head, chunked_token_logprobs

    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=group.input_ids, attention_mask=group.mask, position_ids=group.position_ids,
                     use_cache=False).last_hidden_state[0]
    logp, ent = chunked_token_logprobs(hidden[group.source], head.weight, group.targets, chunk_tokens,
                                       temperature, getattr(head, "bias", None))
    shape = group.completion_mask.shape
    out_logp = logp.new_zeros(shape).index_put((group.row, group.col), logp)
    out_ent = ent.new_zeros(shape).index_put((group.row, group.col), ent)
    return out_logp, out_ent
