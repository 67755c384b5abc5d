"""The `tirgrpo` command line: one subcommand per stage of the pipeline.

Each subcommand lives in its own module with two functions, `add_arguments(parser)`
and `run(args) -> int`; this file only routes to them. Modules are imported when
their command runs, so `tirgrpo --help` answers at once (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from tirgrpo import __version__
from tirgrpo.errors import TirgrpoError

# name -> (module, one-line summary). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("tirgrpo.data.prepare", "turn TIR transcripts (CSV or JSONL) into train/eval examples"),
    "data": ("tirgrpo.commands.data", "build other data sets (gsm8k-verify: an easy CPU-sized version of the task)"),
    "score": ("tirgrpo.commands.score", "score completions with a reward set and write the components"),
    "schedule": ("tirgrpo.score.schedule", "print (and plot) the curriculum weights over training"),
    "sft": ("tirgrpo.train.sft", "supervised warm start on example completions (before GRPO)"),
    "train": ("tirgrpo.train.loop", "GRPO training from a TOML config (resumable)"),
    "plot": ("tirgrpo.eval.plot", "write PNG plots of a run's metrics"),
    "memory": ("tirgrpo.perf.memory", "estimate (or --measure) the GPU memory of a training config, part by part"),
    "generate": ("tirgrpo.commands.generate", "generate TIR transcripts with an OpenAI-compatible server (code runs in the sandbox)"),
    "sandbox": ("tirgrpo.tir.sandbox", "run Python code in the sandbox (run FILE.py, selftest, modes)"),
    "serve": ("tirgrpo.commands.serve", "serve a model over OpenAI-compatible /v1/completions and /v1/chat/completions"),
    "eval": ("tirgrpo.commands.eval", "decision quality of a verifier against baselines; gated answer selection"),
    "report": ("tirgrpo.eval.report", "one self-contained HTML report of a run (plots, eval, log-prob movement)"),
    "bench": ("tirgrpo.perf.bench", "speed benchmarks (bench rollout: generation tokens/s and ms per step)"),
}


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tirgrpo",
        description=(
            "Train a small model with GRPO to judge tool-integrated math reasoning: after a code "
            "output, submit \\boxed{answer} or decline and write more code."
        ),
        epilog="Run 'tirgrpo COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tirgrpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tirgrpo` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = _build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except TirgrpoError as e:
        print(f"tirgrpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tirgrpo {args.command}: interrupted", file=sys.stderr)
        return 130
