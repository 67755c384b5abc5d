"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint folder `RUN_DIR/checkpoints/step_NNNNNN/` holds the trainable weights
(`trainable.safetensors`: all weights for full fine-tuning, the adapters for LoRA), the
optimizer (`optimizer.pt`), RNG states (`rng.pt`), the loop's position (`state.json`),
the config (`config.toml`) and the system plan that ran (`plan.toml`).
`RUN_DIR/checkpoints/latest` names the newest complete one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tirgrpo.files import atomic_dir, atomic_write_text


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Parameters that train, by name (contiguous copies, as safetensors needs)."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, config_toml: str, plan_toml: str = "",
                    keep: int = 2) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = run_dir / "checkpoints"
    path = root / f"step_{step:06d}"
    with atomic_dir(path) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        if plan_toml:
            (tmp / "plan.toml").write_text(plan_toml, encoding="utf-8")
    atomic_write_text(root / "latest", path.name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Load weights, optimizer and RNG states from `path` in place; return the loop state."""
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise ValueError(f"checkpoint {path} has weights the model lacks: {missing[:3]}")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text(encoding="utf-8"))
