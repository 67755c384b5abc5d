"""Triton kernels of the decode step against their torch references (kernels.py).

On a CPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1),
on CUDA compiled; without triton they are skipped.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.errors import TirgrpoError
from tirgrpo.rollout import SamplingParams
from tirgrpo.kernels import decode as K
from tirgrpo.kernels.decode_attention import PROMPT_BATCH_MIN_ROWS, prompt_items, rows_per_item
from tirgrpo.rollout.engine import FastEngine
from triton_devices import on_devices, tol

DTYPES = [torch.float32, torch.bfloat16]


def randn(*shape, dtype, device, generator):
    return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)


@on_devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_delta", [True, False])
def test_add_rmsnorm(device, dtype, with_delta):
    g = torch.Generator().manual_seed(0)
    h = randn(3, 40, dtype=dtype, device=device, generator=g)  # 40: not a power of two
    delta = randn(3, 40, dtype=dtype, device=device, generator=g) if with_delta else None
    weight = randn(40, dtype=dtype, device=device, generator=g)
    h_ref, x_ref = K.add_rmsnorm_torch(h, delta, weight, 1e-6)
    h_out, x_out = K.add_rmsnorm(h, delta, weight, 1e-6)
    if dtype == torch.float32 or device == "cuda":
        assert torch.equal(h_out, h_ref)  # the residual add rounds exactly like torch's
    torch.testing.assert_close(h_out, h_ref, **tol(dtype, device))
    torch.testing.assert_close(x_out, x_ref, **tol(dtype, device))


@on_devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(12, 2), (4, 2), (2, 2)])
def test_rotary_cache_write(device, dtype, heads):
    Hq, Hkv = heads
    B, D, B_cap, N_cap = 3, 16, 4, 8
    g = torch.Generator().manual_seed(1)
    q = randn(B, Hq, D, dtype=dtype, device=device, generator=g)
    k = randn(B, Hkv, D, dtype=dtype, device=device, generator=g)
    v = randn(B, Hkv, D, dtype=dtype, device=device, generator=g)
    pos = torch.tensor([0, 5, 1000], device=device)
    cache_pos = torch.tensor([0, 3, 7], device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32, device=device) / D))
    caches = [randn(B_cap, Hkv, N_cap, D, dtype=dtype, device=device, generator=g) for _ in range(2)]
    ref = (q.clone(), *(c.clone() for c in caches))
    out = (q.clone(), *(c.clone() for c in caches))
    K.rotary_cache_write_torch(ref[0], k, v, ref[1], ref[2], pos, cache_pos, inv_freq, 0.9)
    K.rotary_cache_write(out[0], k, v, out[1], out[2], pos, cache_pos, inv_freq, 0.9)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, **tol(dtype, device))
    assert torch.equal(out[2], ref[2])  # values are copied, untouched elsewhere


# (prefix_slot, prefix_len, comp_len) per row, with block_n 16 and 32 keys per split over a
# prompt cache of 80 and a completion cache of 48: a total length of 1, a prompt shorter than
# a block, lengths that are not multiples of a block, full capacity, and rows of one prompt
# next to each other.
ROWS = [(2, 0, 1), (0, 5, 1), (0, 37, 20), (1, 80, 48), (2, 33, 17), (2, 16, 2)]


@pytest.fixture(autouse=True)
def nan_partials(monkeypatch):
    """The attention's split partials start as NaN, so a partial no kernel wrote reaches the
    output (a reused allocator block could otherwise hold an earlier call's right values)."""
    monkeypatch.setattr("tirgrpo.kernels.decode_attention.partials",
                        lambda shape, device: torch.full(shape, float("nan"), device=device))


def attention_inputs(rows, heads, n_slots, B_cap, seed, dtype, device):
    """(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen) for rows of (slot, prompt length,
    completion length): random values, head size 16, prompt cache of 80 keys, completion cache of 48."""
    Hq, Hkv = heads
    D, P_cap, N_cap = 16, 80, 48
    g = torch.Generator().manual_seed(seed)
    q = randn(len(rows), Hq, D, dtype=dtype, device=device, generator=g)
    k_prompt, v_prompt = (randn(n_slots, Hkv, P_cap, D, dtype=dtype, device=device, generator=g) for _ in range(2))
    k_comp, v_comp = (randn(B_cap, Hkv, N_cap, D, dtype=dtype, device=device, generator=g) for _ in range(2))
    slot, plen, clen = (torch.tensor(col, device=device) for col in zip(*rows))
    return q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen


@on_devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(12, 2), (4, 2), (2, 2)])
def test_decode_attention(device, dtype, heads):
    q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen = attention_inputs(ROWS, heads, 3, 8, 2, dtype, device)
    Hq, Hkv, D = *heads, q.shape[-1]
    ref = K.decode_attention_torch(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen)
    out = K.decode_attention(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen, keys_per_split=32, block_n=16)
    torch.testing.assert_close(out, ref, **tol(dtype, device))
    # The torch reference itself against a plain softmax over the concatenated keys of row 2.
    b, (s, p, c) = 2, ROWS[2]
    keys = torch.cat([k_prompt[s, :, :p], k_comp[b, :, :c]], dim=1).float()  # [Hkv, T, D]
    values = torch.cat([v_prompt[s, :, :p], v_comp[b, :, :c]], dim=1).float()
    kv_head = torch.arange(Hq, device=device) // (Hq // Hkv)
    probs = torch.softmax(torch.einsum("hd,htd->ht", q[b].float(), keys[kv_head]) * D**-0.5, dim=-1)
    torch.testing.assert_close(ref[b].float(), torch.einsum("ht,htd->hd", probs, values[kv_head]), **tol(dtype, device))


# (prefix_slot, prefix_len, comp_len) per row over 5 prompt slots, with the rows of a slot not
# adjacent (as continuous batching leaves them): slot 0 has 3 rows, one with a shorter prompt
# (the kernel masks each row by its own prefix_len), slot 1 one row at full capacity, slot 2
# four rows (several items when R = 2), slot 3 none, slot 4 two rows of a 1-key prompt; two
# padding rows without prompt keys (prefix_len 0), pointing at slots 0 and 4.
SLOT_ROWS = [(2, 33, 17), (0, 37, 20), (4, 1, 3), (2, 33, 2), (0, 0, 1), (1, 80, 48), (0, 5, 1), (2, 33, 1),
             (4, 1, 1), (0, 37, 9), (2, 33, 30), (4, 0, 1)]


def check_prompt_rows(rows, slot, plen, n_slots, R):
    """The index's contract: each row once; an item's rows (from position 0) of one key, at most R."""
    B = slot.shape[0]
    key = torch.where(plen > 0, slot, n_slots).tolist()
    assert rows.dtype == torch.int32 and rows.shape == (prompt_items(B, n_slots, R), R)
    assert sorted(r for r in rows.flatten().tolist() if r >= 0) == list(range(B))
    for item in rows.tolist():
        live = [r for r in item if r >= 0]
        assert item[: len(live)] == live and len({key[r] for r in live}) <= 1


@pytest.mark.parametrize("R", [None, 1, 2, 3])
def test_prompt_rows_torch(R):
    """The rows-of-slot index (torch twin, also without triton): items of one slot, in row order."""
    slot, plen, _ = (torch.tensor(col) for col in zip(*SLOT_ROWS))
    rows = K.prompt_rows_torch(slot, plen, 5, 6, R)
    R = R or rows_per_item(6)
    check_prompt_rows(rows, slot, plen, 5, R)
    if R == 2:
        assert rows[:8].tolist() == [[1, 6], [9, -1], [5, -1], [0, 3], [7, 10], [2, 8], [4, 11], [-1, -1]]
        assert (rows[8:] == -1).all()


@on_devices
@pytest.mark.parametrize("R", [None, 1, 2, 3])
@pytest.mark.parametrize("B", [1, len(SLOT_ROWS), 40])
def test_prompt_rows(device, B, R):
    """The one-launch Triton index equals the torch twin's (40 rows: more than a 16-row block)."""
    if B <= len(SLOT_ROWS):
        slot, plen, _ = (torch.tensor(col, device=device) for col in zip(*SLOT_ROWS[:B]))
    else:  # random slots of 5, a third of the rows without prompt keys
        g = torch.Generator().manual_seed(5)
        slot, plen = (torch.randint(0, n, (B,), generator=g).to(device) for n in (5, 3))
    ref = K.prompt_rows_torch(slot, plen, 5, 6, R)
    out = K.prompt_rows(slot, plen, 5, 6, R)
    check_prompt_rows(out.cpu(), slot.cpu(), plen.cpu(), 5, R or rows_per_item(6))
    assert torch.equal(out, ref)


@on_devices
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(12, 2), (4, 2), (2, 2)])
@pytest.mark.parametrize("R", [None, 2])
def test_decode_attention_prompt_batched(device, dtype, heads, R):
    """Prompt splits one program per (item of a slot's rows, kv head, split), against the torch
    reference and the per-row kernel: uneven rows per slot, an empty slot, rows of one slot with
    different prompt lengths, padding rows; block_n 16 and 32 keys per split over a prompt cache
    of 80 and a completion cache of 48, as test_decode_attention."""
    Hq, Hkv = heads
    n_slots = 5
    args = attention_inputs(SLOT_ROWS, heads, n_slots, 16, 6, dtype, device)
    slot, plen = args[5], args[6]
    rows = K.prompt_rows(slot, plen, n_slots, Hq // Hkv, R)
    ref = K.decode_attention_torch(*args)
    out = K.decode_attention(*args, rows, keys_per_split=32, block_n=16)
    per_row = K.decode_attention(*args, keys_per_split=32, block_n=16)
    torch.testing.assert_close(out, ref, **tol(dtype, device))
    torch.testing.assert_close(out, per_row, **tol(dtype, device))


@on_devices
def test_decode_attention_reads_keys_per_split_at_each_call(device, monkeypatch):
    """Without keys_per_split the kernel takes decode_attention.KEYS_PER_SPLIT as it is at the
    call (benchmarks set it): 32 there gives the explicit 32's result, the split count included."""
    from tirgrpo.kernels import decode_attention as DA

    args = attention_inputs(SLOT_ROWS, (4, 2), 5, 16, 6, torch.float32, device)
    shapes = []  # the partial buffers' shapes: [B, Hq, splits, D] first
    real_partials = DA.partials
    monkeypatch.setattr(DA, "partials", lambda shape, dev: shapes.append(shape) or real_partials(shape, dev))
    monkeypatch.setattr(DA, "KEYS_PER_SPLIT", 32)
    out = K.decode_attention(*args, block_n=16)
    explicit = K.decode_attention(*args, keys_per_split=32, block_n=16)
    assert torch.equal(out, explicit)
    assert shapes[0] == shapes[3] and shapes[0][2] == 80 // 32 + 1 + 48 // 32 + 1  # prompt cache 80, completions 48


@on_devices
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(device, dtype):
    g = torch.Generator().manual_seed(3)
    # 3 x 700 = 2100 elements: not a multiple of the 1024 of a block
    gate, up = (randn(3, 700, dtype=dtype, device=device, generator=g) for _ in range(2))
    torch.testing.assert_close(K.silu_mul(gate, up), K.silu_mul_torch(gate, up), **tol(dtype, device))


@on_devices
def test_engine_with_triton_kernels_equals_torch_kernels(device, tiny_model_dir, byte_tokenizer, monkeypatch):
    """The whole decode step: same greedy tokens and log-probs with each kernel set (fp32;
    triton: projections through kernels/gemv.py, triton-nogemv: through the modules;
    triton-perrow: each row reading its prompt itself; triton-index: the rows-of-slot index
    at every batch size), including padding rows, rows that
    finish early (compaction) and CUDA graphs on a GPU."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)
    ps = [byte_tokenizer(t)["input_ids"] for t in ("hello", "a much longer prompt than the others", "x")]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    free = FastEngine(model, byte_tokenizer, length_buckets=(64,), kernels="torch").generate(ps, 1, params)
    first = [g[0].token_ids for g in free]
    # A token of prompt 1's continuation that the others lack, made the eos: its 2 rows
    # finish early and the 4 others are compacted into a smaller batch bucket.
    eos = next(t for t in first[1][1:] if all(t not in f for f in first[:1] + first[2:]))
    runs = {}
    for kind in ("torch", "triton", "triton-nogemv", "triton-perrow", "triton-index"):
        # triton-index: the Triton set with the rows-of-slot index at every batch size (by
        # default only from PROMPT_BATCH_MIN_ROWS rows: these batches of <= 8 read per row)
        min_rows = 1 if kind == "triton-index" else PROMPT_BATCH_MIN_ROWS
        monkeypatch.setattr("tirgrpo.kernels.decode_attention.PROMPT_BATCH_MIN_ROWS", min_rows)
        engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64,),
                            kernels="triton" if kind == "triton-index" else kind)
        engine.eos = {eos}
        runs[kind] = engine.generate(ps, 2, params)
    assert {c.finish_reason for g in runs["triton"] for c in g} == {"eos", "length"}
    for kind in ("triton", "triton-nogemv", "triton-perrow", "triton-index"):
        for a, b in zip(runs["torch"], runs[kind]):
            for ca, cb in zip(a, b):
                assert ca.token_ids == cb.token_ids
                assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4)


def test_kernel_choice():
    cpu = torch.device("cpu")
    assert K.select_kernels("auto", cpu).name == "torch"
    assert K.select_kernels("torch", cpu).name == "torch"
    with pytest.raises(TirgrpoError, match="kernels must be"):
        K.select_kernels("cuda", cpu)
    assert K.TRITON_KERNELS.gemv_max_batch == 16 and K.TRITON_NOGEMV_KERNELS.gemv_max_batch == 0
    assert K.TORCH_KERNELS.gemv_max_batch == 0  # the torch set runs the modules
    # the Triton set's attention reads per row below PROMPT_BATCH_MIN_ROWS rows, triton-perrow always
    assert K.TRITON_KERNELS.prompt_rows is K.prompt_rows_from_min_batch
    assert K.TRITON_PERROW_KERNELS.prompt_rows is K.no_prompt_rows is K.TORCH_KERNELS.prompt_rows
    small = torch.zeros(PROMPT_BATCH_MIN_ROWS - 1, dtype=torch.long)
    assert K.prompt_rows_from_min_batch(small, small + 5, 2, 6) is None
    unshared = torch.arange(PROMPT_BATCH_MIN_ROWS)  # a prompt slot per row (share_prefill=False)
    assert K.prompt_rows_from_min_batch(unshared, unshared + 5, PROMPT_BATCH_MIN_ROWS, 6) is None
    if K.triton_interpreting():
        assert K.select_kernels("triton-nogemv", cpu).name == "triton-nogemv"
        assert K.select_kernels("triton-perrow", cpu).name == "triton-perrow"
        large = torch.arange(PROMPT_BATCH_MIN_ROWS) // 4  # slots of 4 rows
        torch.testing.assert_close(K.prompt_rows_from_min_batch(large, large + 5, 8, 6),
                                   K.prompt_rows_torch(large, large + 5, 8, 6))
    else:
        with pytest.raises(TirgrpoError, match="triton"):
            K.select_kernels("triton-nogemv", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not (K.HAVE_TRITON and torch.cuda.is_available()), reason="needs triton and CUDA")
def test_kernels_at_the_benchmark_shape():
    """R1-Distill-Qwen-1.5B's shapes (hidden 1536, 12/2 heads of 128) at batch 64, bf16,
    with the engine's default split size, prompts up to 4096 and completions up to 1024."""
    g = torch.Generator().manual_seed(4)
    dev, bf16 = "cuda", torch.bfloat16
    B, H, Hq, Hkv, D, n_slots, P_cap, N_cap = 64, 1536, 12, 2, 128, 16, 4096, 1024
    h, delta = (randn(B, H, dtype=bf16, device=dev, generator=g) for _ in range(2))
    weight = randn(H, dtype=bf16, device=dev, generator=g)
    h_ref, x_ref = K.add_rmsnorm_torch(h, delta, weight, 1e-6)
    h_out, x_out = K.add_rmsnorm(h, delta, weight, 1e-6)
    assert torch.equal(h_out, h_ref)
    torch.testing.assert_close(x_out, x_ref, atol=1e-2, rtol=1e-2)

    q, k, v = (randn(B, heads, D, dtype=bf16, device=dev, generator=g) for heads in (Hq, Hkv, Hkv))
    pos = torch.randint(0, P_cap + N_cap, (B,), generator=g).to(dev)  # angles up to ~5000 rad
    cache_pos = torch.randint(0, N_cap, (B,), generator=g).to(dev)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32, device=dev) / D))
    q_ref, kc_ref, vc_ref = q.clone(), *(torch.zeros(B, Hkv, N_cap, D, dtype=bf16, device=dev) for _ in range(2))
    q_out, kc_out, vc_out = q.clone(), kc_ref.clone(), vc_ref.clone()
    K.rotary_cache_write_torch(q_ref, k, v, kc_ref, vc_ref, pos, cache_pos, inv_freq, 1.0)
    K.rotary_cache_write(q_out, k, v, kc_out, vc_out, pos, cache_pos, inv_freq, 1.0)
    for a, b in ((q_out, q_ref), (kc_out, kc_ref), (vc_out, vc_ref)):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)

    k_prompt, v_prompt = (randn(n_slots, Hkv, P_cap, D, dtype=bf16, device=dev, generator=g) for _ in range(2))
    k_comp, v_comp = (randn(B, Hkv, N_cap, D, dtype=bf16, device=dev, generator=g) for _ in range(2))
    slot = torch.arange(B, device=dev) // 4  # G = 4 rows per prompt, adjacent
    plen = torch.randint(1, P_cap + 1, (n_slots,), generator=g).to(dev)[slot]
    clen = torch.randint(1, N_cap + 1, (B,), generator=g).to(dev)
    ref = K.decode_attention_torch(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen)
    out = K.decode_attention(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)
    rows = K.prompt_rows(slot, plen, n_slots, Hq // Hkv)  # each slot's 4 rows in one item
    assert torch.equal(rows, K.prompt_rows_torch(slot, plen, n_slots, Hq // Hkv))
    out = K.decode_attention(q, k_prompt, v_prompt, k_comp, v_comp, slot, plen, clen, rows)
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=1e-2)
