"""`tirgrpo bench rollout`: generation speed of the rollout engines, with transformers beside them.

Every row forces exactly `--new-tokens` tokens (eos is masked out), on random prompt
tokens. `--kernels torch triton` times FastEngine with each kernel set in the same call
(one row each), so the torch decode step is measured beside the Triton one. Reported:
prefill time (all prompts of the batch, once per prompt), milliseconds per decode step,
generated tokens/s over the whole call, peak memory (GiB = 2^30 bytes,
`torch.cuda.max_memory_allocated`), the one-time CUDA graph capture cost,
and the memory-bandwidth floor of a decode step at --bandwidth-tbs: weights + every row's
whole KV cache ("floor ms"), and weights + each prompt's KV once + each row's completion KV
("shared floor", what FastEngine's prompt cache can reach when its G rows share reads).
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def decode_floor_ms(model, kv_positions: int, bandwidth_tbs: float) -> float:
    """Lower bound of one decode step: read every weight once and `kv_positions` cached keys/values."""
    cfg = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elt = next(model.parameters()).element_size()
    kv_bytes = kv_positions * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * elt
    return (weight_bytes + kv_bytes) / (bandwidth_tbs * 1e12) * 1e3


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
                                   engine.graph_capture_s if name == "fast" else 0.0))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def result_row(args, model, device, prompts: int, times: dict[int, float], first: float, engine: str,
               capture: float) -> dict:
    """A result row: times in s (ms per decode step), the decode floors, peak GiB (2^30 bytes)."""
    rows = prompts * args.group
    per_step = (times[args.new_tokens] - times[1]) / max(1, args.new_tokens - 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "engine": engine, "batch": rows, "group": args.group,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
        "prefill_s": times[1], "ms_per_step": per_step * 1e3,
        "tokens_per_s": rows * args.new_tokens / times[args.new_tokens],
        # at the mean context: prompt + half the new tokens
        "floor_ms": decode_floor_ms(model, rows * (args.prompt_tokens + args.new_tokens // 2), args.bandwidth_tbs),
        "shared_floor_ms": decode_floor_ms(model, prompts * args.prompt_tokens + rows * args.new_tokens // 2,
                                           args.bandwidth_tbs),
        "peak_gib": peak, "capture_s": capture, "first_call_s": first, "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
