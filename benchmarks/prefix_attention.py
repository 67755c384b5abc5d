"""Attention of one shared-prefix group, per decoder layer: the forms of train/prefix.py against
the unshared batch. Random bf16 q/k/v of the 1.5B shape (12 query heads, 2 KV
heads, head dim 128), CUDA events, medians.

    PYTHONPATH=$PWD/src python3 benchmarks/prefix_attention.py [--sweep]

Rows: FlexAttention on the block mask, the split form (`kernels/split_attention.py`: a cuDNN (or
flash) prompt part + a flash varlen own part, merged by log-sum-exp), and sdpa's causal kernel
on the unshared [G, P + N] batch (its default backend, and flash-attention 2 forced);
then the split form's parts alone, forward. --sweep adds FlexAttention kernel options.
Correctness: the split form against FlexAttention, values and gradients, equal and
ragged lengths.
"""

from __future__ import annotations

import argparse

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention

from tirgrpo.kernels import split_attention
from tirgrpo.perf.timing import cuda_median_ms
from tirgrpo.train.prefix import group_block_mask

DEV, BF = "cuda", torch.bfloat16
HQ, HKV, D = 12, 2, 128
SCALE = D ** -0.5
SDPA = torch.nn.functional.scaled_dot_product_attention


def timeit(fn, reps: int = 9) -> float:
    """Median ms of fn() over `reps` calls after 3 warm-up calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    return cuda_median_ms(fn, reps)


def segments(P: int, lengths: list[int]) -> torch.Tensor:
    """Segment ids of a packed group, padded to a multiple of 128 as pack_group does."""
    seg = [0] * P + [i + 1 for i, n in enumerate(lengths) for _ in range(n)]
    seg += [len(lengths) + 1] * ((-len(seg)) % 128)
    return torch.tensor(seg, device=DEV)


def layout_of(P: int, lengths: list[int]):
    """(bounds on the device, sizes) of one packed group (`split_attention.split_layout`)."""
    bounds, sizes = split_attention.split_layout([P], [lengths])
    return torch.tensor(bounds, dtype=torch.int32, device=DEV), sizes


def split(q, k, v, layout, cudnn: bool):
    split_attention._state["cudnn"] = None if cudnn else False
    return split_attention.split_prefix_attention(q, k, v, *layout, SCALE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", type=int, default=3072)
    ap.add_argument("--completion", type=int, default=1024)
    ap.add_argument("--group", type=int, default=16)
    ap.add_argument("--sweep", action="store_true", help="also FlexAttention kernel options")
    a = ap.parse_args()
    P, N, G = a.prompt, a.completion, a.group
    flex = torch.compile(flex_attention, dynamic=False)

    def flex_thd(q, k, v, block):  # [T, H, D] in and out, like the split form
        return flex(*(x.transpose(0, 1)[None] for x in (q, k, v)), block_mask=block, scale=SCALE,
                    enable_gqa=True)[0].transpose(0, 1)

    # correctness against FlexAttention, equal and ragged lengths, values and gradients
    for lengths in ([N] * G, [N, 7, 300, N - 24, 1, 512, 900, 64]):
        T = P + sum(lengths)
        seg = segments(P, lengths)
        base = [torch.randn(seg.numel(), h, D, device=DEV, dtype=BF) for h in (HQ, HKV, HKV)]
        grad = torch.randn(T, HQ, D, device=DEV, dtype=BF)
        ref_in = [x.clone().requires_grad_() for x in base]
        ref = flex_thd(*ref_in, group_block_mask(seg))[:T]
        ref.backward(grad)
        for cudnn in (True, False):
            got_in = [x[:T].clone().requires_grad_() for x in base]
            got = split(*got_in, layout_of(P, lengths), cudnn)
            got.backward(grad)
            diff = [(got - ref).abs().max().item()] + [(x.grad - r.grad[:T]).abs().max().item()
                                                       for x, r in zip(got_in, ref_in)]
            print(f"lengths {lengths[:3]}..., prompt part by {'cuDNN' if cudnn else 'flash'}: max |split - flex| "
                  f"out {diff[0]:.4f}, dq {diff[1]:.4f}, dk {diff[2]:.4f}, dv {diff[3]:.4f} "
                  f"(max |dk| {ref_in[1].grad.abs().max().item():.2f})")

    T = P + G * N
    seg = segments(P, [N] * G)
    block = group_block_mask(seg)
    tiles = block.kv_num_blocks.sum().item() + block.full_kv_num_blocks.sum().item()
    print(f"\nG={G}, {P} + {G} x {N}: {T} packed tokens, {tiles} of {(T // 128) ** 2} tiles computed by flex")
    q, k, v = (torch.randn(T, h, D, device=DEV, dtype=BF, requires_grad=True) for h in (HQ, HKV, HKV))
    qp, kp, vp = (torch.randn(seg.numel(), h, D, device=DEV, dtype=BF, requires_grad=True) for h in (HQ, HKV, HKV))
    grad, grad_p = torch.randn(T, HQ, D, device=DEV, dtype=BF), torch.randn(seg.numel(), HQ, D, device=DEV, dtype=BF)
    layout = layout_of(P, [N] * G)
    qu = torch.randn(G, HQ, P + N, D, device=DEV, dtype=BF, requires_grad=True)
    ku = torch.randn(G, HKV, P + N, D, device=DEV, dtype=BF, requires_grad=True)
    vu = torch.randn(G, HKV, P + N, D, device=DEV, dtype=BF, requires_grad=True)
    grad_u = torch.randn(G, HQ, P + N, D, device=DEV, dtype=BF)

    def unshared(backend=None):
        if backend is None:
            return SDPA(qu, ku, vu, is_causal=True, enable_gqa=True)
        with sdpa_kernel(backend):
            return SDPA(qu, ku, vu, is_causal=True, enable_gqa=True)

    rows = {"flex, block mask": (lambda: flex_thd(qp, kp, vp, block), grad_p),
            "split, cuDNN prompt part": (lambda: split(q, k, v, layout, True), grad),
            "split, flash prompt part": (lambda: split(q, k, v, layout, False), grad),
            f"sdpa unshared {G} x {P + N}": (unshared, grad_u),
            "sdpa unshared, flash forced": (lambda: unshared(SDPBackend.FLASH_ATTENTION), grad_u)}
    if a.sweep:
        for name, opts in {"TMA": {"USE_TMA": True},
                           "128x128, 8 warps": {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
                           "bwd 64x128/128x64": {"BLOCK_M1": 64, "BLOCK_N1": 128, "BLOCK_M2": 128, "BLOCK_N2": 64}}.items():
            rows[f"flex, {name}"] = (lambda o=opts: flex(*(x.transpose(0, 1)[None] for x in (qp, kp, vp)), block_mask=block,
                                                         scale=SCALE, enable_gqa=True, kernel_options=o)[0].transpose(0, 1),
                                     grad_p)
    print(f"sdpa's choice for the unshared batch: {torch._fused_sdp_choice(qu, ku, vu, is_causal=True, enable_gqa=True)}"
          " (1 flash, 2 efficient, 3 cuDNN)")
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
    with torch.no_grad():
        bounds, sizes = layout
        cb = split_attention._offsets(bounds, sizes.groups)[2]
        split_attention._state["cudnn"] = None
        o1, l1 = split_attention._prompt_part(q, k[:P], v[:P], bounds, sizes, SCALE)
        o2, l2 = split_attention._own_part(q[P:], k[P:], v[P:], cb, N, SCALE)
        parts = {"part: prompt (cuDNN)": lambda: split_attention._prompt_part(q, k[:P], v[:P], bounds, sizes, SCALE),
                 "part: own (flash varlen)": lambda: split_attention._own_part(q[P:], k[P:], v[P:], cb, N, SCALE),
                 "part: merge": lambda: split_attention.merge_partials(o1[P:], l1[:, P:], o2, l2)}
        for name, fn in parts.items():
            print(f"{name:<34}{timeit(fn):>9.2f}", flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")


if __name__ == "__main__":
    main()
