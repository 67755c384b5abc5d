"""`tirgrpo sft`: supervised warm start on example completions (train/sft.py)."""

from __future__ import annotations

import argparse

from tirgrpo.config import add_config_arguments, from_dict, read_config_dict


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, "TOML config with [model] [data] [optim] [run] [system] sections and batch_size")
    p.add_argument("--overwrite", action="store_true", help="replace the run that run.out_dir already holds")


def run(args) -> int:
    from tirgrpo.train.sft import SFTConfig, sft

    requested = read_config_dict(args.config, args.set)
    cfg = from_dict(SFTConfig, requested)
    out = sft(cfg, requested, overwrite=args.overwrite)
    print(f"SFT done: {out['steps']} steps, final loss {out['final_loss']:.4f}")
    print(f"final model: {out['final_model']}  (use: tirgrpo train --set model.init_from={cfg.run.out_dir})")
    return 0
