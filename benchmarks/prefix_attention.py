"""Attention of one shared-prefix group, per decoder layer: the forms of prefix.py against
the unshared batch (issue #6). Random bf16 q/k/v of the 1.5B shape (12 query heads, 2 KV
heads, head dim 128), CUDA events, medians.

    PYTHONPATH=$PWD/src python3 benchmarks/prefix_attention.py [--sweep] [--varlen]

Rows: FlexAttention on the block mask (the CUDA default), `split_attention`, and sdpa's
causal kernel on the unshared [G, P + N] batch; --sweep adds FlexAttention kernel options,
--varlen a variant of split through torch.nn.attention.varlen (KV heads expanded).
Correctness: split and varlen are compared with FlexAttention, also for ragged lengths.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.nn.attention.flex_attention import flex_attention

from tirgrpo.prefix import group_block_mask, split_attention, split_index

DEV, BF = "cuda", torch.bfloat16
SDPA = torch.nn.functional.scaled_dot_product_attention


def timeit(fn, reps: int = 7) -> float:
    """Median ms of fn() over `reps` calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def segments(P: int, lengths: list[int]) -> torch.Tensor:
    """Segment ids of a packed group, padded to a multiple of 128 as pack_group does."""
    seg = [0] * P + [i + 1 for i, n in enumerate(lengths) for _ in range(n)]
    seg += [len(lengths) + 1] * ((-len(seg)) % 128)
    return torch.tensor(seg, device=DEV)


def varlen_split(q, k, v, P: int, lengths: list[int]):
    """split_attention's completions through varlen_attn (keys [prompt, own completion] per row)."""
    from torch.nn.attention.varlen import varlen_attn

    rep = q.shape[1] // k.shape[1]
    out_p = SDPA(q[:, :, :P], k[:, :, :P], v[:, :, :P], is_causal=True, enable_gqa=True)
    qc = q[0, :, P:].transpose(0, 1)
    keys, vals, start = [], [], P
    for n in lengths:
        keys += [k[0, :, :P], k[0, :, start:start + n]]
        vals += [v[0, :, :P], v[0, :, start:start + n]]
        start += n
    kk = torch.cat(keys, 1).transpose(0, 1).repeat_interleave(rep, dim=1)
    vv = torch.cat(vals, 1).transpose(0, 1).repeat_interleave(rep, dim=1)
    cq = torch.tensor([0] + lengths, device=DEV).cumsum(0).int()
    ck = torch.tensor([0] + [P + n for n in lengths], device=DEV).cumsum(0).int()
    oc = varlen_attn(qc, kk, vv, cq, ck, max(lengths), P + max(lengths), window_size=(-1, 0))
    return torch.cat([out_p, oc.transpose(0, 1)[None]], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=3072)
    ap.add_argument("--completion", type=int, default=1024)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--sweep", action="store_true", help="also FlexAttention kernel options")
    ap.add_argument("--varlen", action="store_true", help="also the varlen variant")
    a = ap.parse_args()
    P, N, G = a.prompt, a.completion, a.group
    flex = torch.compile(flex_attention, dynamic=False)

    # correctness against FlexAttention, equal and ragged lengths
    for lengths in ([N] * G, [N, 7, 300, N - 24, 1, 512, 900, 64]):
        T = P + sum(lengths)
        seg = segments(P, lengths)
        q, k, v = (torch.randn(1, h, seg.numel(), 128, device=DEV, dtype=BF) for h in (12, 2, 2))
        ref = flex(q, k, v, block_mask=group_block_mask(seg), enable_gqa=True)[:, :, :T]
        got = split_attention(q[:, :, :T], k[:, :, :T], v[:, :, :T], split_index(P, lengths, DEV)[0, 0], P, None)
        print(f"lengths {lengths[:4]}...: max |split - flex| = {(got.float() - ref.float()).abs().max().item():.4f}")
        if a.varlen:
            try:
                got = varlen_split(q[:, :, :T], k[:, :, :T], v[:, :, :T], P, lengths)
                print(f"  max |varlen - flex| = {(got.float() - ref.float()).abs().max().item():.4f}")
            except Exception as e:  # torch builds without varlen, or with another signature
                print(f"  varlen failed: {type(e).__name__}: {str(e)[:120]}")

    T = P + G * N
    seg = segments(P, [N] * G)
    block = group_block_mask(seg)
    tiles = block.kv_num_blocks.sum().item() + block.full_kv_num_blocks.sum().item()
    print(f"\nG={G}, {P} + {G} x {N}: {T} packed tokens, {tiles} of {(T // 128) ** 2} tiles computed")
    q = torch.randn(1, 12, T, 128, device=DEV, dtype=BF, requires_grad=True)
    k = torch.randn(1, 2, T, 128, device=DEV, dtype=BF, requires_grad=True)
    v = torch.randn(1, 2, T, 128, device=DEV, dtype=BF, requires_grad=True)
    grad = torch.randn(1, 12, T, 128, device=DEV, dtype=BF)
    index = split_index(P, [N] * G, DEV)[0, 0]
    qu = torch.randn(G, 12, P + N, 128, device=DEV, dtype=BF, requires_grad=True)
    ku = torch.randn(G, 2, P + N, 128, device=DEV, dtype=BF, requires_grad=True)
    vu = torch.randn(G, 2, P + N, 128, device=DEV, dtype=BF, requires_grad=True)
    grad_u = torch.randn(G, 12, P + N, 128, device=DEV, dtype=BF)
    rows = {"flex, block mask": (lambda: flex(q, k, v, block_mask=block, enable_gqa=True), grad),
            "split_attention": (lambda: split_attention(q, k, v, index, P, None), grad),
            f"sdpa causal, unshared {G} x {P + N}": (lambda: SDPA(qu, ku, vu, is_causal=True, enable_gqa=True), grad_u)}
    if a.varlen:
        rows["varlen split"] = (lambda: varlen_split(q, k, v, P, [N] * G), grad)
    if a.sweep:
        for name, opts in {"TMA": {"USE_TMA": True},
                           "128x128, 8 warps": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
                           "128x64, 8 warps": {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
                           "bwd 64x128/128x64": {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64}}.items():
            rows[f"flex, {name}"] = (lambda o=opts: flex(q, k, v, block_mask=block, enable_gqa=True, kernel_options=o), grad)
    print(f"{'attention':<34}{'fwd ms':>9}{'fwd+bwd ms':>12}")
    for name, (fn, g) in rows.items():
        def fwd():
            with torch.no_grad():
                fn()

        def fwd_bwd():
            fn().backward(g)

        try:
            print(f"{name:<34}{timeit(fwd):>9.2f}{timeit(fwd_bwd):>12.2f}", flush=True)
        except Exception as e:  # a variant this torch cannot run must not hide the others
            print(f"{name:<34} failed: {type(e).__name__}: {str(e)[:120]}")
        torch._dynamo.reset()  # each kernel-option variant compiles afresh
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
