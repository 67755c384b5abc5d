"""A run's folder: whether it holds a run, what a fresh run clears of an earlier one, and
claiming it (config.toml, plan.toml) once every refusal is behind us. Used by `train` and `sft`."""

from __future__ import annotations

import shutil
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.files import atomic_write_text

# What a fresh run (--overwrite) removes of an earlier run in its folder: its logs, evaluations,
# summary, checkpoints (whose `latest` a later --resume would load) and final model.
FRESH_RUN_FILES = ("metrics.jsonl", "samples.jsonl", "eval_before.json", "eval_after.json", "summary.json",
                   "report.html")
FRESH_RUN_GLOBS = ("eval_step_*.json", "*.png")
FRESH_RUN_DIRS = ("checkpoints", "final", "tensorboard")


def find_checkpoint(run_dir: Path, resume: bool, overwrite: bool):
    """The checkpoint to resume from (None for a fresh run). Refuses a fresh run in a folder
    that holds one, unless `overwrite`. Writes nothing."""
    from tirgrpo.train.checkpoint import latest_checkpoint

    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TirgrpoError(f"--resume {run_dir}: no checkpoint there (checkpoints/step_*): the run stopped "
                               f"before its first one (run.save_every); start it again with --overwrite")
        return ckpt
    if holds_a_run(run_dir) and not overwrite:
        raise TirgrpoError(f"{run_dir} already holds a run; use --resume {run_dir}, --overwrite, "
                           f"or --set run.out_dir=OTHER")
    return None


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run (GRPO or SFT) that a fresh one would replace."""
    return any((run_dir / name).exists() for name in ("metrics.jsonl", "summary.json", "checkpoints", "final"))


def clear_earlier_run(run_dir: Path) -> None:
    """Remove what an earlier run left in `run_dir` (FRESH_RUN_*), the user's other files kept."""
    for stale in FRESH_RUN_FILES:
        (run_dir / stale).unlink(missing_ok=True)
    for pattern in FRESH_RUN_GLOBS:
        for stale in run_dir.glob(pattern):
            stale.unlink()
    for stale in FRESH_RUN_DIRS:
        shutil.rmtree(run_dir / stale, ignore_errors=True)


def claim_run_dir(run_dir: Path, resume: bool, config_toml: str, plan_toml: str) -> None:
    """Write config.toml and plan.toml; a fresh run first clears an earlier run's logs.
    Called once every refusal is behind us, so a refused run leaves the folder as it was."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_earlier_run(run_dir)
    atomic_write_text(run_dir / "config.toml", config_toml)
    atomic_write_text(run_dir / "plan.toml", plan_toml)
