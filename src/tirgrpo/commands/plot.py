"""`tirgrpo plot RUN_DIR`: PNG dashboards of a run (eval/plot.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tirgrpo.errors import TirgrpoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder holding metrics.jsonl")


def run(args) -> int:
    from tirgrpo.eval.plot import plot_run

    if not (Path(args.run_dir) / "metrics.jsonl").is_file():  # as `report` says it: a mistyped folder
        raise TirgrpoError(f"{args.run_dir}: no metrics.jsonl; not a training run folder")
    paths = plot_run(Path(args.run_dir))
    if not paths:
        raise TirgrpoError(f"{Path(args.run_dir) / 'metrics.jsonl'}: no training rows to plot")
    for path in paths:
        print(path)
    return 0
