"""`tirgrpo generate`: TIR transcripts from an OpenAI-compatible server, code run in the sandbox (tir/generate.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tirgrpo.data.records import transcript_to_dict
from tirgrpo.errors import TirgrpoError
from tirgrpo.tir.generate import (CompletionsClient, SampleFailed, Settings, _Appender, chat_templates, errors_path,
                                  finished_pairs, load_chat_tokenizer, load_templates, read_problems, run_sample)
from tirgrpo.commands.sandbox import add_sandbox_options, sandbox_from_args
from tirgrpo.validate import non_negative_int, positive_float, temperature, top_p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--problems", required=True, help="CSV with columns id, problem and (optional) answer")
    parser.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", required=True, help="model name the server serves")
    parser.add_argument("--out", required=True, help="transcript JSONL (appended to; finished pairs are skipped)")
    parser.add_argument("--max-problems", type=int, default=0, metavar="N",
                        help="use only the first N problems of the file (0 = all)")
    parser.add_argument("--samples-per-problem", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="samples in flight at once")
    parser.add_argument("--max-turns", type=int, default=4, help="model turns per sample")
    parser.add_argument("--max-tokens", type=int, default=4096, help="generated tokens per sample, all turns together")
    parser.add_argument("--temperature", type=temperature, default=0.7, help="sampling temperature in [0, 2]")
    parser.add_argument("--top-p", type=top_p, default=1.0, help="nucleus sampling mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=None, help="per-request seeds (servers that honour them)")
    parser.add_argument("--templates", default=None, help="TOML file overriding code_prompt and/or bridge")
    parser.add_argument("--chat-template", default=None, metavar="TOKENIZER",
                        help="render the prompt and bridge in this solver's chat format (its tokenizer: a folder, "
                             ".gguf or name, with a chat template); default: the seed's DeepSeek-R1 text as is")
    parser.add_argument("--request-timeout", type=positive_float, default=600.0,
                        help="longest silence from the server, s")
    parser.add_argument("--retries", type=non_negative_int, default=3, help="retries of a failed request")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer token (default $OPENAI_API_KEY)")
    parser.add_argument("--no-progress", action="store_true")
    add_sandbox_options(parser)


def run(args) -> int:
    for name in ("samples_per_problem", "concurrency", "max_turns", "max_tokens"):
        if getattr(args, name) < 1:
            raise TirgrpoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_problems < 0:
        raise TirgrpoError(f"--max-problems must be >= 0, got {args.max_problems}")
    problems, has_answers = read_problems(args.problems)
    if args.max_problems:
        problems = problems[: args.max_problems]
    if not has_answers:
        print(f"tirgrpo generate: note: {args.problems} has no answer column; transcripts get correct_answer null "
              "and `tirgrpo prepare` will skip them", file=sys.stderr)
    prompt_t, bridge_t = load_templates(args.templates)
    if args.chat_template:
        prompt_t, bridge_t = chat_templates(prompt_t, bridge_t, load_chat_tokenizer(args.chat_template))
    sandbox = sandbox_from_args(args)
    mode = sandbox.resolved_mode()  # refuse before any request when code cannot run safely
    out = Path(args.out)
    done = finished_pairs(out)
    jobs = [(p, k) for p in problems for k in range(args.samples_per_problem) if (p.id, k) not in done]
    print(f"tirgrpo generate: {len(problems)} problems x {args.samples_per_problem} samples; "
          f"{len(done)} already done, {len(jobs)} to run; sandbox mode {mode}", file=sys.stderr)
    if not jobs:
        return 0
    client = CompletionsClient(args.base_url, args.model, args.temperature, args.top_p, args.request_timeout,
                               args.retries, args.api_key)
    settings = Settings(args.max_turns, args.max_tokens, prompt_t, bridge_t, args.seed)
    writer, failures = _Appender(out), _Appender(errors_path(out))
    remaining = {p.id: 0 for p in problems}
    for p, _ in jobs:
        remaining[p.id] += 1
    try:
        client.check()
        n_ok, n_failed = _run_jobs(args, client, sandbox, settings, jobs, remaining, writer, failures)
    finally:
        client.close()
    print(f"tirgrpo generate: wrote {n_ok} transcripts to {out}", file=sys.stderr)
    if n_failed:
        print(f"tirgrpo generate: {n_failed} samples failed (server errors); details in {errors_path(out)}; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def _run_jobs(args, client, sandbox, settings, jobs, remaining, writer, failures) -> tuple[int, int]:
    """Run the samples `concurrency` at a time, appending each as it finishes; (written, failed).

    Each worker appends its own sample, so that on Ctrl-C (which can land anywhere, even inside
    `submit`) the samples in flight are still written when they finish: the samples not started
    are cancelled, those running are waited for (the pool would wait for them anyway), and a
    resumed run does not redo work already paid for.
    """
    from tqdm import tqdm

    counts, lock = {"ok": 0, "failed": 0}, threading.Lock()

    def job(p, k) -> str | None:  # in a worker: the sample, written; its failure message or None
        try:
            line = transcript_to_dict(run_sample(client, sandbox, p, k, settings))
        except SampleFailed as e:
            failures.write({"problem_id": p.id, "sample": k, "error": str(e), "time": time.time(),
                            "turns": [dataclasses.asdict(t) for t in e.turns]})
            with lock:
                counts["failed"] += 1
            return str(e)
        writer.write(line)
        with lock:
            counts["ok"] += 1
        return None

    try:
        with ThreadPoolExecutor(max_workers=args.concurrency) as pool, tqdm(
            total=sum(1 for v in remaining.values() if v), unit="problem", desc="generate",
            disable=args.no_progress, file=sys.stderr,
        ) as bar:
            try:
                futures = {pool.submit(job, p, k): (p, k) for p, k in jobs}
                for fut in as_completed(futures):
                    p, k = futures[fut]
                    failed = fut.result()
                    if failed is not None:
                        bar.write(f"problem {p.id} sample {k} failed: {failed}", file=sys.stderr)
                    remaining[p.id] -= 1
                    if remaining[p.id] == 0:
                        bar.update(1)
                    bar.set_postfix(ok=counts["ok"], failed=counts["failed"])
            except BaseException as e:
                pool.shutdown(wait=False, cancel_futures=True)  # drop the samples not started
                if isinstance(e, KeyboardInterrupt):
                    print("tirgrpo generate: interrupted; waiting for the samples in flight, to write them",
                          file=sys.stderr)
                raise
    except KeyboardInterrupt:
        failed = f"; {counts['failed']} failed (details in {errors_path(writer.path)})" if counts["failed"] else ""
        print(f"tirgrpo generate: wrote {counts['ok']} transcripts to {writer.path}{failed}; "
              "run the same command again to do the rest", file=sys.stderr)
        raise
    return counts["ok"], counts["failed"]
