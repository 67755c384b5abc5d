"""Decode attention of FastEngine's step (kernels/decode.py re-exports it): one query per row over
its prompt's keys then its own completion keys, grouped-query, as Triton kernels and a torch twin.

KV cache layout (see engine.py): a prompt's keys/values are stored once, in a *prompt cache*
[n_slots, Hkv, P_cap, D] (one layer), and each row's own generated keys/values in a
*completion cache* [B_cap, Hkv, N_cap, D]. Row b sees prompt slot prefix_slot[b], keys
0..prefix_len[b]-1, followed by its completion keys 0..comp_len[b]-1.

Split-K (flash-decoding): the keys are cut into splits of KEYS_PER_SPLIT; one program per split
writes a partial softmax (max, sum, sum of weighted values) for each query head, laid out
[B, Hq, n_splits(, D)], and a second kernel combines each head's partials. The grid is sized by
the caches' capacities, not by the rows' lengths, so it is fixed for a CUDA graph.

The G rows of a GRPO group share one prompt slot. A program per (row, kv head, split) reads the
prompt's keys G times (from L2 at best). With a *rows-of-slot index* (`prompt_rows`, built once
per decode step from prefix_slot), a program per (item, kv head, prompt split) reads a slot's keys
once for up to R rows of that slot: the rows' queries (R rows x the kv head's GROUP query heads)
are the M dimension of its tl.dot. The completion splits stay per row.
"""

from __future__ import annotations

import torch

from tirgrpo.kernels.triton_compat import INTERPRETED, tl, triton

# Keys one attention program reads (a multiple of ATTN_BLOCK_N). Smaller means more programs
# (more parallelism at small batch) but more partial results to combine.
KEYS_PER_SPLIT = 256
ATTN_BLOCK_N = 64
# Query rows (rows x query heads of one kv head) of a prompt program: its R = this // GROUP.
# 64 keeps the fp32 accumulator [64, D] and the queries in registers at D = 128.
PROMPT_TILE_M = 64
# Batches below this many rows read each row's prompt per row: on an H200 (1.5B shape, 3,072
# prompt tokens, G = 4; docs/benchmarks.md) the index made attention slower at batch 8 (0.42 vs
# 0.31 ms a step: a quarter of the programs) and faster at batch 64 (0.92 vs 1.22 ms). So do
# caches with more than half as many prompt slots as rows (a slot per row: nothing is shared,
# and each item's tile would hold one row; measured only at G = 4).
PROMPT_BATCH_MIN_ROWS = 32


# ---------------------------------------------------------------------------- rows of each prompt slot


def rows_per_item(group: int) -> int:
    """R, the most rows one prompt program serves: PROMPT_TILE_M // group, at least 1."""
    return max(1, PROMPT_TILE_M // group)


def prompt_items(B: int, n_slots: int, R: int) -> int:
    """Rows of the rows-of-slot index [n_items, R]: a bound on the items any B rows need, from shapes only.

    Keys (n_slots slots + one for rows without prompt keys) with r_k rows need sum ceil(r_k / R)
    <= ceil(B / R) + (keys in use) items, and never more than B (an item holds >= 1 row).
    """
    return min(B, -(-B // R) + n_slots + 1)  # plain ints: also without triton (the torch twin)


def no_prompt_rows(prefix_slot: torch.Tensor, prefix_len: torch.Tensor, n_slots: int, group: int) -> None:
    """No index: `decode_attention` then reads the prompt per row (the torch set; triton-perrow)."""
    return None


def prompt_rows_from_min_batch(prefix_slot: torch.Tensor, prefix_len: torch.Tensor, n_slots: int,
                               group: int) -> torch.Tensor | None:
    """`prompt_rows` for batches of at least PROMPT_BATCH_MIN_ROWS rows over a cache of at most
    B / 2 prompt slots, else None (per row); the Triton set's choice. Shapes alone decide, fixed
    for a captured graph."""
    B = prefix_slot.shape[0]
    if B < PROMPT_BATCH_MIN_ROWS or 2 * n_slots > B:
        return None
    return prompt_rows(prefix_slot, prefix_len, n_slots, group)


def prompt_rows_torch(prefix_slot: torch.Tensor, prefix_len: torch.Tensor, n_slots: int, group: int,
                      R: int | None = None) -> torch.Tensor:
    """The rows of each prompt slot, cut into items of at most R rows: [n_items, R] int32, -1 padded.

    prefix_slot, prefix_len: [B] long; n_slots: the prompt cache's slots; group: query heads per
    kv head (R defaults to `rows_per_item(group)`). Rows sorted by (slot, row index) are cut into
    items of R consecutive rows of one slot; rows with prefix_len 0 (the engine's padding rows)
    are keyed apart, as slot n_slots: they read no prompt key, whatever their slot. Every row
    0..B-1 is in exactly one item, items are filled from position 0, unused items are all -1;
    n_items = `prompt_items(B, n_slots, R)`. Only sizes decide the shape (a CUDA graph's input),
    no sort or host sync: counts over a [B, B] comparison.
    """
    B = prefix_slot.shape[0]
    R = R or rows_per_item(group)
    key = torch.where(prefix_len > 0, prefix_slot, n_slots)
    b = torch.arange(B, device=prefix_slot.device)
    same = key[:, None] == key[None, :]  # [b, j]
    rank = (same & (b[None, :] < b[:, None])).sum(1)  # rows of b's slot before b
    opens = rank % R == 0  # row j opens an item
    at_or_before = (key[None, :] < key[:, None]) | (same & (b[None, :] <= b[:, None]))  # j sorts <= b
    item = (at_or_before & opens[None, :]).sum(1) - 1
    rows = torch.full((prompt_items(B, n_slots, R), R), -1, dtype=torch.int32, device=prefix_slot.device)
    rows[item, rank % R] = b.to(torch.int32)
    return rows


@triton.jit
def _row_keys(slot_ptr, plen_ptr, b, B, n_slots):
    # A row's item key: its slot; n_slots without prompt keys; n_slots + 1 past the batch.
    live = b < B
    slot = tl.load(slot_ptr + b, mask=live, other=0)
    plen = tl.load(plen_ptr + b, mask=live, other=0)
    return tl.where(live, tl.where(plen > 0, slot, n_slots), n_slots + 1)


@triton.jit
def _decode_attention_rows_kernel(slot_ptr, plen_ptr, rows_ptr, B, n_slots, R: tl.constexpr,
                                  R_PAD: tl.constexpr, B_PAD: tl.constexpr, BLOCK: tl.constexpr):
    # Program i writes row i of `prompt_rows_torch`'s index by the same counts. Each program
    # counts over all rows itself (O(B^2) integer compares, small beside an attention program's
    # reads) so that every cell is written exactly once: no fill, no barrier, one launch.
    i = tl.program_id(0)
    b = tl.arange(0, B_PAD)
    key_b = _row_keys(slot_ptr, plen_ptr, b, B, n_slots)
    rank_b = tl.zeros([B_PAD], tl.int32)
    item_b = tl.zeros([B_PAD], tl.int32)
    for j0 in range(0, B_PAD, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        key_j = _row_keys(slot_ptr, plen_ptr, j, B, n_slots)
        rank_j = tl.zeros([BLOCK], tl.int32)
        for k0 in range(0, B_PAD, BLOCK):
            k = k0 + tl.arange(0, BLOCK)
            key_k = _row_keys(slot_ptr, plen_ptr, k, B, n_slots)
            rank_j += tl.sum(((key_k[None, :] == key_j[:, None]) & (k[None, :] < j[:, None])).to(tl.int32), axis=1)
        same = key_j[None, :] == key_b[:, None]  # [B_PAD, BLOCK]
        rank_b += tl.sum((same & (j[None, :] < b[:, None])).to(tl.int32), axis=1)
        opens = (rank_j % R == 0) & (j < B)
        at_or_before = (key_j[None, :] < key_b[:, None]) | (same & (j[None, :] <= b[:, None]))
        item_b += tl.sum((at_or_before & opens[None, :]).to(tl.int32), axis=1)
    r = tl.arange(0, R_PAD)
    hit = (item_b[None, :] - 1 == i) & (rank_b[None, :] % R == r[:, None]) & (b[None, :] < B)  # [R_PAD, B_PAD]
    row = tl.sum(tl.where(hit, b[None, :] + 1, 0), axis=1) - 1
    tl.store(rows_ptr + i * R + r, row, mask=r < R)


def prompt_rows(prefix_slot: torch.Tensor, prefix_len: torch.Tensor, n_slots: int, group: int,
                R: int | None = None) -> torch.Tensor:
    """Triton `prompt_rows_torch` (same arguments, same [n_items, R] int32 index), one launch."""
    B = prefix_slot.shape[0]
    R = R or rows_per_item(group)
    _require_contiguous(prefix_slot=prefix_slot, prefix_len=prefix_len)
    n_items = prompt_items(B, n_slots, R)
    rows = torch.empty((n_items, R), dtype=torch.int32, device=prefix_slot.device)
    _decode_attention_rows_kernel[(n_items,)](prefix_slot, prefix_len, rows, B, n_slots, R=R,
                                              R_PAD=triton.next_power_of_2(R),
                                              B_PAD=max(16, triton.next_power_of_2(B)), BLOCK=16)
    return rows


# ---------------------------------------------------------------------------- attention


def partials(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """fp32 scratch for the splits' partial results: every entry is written by a split kernel
    before the combine reads it, so it need not be cleared (tests fill it with NaN to check)."""
    return torch.empty(shape, dtype=torch.float32, device=device)


def decode_attention_torch(q: torch.Tensor, k_prompt: torch.Tensor, v_prompt: torch.Tensor, k_comp: torch.Tensor,
                           v_comp: torch.Tensor, prefix_slot: torch.Tensor, prefix_len: torch.Tensor,
                           comp_len: torch.Tensor, prompt_rows: torch.Tensor | None = None) -> torch.Tensor:
    """One query per row over its prompt's keys then its own completion keys (grouped-query).

    q: [B, Hq, D]; k_prompt, v_prompt: [n_slots, Hkv, P_cap, D]; k_comp, v_comp:
    [B_cap >= B, Hkv, N_cap, D]; prefix_slot, prefix_len, comp_len: [B] long, comp_len >= 1.
    Row b attends to k_prompt[prefix_slot[b], :, :prefix_len[b]] and k_comp[b, :, :comp_len[b]].
    Softmax in fp32, scale D**-0.5. Returns [B, Hq, D] in q's dtype. prompt_rows: ignored (the
    Triton version's rows-of-slot index; same signature).

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
def _attend_block(q, k, v, visible, m_i, l_i, acc, scale, v_cache_ptr, DOT_PRECISION: tl.constexpr,
                  INTERPRETED: tl.constexpr):
    """One block of keys into a running softmax (flash attention's inner step): q [M, D], k, v
    [BLOCK_N, D], visible [M or 1, BLOCK_N]; m_i, l_i [M] (running max and sum), acc [M, D] fp32.
    Returns the updated (m_i, l_i, acc)."""
    if INTERPRETED:  # Triton's CPU interpreter multiplies bf16 as raw integers; fp32 holds bf16 exactly.
        k, v = k.to(tl.float32), v.to(tl.float32)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # [M, BLOCK_N] fp32
    scores = tl.where(visible, scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    # A row with no visible key here nor before (m_new -inf) keeps max -inf and sum 0, an
    # empty partial, not exp(-inf + inf) = nan.
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_ref)
    p = tl.exp(scores - m_ref[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    # The probabilities are rounded to the cache dtype, as the torch version's are.
    p = p.to(v_cache_ptr.dtype.element_ty).to(v.dtype)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _decode_attention_split_kernel(
        q_ptr, kp_ptr, vp_ptr, kc_ptr, vc_ptr, slot_ptr, plen_ptr, clen_ptr, acc_ptr, m_ptr, l_ptr,
        stride_qb, stride_pb, stride_ph, stride_cb, stride_ch, split0, n_prompt_splits, n_splits, scale,
        HQ: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, D: tl.constexpr,
        KEYS_PER_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
        INTERPRETED: tl.constexpr):
    # Program (b, kv head, split - split0). Splits [0, n_prompt_splits) cover the prompt cache,
    # the rest the completion cache, KEYS_PER_SPLIT keys each (split0 = n_prompt_splits: only the
    # completion's, when the prompt kernel does the prompt's). A split past the row's length runs
    # no loop iteration and only writes an empty partial (max -inf, sum 0).
    b = tl.program_id(0)
    hk = tl.program_id(1)
    s = tl.program_id(2) + split0
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
        m_i, l_i, acc = _attend_block(q, k, v, valid[None, :], m_i, l_i, acc, scale, vc_ptr, DOT_PRECISION, INTERPRETED)

    # Partials are laid out [B, HQ, n_splits(, D)] so the combine reads one head's splits.
    head = b * HQ + hk * GROUP + g  # [GROUP_PAD]
    tl.store(m_ptr + head * n_splits + s, m_i, mask=g_mask)
    tl.store(l_ptr + head * n_splits + s, l_i, mask=g_mask)
    tl.store(acc_ptr + (head * n_splits + s)[:, None] * D + d[None, :], acc, mask=g_mask[:, None])


@triton.jit
def _decode_attention_prompt_kernel(
        q_ptr, kp_ptr, vp_ptr, rows_ptr, slot_ptr, plen_ptr, acc_ptr, m_ptr, l_ptr,
        stride_qb, stride_pb, stride_ph, n_splits, scale,
        HQ: tl.constexpr, GROUP: tl.constexpr, R: tl.constexpr, M_PAD: tl.constexpr, D: tl.constexpr,
        KEYS_PER_SPLIT: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
        INTERPRETED: tl.constexpr):
    # Program (item, kv head, prompt split s): the rows of rows[item] (one prompt slot; -1: none)
    # x this kv head's GROUP query heads are the M_PAD rows of the dots, so the slot's keys of
    # split s are read once for all of them. Each row is masked by its own prefix_len, and its
    # partial goes where the per-row kernel's would: [row, head, s].
    item = tl.program_id(0)
    hk = tl.program_id(1)
    s = tl.program_id(2)
    mi = tl.arange(0, M_PAD)
    row = tl.load(rows_ptr + item * R + mi // GROUP, mask=mi < R * GROUP, other=-1)
    live = row >= 0
    head = hk * GROUP + mi % GROUP
    plen = tl.load(plen_ptr + row, mask=live, other=0).to(tl.int32)
    # An item's rows share a slot (rows without prompt keys read none, whatever theirs).
    slot = tl.load(slot_ptr + tl.maximum(tl.load(rows_ptr + item * R), 0))
    start = s * KEYS_PER_SPLIT
    end = tl.minimum(start + KEYS_PER_SPLIT, tl.max(plen, axis=0))
    base = slot.to(tl.int64) * stride_pb + hk * stride_ph
    d = tl.arange(0, D)
    q = tl.load(q_ptr + row.to(tl.int64)[:, None] * stride_qb + head[:, None] * D + d[None, :],
                mask=live[:, None], other=0.0)
    if INTERPRETED:  # Triton's CPU interpreter multiplies bf16 as raw integers; fp32 holds bf16 exactly.
        q = q.to(tl.float32)
    m_i = tl.full([M_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([M_PAD], tl.float32)
    acc = tl.zeros([M_PAD, D], tl.float32)
    n = tl.arange(0, BLOCK_N)
    for n0 in range(start, end, BLOCK_N):
        keys = n0 + n
        k = tl.load(kp_ptr + base + keys[:, None] * D + d[None, :], mask=(keys < end)[:, None], other=0.0)
        v = tl.load(vp_ptr + base + keys[:, None] * D + d[None, :], mask=(keys < end)[:, None], other=0.0)
        # each row sees its own prompt's keys only
        visible = keys[None, :] < tl.minimum(plen, end)[:, None]
        m_i, l_i, acc = _attend_block(q, k, v, visible, m_i, l_i, acc, scale, vp_ptr, DOT_PRECISION, INTERPRETED)

    out = (row.to(tl.int64) * HQ + head) * n_splits + s  # [M_PAD] into the [B, HQ, n_splits] layout
    tl.store(m_ptr + out, m_i, mask=live)
    tl.store(l_ptr + out, l_i, mask=live)
    tl.store(acc_ptr + out[:, None] * D + d[None, :], acc, mask=live[:, None])


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
                     prompt_rows: torch.Tensor | None = None, keys_per_split: int | None = None,
                     block_n: int = ATTN_BLOCK_N) -> torch.Tensor:
    """Triton `decode_attention_torch` (same arguments and shapes), split-K (flash-decoding).

    prompt_rows None: grid (B, Hkv, splits), each row reads its prompt itself (rows of one
    prompt are adjacent in the grid, so they read its keys from L2 after the first).
    prompt_rows, the [n_items, R] int32 index of `prompt_rows` over these prefix_slot/prefix_len
    (every row 0..B-1 in exactly one item, an item's rows of one slot): the prompt splits run
    on grid (n_items, Hkv, prompt splits), reading each slot's keys once per item, the
    completion splits on grid (B, Hkv, completion splits). Splits are sized by the caches'
    capacities (P_cap, N_cap), not by the rows' lengths, so the grids are fixed for a CUDA
    graph; programs past a row's length write an empty partial. A last kernel combines them.
    keys_per_split None: the module's KEYS_PER_SPLIT, read at each call (so a benchmark may set it).
    """
    if keys_per_split is None:
        keys_per_split = KEYS_PER_SPLIT
    B, Hq, D = q.shape
    n_slots, Hkv, P, _ = k_prompt.shape
    N = k_comp.shape[2]
    if Hq % Hkv or keys_per_split % block_n:
        raise ValueError(f"decode_attention: Hq={Hq} must be a multiple of Hkv={Hkv}, keys_per_split="
                         f"{keys_per_split} a multiple of block_n={block_n}")
    if q.stride(2) != 1 or q.stride(1) != D:
        raise ValueError(f"decode_attention: q must have contiguous heads [B, Hq, D], strides {q.stride()}")
    _require_contiguous(k_prompt=k_prompt, v_prompt=v_prompt, k_comp=k_comp, v_comp=v_comp, prompt_rows=prompt_rows)
    if prompt_rows is not None and (prompt_rows.dim() != 2 or prompt_rows.dtype != torch.int32):
        raise ValueError(f"decode_attention: prompt_rows must be [n_items, R] int32, got {prompt_rows.dtype} "
                         f"{tuple(prompt_rows.shape)}")
    group = Hq // Hkv
    n_prompt_splits = triton.cdiv(P, keys_per_split)
    n_splits = n_prompt_splits + triton.cdiv(N, keys_per_split)
    acc = partials((B, Hq, n_splits, D), q.device)
    m, l = partials((B, Hq, n_splits), q.device), partials((B, Hq, n_splits), q.device)
    # fp32 models get full-precision products; tf32 (the default) only matters for them.
    common = dict(HQ=Hq, GROUP=group, D=D, KEYS_PER_SPLIT=keys_per_split, BLOCK_N=block_n,
                  DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", INTERPRETED=INTERPRETED)
    split0 = 0
    if prompt_rows is not None:
        n_items, R = prompt_rows.shape
        _decode_attention_prompt_kernel[(n_items, Hkv, n_prompt_splits)](
            q, k_prompt, v_prompt, prompt_rows, prefix_slot, prefix_len, acc, m, l, q.stride(0),
            k_prompt.stride(0), k_prompt.stride(1), n_splits, D**-0.5, R=R,
            M_PAD=max(16, triton.next_power_of_2(R * group)), **common)
        split0 = n_prompt_splits
    _decode_attention_split_kernel[(B, Hkv, n_splits - split0)](
        q, k_prompt, v_prompt, k_comp, v_comp, prefix_slot, prefix_len, comp_len, acc, m, l,
        q.stride(0), k_prompt.stride(0), k_prompt.stride(1), k_comp.stride(0), k_comp.stride(1),
        split0, n_prompt_splits, n_splits, D**-0.5, GROUP_PAD=max(16, triton.next_power_of_2(group)), **common)
    out = torch.empty((B, Hq, D), dtype=q.dtype, device=q.device)
    _decode_attention_combine_kernel[(B * Hq,)](acc, m, l, out, n_splits, D=D,
                                                SPLITS_PAD=triton.next_power_of_2(n_splits))
    return out


def _require_contiguous(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (shape {tuple(t.shape)}, strides {t.stride()})")
