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

Several groups share one forward pass when they fit the micro-batch budget (`pack_groups`):
the prompts first, then each group's completions, [p_1 | p_2 | c_1,1 ... | c_2,1 ...], with
the mask also confined to a token's own group. A pass of many short groups then runs its
projections and MLP as one large matmul instead of one small one per group, while the
attention still computes only the pairs a group's mask allows.

Three forms of the same mask:

* `dense`: a boolean [1, 1, T, T] tensor, which transformers' `sdpa` and `eager` attention
  take as a custom 4D mask. Simple and exact, but sdpa then runs its masked kernel over all
  T^2 query-key pairs although ~80% are masked out (G = 16, 3072 + 16 x 1024).
* `block` (the default on CUDA for fp32 models): a FlexAttention `BlockMask` over 128 x 128 tiles. Tiles
  wholly masked are skipped, tiles wholly visible run without evaluating the mask, only
  tiles on a boundary evaluate `mask_mod`. The packed sequence is padded to a multiple of
  128 with tokens of their own segment (never read). The model's attention must be
  `PREFIX_ATTENTION` (see `use_prefix_attention`), which sends a `BlockMask` to FlexAttention
  and any other mask to sdpa, so the unshared path and generation are unchanged.
* `split` (the default on CUDA in bf16/fp16): no mask at all (`kernels/split_attention.py`). All
  tokens against their prompt's keys is one cuDNN call for one group (causal, aligned
  top-left) or two variable-length flash-attention calls for several, each completion
  against its own keys one variable-length flash-attention call; the two are
  merged by their log-sum-exp. Only the visible pairs are computed, on torch's fastest kernels (cuDNN's
  and flash-attention's on CUDA), with a plain-torch version of the same math on CPU. The
  mask travels as the [1, 1, 1, S] int32 tensor of segment offsets (`split_attention.split_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tirgrpo.errors import TirgrpoError

BLOCK = 128  # FlexAttention's tile size; block-mask sequences are padded to a multiple of it
PREFIX_ATTENTION = "tirgrpo_prefix"  # transformers attention implementation registered below


@dataclass
class PackedGroup:
    """One packed sequence: one or more prompts and some of their completions.

    input_ids, position_ids: [1, T]; mask: [1, 1, T, T] bool (True = may attend), the
    same as a FlexAttention BlockMask, or the split form's [1, 1, 1, S] segment offsets
    (`split_attention.split_layout`); source, targets, row, col: [N] long — completion token
    n is targets[n], predicted from the hidden state at source[n]; it belongs at (row[n],
    col[n]) of the [rows, width] completion layout. completion_mask: [rows, width] bool.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    mask: object  # torch.Tensor ("dense", "split") or a FlexAttention BlockMask ("block")
    source: torch.Tensor
    targets: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    completion_mask: torch.Tensor
    split: object = None  # the split form's `SplitSizes`: its kernels size their grids by them
    form: str = "dense"
    """Which attention reads `mask`: "dense", "block" or "split"."""

    @property
    def tokens(self) -> int:
        return self.input_ids.shape[1]


def visible(segment: torch.Tensor, group: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """May query position q attend to key position kv? (broadcasting index tensors)

    segment [T]: 0 for prompt tokens, i >= 1 for completion i; group [T]: which packed group
    a token belongs to. Causal, within one group, and a completion token sees its prompt and
    its own segment only.
    """
    return (q >= kv) & (group[q] == group[kv]) & ((segment[kv] == 0) | (segment[q] == segment[kv]))


def group_attention_mask(segment: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """[T] segment ids (0 = prompt, i = completion i) and group ids (None: one group) ->
    [T, T] bool, `visible` for every pair."""
    t = torch.arange(segment.numel(), device=segment.device)
    group = torch.zeros_like(segment) if group is None else group
    return visible(segment, group, t[:, None], t[None, :])


def pack_group(prompt: list[int], completions: list[list[int]], width: int, device=None,
               mask: str = "dense", pad_id: int = 0) -> PackedGroup:
    """Pack one prompt and its completions: `pack_groups` with one group."""
    return pack_groups([(prompt, completions)], width, device, mask, pad_id)


def pack_groups(groups: list[tuple[list[int], list[list[int]]]], width: int, device=None, mask: str = "dense",
                pad_id: int = 0) -> PackedGroup:
    """Pack (prompt, completions) groups (token ids) into one sequence; width = columns of the
    completion layout, whose rows are the completions in order, group after group.

    Layout: every prompt first, then each group's completions, [p_1 | p_2 | c_1,1 | c_1,2 |
    c_2,1 ...], so the split form's kernels see the prompts and the completions as two
    contiguous runs. mask: "dense" (bool tensor), "block" (FlexAttention BlockMask; the
    sequence is padded with `pad_id` to a multiple of BLOCK, the padding forming a group of
    its own) or "split" (`split_attention.split_layout` offsets).
    """
    from tirgrpo.kernels.split_attention import split_layout

    if not groups or any(not prompt for prompt, _ in groups):
        raise TirgrpoError("shared prefix: empty prompt")
    if mask not in ("dense", "block", "split"):
        raise TirgrpoError(f"shared prefix: mask must be 'dense', 'block' or 'split', got {mask!r}")
    ids, seg, grp, pos, last = [], [], [], [], []
    for g, (prompt, _) in enumerate(groups):
        ids += prompt
        seg += [0] * len(prompt)
        grp += [g] * len(prompt)
        pos += range(len(prompt))
        last.append(len(ids) - 1)  # each completion's first token is predicted from here
    source, targets, row, col, lengths = [], [], [], [], []
    for g, (prompt, completions) in enumerate(groups):
        P = len(prompt)
        for comp in completions:
            start, i = len(ids), len(lengths)
            for j, tok in enumerate(comp):
                source.append(last[g] if j == 0 else start + j - 1)
                targets.append(tok)
                row.append(i)
                col.append(j)
            ids += comp
            seg += [i + 1] * len(comp)
            grp += [g] * len(comp)
            pos += range(P, P + len(comp))
            lengths.append(len(comp))
    if mask == "block" and len(ids) % BLOCK:
        pad = BLOCK - len(ids) % BLOCK
        ids += [pad_id] * pad
        seg += [len(lengths) + 1] * pad
        grp += [len(groups)] * pad
        pos += range(pad)
    cmask = torch.zeros((len(lengths), width), dtype=torch.bool)
    for i, n in enumerate(lengths):
        cmask[i, :n] = True
    split = None
    if mask == "dense":
        attention = group_attention_mask(torch.tensor(seg, device=device), torch.tensor(grp, device=device))[None, None]
    elif mask == "block":
        attention = group_block_mask(torch.tensor(seg, device=device), torch.tensor(grp, device=device))
    else:
        bounds, split = split_layout([len(p) for p, _ in groups], [[len(c) for c in comps] for _, comps in groups])
        attention = torch.tensor(bounds, dtype=torch.int32, device=device)[None, None, None]
    as_long = dict(dtype=torch.long, device=device)
    return PackedGroup(
        input_ids=torch.tensor([ids], **as_long),
        position_ids=torch.tensor([pos], **as_long),
        mask=attention,
        source=torch.tensor(source, **as_long),
        targets=torch.tensor(targets, **as_long),
        row=torch.tensor(row, **as_long),
        col=torch.tensor(col, **as_long),
        completion_mask=cmask.to(device),
        split=split,
        form=mask,
    )


def group_block_mask(segment: torch.Tensor, group: torch.Tensor | None = None, rows_per_pass: int = 2048):
    """[T] segment and group ids (None: one group), T a multiple of BLOCK -> the
    `group_attention_mask` as a FlexAttention BlockMask.

    Each BLOCK x BLOCK tile is classified from the dense mask, built `rows_per_pass` query
    rows at a time (never the whole [T, T]): tiles with every pair visible are "full"
    (no mask_mod call), tiles with some visible are "partial", the rest are skipped.
    """
    from torch.nn.attention.flex_attention import BlockMask

    T = segment.numel()
    if T % BLOCK:
        raise TirgrpoError(f"shared prefix: block mask needs a length that is a multiple of {BLOCK}, got {T}")
    n = T // BLOCK
    step = max(1, rows_per_pass // BLOCK) * BLOCK
    t = torch.arange(T, device=segment.device)
    group = torch.zeros_like(segment) if group is None else group
    full, partial = [], []
    for r0 in range(0, T, step):
        dense = visible(segment, group, t[r0 : r0 + step, None], t[None, :])
        tiles = dense.view(-1, BLOCK, n, BLOCK)
        every, some = tiles.all(dim=3).all(dim=1), tiles.any(dim=3).any(dim=1)
        full.append(every)
        partial.append(some & ~every)
    full_t, partial_t = torch.cat(full), torch.cat(partial)  # [n, n] each

    def as_indices(flags: torch.Tensor):
        # Per query tile: how many kv tiles, and their indices first (stable order).
        order = torch.argsort(flags.to(torch.int8), dim=-1, descending=True, stable=True)
        return flags.sum(-1).to(torch.int32)[None, None], order.to(torch.int32)[None, None]

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(segment, group, q_idx, kv_idx)

    kv_num, kv_idx = as_indices(partial_t)
    full_num, full_idx = as_indices(full_t)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(T, T))


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

    Gradients flow to the model as in `tirgrpo.train.logprobs.token_logprobs`.
    """
    from tirgrpo.train.logprobs import _decoder_and_head, chunked_token_logprobs

    decoder, head = _decoder_and_head(model)
    # the split form needs these as numbers: reading them from the mask tensor would wait for the GPU
    extra = {"prefix_form": "split", "prefix_sizes": group.split} if group.form == "split" else {}
    hidden = decoder(input_ids=group.input_ids, attention_mask=group.mask, position_ids=group.position_ids,
                     use_cache=False, **extra).last_hidden_state[0]
    logp, ent = chunked_token_logprobs(hidden[group.source], head.weight, group.targets, chunk_tokens,
                                       temperature, getattr(head, "bias", None))
    shape = group.completion_mask.shape
    out_logp = logp.new_zeros(shape).index_put((group.row, group.col), logp)
    out_ent = ent.new_zeros(shape).index_put((group.row, group.col), ent)
    return out_logp, out_ent


# --------------------------------------------------------------------------- attention dispatch

_flex = None  # FlexAttention as called by `prefix_attention`; set by `use_prefix_attention`


def _make_flex():
    """FlexAttention, compiled where it runs on CUDA (eager it is a slow reference that
    materialises the T x T scores). Created outside any traced code: when the decoder layers
    are compiled too, the layer's graph inlines this call."""
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=None: compiled for the first shape, recompiled once as dynamic when a second
    # packed length shows up (every step has different completion lengths).
    return torch.compile(flex_attention, dynamic=None) if torch.cuda.is_available() else flex_attention


def prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function: a packed group of the split form (`prefix_form` =
    "split", passed by `packed_logprobs`) -> `split_prefix_attention`, a BlockMask ->
    FlexAttention, anything else -> sdpa.

    query [B, Hq, T, D], key/value [B, Hkv, T, D]; returns ([B, T, Hq, D], None) like sdpa.
    """
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.pop("prefix_form", None) == "split":
        from tirgrpo.kernels.split_attention import split_prefix_attention

        if query.shape[0] != 1:
            raise TirgrpoError(f"split attention takes one packed sequence per forward, got a batch of {query.shape[0]}")
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # [T, heads, dim]
        out = split_prefix_attention(q, k, v, attention_mask.view(-1), kwargs["prefix_sizes"], scaling)
        return out[None], None
    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if query.device.type != "cuda":
        # The CPU reference path casts nothing itself; float32 keeps it exact for the tests.
        query, key, value = query.float(), key.float(), value.float()
    if _flex is None:
        raise TirgrpoError("prefix_attention got a block mask before use_prefix_attention() set up FlexAttention")
    out = _flex(query, key, value, block_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.to(value.dtype).transpose(1, 2).contiguous(), None


def use_prefix_attention(model) -> None:
    """Switch a transformers model (or peft wrapper) to `PREFIX_ATTENTION` so block masks work.

    Registered once; the mask function is sdpa's, so 2D padding masks behave as with sdpa.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    global _flex
    if _flex is None:
        _flex = _make_flex()
    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, sdpa_mask)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(PREFIX_ATTENTION)
