"""`tirgrpo report RUN_DIR`: one self-contained HTML page of a run (eval/report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.validate import non_negative_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder (what `tirgrpo train` wrote)")
    p.add_argument("--out", help="where to write the page (default RUN_DIR/report.html)")
    p.add_argument("--prompts", type=non_negative_int, default=3,
                   help="eval prompts in the log-prob movement view (0 = no view)")
    p.add_argument("--from", dest="from_model", default="init", metavar="MODEL",
                   help="log-prob movement from: init (the model the run started from), final, or step_NNNNNN")
    p.add_argument("--to", dest="to_model", default="final", metavar="MODEL", help="... to this model (default final)")
    p.add_argument("--device", default="cpu", help="device for the log-prob view's forward passes (default cpu)")


def run(args) -> int:
    from tirgrpo.eval.report import MODEL_NAME, build_report

    from tirgrpo.config import DEVICE, DEVICES

    for name in (args.from_model, args.to_model):
        if not MODEL_NAME.fullmatch(name):
            raise TirgrpoError(f"model {name!r}: use init, final or step_NNNNNN (a checkpoint folder's name)")
    if not DEVICE.fullmatch(args.device):
        raise TirgrpoError(f"--device must be one of {DEVICES}, got {args.device!r}")
    path = build_report(Path(args.run_dir), Path(args.out) if args.out else None, prompts=args.prompts,
                        from_model=args.from_model, to_model=args.to_model, device=args.device)
    print(f"report: {path}")
    return 0


