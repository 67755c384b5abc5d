"""Small-batch projections of FastEngine's decode step: y[B, N] = x[B, K] @ W[N, K]^T (+ bias).

At decode batch sizes (B <= 16) a projection is a matrix-vector product in disguise: it
reads N * K weights for 2 * B * N * K flops, so its time is the time to stream W. cuBLAS
picks tiles made for large M and reached about half the bandwidth on an H200 (1.41 ms of a
2.15 ms decode step at batch 8 for the 1.5B Qwen2, ~2x the time to read its weights), and
each layer launched five of them for its q, k, v, gate and up projections.

Here one program owns BLOCK_N output columns (rows of W) for all B rows of x and walks K in
BLOCK_K-wide tiles: W is read once, in wide contiguous loads, and x (a few KB) comes from L2.
The product of a [BLOCK_N, BLOCK_K] tile of W with the [B, BLOCK_K] tile of x is a `tl.dot`
with x padded to B_PAD >= 16 rows (tensor cores need 16): the padded rows are masked (read
as zeros) and never stored. fp32 accumulation, one rounding to the model dtype.
K may be split too (split-K; the default config splits only a single matrix with a long K,
as down_proj's): each program writes an fp32 partial sum, and a second small kernel adds
the splits in a fixed order (deterministic, unlike atomics) and rounds.

One launch covers several projections of the same input:

* `linears`: up to three weight matrices stacked along N (q, k and v), each with its own
  bias, written to one [B, N0 + N1 + N2] buffer whose column slices are returned as views;
* `gate_up_silu`: gate and up over the same columns in one program, SiLU(gate) * up in the
  epilogue, so neither intermediate goes to memory (rounded as HF's MLP rounds them).

The weights are the model's own tensors, passed by pointer (no copy: the trainer updates
them in place). `supports` says when a module may take this path (a plain nn.Linear; peft's
LoRA wrappers and anything else run as modules). Each operation has a plain-torch twin
(`*_torch`, same math and signature), which tests/kernels/test_gemv_kernels.py compares the
kernels with (on CPU in Triton's interpreter).

Tuning: `GemvConfig` (tile sizes, split, warps, stages) comes from `default_config`: for
the engine's two launches the fastest of benchmarks/bench_gemv.py --sweep on an H200.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch

from tirgrpo.kernels.triton_compat import INTERPRETED, kernels_available, tl, triton

# Batch sizes up to which the Triton kernel set sends projections here (larger batches are
# closer to a real GEMM, where cuBLAS is good).
GEMV_MAX_BATCH = 16
REDUCE_BLOCK = 1024  # output columns per program of the split-K reduction


class GemvConfig(NamedTuple):
    """Launch parameters. block_n: output columns per program; block_k: K per loop step;
    split_k: requested K slices (1 = no partial sums; the launch rounds the slice to a
    multiple of block_k, so the slices run may be fewer); num_warps, num_stages: Triton's."""

    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 4


# Candidates for benchmarks/bench_gemv.py --sweep (pick on the GPU, then adjust default_config):
# (block_n, block_k, split_k, num_warps, num_stages).
CONFIGS = tuple(GemvConfig(*c) for c in (
    (16, 128, 1, 4, 4), (16, 128, 1, 2, 4), (16, 256, 1, 4, 3), (32, 128, 1, 4, 4), (32, 256, 1, 4, 3),
    (64, 128, 1, 4, 4), (64, 128, 1, 8, 4), (128, 64, 1, 4, 4), (16, 128, 2, 4, 4), (16, 128, 4, 4, 4),
    (16, 128, 4, 2, 4), (16, 128, 8, 4, 4), (32, 128, 2, 4, 4), (32, 128, 4, 4, 4), (64, 128, 4, 4, 4),
))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------- torch twins


def linears_torch(x: torch.Tensor, weights: Sequence[torch.Tensor],
                  biases: Sequence[torch.Tensor | None] | None = None) -> tuple[torch.Tensor, ...]:
    """x [B, K] through each weight [N_i, K] (+ bias [N_i]) -> a tuple of [B, N_i], x's dtype."""
    biases = biases if biases is not None else [None] * len(weights)
    return tuple(torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases))


def linear_torch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, K] @ weight [N, K]^T (+ bias [N]) -> [B, N]."""
    return linears_torch(x, [weight], [bias])[0]


def gate_up_silu_torch(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, b_gate: torch.Tensor | None = None,
                       b_up: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(x @ w_gate^T + b_gate) * (x @ w_up^T + b_up): x [B, K], w_* [I, K] -> [B, I], each
    op rounded to x's dtype as HF's Qwen2/Llama MLP rounds it."""
    gate, up = linears_torch(x, [w_gate, w_up], [b_gate, b_up])
    return torch.nn.functional.silu(gate) * up


# ---------------------------------------------------------------------------- Triton


@triton.jit
def _silu_mul_rounded(gate, up, dtype: tl.constexpr):
    """SiLU(gate) * up from fp32 sums, rounded where HF's bf16 ops round: gate and up to the
    model dtype (the Linear outputs), then SiLU's result, then the product."""
    g = gate.to(dtype).to(tl.float32)
    u = up.to(dtype).to(tl.float32)
    act = (g * tl.sigmoid(g)).to(dtype).to(tl.float32)
    return (act * u).to(dtype)


@triton.jit
def _gemv_kernel(x_ptr, w0_ptr, w1_ptr, w2_ptr, b0_ptr, b1_ptr, b2_ptr, y_ptr, ws_ptr,
                 B, K, N0, N1, N2, ws_width, stride_x, stride_y, k_split,
                 NUM_W: tl.constexpr, GLU: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
                 EVEN_K: tl.constexpr, B_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, INTERPRETED: tl.constexpr):
    # Program (n block, K slice). Stacked mode (GLU False): the NUM_W matrices' row blocks are
    # numbered one after another; the program finds its matrix, and writes its columns at that
    # matrix's offset in y. GLU mode: NUM_W is 1 and the program reads the same rows of w0
    # (gate) and w1 (up). PARTIAL: write fp32 sums to ws[k slice, B, ws_width] instead of y.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    zero = pid_n * 0  # a runtime 0: the branches below must yield values of the same type
    w_ptr, b_ptr, n_rows, col0, blk = w0_ptr, b0_ptr, N0 + zero, zero, pid_n
    if NUM_W >= 2:
        if blk >= tl.cdiv(N0, BLOCK_N):
            blk -= tl.cdiv(N0, BLOCK_N)
            w_ptr, b_ptr, n_rows, col0 = w1_ptr, b1_ptr, N1 + zero, N0 + zero
            if NUM_W >= 3:
                if blk >= tl.cdiv(N1, BLOCK_N):
                    blk -= tl.cdiv(N1, BLOCK_N)
                    w_ptr, b_ptr, n_rows, col0 = w2_ptr, b2_ptr, N2 + zero, N0 + N1 + zero
    rows = blk * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    # Rows past the end of W (the last block of a matrix) load its last row again, unmasked,
    # and are dropped at the store. x's padding rows are masked: they read nothing (x's tile is
    # as large as W's at BLOCK_N = B_PAD = 16, and it is re-read by every program).
    w_rows = tl.minimum(rows, n_rows - 1).to(tl.int64)[:, None] * K
    b = tl.arange(0, B_PAD)
    b_ok = (b < B)[:, None]
    x_rows = b.to(tl.int64)[:, None] * stride_x
    kk = tl.arange(0, BLOCK_K)
    k_start = pid_k * k_split
    k_end = tl.minimum(k_start + k_split, K)
    acc = tl.zeros([BLOCK_N, B_PAD], tl.float32)
    acc_up = tl.zeros([BLOCK_N, B_PAD], tl.float32)  # GLU only
    for k0 in range(k_start, k_end, BLOCK_K):
        k = (k0 + kk)[None, :]
        if EVEN_K:  # every tile is whole
            x = tl.load(x_ptr + x_rows + k, mask=b_ok, other=0.0)
            w = tl.load(w_ptr + w_rows + k, eviction_policy="evict_first")  # W is read once: keep L2 for x
        else:
            x = tl.load(x_ptr + x_rows + k, mask=b_ok & (k < K), other=0.0)
            w = tl.load(w_ptr + w_rows + k, mask=k < K, other=0.0, eviction_policy="evict_first")
        if INTERPRETED:  # the CPU interpreter multiplies bf16 as raw integers; fp32 holds bf16 exactly
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc += tl.dot(w, tl.trans(x), input_precision=DOT_PRECISION)  # [BLOCK_N, B_PAD]
        if GLU:
            if EVEN_K:
                u = tl.load(w1_ptr + w_rows + k, eviction_policy="evict_first")
            else:
                u = tl.load(w1_ptr + w_rows + k, mask=k < K, other=0.0, eviction_policy="evict_first")
            if INTERPRETED:
                u = u.to(tl.float32)
            acc_up += tl.dot(u, tl.trans(x), input_precision=DOT_PRECISION)
    if HAS_BIAS:  # added once: by the first K slice when the slices are summed later
        first = (pid_k == 0).to(tl.float32)
        acc += first * tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
        if GLU:
            acc_up += first * tl.load(b1_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    cols = (col0 + rows)[:, None]
    ok = row_ok[:, None] & (b < B)[None, :]  # [BLOCK_N, B_PAD], as acc
    if PARTIAL:
        ws = ws_ptr + (pid_k * B + b[None, :]).to(tl.int64) * ws_width + cols
        tl.store(ws, acc, mask=ok)
        if GLU:  # up's sums after gate's: ws_width = 2 * I
            tl.store(ws + N0, acc_up, mask=ok)
    else:
        y = y_ptr + b[None, :].to(tl.int64) * stride_y + cols
        if GLU:
            tl.store(y, _silu_mul_rounded(acc, acc_up, y_ptr.dtype.element_ty), mask=ok)
        else:
            tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _gemv_reduce_kernel(ws_ptr, y_ptr, B, n_out, ws_width, stride_y, n_splits,
                        GLU: tl.constexpr, BLOCK: tl.constexpr):
    # Program (row b, column block): y[b, cols] = sum over slices s (in order) of ws[s, b, cols];
    # GLU: SiLU(sum of gate partials) * (sum of up partials, at column offset n_out).
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_out
    acc = tl.zeros([BLOCK], tl.float32)
    acc_up = tl.zeros([BLOCK], tl.float32)
    for s in range(n_splits):
        base = ws_ptr + (s * B + b).to(tl.int64) * ws_width
        acc += tl.load(base + cols, mask=ok, other=0.0)
        if GLU:
            acc_up += tl.load(base + n_out + cols, mask=ok, other=0.0)
    y = y_ptr + b.to(tl.int64) * stride_y + cols
    if GLU:
        tl.store(y, _silu_mul_rounded(acc, acc_up, y_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=ok)


# ---------------------------------------------------------------------------- launching


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # Triton's interpreter: the value only shapes the grid


@functools.lru_cache(maxsize=1024)
def default_config(batch: int, widths: tuple[int, ...], K: int, n_sm: int, glu: bool = False) -> GemvConfig:
    """Launch parameters for `batch` rows, matrices of `widths` output columns (one entry per
    program column space: (Nq, Nk, Nv) for q/k/v, (I,) for gate/up) and reduction length K,
    on a device of `n_sm` SMs (the measured configs below do not depend on it); glu: the
    gate/up launch.

    All configs are what `benchmarks/bench_gemv.py --sweep` measured fastest on an H200 at
    batch 8 (1.5B shape; docs/measurements/gemv_sweep_h200.json), used at every batch size.
    The engine's two launches: gate/up 128 columns x 64 of K a program (17.2 us against
    22.1 us for cuBLAS's two matmuls), q/k/v 16 columns x 256 of K, no split (6.1 us against
    16.2 us for three matmuls); splitting K was slower for both (the reduction is one more
    launch). A single matrix (the engine runs o_proj, down_proj and the LM head as modules:
    cuBLAS was as fast) takes 64 columns x 128 of K, the best for o (K 1536) and the LM head
    unsplit, and for down (K 8960) with K split in 4: so split in 4 when K >= 4096.
    """
    if glu:
        return GemvConfig(block_n=128, block_k=64, split_k=1, num_warps=4, num_stages=4)
    if len(widths) > 1:
        return GemvConfig(block_n=16, block_k=256, split_k=1, num_warps=4, num_stages=3)
    return GemvConfig(block_n=64, block_k=128, split_k=4 if K >= 4096 else 1, num_warps=4, num_stages=4)


def _check(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None]) -> bool:
    """Raise ValueError unless the kernel can read these tensors; True when they have biases."""
    B, K = x.shape
    if x.stride(1) != 1:
        raise ValueError(f"gemv: x must have contiguous rows, strides {x.stride()}")
    for w, bias in zip(weights, biases):
        if w.dim() != 2 or w.shape[1] != K or not w.is_contiguous() or w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"gemv: weights must be contiguous [N, {K}] {x.dtype} on {x.device}, got "
                             f"{tuple(w.shape)} {w.dtype} strides {w.stride()} on {w.device}")
        if bias is not None and (bias.shape != (w.shape[0],) or not bias.is_contiguous() or bias.dtype != x.dtype
                                 or bias.device != x.device):
            raise ValueError(f"gemv: bias must be contiguous [{w.shape[0]}] {x.dtype} on {x.device}, got "
                             f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        raise ValueError("gemv: either every matrix of one launch has a bias or none has")
    return all(has_bias)


def _launch(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], glu: bool,
            config: GemvConfig | None) -> torch.Tensor:
    """Run `_gemv_kernel` (and the reduction when K is split). Returns y: [B, sum N_i], or
    [B, I] for glu (weights = (gate, up))."""
    B, K = x.shape
    has_bias = _check(x, weights, biases)
    widths = (weights[0].shape[0],) if glu else tuple(w.shape[0] for w in weights)
    if glu and weights[1].shape != weights[0].shape:
        raise ValueError(f"gemv: gate {tuple(weights[0].shape)} and up {tuple(weights[1].shape)} differ")
    cfg = config or default_config(B, widths, K, _sm_count(x.device), glu)
    k_split = _cdiv(_cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k  # whole tiles per slice
    n_splits = _cdiv(K, k_split)
    n_out = sum(widths)
    y = torch.empty((B, n_out), dtype=x.dtype, device=x.device)
    ws_width = n_out * (2 if glu else 1)
    # Partial sums [slices, B, ws_width] fp32; one fixed shape per (B, config): fine in CUDA graphs.
    ws = torch.empty((n_splits, B, ws_width), dtype=torch.float32, device=x.device) if n_splits > 1 else y
    w = list(weights) + [weights[0]] * (3 - len(weights))  # unused pointer slots
    b = [bias if bias is not None else wt for bias, wt in zip(biases, weights)]
    b += [b[0]] * (3 - len(b))
    n = list(widths) + [0] * (3 - len(widths))
    grid = (sum(_cdiv(ni, cfg.block_n) for ni in widths), n_splits)
    _gemv_kernel[grid](
        x, *w, *b, y, ws, B, K, *n, ws_width, x.stride(0), y.stride(0), k_split,
        NUM_W=len(widths), GLU=glu, HAS_BIAS=has_bias, PARTIAL=n_splits > 1, EVEN_K=K % cfg.block_k == 0,
        B_PAD=max(16, triton.next_power_of_2(B)), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        # fp32 models get full-precision products; tf32 (the default) only matters for them.
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32", INTERPRETED=INTERPRETED,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if n_splits > 1:
        _gemv_reduce_kernel[(B, _cdiv(n_out, REDUCE_BLOCK))](ws, y, B, n_out, ws_width, y.stride(0), n_splits,
                                                            GLU=glu, BLOCK=REDUCE_BLOCK)
    return y


def linears(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None] | None = None,
            config: GemvConfig | None = None) -> tuple[torch.Tensor, ...]:
    """Triton `linears_torch`, one launch (plus the split-K reduction when K is split).

    x: [B, K] with contiguous rows; weights: 1 to 3 contiguous [N_i, K] in x's dtype; biases:
    [N_i] each, all or none. Returns views [B, N_i] into one [B, sum N_i] buffer (row stride
    sum N_i), so q/k/v heads stay contiguous within a row.
    """
    if not 1 <= len(weights) <= 3:
        raise ValueError(f"gemv.linears takes 1 to 3 weight matrices, got {len(weights)}")
    biases = list(biases) if biases is not None else [None] * len(weights)
    y = _launch(x, weights, biases, False, config)
    out, start = [], 0
    for w in weights:
        out.append(y[:, start : start + w.shape[0]])
        start += w.shape[0]
    return tuple(out)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           config: GemvConfig | None = None) -> torch.Tensor:
    """Triton `linear_torch`: x [B, K] @ weight [N, K]^T (+ bias [N]) -> [B, N] contiguous."""
    return linears(x, [weight], [bias], config)[0]


def gate_up_silu(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, b_gate: torch.Tensor | None = None,
                 b_up: torch.Tensor | None = None, config: GemvConfig | None = None) -> torch.Tensor:
    """Triton `gate_up_silu_torch`, one launch: x [B, K], w_gate, w_up [I, K] -> [B, I]."""
    return _launch(x, [w_gate, w_up], [b_gate, b_up], True, config)


def supports(x: torch.Tensor, modules: Sequence[torch.nn.Module], glu: bool = False) -> bool:
    """May `modules`, applied to x [B, K], run as one `linears` / `gate_up_silu` launch?

    Only plain `torch.nn.Linear` (exact type: peft's LoRA layers, quantized or other
    subclasses run as modules) whose weights are ordinary contiguous tensors (not DTensors)
    [N, K] of x's dtype and device, biases all or none, each a contiguous [N] of x's dtype and
    device (what `_check` requires, so a True here never raises there); and only on a device
    the kernels run on. glu: the modules are (gate, up) for `gate_up_silu`, whose weights must
    have the same shape. A host-side check of attributes: no sync, safe during graph capture.
    """
    if x.dim() != 2 or x.stride(1) != 1 or not kernels_available(x.device):
        return False
    if glu and (len(modules) != 2 or any(type(m) is not torch.nn.Linear for m in modules)
                or modules[0].weight.shape != modules[1].weight.shape):
        return False
    has_bias = set()
    for m in modules:
        if type(m) is not torch.nn.Linear:
            return False
        w, bias = m.weight, m.bias
        if (type(w.data) is not torch.Tensor or w.dim() != 2 or w.shape[1] != x.shape[1] or not w.is_contiguous()
                or w.dtype != x.dtype or w.device != x.device):
            return False
        if bias is not None and (type(bias.data) is not torch.Tensor or bias.shape != (w.shape[0],)
                                 or not bias.is_contiguous() or bias.dtype != x.dtype or bias.device != x.device):
            return False
        has_bias.add(bias is not None)
    return len(has_bias) == 1
