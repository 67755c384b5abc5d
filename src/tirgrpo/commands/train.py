"""`tirgrpo train`: GRPO from a TOML config (train/loop.py), then plots and the HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tirgrpo.config import TrainConfig, add_config_arguments, from_dict, read_config_dict
from tirgrpo.errors import TirgrpoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    how = p.add_mutually_exclusive_group()  # resuming a run and replacing it exclude each other
    how.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint, "
                     "with its recorded config.toml and plan.toml")
    how.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")


def requested_config(args) -> dict:
    """What the user asks: --config plus --set, or, resuming, RUN_DIR/config.toml plus --set
    (the [system] settings are then fixed by the recorded plan.toml), whose fixed settings must
    also be the latest checkpoint's (`fixed_on_resume`)."""
    from tirgrpo.train.checkpoint import latest_checkpoint

    if not args.resume:
        return read_config_dict(args.config, args.set)
    if args.config:
        raise TirgrpoError("--resume takes its config from RUN_DIR/config.toml; drop --config")
    path = Path(args.resume) / "config.toml"
    if not path.is_file():
        raise TirgrpoError(f"--resume {args.resume}: no config.toml there")
    recorded = read_config_dict(path)
    asked = read_config_dict(path, args.set)
    changed = fixed_on_resume(asked, recorded)
    if changed == "[system]":
        raise TirgrpoError(f"--resume runs the recorded plan ({args.resume}/plan.toml): [system] settings cannot "
                           f"change; start a new run to change them")
    if changed:
        raise TirgrpoError(f"--resume {args.resume}: {changed} cannot change on resume (the checkpoint belongs "
                           f"to the recorded one); start a new run to change it")
    ckpt = latest_checkpoint(Path(args.resume))
    saved = ckpt / "config.toml" if ckpt else None
    # (the run's folder may have moved since, so its out_dir is not compared)
    edited = fixed_on_resume(recorded, read_config_dict(saved), FIXED[:2]) if saved and saved.is_file() else None
    if edited:
        raise TirgrpoError(f"--resume {args.resume}: {edited} of {path} differs from the checkpoint's "
                           f"({saved}): the file was edited since; restore it, or start a new run")
    return asked


# What a resumed run keeps: [system] (the recorded plan runs), [model] (the checkpoint's weights
# belong to its base, LoRA layout, tokenizer and reference) and run.out_dir (the run's folder).
FIXED = (("system", None), ("model", None), ("run", "out_dir"))


def fixed_on_resume(mine: dict, theirs: dict, fixed=FIXED) -> str | None:
    """The first of the `fixed` settings (section, key or None for the whole section) that differs
    between two config dicts, named as "[section]" or "section.key"; None when none does."""
    for section, key in fixed:
        a, b = mine.get(section, {}), theirs.get(section, {})
        if (a if key is None else a.get(key)) != (b if key is None else b.get(key)):
            return f"[{section}]" if key is None else f"{section}.{key}"
    return None


def run(args) -> int:
    from tirgrpo.train import dist
    from tirgrpo.train.loop import train

    requested = requested_config(args)
    cfg = from_dict(TrainConfig, requested)
    if args.resume:
        cfg.run.out_dir = args.resume
    try:
        summary = train(cfg, requested, resume=bool(args.resume), overwrite=args.overwrite)
    except BaseException:
        dist.teardown(finished=False)
        raise
    dist.teardown()  # under torchrun; nothing in one process
    if dist.is_main():  # rank 0 of a torchrun launch (torchrun sets RANK), or the one process
        add_plots_and_report(summary)
        print_summary(summary)
    return 0


def add_plots_and_report(summary: dict) -> None:
    """Plots and the HTML report of a finished run, recorded in its summary.json. The report is
    derived from the run's files; if it fails, the run is still complete."""
    from tirgrpo.eval.plot import plot_run
    from tirgrpo.eval.report import build_report
    from tirgrpo.files import atomic_write_text

    run_dir = Path(summary["run_dir"])
    summary["plots"] = [str(p) for p in plot_run(run_dir)]
    try:
        summary["report"] = str(build_report(run_dir, device=summary.get("device", "cpu")))
    except Exception as e:  # noqa: BLE001
        print(f"tirgrpo train: the report failed ({type(e).__name__}: {e}); "
              f"retry with: tirgrpo report {run_dir}", file=sys.stderr)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))


def print_summary(summary: dict) -> None:
    """Eval before/after next to the baselines, then where the report, plots and model are."""
    from tirgrpo.eval.evaluate import before_after_table

    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    if before or after:
        print("\n" + before_after_table(before, after))
    print(f"run folder: {summary['run_dir']}  ({summary['steps']} optimizer steps)")
    print(f"final model: {summary['final_model']}")
    for p in summary.get("plots", []):
        print(f"plot: {p}")
    if summary.get("report"):
        print(f"report: {summary['report']}")
