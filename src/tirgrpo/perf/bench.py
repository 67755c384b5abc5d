"""`tirgrpo bench rollout`: generation speed of the rollout engines, with transformers beside them.

Every row forces exactly `--new-tokens` tokens (eos is masked out), on random prompt
tokens. `--kernels torch triton` times FastEngine with each kernel set in the same call
(one row each), so the torch decode step is measured beside the Triton one; `--kernels
triton-nogemv triton` compares the projections on cuBLAS and the torch sampler with the
small-batch GEMV kernels (kernels/gemv.py, batch <= 16) and the Triton sampler
(kernels/sampling.py) under the same Triton decode kernels. Reported:
prefill time (all prompts of the batch, once per prompt), milliseconds per decode step,
generated tokens/s over the whole call, peak memory (GiB = 2^30 bytes,
`torch.cuda.max_memory_allocated`), the one-time CUDA graph capture cost,
and the memory-bandwidth floor of a decode step: weights + every row's whole KV cache
("floor ms"), and weights + each prompt's KV once + each row's completion KV ("shared
floor", what FastEngine's prompt cache can reach when its G rows share reads), each also
as a fraction of the measured step (floor / ms per step: 1.0 = at the floor). The
bandwidth is measured in the same call on the same device (`measure_copy_bandwidth_tbs`)
unless `--bandwidth-tbs` gives one.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

import torch

from tirgrpo.perf.timing import cuda_median_ms


def decode_floor_ms(model, kv_positions: int, bandwidth_tbs: float) -> float:
    """Lower bound of one decode step: read every weight once and `kv_positions` cached keys/values."""
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elt = next(model.parameters()).element_size()
    kv_bytes = kv_positions * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * elt
    return (weight_bytes + kv_bytes) / (bandwidth_tbs * 1e12) * 1e3


def copy_tbs(nbytes: int, seconds: float) -> float:
    """TB/s (1e12 bytes/s) of copying `nbytes` in `seconds`, counting each byte read and written."""
    return 2 * nbytes / seconds / 1e12


def measure_copy_bandwidth_tbs(device: torch.device | str, bytes_: int = 2 * 2**30, repeats: int = 10) -> float:
    """Memory bandwidth of `device` in TB/s: the median time of `dst.copy_(src)` over two
    `bytes_`-byte buffers, after a warm-up copy, counted as read + write (`copy_tbs`), as
    NVIDIA's bandwidth figures are (an H200 gives ~4.3 TB/s this way).

    CUDA: timed with CUDA events. CPU: a memcpy of at most 256 MiB timed with the wall clock
    (a figure of the same kind, for the floor fractions of CPU runs; larger buffers only
    take longer). Needs 2 * bytes_ of free memory, released before returning.
    """
    device = torch.device(device)
    if device.type != "cuda":
        bytes_ = min(bytes_, 256 * 2**20)
    src = torch.empty(bytes_, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: first touch of the pages, the copy kernel
    if device.type == "cuda":
        times = [cuda_median_ms(functools.partial(dst.copy_, src), repeats) / 1e3]
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return copy_tbs(bytes_, statistics.median(times))


def resolve_bandwidth(spec, device: torch.device) -> tuple[float, str]:
    """(TB/s, "measured" | "given") for `--bandwidth-tbs`: "measure" or a number of TB/s."""
    if spec == "measure":
        return measure_copy_bandwidth_tbs(device), "measured"
    return float(spec), "given"


def load_bench_model(args):
    """(model, tokenizer, device) of `--model` or `--random-shape`, in the device's auto dtype."""
    from tirgrpo.config import ModelConfig
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train.model import build_random_model, load_base_model, resolve_device, resolve_dtype, tokenizer_spec

    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device)
    if args.model:
        cfg = ModelConfig(name_or_path=args.model)
        model = load_base_model(cfg, device, dtype)
    else:
        cfg = ModelConfig(name_or_path=f"random:{args.random_shape}")
        model = build_random_model(args.random_shape, dtype, device=device).to(device)
    return model.eval(), load_tokenizer(tokenizer_spec(cfg)), device


def time_calls(call, new_tokens: int, repeats: int, sync) -> tuple[float, dict[int, float]]:
    """(seconds of a 2-token warm-up call, {n: median seconds of call(n)} for n = 1 and new_tokens)."""
    t0 = time.perf_counter()
    call(2)  # warm-up: graph capture for the buckets this shape uses, allocator, kernels
    sync()
    first = time.perf_counter() - t0
    times = {}
    for n in (1, new_tokens):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call(n)
            sync()
            ts.append(time.perf_counter() - t0)
        times[n] = statistics.median(ts)
    return first, times


def bench_rollout(args) -> list[dict]:
    """One row per batch size and engine (FastEngine per kernel set, SimpleEngine, HF generate)."""
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.engine import FastEngine
    from tirgrpo.rollout.simple import SimpleEngine

    model, tok, device = load_bench_model(args)
    bandwidth = resolve_bandwidth(args.bandwidth_tbs, device)
    print(f"memory bandwidth ({bandwidth[1]}, device-to-device copy, read + write): {bandwidth[0]:.2f} TB/s",
          flush=True)
    vocab = min(len(tok), model.config.vocab_size) - 32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    for batch in args.batch:
        prompts = max(1, batch // args.group)
        g = torch.Generator().manual_seed(batch)
        ids = [torch.randint(0, vocab, (args.prompt_tokens,), generator=g).tolist() for _ in range(prompts)]
        engines = ([("fast", k) for k in args.kernels] if args.engine == "fast" else [("simple", None)])
        engines += [("hf", None)] if args.compare_hf else []
        for name, kernels in engines:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            gen = torch.Generator(device=device).manual_seed(0)
            if name == "hf":
                def call(n):
                    x = torch.tensor([p for p in ids for _ in range(args.group)], device=device)
                    model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n,
                                   min_new_tokens=n, pad_token_id=0)
            else:
                engine = (FastEngine(model, tok, max_batch=batch, kernels=kernels) if name == "fast"
                          else SimpleEngine(model, tok, batch_size=batch))

                def call(n):
                    engine.generate(ids, args.group, SamplingParams(n, 1.0, min_new_tokens=n), gen)

            first, times = time_calls(call, args.new_tokens, args.repeats, sync)
            rows.append(result_row(args, model, device, prompts, times, first,
                                   f"fast/{engine.kernels.name}" if name == "fast" else name,
                                   engine.graph_capture_s if name == "fast" else 0.0, bandwidth))
            graphs = engine.graph_ms() if name == "fast" else {}
            rows[-1]["graph_ms"] = graphs[max(graphs)] if graphs else float("nan")
            print(json.dumps(rows[-1]), flush=True)
    return rows


def result_row(args, model, device, prompts: int, times: dict[int, float], first: float, engine: str,
               capture: float, bandwidth: tuple[float, str]) -> dict:
    """A result row: times in s (ms per decode step), the decode floors at `bandwidth` = (TB/s,
    "measured" | "given") and their fractions of the step (floor ms / ms per step), peak GiB (2^30 bytes)."""
    rows = prompts * args.group
    per_step_ms = (times[args.new_tokens] - times[1]) / max(1, args.new_tokens - 1) * 1e3
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    tbs, source = bandwidth
    # at the mean context: prompt + half the new tokens
    floor = decode_floor_ms(model, rows * (args.prompt_tokens + args.new_tokens // 2), tbs)
    shared = decode_floor_ms(model, prompts * args.prompt_tokens + rows * args.new_tokens // 2, tbs)
    return {
        "engine": engine, "batch": rows, "group": args.group,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "prefill_s": times[1], "ms_per_step": per_step_ms,
        "tokens_per_s": rows * args.new_tokens / times[args.new_tokens],
        "floor_ms": floor, "shared_floor_ms": shared,
        "floor_fraction": floor / per_step_ms if per_step_ms > 0 else float("nan"),
        "shared_floor_fraction": shared / per_step_ms if per_step_ms > 0 else float("nan"),
        "bandwidth_tbs": tbs, "bandwidth_source": source,
        "peak_gib": peak, "capture_s": capture, "first_call_s": first, "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def rollout_table(rows: list[dict]) -> str:
    """The printed table of `bench rollout`: one line per row, the floors also as % of the step."""
    lines = [f"{'engine':<20}{'batch':>6}{'G':>4}{'prefill s':>11}{'ms/step':>9}{'graph ms':>9}{'floor ms':>10}{'floor/step':>11}"
             f"{'shared floor':>13}{'shared/step':>12}{'tok/s':>9}{'peak GiB':>9}{'capture s':>11}{'TB/s':>7}"]
    for r in rows:
        lines.append(
            f"{r['engine']:<20}{r['batch']:>6}{r['group']:>4}{r['prefill_s']:>11.3f}{r['ms_per_step']:>9.2f}"
            f"{r.get('graph_ms', float('nan')):>9.2f}{r['floor_ms']:>10.2f}{r['floor_fraction']:>11.0%}{r['shared_floor_ms']:>13.2f}"
            f"{r['shared_floor_fraction']:>12.0%}{r['tokens_per_s']:>9.0f}{r['peak_gib']:>9.2f}"
            f"{r['capture_s']:>11.1f}{r['bandwidth_tbs']:>6.2f}{r['bandwidth_source'][0]}")
    if rows:
        lines.append("graph ms: one replay of the decode step's CUDA graph alone (GPU time, no sampling, no host "
                     "loop); floor/step: floor ms / ms per step (100% = at the floor); TB/s: m = measured in this "
                     "call, g = given by --bandwidth-tbs")
    return "\n".join(lines)
