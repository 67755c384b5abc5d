"""Per-layer projection time of a decode step: cuBLAS (F.linear per module) against the
small-batch GEMV kernels of kernels/gemv.py, on random bf16 weights of a model shape.

For each batch size and projection group of one decoder layer:

    qkv      q, k, v (with biases): 3 x F.linear            | gemv.linears, one launch
    o        o_proj: F.linear                               | gemv.linear
    gate_up  gate, up: 2 x F.linear + the Triton silu_mul   | gemv.gate_up_silu, one launch
    down     down_proj: F.linear                            | gemv.linear
    layer    the four groups in sequence, as in a layer
    lm_head  the LM head (once per step, not per layer; the engine keeps it on cuBLAS:
             this row says what a GEMV there would give)

Every variant is captured in a CUDA graph over all the shape's layers (distinct weights per
layer, so the 60 MB L2 holds none of them at its next use, as in a real step) and replayed;
CUDA events time each replay; the median replay / layers is the time per layer (gaps between
kernels inside the graph included, as in the engine's graphs). Bandwidth fraction: weight
bytes / time against a device-to-device copy of a 1 GiB tensor measured in the same call
(read + write counted, `tirgrpo.perf.bench.measure_copy_bandwidth_tbs`). `max|diff|`: the
largest difference between the two outputs (layer 0).

    PYTHONPATH=$PWD/src python3 benchmarks/bench_gemv.py --json gemv.json
    PYTHONPATH=$PWD/src python3 benchmarks/bench_gemv.py --batch 1 8 16 --sweep --json sweep.json

--sweep also times each candidate of gemv.CONFIGS per group and batch and prints the fastest
(a minute or two: each candidate compiles); default_config is what the engine uses.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tirgrpo.kernels import decode, gemv
from tirgrpo.perf.bench import measure_copy_bandwidth_tbs
from tirgrpo.perf.timing import cuda_median_ms
from tirgrpo.train.model import RANDOM_SHAPES

GROUPS = ("qkv", "o", "gate_up", "down", "layer", "lm_head")


def parse_args(argv=None):
    """The command line (argv: None for sys.argv) as an argparse.Namespace."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="r1-distill-qwen-1.5b", choices=sorted(RANDOM_SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16, 64])
    ap.add_argument("--repeats", type=int, default=30, help="timed graph replays per row (median)")
    ap.add_argument("--sweep", action="store_true", help="also time every gemv.CONFIGS candidate (batch <= 16)")
    ap.add_argument("--json", help="write the rows (and the sweep) here")
    return ap.parse_args(argv)


def make_weights(shape: dict, device) -> dict:
    """Random bf16 weights of every layer ([N, K], as nn.Linear holds them) and of the LM head."""
    H, I, L = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    head_dim = H // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head_dim

    def w(n, k):
        return torch.randn(n, k, device=device, dtype=torch.bfloat16) * k**-0.5

    def b(n):
        return torch.randn(n, device=device, dtype=torch.bfloat16) * 0.1

    layers = [dict(q=w(H, H), k=w(kv, H), v=w(kv, H), bq=b(H), bk=b(kv), bv=b(kv), o=w(H, H), gate=w(I, H),
                   up=w(I, H), down=w(H, I)) for _ in range(L)]
    return {"layers": layers, "head": w(shape["vocab_size"], H), "H": H, "I": I}


def group_fns(name: str, weights: dict, batch: int, config=None):
    """(cublas, gemv, weight bytes per layer, layers per call) for group `name`: each a
    callable running the group over every layer and returning the last layer's output."""
    H, I, device = weights["H"], weights["I"], weights["head"].device
    gen = torch.Generator(device=device).manual_seed(batch)
    x = torch.randn(batch, H, device=device, dtype=torch.bfloat16, generator=gen)
    h = torch.randn(batch, I, device=device, dtype=torch.bfloat16, generator=gen) * 0.1
    layers = weights["layers"]
    per_layer = {
        "qkv": (lambda W: tuple(F.linear(x, W[m], W["b" + m]) for m in "qkv"),
                lambda W: gemv.linears(x, [W["q"], W["k"], W["v"]], [W["bq"], W["bk"], W["bv"]], config=config),
                ("q", "k", "v", "bq", "bk", "bv")),
        "o": (lambda W: F.linear(x, W["o"]), lambda W: gemv.linear(x, W["o"], config=config), ("o",)),
        "gate_up": (lambda W: decode.silu_mul(F.linear(x, W["gate"]), F.linear(x, W["up"])),
                    lambda W: gemv.gate_up_silu(x, W["gate"], W["up"], config=config), ("gate", "up")),
        "down": (lambda W: F.linear(h, W["down"]), lambda W: gemv.linear(h, W["down"], config=config), ("down",)),
    }
    if name == "lm_head":
        head = weights["head"]  # 467 MB: larger than L2 by itself, so 4 calls on the one matrix
        return (lambda: [F.linear(x, head) for _ in range(4)][-1],
                lambda: [gemv.linear(x, head, config=config) for _ in range(4)][-1], head.numel() * 2, 4)
    parts = list(per_layer) if name == "layer" else [name]
    nbytes = sum(layers[0][k].numel() * 2 for p in parts for k in per_layer[p][2])

    def over_layers(which):
        def run():
            out = None
            for W in layers:
                out = [per_layer[p][which](W) for p in parts]
            return out[-1]
        return run

    return over_layers(0), over_layers(1), nbytes, len(layers)


def time_graph(fn, repeats: int):
    """(median seconds of one replay of `fn` captured in a CUDA graph, fn's output of the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compilation, allocator, cuBLAS workspaces: outside the capture
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for _ in range(3):
        graph.replay()
    return cuda_median_ms(graph.replay, repeats) / 1e3, out


def max_diff(a, b) -> float:
    """Largest |a - b| over two tensors (or tuples of tensors, pairwise), in fp32."""
    if isinstance(a, tuple):
        return max(max_diff(x, y) for x, y in zip(a, b))
    return (a.float() - b.float()).abs().max().item()


def config_of(name: str, weights: dict, batch: int, n_sm: int) -> str:
    """The default_config group `name` launches with (the engine itself runs o and down as modules)."""
    H, I, lw = weights["H"], weights["I"], weights["layers"][0]
    shapes = {"qkv": ((H, lw["k"].shape[0], lw["v"].shape[0]), H), "o": ((H,), H), "gate_up": ((I,), H),
              "down": ((H,), I), "lm_head": ((weights["head"].shape[0],), H)}
    if name not in shapes:
        return ""
    c = gemv.default_config(batch, *shapes[name], n_sm, glu=name == "gate_up")
    return f"n{c.block_n} k{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages}"


def bench(args, weights, copy_tbs: float, n_sm: int) -> list[dict]:
    """Time each group of GROUPS at each --batch, cuBLAS against the GEMV kernels (CUDA graph
    replays, median): one row per (group, batch) with times per call, bandwidth fractions of
    `copy_tbs`, the largest difference and the default config; each row printed as it is done."""
    rows = []
    for batch in args.batch:
        for name in GROUPS:
            cublas, fast, nbytes, calls = group_fns(name, weights, batch)
            t_cublas, out_cublas = time_graph(cublas, args.repeats)
            t_fast, out_fast = time_graph(fast, args.repeats)
            per_c, per_f = t_cublas / calls, t_fast / calls
            rows.append({"group": name, "batch": batch, "weight_bytes": nbytes, "cublas_us": per_c * 1e6,
                         "gemv_us": per_f * 1e6, "speedup": per_c / per_f,
                         "cublas_bw_fraction": nbytes / per_c / 1e12 / copy_tbs,
                         "gemv_bw_fraction": nbytes / per_f / 1e12 / copy_tbs,
                         "max_abs_diff": max_diff(out_cublas, out_fast),
                         "config": config_of(name, weights, batch, n_sm)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def sweep(args, weights) -> list[dict]:
    """Each gemv.CONFIGS candidate per group and batch <= 16; the fastest first within each."""
    out = []
    for batch in [b for b in args.batch if b <= gemv.GEMV_MAX_BATCH]:
        for name in ("qkv", "o", "gate_up", "down", "lm_head"):
            timed = []
            for cfg in gemv.CONFIGS:
                _, fast, nbytes, calls = group_fns(name, weights, batch, config=cfg)
                t, _ = time_graph(fast, max(5, args.repeats // 3))
                timed.append((t / calls * 1e6, cfg))
            timed.sort(key=lambda tc: tc[0])
            out.append({"group": name, "batch": batch, "us": [[us, list(c)] for us, c in timed]})
            (us, best), (us_worst, _) = timed[0], timed[-1]
            print(f"sweep {name:<8} B={batch:<3} best {us:8.2f} us {best}   worst {us_worst:8.2f} us", flush=True)
    return out


def table(rows: list[dict], copy_tbs: float) -> str:
    """`bench`'s rows as a fixed-width text table, with a line saying what the columns measure."""
    lines = [f"{'group':<9}{'B':>4}{'MB':>8}{'cuBLAS us':>11}{'gemv us':>9}{'speedup':>9}{'cuBLAS BW':>10}"
             f"{'gemv BW':>9}{'max|diff|':>11}  gemv config"]
    for r in rows:
        lines.append(f"{r['group']:<9}{r['batch']:>4}{r['weight_bytes'] / 1e6:>8.1f}{r['cublas_us']:>11.2f}"
                     f"{r['gemv_us']:>9.2f}{r['speedup']:>8.2f}x{r['cublas_bw_fraction']:>10.0%}"
                     f"{r['gemv_bw_fraction']:>9.0%}{r['max_abs_diff']:>11.3g}  {r['config']}")
    lines.append(f"per layer (lm_head: per call); BW: weight bytes / time against the measured copy rate "
                 f"{copy_tbs:.2f} TB/s (1 GiB, read + write)")
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Run the benchmark (and --sweep) on the CUDA device; print the table, write --json;
    returns what --json gets (shape, GPU, versions, rows, sweep)."""
    args = parse_args(argv)
    if not (torch.cuda.is_available() and decode.HAVE_TRITON):
        raise SystemExit("bench_gemv needs a CUDA device and triton")
    device = torch.device("cuda")
    copy_tbs = measure_copy_bandwidth_tbs(device, bytes_=2**30)
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count
    shape = RANDOM_SHAPES[args.shape]
    weights = make_weights(shape, device)
    gpu = torch.cuda.get_device_name(device)
    print(f"{args.shape} on {gpu} ({n_sm} SMs), copy {copy_tbs:.2f} TB/s, triton {decode.triton.__version__}, "
          f"torch {torch.__version__}", flush=True)
    rows = bench(args, weights, copy_tbs, n_sm)
    print()
    print(table(rows, copy_tbs))
    result = {"shape": args.shape, "gpu": gpu, "sms": n_sm, "copy_tbs": copy_tbs, "torch": torch.__version__,
              "triton": decode.triton.__version__, "rows": rows}
    if args.sweep:
        result["sweep"] = sweep(args, weights)
    if args.json:
        from tirgrpo.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
