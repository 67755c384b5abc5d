"""`tirgrpo export`: a checkpoint (one process's or a sharded DCP one) as a plain transformers folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint folder (RUN_DIR/checkpoints/step_NNNNNN) or a run folder "
                   "(its latest checkpoint)")
    p.add_argument("out", help="the folder to write (safetensors, config, tokenizer; LoRA merged)")


def run(args) -> int:
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.train.checkpoint import export_hf_folder, latest_checkpoint

    path = Path(args.checkpoint)
    if (path / "checkpoints").is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise TirgrpoError(f"{path}: no complete checkpoint (checkpoints/latest)")
        path = latest
    print(f"exported {path} to {export_hf_folder(path, Path(args.out))}")
    return 0
