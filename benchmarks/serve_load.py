"""Load test of `tirgrpo serve`: throughput and latency at 1, 8, 64 and 256 concurrent streams,
beside transformers' `generate()` on the same prompts, and where the time to first token went.

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
the whole batch. The table is printed last, then the time to first token taken apart (p50 of
each part, from the server's GET /debug/timings: tir/serve_timing.py says what each part is)
and the server's batcher steps (ms per step by phase, rows per step).

The client is a few lines of asyncio per stream over one kept-alive HTTP/1.1 connection
(`RawStream`), its connections opened before the clock starts: httpx, the earlier client, spent
~100 us per streamed event in Python, so at 64 and 256 streams one process of it could not read
what the server wrote, and sent its next requests late; that wait counted as the server's time to
first token. `--client httpx` measures with it again.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

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
    runner = ["-m", "tirgrpo"]
    if args.emulate_gpu is not None:
        runner = [str(Path(__file__).with_name("serve_emulated.py")), *args.emulate_gpu.split()]
    cmd = [sys.executable, *runner, "serve", "--model", args.model, "--port", "0", "--served-model-name",
           "bench", "--max-batch", str(max(args.streams)), "--max-prompt-tokens", str(args.prompt_tokens),
           "--max-tokens", str(args.max_tokens), "--max-queue", "100000", "--max-request-tokens", str(1 << 30)]
    if args.max_prefill_tokens:
        cmd += ["--max-prefill-tokens", str(args.max_prefill_tokens)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    for line in proc.stderr:
        sys.stderr.write(line)
        m = re.search(r"serving 'bench' on (http://\S+/v1)", line)
        if m:
            print(f"server ready in {time.monotonic() - t0:.1f} s (load, graph capture, prefill warm-up)",
                  file=sys.stderr)
            # keep reading its stderr: a full pipe would stop the server at its next warning
            threading.Thread(target=lambda: [sys.stderr.write(x) for x in proc.stderr], daemon=True).start()
            return proc, m.group(1)
    raise SystemExit("the server did not start")


class RawStream:
    """One kept-alive HTTP/1.1 connection that posts a JSON body and reads the answer, streamed
    (chunked) or not. Times are `time.perf_counter()` seconds: on Linux the server's clock too
    (CLOCK_MONOTONIC), so the two can be subtracted."""

    def __init__(self, url: str):
        u = urlsplit(url)
        self.host, self.port, self.base = u.hostname, u.port, u.path.rstrip("/")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        """Open the TCP connection (`post` does it when there is none)."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes) -> dict:
        """t0 (about to send), first (its first body bytes read), end, completion tokens, the response id."""
        if self.writer is None:
            await self.connect()
        t0 = time.perf_counter()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % ((self.base + path).encode(), self.host.encode(),
                                                              self.port, len(body), body))
        r = self.reader
        head = await r.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(b":") for x in head.split(b"\r\n")[1:]) if k}
        first, start, tail = None, b"", b""
        if headers.get(b"transfer-encoding") == b"chunked":
            while size := int((await r.readuntil(b"\r\n")).split(b";")[0], 16):
                chunk = (await r.readexactly(size + 2))[:-2]
                if first is None:
                    first, start = time.perf_counter(), chunk
                tail = (tail + chunk)[-4096:]  # the usage event is near the end; no need to parse the rest
            await r.readuntil(b"\r\n")
        else:
            tail = start = await r.readexactly(int(headers.get(b"content-length", b"0")))
            first = time.perf_counter()
        end = time.perf_counter()
        if headers.get(b"connection") == b"close":
            self.close()
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {tail[:200]!r}")
        usage = re.findall(rb'"completion_tokens": (\d+)', tail)
        rid = re.search(rb'"id": "([^"]+)"', start)
        return {"t0": t0, "first": first, "end": end, "tokens": int(usage[-1]) if usage else 0,
                "id": rid.group(1).decode() if rid else None}

    def close(self) -> None:
        """Close the connection, if open; the next `post` opens a new one."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def httpx_request(client, url: str, body: bytes) -> dict:
    """The same as `RawStream.post`, through httpx (`--client httpx`)."""
    t0 = time.perf_counter()
    first, start, tail = None, b"", b""
    async with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_bytes():
            if first is None:
                first = time.perf_counter()
            if len(start) < 200:
                start += chunk
            tail = (tail + chunk)[-4096:]
    end = time.perf_counter()
    usage = re.findall(rb'"completion_tokens": (\d+)', tail)
    rid = re.search(rb'"id": "([^"]+)"', start)
    return {"t0": t0, "first": first, "end": end, "tokens": int(usage[-1]) if usage else 0,
            "id": rid.group(1).decode() if rid else None}


# the parts of a request's time to first token, in order (ms; "server_ttft": the server's share), then
# what its prefill held: the columns of the second table
PARTS = ("client_send", "parse", "queue", "first_token", "prefill", "send", "client_receive", "server_ttft")
HELD = ("prefill_groups", "prefill_tokens", "running_rows", "steps_waited")


async def server_timings(url: str, results: list[dict] = ()) -> dict:
    """The server's TTFT breakdown of the requests since the last call (GET /debug/timings?clear=1),
    p50 and p90 of each part, with the client's own two parts: client_send (about to send -> the
    endpoint has it: the client's and the HTTP layer's delay) and client_receive (the server handed
    the first event to its HTTP layer -> the client read it); and the batcher's ms per step by phase, rows per step."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        r = await client.get(url.rsplit("/v1", 1)[0] + "/debug/timings", params={"clear": "1"})
    if r.status_code != 200:
        return {}
    report = r.json()
    rows, mine = report["timings"], {x["id"]: x for x in results}
    for row in rows:
        x = mine.get(row.get("id"))
        if x is not None and row.get("sent"):
            row["client_send_ms"] = 1000 * (row["received"] - x["t0"])
            row["client_receive_ms"] = 1000 * (x["first"] - row["sent"])
    out = {"server_records": len(rows)}
    for name, key in [(p, ("ttft" if p == "server_ttft" else p) + "_ms") for p in PARTS] + [(h, h) for h in HELD]:
        xs = [row[key] for row in rows if row.get(key) is not None]
        if xs:
            unit = "_ms" if name in PARTS else ""
            out.update({f"{name}_p{q}{unit}": round(percentile(xs, q / 100), 3) for q in (50, 90)})
    stats = report.get("batcher", {})
    if stats.get("steps"):
        out["steps"] = stats["steps"]
        out["rows_per_step"] = round(stats["rows"] / stats["steps"], 1)
        out.update({f"step_{k.removesuffix('_s')}_ms": round(1000 * v / stats["steps"], 3)
                    for k, v in stats.items() if k.endswith("_s")})
    return out


async def load_level(url: str, streams: int, requests: int, body: bytes, client_kind: str = "raw") -> dict:
    await server_timings(url)  # drop what came before this level
    results, queue = [], list(range(requests))
    if client_kind == "raw":
        conns = [RawStream(url) for _ in range(streams)]
        await asyncio.gather(*(c.connect() for c in conns))  # before the clock: kept-alive clients do not reconnect

        async def worker(conn):
            while queue:
                queue.pop()
                results.append(await conn.post("/completions", body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        wall = time.perf_counter() - t0
        for c in conns:
            c.close()
    else:
        limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
        async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:

            async def worker(_):
                while queue:
                    queue.pop()
                    results.append(await httpx_request(client, url + "/completions", body))

            t0 = time.perf_counter()
            await asyncio.gather(*(worker(None) for _ in range(streams)))
            wall = time.perf_counter() - t0
    server = await server_timings(url, results)
    ttft = [x["first"] - x["t0"] for x in results]
    lat = [x["end"] - x["t0"] for x in results]
    tokens = sum(x["tokens"] for x in results)
    return {"engine": "tirgrpo serve", "client": client_kind, "streams": streams, "requests": requests,
            "wall_s": wall, "tok_s": tokens / wall, "tokens": tokens,
            **{f"ttft_p{q}_ms": 1000 * percentile(ttft, q / 100) for q in (50, 90, 99)},
            **{f"latency_p{q}_s": percentile(lat, q / 100) for q in (50, 90, 99)}, **server}


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
    ap.add_argument("--max-prefill-tokens", type=int, default=0, help="the server's (default: its own default)")
    ap.add_argument("--client", default="raw", choices=["raw", "httpx"], help="see the module's docstring")
    ap.add_argument("--emulate-gpu", nargs="?", const="", default=None, metavar="OPTIONS",
                    help="a server whose model is emulated (serve_emulated.py, with these of its options, "
                         "e.g. --emulate-gpu='--prefill-ms 20'): the host side, on a CPU")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate() (skipped without CUDA)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    ids = prompt_ids(args.model, args.prompt_tokens)
    body = {"model": "bench", "prompt": ids, "max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    encoded = json.dumps(body).encode()
    rows = []
    proc, url = start_server(args)
    try:
        # warm-up: this process's first requests (the server warmed its own prefill path at start)
        asyncio.run(load_level(url, 1, 2, json.dumps({**body, "max_tokens": min(8, args.max_tokens)}).encode(),
                               args.client))
        for n in args.streams:
            requests = max(n * args.requests_per_stream, args.min_requests)
            rows.append(asyncio.run(load_level(url, n, requests, encoded, args.client)))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    device = "cpu"
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        pass
    if not args.no_hf and args.emulate_gpu is None and device != "cpu":
        from tirgrpo.config import ModelConfig
        from tirgrpo.train.model import load_base_model

        model = load_base_model(ModelConfig(name_or_path=args.model), torch.device("cuda"), torch.bfloat16).eval()
        for n in args.streams:
            rows.append(hf_level(model, ids, n, args.max_tokens))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "device": device, "prompt_tokens": args.prompt_tokens,
                       "max_tokens": args.max_tokens, "max_prefill_tokens": args.max_prefill_tokens or None,
                       "client": args.client, "emulated_gpu": args.emulate_gpu, "rows": rows}, f, indent=1)
    print_tables(args, device, rows)


def print_tables(args, device: str, rows: list[dict]) -> None:
    """Print the levels' results as Markdown tables: throughput and TTFT / latency percentiles per
    engine and stream count, then (when the server's timing records were fetched) the parts of
    the time to first token and the batcher's step phases."""
    print(f"\nmodel {os.path.basename(args.model)}, {'' if args.emulate_gpu is None else 'GPU emulated on '}{device}, "
          f"prompt {args.prompt_tokens} tokens, {args.max_tokens} generated tokens per request, "
          f"{args.client} client\n")
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
    served = [r for r in rows if r["engine"] == "tirgrpo serve" and r.get("server_records")]
    if not served:
        return
    parts = list(PARTS)
    print("\nWhere the time to first token went, p50 / p90 ms of each part (percentiles do not add up); "
          "the prefill is part of first_token:\n")
    print("| streams | " + " | ".join(parts) + " | groups / tokens per prefill | rows waiting on it |")
    print("|---" * (len(parts) + 3) + "|")
    for r in served:
        cells = [f"{r[f'{p}_p50_ms']:.1f} / {r[f'{p}_p90_ms']:.1f}" if f"{p}_p50_ms" in r else "-" for p in parts]
        print(f"| {r['streams']} | " + " | ".join(cells) + f" | {r.get('prefill_groups_p50', 0):.0f} / "
              f"{r.get('prefill_tokens_p50', 0):.0f} | {r.get('running_rows_p50', 0):.0f} |")
    phases = [f"step_{p}_ms" for p in ("admit", "sample", "decode_record", "release")]
    print("\nThe server's batcher steps, ms per step by phase:\n")
    print("| streams | steps | rows per step | " + " | ".join(p[5:-3] for p in phases) + " |")
    print("|---" * (len(phases) + 3) + "|")
    for r in served:
        print(f"| {r['streams']} | {r.get('steps', 0)} | {r.get('rows_per_step', 0)} | "
              + " | ".join(f"{r.get(p, 0):.2f}" for p in phases) + " |")


if __name__ == "__main__":
    main()
