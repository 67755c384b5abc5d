"""`tirgrpo sandbox run FILE.py | selftest | modes`, and the sandbox options `generate` shares."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.tir.sandbox import (DEFAULT_DISK_MB, DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MODES,
                                 Sandbox, available_modes, describe_choice, probe_errors, selftest)
from tirgrpo.tir.sandbox.seccomp import unavailable_reason as seccomp_unavailable

# ----------------------------------------------------------------------------- CLI


def add_sandbox_options(p: argparse.ArgumentParser) -> None:
    """The sandbox options shared by `sandbox run` and `generate`."""
    from tirgrpo.validate import int_in, seconds_up_to

    # Upper bounds far past any use: the values become resource limits, where a huge one failed
    # as "setup failed: Python int too large to convert to C long", naming no option.
    p.add_argument("--timeout", type=seconds_up_to(86400), default=DEFAULT_TIMEOUT_S,
                   help="wall-clock limit per execution, seconds (default 5)")
    p.add_argument("--memory-mb", type=int_in(1, 2**30), default=DEFAULT_MEMORY_MB,
                   help="address-space limit, MB (default 2048)")
    p.add_argument("--max-processes", type=int_in(1, 2**20), default=DEFAULT_MAX_PROCESSES,
                   help="processes the code may start (default 32)")
    p.add_argument("--disk-mb", type=int_in(1, 2**30), default=DEFAULT_DISK_MB,
                   help=f"size of the private /tmp and working directory, MB (default {DEFAULT_DISK_MB})")
    p.add_argument("--sandbox-mode", choices=("auto",) + MODES, default="auto", help="isolation mode (default: best available)")
    p.add_argument("--allow-unsandboxed-network", action="store_true",
                   help="run code even where no network namespace can be made (see docs/security.md)")


def sandbox_from_args(args) -> Sandbox:
    """The Sandbox the options of `add_sandbox_options` describe."""
    return Sandbox(timeout_s=args.timeout, memory_mb=args.memory_mb, max_processes=args.max_processes,
                   disk_mb=args.disk_mb, mode=args.sandbox_mode,
                   allow_unsandboxed_network=args.allow_unsandboxed_network)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    run_p = sub.add_parser("run", help="run one Python file in the sandbox and print the result as JSON")
    run_p.add_argument("file", help="the Python file to run")
    add_sandbox_options(run_p)
    test_p = sub.add_parser("selftest", help="run the hostile-code suite and print what stopped each case")
    add_sandbox_options(test_p)
    sub.add_parser("modes", help="print which isolation modes work on this machine")


def run(args) -> int:
    if args.sandbox_command == "modes":
        modes = available_modes()
        for mode in ("bwrap", "namespaces"):
            print(f"{mode:<11} {'works' if mode in modes else 'unavailable: ' + probe_errors.get(mode, '')}")
        print(f"{'rlimits':<11} limits only, no network or file-system isolation: needs --allow-unsandboxed-network")
        missing = seccomp_unavailable()
        print(f"{'seccomp':<11} {'works' if not missing else 'unavailable: ' + missing}")
        print(f"auto: {describe_choice()}")
        return 0
    sandbox = sandbox_from_args(args)
    if args.sandbox_command == "selftest":
        _, failed, _ = selftest(sandbox)
        return 1 if failed else 0
    path = Path(args.file)
    try:
        code = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TirgrpoError(f"cannot read {path}: {e}") from None
    result = sandbox.run(code)
    print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    return 0 if result.ok else 1
