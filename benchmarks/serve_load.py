"""Load test of `tirgrpo serve`: throughput and latency at 1, 8, 64 and 256 concurrent streams,
beside transformers' `generate()` on the same prompts.

    PYTHONPATH=$PWD/src python benchmarks/serve_load.py \
        --model ~/.cache/tirgrpo-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --out serve_load_h200.json

(`--model random:r1-distill-qwen-1.5b` needs no file.) The server runs in a subprocess on a free
loopback port; each of N client streams sends streamed requests one after another (the same
prompt, --prompt-tokens long, a GSM8K question from the bundled data cut to length; ignore_eos,
so every request makes exactly --max-tokens tokens; temperature 1). Per level:
time to first token (first event of the stream) and request latency percentiles, and generated
tokens per second over the level's wall time. Then, in this process, transformers' `generate()`
(dynamic cache, sampling, min_new_tokens = max_new_tokens) runs one batch of N of the same
prompts: its time to first token is its prefill (generate with max_new_tokens=1), its latency
the whole batch. The table is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time

import httpx


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def prompt_ids(model: str, n_tokens: int) -> list[int]:
    from tirgrpo.config import ModelConfig
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train.model import tokenizer_spec

    tok = load_tokenizer(tokenizer_spec(ModelConfig(name_or_path=model)))
    with open(bundled_path("bundled:gsm8k-verify-eval"), encoding="utf-8") as f:
        text = "\n\n".join(json.loads(line)["prompt"] for _, line in zip(range(8), f))
    ids = tok(text)["input_ids"]
    if len(ids) < n_tokens:
        raise SystemExit(f"the bundled prompts make only {len(ids)} tokens; ask for fewer --prompt-tokens")
    return ids[:n_tokens]


def start_server(args) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tirgrpo", "serve", "--model", args.model, "--port", "0", "--served-model-name",
           "bench", "--max-batch", str(max(args.streams)), "--max-prompt-tokens", str(args.prompt_tokens),
           "--max-tokens", str(args.max_tokens), "--max-queue", "100000", "--max-request-tokens", str(1 << 30)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    for line in proc.stderr:
        sys.stderr.write(line)
        m = re.search(r"serving 'bench' on (http://\S+/v1)", line)
        if m:
            print(f"server ready in {time.monotonic() - t0:.1f} s (load + graph capture)", file=sys.stderr)
            return proc, m.group(1)
    raise SystemExit("the server did not start")


async def one_request(client, url: str, body: dict) -> tuple[float, float, int]:
    """(time to first event, latency, completion tokens) of one streamed request, in seconds."""
    t0 = time.perf_counter()
    first, tail = None, b""
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_bytes():
            if first is None:
                first = time.perf_counter() - t0
            tail = (tail + chunk)[-4096:]  # the usage event is near the end; no need to parse the rest
    latency = time.perf_counter() - t0
    usage = re.findall(rb'"completion_tokens": (\d+)', tail)
    return first, latency, int(usage[-1]) if usage else 0


async def load_level(url: str, streams: int, requests: int, body: dict) -> dict:
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    results = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        queue = list(range(requests))

        async def worker():
            while queue:
                queue.pop()
                results.append(await one_request(client, url + "/completions", body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        wall = time.perf_counter() - t0
    ttft, lat, tokens = zip(*results)
    return {"engine": "tirgrpo serve", "streams": streams, "requests": requests, "wall_s": wall,
            "tok_s": sum(tokens) / wall, "tokens": sum(tokens),
            **{f"ttft_p{q}_ms": 1000 * percentile(list(ttft), q / 100) for q in (50, 90, 99)},
            **{f"latency_p{q}_s": percentile(list(lat), q / 100) for q in (50, 90, 99)}}


def hf_level(model, ids: list[int], streams: int, max_tokens: int) -> dict:
    import torch

    x = torch.tensor([ids] * streams, device=model.device)
    kwargs = dict(attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0, top_p=1.0)

    def timed(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, **kwargs)
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    prefill = timed(1)
    wall = timed(max_tokens)
    return {"engine": "transformers generate()", "streams": streams, "requests": streams, "wall_s": wall,
            "tok_s": streams * max_tokens / wall, "tokens": streams * max_tokens,
            **{f"ttft_p{q}_ms": 1000 * prefill for q in (50, 90, 99)},
            **{f"latency_p{q}_s": wall for q in (50, 90, 99)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random:r1-distill-qwen-1.5b")
    ap.add_argument("--streams", default="1,8,64,256", help="concurrency levels, comma-separated")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=256, help="tokens per request (ignore_eos)")
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=16, help="at least this many requests per level")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate()")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    ids = prompt_ids(args.model, args.prompt_tokens)
    body = {"model": "bench", "prompt": ids, "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    rows = []
    proc, url = start_server(args)
    try:
        asyncio.run(load_level(url, 1, 2, {**body, "max_tokens": 8}))  # warm-up: first prefill, connections
        for n in args.streams:
            requests = max(n * args.requests_per_stream, args.min_requests)
            rows.append(asyncio.run(load_level(url, n, requests, body)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    if not args.no_hf:
        import torch

        from tirgrpo.config import ModelConfig
        from tirgrpo.train.model import load_base_model

        model = load_base_model(ModelConfig(name_or_path=args.model), torch.device("cuda"), torch.bfloat16).eval()
        for n in args.streams:
            rows.append(hf_level(model, ids, n, args.max_tokens))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    device = "cpu"
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "device": device, "prompt_tokens": args.prompt_tokens,
                       "max_tokens": args.max_tokens, "rows": rows}, f, indent=1)
    print(f"\nmodel {os.path.basename(args.model)}, {device}, prompt {args.prompt_tokens} tokens, "
          f"{args.max_tokens} generated tokens per request\n")
    print("| engine | streams | requests | generated tok/s | TTFT p50 / p90 / p99 ms | latency p50 / p90 / p99 s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['streams']} | {r['requests']} | {r['tok_s']:,.0f} | "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_p90_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
              f"{r['latency_p50_s']:.2f} / {r['latency_p90_s']:.2f} / {r['latency_p99_s']:.2f} |")
    hf = {r["streams"]: r["tok_s"] for r in rows if r["engine"] != "tirgrpo serve"}
    for r in rows:
        if r["engine"] == "tirgrpo serve" and r["streams"] in hf:
            print(f"streams {r['streams']}: serve / generate() throughput = {r['tok_s'] / hf[r['streams']]:.1f}x")


if __name__ == "__main__":
    main()
