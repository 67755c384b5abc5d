"""`tirgrpo schedule`: print (and plot) the curriculum weights over training (score/schedule.py)."""

from __future__ import annotations

import argparse

from tirgrpo.errors import TirgrpoError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total-steps", type=int, required=True, metavar="K", help="optimizer steps in the run")
    parser.add_argument("--every", type=int, default=0, metavar="N", help="print every N steps (default: K/20)")
    parser.add_argument("--plot", metavar="FILE.png", help="also write a PNG plot of the weights")


def run(args: argparse.Namespace) -> int:
    from tirgrpo.files import check_output_file
    from tirgrpo.score.schedule import MAX_TABLE_ROWS, format_table, plot_schedule

    total = args.total_steps
    if total <= 0:
        raise TirgrpoError(f"--total-steps must be positive, got {total}")
    if args.every < 0:
        raise TirgrpoError(f"--every must be positive, got {args.every}")
    every = args.every or max(1, total // 20)
    if total // every + 2 > MAX_TABLE_ROWS:
        raise TirgrpoError(f"--every {every} over --total-steps {total} would print {total // every + 1:,} rows, "
                           f"more than {MAX_TABLE_ROWS:,}; give a larger --every")
    if args.plot:  # before the table: a folder or an unwritable place is refused naming the option
        check_output_file(args.plot, "--plot")
    print(format_table(total, every))
    if args.plot:
        plot_schedule(total, args.plot)
        print(f"wrote {args.plot}")
    return 0
