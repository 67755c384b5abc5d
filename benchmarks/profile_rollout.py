"""Profile FastEngine decode steps on a random-weight shape.

Default: torch.profiler's op tables (CPU and CUDA time per op) of one generate call, run as
the engine runs it (in CUDA graphs on CUDA).

--timeline: the decode loop as the engine runs it (CUDA graphs, the queued step), with CUDA
events around its parts: the step's graph (and its input copies), the sampler, the host copy
of the tokens, and the time between them, when the GPU waits for the host
(`tirgrpo.perf.step_timeline`). One block per --batch; --json writes them all.

--by-category: the decode steps run eagerly (no CUDA graph), and the time of one decode step
is grouped into matmul, attention, rotary + cache write, add + RMSNorm, silu * mul, LM head,
sampling and copies / other (`tirgrpo.perf.profile`): CUDA kernel times on a GPU, each op's
own CPU time on a CPU. One table per --batch; --json writes them all.

    PYTHONPATH=$PWD/src python3 benchmarks/profile_rollout.py --batch 8 --new-tokens 64 --kernels triton
    PYTHONPATH=$PWD/src python3 benchmarks/profile_rollout.py --by-category --batch 8 64 --json profile.json
    PYTHONPATH=$PWD/src python3 benchmarks/profile_rollout.py --timeline --batch 8 64 --new-tokens 256
"""

from __future__ import annotations

import argparse
import json

import torch

from tirgrpo.data.tokenizer import load_tokenizer
from tirgrpo.kernels import KERNEL_CHOICES
# The triton set reads PROMPT_BATCH_MIN_ROWS and KEYS_PER_SPLIT at each call: the options set them here.
from tirgrpo.kernels import decode_attention
from tirgrpo.perf.profile import format_table, profile_decode
from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.engine import FastEngine
from tirgrpo.train.model import RANDOM_SHAPES, build_random_model, resolve_device, resolve_dtype


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="r1-distill-qwen-1.5b", choices=sorted(RANDOM_SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[8], help="rows decoded at once (prompts * G)")
    ap.add_argument("--group", type=int, default=4, help="G: samples per prompt")
    ap.add_argument("--prompt-tokens", type=int, default=3072)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--kernels", choices=KERNEL_CHOICES, default="auto",
                    help="triton-nogemv: the Triton decode kernels with the projections on cuBLAS and the torch "
                         "sampler; triton-perrow: without the rows-of-slot index (each row reads its prompt)")
    ap.add_argument("--prompt-batch-min-rows", type=int, default=None,
                    help="batches from this many rows use the rows-of-slot index (default: "
                         "kernels/decode_attention.py's PROMPT_BATCH_MIN_ROWS); 1: always")
    ap.add_argument("--keys-per-split", type=int, nargs="+", default=None,
                    help="profile each batch once per value of decode_attention.KEYS_PER_SPLIT (keys one "
                         "attention program reads; a multiple of 64); default: the module's")
    ap.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    ap.add_argument("--by-category", action="store_true",
                    help="eager decode steps, time per step grouped by kernel category")
    ap.add_argument("--timeline", action="store_true",
                    help="the decode loop with CUDA graphs, time per step in each part and between parts")
    ap.add_argument("--json", help="with --by-category or --timeline: write the results here (a list, one per --batch)")
    a = ap.parse_args(argv)
    if a.by_category and a.timeline:
        ap.error("--by-category and --timeline are two different runs: give one")
    if a.json and not (a.by_category or a.timeline):
        ap.error("--json needs --by-category or --timeline")
    if any(k < 1 or k % decode_attention.ATTN_BLOCK_N for k in a.keys_per_split or []):
        ap.error(f"--keys-per-split: each value a positive multiple of {decode_attention.ATTN_BLOCK_N}")
    return a


def main(argv=None) -> list[dict]:
    """Print the profile of each --batch; return the --by-category tables or --timeline results
    (empty otherwise)."""
    a = parse_args(argv)
    if a.prompt_batch_min_rows is not None:
        decode_attention.PROMPT_BATCH_MIN_ROWS = a.prompt_batch_min_rows
    device = resolve_device(a.device)
    model = build_random_model(a.shape, resolve_dtype("auto", device), device=device).eval()
    tok = load_tokenizer(RANDOM_SHAPES[a.shape]["tokenizer"])
    vocab = min(len(tok), model.config.vocab_size) - 32
    params = SamplingParams(a.new_tokens, 1.0, min_new_tokens=a.new_tokens)  # eos masked: every row runs all steps
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tables = []
    default = decode_attention.KEYS_PER_SPLIT
    try:
        for keys_per_split in a.keys_per_split or [default]:
            decode_attention.KEYS_PER_SPLIT = keys_per_split
            for batch in a.batch:
                table = profile_batch(a, model, tok, vocab, params, gpu, device, batch)
                if table is not None:
                    tables.append({**table, "keys_per_split": keys_per_split})
    finally:
        decode_attention.KEYS_PER_SPLIT = default
    if a.json:
        from tirgrpo.files import atomic_write_text

        atomic_write_text(a.json, json.dumps(tables, indent=1))
    return tables


def profile_batch(a, model, tok, vocab, params, gpu, device, batch) -> dict | None:
    """Profile one --batch: the --timeline result or the --by-category table (printed and
    returned), else the op tables (None)."""
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (a.prompt_tokens,), generator=g).tolist() for _ in range(max(1, batch // a.group))]
    gen = torch.Generator(device=device).manual_seed(0)
    head = {"shape": a.shape, "batch": len(ids) * a.group, "group": a.group, "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens, "device": str(device), "gpu": gpu}
    if a.timeline:
        from tirgrpo.perf.step_timeline import format_timeline, time_loop

        eng = FastEngine(model, tok, max_batch=batch, kernels=a.kernels)
        result = {**head, "kernels": eng.kernels.name, **time_loop(eng, ids, a.group, params, gen)}
        print(f"\n{a.shape}, batch {result['batch']} (G = {a.group}), {a.prompt_tokens} + {a.new_tokens} tokens, "
              f"{result['kernels']} kernels, CUDA graphs {'on' if eng.graphs_enabled else 'off'}, on {gpu}:")
        print(format_timeline(result), flush=True)
        return result
    if not a.by_category:
        profile_ops(FastEngine(model, tok, max_batch=batch, kernels=a.kernels), ids, a.group, params, gen)
        return None
    eng = FastEngine(model, tok, max_batch=batch, kernels=a.kernels, use_cuda_graphs=False)
    table = {**head, "kernels": eng.kernels.name, **profile_decode(eng, ids, a.group, params, gen)}
    print(f"\n{a.shape}, batch {table['batch']} (G = {a.group}), {a.prompt_tokens} + {a.new_tokens} tokens, "
          f"{table['kernels']} kernels, {decode_attention.KEYS_PER_SPLIT} keys per attention split, eager, "
          f"{table['time']} time per decode step on {gpu}:")
    print(format_table(table), flush=True)
    return table


def profile_ops(eng, ids, group, params, gen) -> None:
    """torch.profiler's tables of one generate call after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    cuda = eng.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    eng.generate(ids, group, params, gen)
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        eng.generate(ids, group, params, gen)
        sync()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50))
    if cuda:
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
