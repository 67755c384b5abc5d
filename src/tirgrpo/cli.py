"""The `tirgrpo` command line: one subcommand per stage of the pipeline.

Each subcommand lives in its own module with two functions, `add_arguments(parser)`
and `run(args) -> int`; this file only routes to them. Modules are imported when
their command runs, so `tirgrpo --help` answers at once (no torch import).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from tirgrpo import __version__
from tirgrpo.errors import TirgrpoError

# name -> (module, one-line summary). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("tirgrpo.commands.prepare", "turn TIR transcripts (CSV or JSONL) into train/eval examples"),
    "data": ("tirgrpo.commands.data", "build other data sets (gsm8k-verify: an easy CPU-sized version of the task)"),
    "score": ("tirgrpo.commands.score", "score completions with a reward set and write the components"),
    "schedule": ("tirgrpo.commands.schedule", "print (and plot) the curriculum weights over training"),
    "sft": ("tirgrpo.commands.sft", "supervised warm start on example completions (before GRPO)"),
    "train": ("tirgrpo.commands.train", "GRPO training from a TOML config (resumable)"),
    "export": ("tirgrpo.commands.export", "a checkpoint (also a sharded one from torchrun) as a plain transformers folder"),
    "plot": ("tirgrpo.commands.plot", "write PNG plots of a run's metrics"),
    "memory": ("tirgrpo.commands.memory", "estimate (or --measure) the GPU memory of a training config, part by part"),
    "generate": ("tirgrpo.commands.generate", "generate TIR transcripts with an OpenAI-compatible server (code runs in the sandbox)"),
    "sandbox": ("tirgrpo.commands.sandbox", "run Python code in the sandbox (run FILE.py, selftest, modes)"),
    "serve": ("tirgrpo.commands.serve", "serve a model over OpenAI-compatible /v1/completions and /v1/chat/completions"),
    "eval": ("tirgrpo.commands.eval", "decision quality of a verifier against baselines; gated answer selection"),
    "report": ("tirgrpo.commands.report", "one self-contained HTML report of a run (plots, eval, log-prob movement)"),
    "bench": ("tirgrpo.commands.bench", "speed benchmarks (bench rollout: generation tokens/s and ms per step)"),
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
    parser.add_argument("--debug", action="store_true",
                        help="let an unexpected error raise with its full traceback (also TIRGRPO_DEBUG=1)")
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
    try:
        parser = _build_parser(command)
    except ImportError as e:  # a missing dependency of that command: say which, no traceback
        if "--debug" in argv:
            raise
        print(f"tirgrpo {command}: error: cannot load the command: {type(e).__name__}: {e} "
              f"(is tirgrpo installed with its dependencies? pip install -e .)", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("TIRGRPO_DEBUG", "") not in ("", "0")
    try:
        return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
    except TirgrpoError as e:
        if debug:
            raise
        print(f"tirgrpo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tirgrpo {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # The file system said no (read-only folder, disk full, a file where a folder should
        # be): the user's to fix, so a message naming the path, not a traceback.
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"tirgrpo {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line here, the whole trace in a file
        if debug:
            raise
        log = write_crash_log(args.command, argv)
        print(f"tirgrpo {args.command}: internal error: {type(e).__name__}: {_first_line(e)}\n"
              f"  the full traceback is in {log}; rerun with --debug to see it here", file=sys.stderr)
        return 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip().split("\n", 1)[0]
    return text[:300] + ("..." if len(text) > 300 else "")


def crash_log_dir() -> Path:
    """Where tracebacks of unexpected errors go: $TIRGRPO_LOG_DIR, else ~/.cache/tirgrpo/crashes."""
    if os.environ.get("TIRGRPO_LOG_DIR"):
        return Path(os.environ["TIRGRPO_LOG_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tirgrpo" / "crashes"


def write_crash_log(command: str, argv: list[str]) -> Path:
    """Write the current exception's traceback (and the command line) to a new file; return its path.

    Falls back to the system temporary folder when the log folder cannot be written."""
    import tempfile

    text = f"tirgrpo {__version__}: tirgrpo {' '.join(argv)}\n\n{traceback.format_exc()}"
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return Path("(not written: no writable folder)")
