"""`tirgrpo bench`: speed benchmarks (perf/bench.py)."""

from __future__ import annotations

import argparse
import json
import math

from tirgrpo.kernels import KERNEL_CHOICES


def bandwidth_arg(text: str) -> str | float:
    """`--bandwidth-tbs`: "measure" or a positive number of TB/s."""
    if text == "measure":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected 'measure' or a positive number of TB/s, got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    r = sub.add_parser("rollout", help="tokens/s and ms per decode step of the rollout engines")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--model", help="a model folder / spec as in [model] name_or_path")
    src.add_argument("--random-shape", default="r1-distill-qwen-1.5b", help="random weights of a named shape")
    r.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="rows decoded at once (prompts * G)")
    r.add_argument("--group", type=int, default=4, help="G: samples per prompt (prompts = batch / G)")
    r.add_argument("--prompt-tokens", type=int, default=3072)
    r.add_argument("--new-tokens", type=int, default=1024)
    r.add_argument("--engine", choices=["fast", "simple"], default="fast")
    r.add_argument("--kernels", nargs="+", choices=KERNEL_CHOICES, default=["auto"],
                   help="FastEngine's decode-step kernels; several: one row each (triton-nogemv: the Triton "
                        "kernels with the projections on cuBLAS and the torch sampler, to compare with "
                        "triton's small-batch GEMVs and sampler; triton-perrow: each row reads its prompt's "
                        "keys itself, to compare with triton's rows-of-slot index)")
    r.add_argument("--compare-hf", action="store_true", help="also time transformers generate() (dynamic cache)")
    r.add_argument("--repeats", type=int, default=2, help="timed calls per row (median)")
    r.add_argument("--bandwidth-tbs", type=bandwidth_arg, default="measure",
                   help="memory bandwidth of the floors in TB/s, or 'measure' (default): a device-to-device "
                        "copy timed once per call (read + write counted)")
    r.add_argument("--json", help="write the rows here too")
    st = sub.add_parser("step", help="the whole GRPO step (rollout + update) of the trainer; under torchrun: N GPUs")
    weights = st.add_mutually_exclusive_group()
    weights.add_argument("--shape", default="r1-distill-qwen-1.5b",
                         help="random weights of a named shape, synthetic prompts of --prompt-tokens, no EOS")
    weights.add_argument("--model", metavar="NAME_OR_PATH",
                         help="real weights, as in [model] name_or_path, with the model's own tokenizer and EOS, "
                              "on real prompts (--data), so completions have their real lengths")
    st.add_argument("--data", metavar="FILE",
                    help="with --model: the examples (tirgrpo prepare output); default: the seed config's "
                         "data.train (data/prepared/train.jsonl)")
    st.add_argument("--group-size", type=int, default=16)
    st.add_argument("--prompts", type=int, default=4, help="prompts per step (all ranks together)")
    st.add_argument("--prompt-tokens", type=int, default=3072,
                    help="prompt length (--shape); with --model the longest prompt kept (data.max_prompt_tokens)")
    st.add_argument("--new-tokens", type=int, default=1024)
    st.add_argument("--rollouts", type=int, default=2, help="rollouts run (each: rollout, reference, updates)")
    st.add_argument("--warmup", type=int, default=None,
                    help="first rollouts left out of the medians reported (default: all but the last)")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    st.add_argument("--work", default="runs/bench-step", help="folder for the synthetic data and run folders")
    st.add_argument("--results", default="runs/bench-step/results.jsonl",
                    help="JSON lines file the row is appended to; the table prints all its rows")
    st.add_argument("--profile", metavar="DIR", default=None,
                    help="profile the last update (torch.profiler) and write each rank's operators by "
                         "device time, with the share in collectives, to DIR/update_rankN.txt")


def run(args) -> int:
    if args.bench == "step":
        from tirgrpo.perf.step_bench import run_bench_step

        return run_bench_step(args)
    from tirgrpo.perf.bench import bench_rollout, rollout_table

    rows = bench_rollout(args)
    print()
    print(rollout_table(rows))
    if args.json:
        from tirgrpo.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1))
    return 0
