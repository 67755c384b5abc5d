"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint folder `RUN_DIR/checkpoints/step_NNNNNN/` holds the trainable weights
(`trainable.safetensors`: all weights for full fine-tuning, the adapters for LoRA), the
optimizer (`optimizer.pt`), RNG states (`rng.pt`), the loop's position (`state.json`),
the config (`config.toml`) and the system plan that ran (`plan.toml`).
`RUN_DIR/checkpoints/latest` names the newest complete one.

Several ranks (train/dist.py) write the weights and optimizer states as one sharded
`torch.distributed.checkpoint` folder, `dcp/` (each rank its shards, by parameter name), in
place of `trainable.safetensors` and `optimizer.pt` (`optimizer.json` keeps its step count
and learning rate). DCP reshards on load, so such a checkpoint resumes at any number of
ranks, one included, and `export_hf_folder` turns it into a plain transformers folder.
A single-process checkpoint also resumes at several ranks (each rank takes its shards).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tirgrpo.files import atomic_dir, atomic_write_text
from tirgrpo.train import dist


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Parameters that train, by name (contiguous copies, as safetensors needs)."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, config_toml: str, plan_toml: str = "",
                    keep: int = 2) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = run_dir / "checkpoints"
    path = root / f"step_{step:06d}"
    if dist.active():
        return save_sharded(root, path, model, optimizer, {**state, "step": step}, config_toml, plan_toml, keep)
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


def sharded_state(model, optimizer=None) -> dict:
    """The tensors of a DCP checkpoint, by name: {"model": {param name: tensor}, "optim":
    {param name + "." + state key: tensor}}; DTensors when sharded, plain tensors otherwise.
    `dcp.load` fills these tensors in place."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {"model": {n: p.data for n, p in named}}
    if optimizer is not None:
        if len(optimizer.state) != len(named):
            raise ValueError(f"optimizer has {len(optimizer.state)} tensors, model {len(named)} trainable ones")
        out["optim"] = {f"{n}.{k}": t for (n, _), st in zip(named, optimizer.state) for k, t in st.items()}
    return out


def save_sharded(root: Path, path: Path, model, optimizer, state: dict, config_toml: str, plan_toml: str,
                 keep: int) -> Path:
    """`save_checkpoint` at several ranks: every rank writes its shards into one temporary
    folder (named by rank 0), rank 0 the rest; the folder becomes `path` once all are done."""
    import torch.distributed.checkpoint as dcp

    tmp = None
    if dist.is_main():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{path.name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    tmp = Path(dist.broadcast_object(str(tmp)))
    dcp.save(sharded_state(model, optimizer), checkpoint_id=tmp / "dcp")
    if dist.is_main():
        (tmp / "optimizer.json").write_text(json.dumps({"steps": optimizer.steps, "lr": optimizer.lr}), encoding="utf-8")
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        (tmp / "config.toml").write_text(config_toml, encoding="utf-8")
        if plan_toml:
            (tmp / "plan.toml").write_text(plan_toml, encoding="utf-8")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
        atomic_write_text(root / "latest", path.name + "\n")
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    dist.barrier()
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None: the one `checkpoints/latest`
    names; when that file is missing, unreadable or names no complete folder (a run stopped
    after its checkpoint folder was renamed into place, before `latest` was written), the
    complete `step_*` folder of the highest step. Folders appear whole (`atomic_dir`), so a
    `step_*` folder with state.json is complete."""
    root = run_dir / "checkpoints"
    try:
        named = root / (root / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        named = root / "latest"  # no state.json in there: falls through to the search
    if (named / "state.json").is_file():
        return named
    complete = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    return complete[-1] if complete else None


RESUME_HINT = "point checkpoints/latest at an earlier step_* folder, or start over with --overwrite"


def _restore(file: Path, apply) -> None:
    """`apply(file)`, a checkpoint file loaded into the run, with a missing or damaged file named
    as such (TirgrpoError); TirgrpoErrors of `apply` pass as they are."""
    from tirgrpo.errors import TirgrpoError

    if not file.is_file():
        raise TirgrpoError(f"{file}: missing from the checkpoint; {RESUME_HINT}")
    try:
        apply(file)
    except TirgrpoError:
        raise
    except Exception as e:  # noqa: BLE001  safetensors', pickle's, torch's errors, KeyError of a foreign dict
        raise TirgrpoError(f"{file}: unreadable or not this checkpoint's ({type(e).__name__}: "
                           f"{str(e)[:200]}); {RESUME_HINT}") from None


def read_state(path: Path) -> dict:
    """The loop state of checkpoint `path` (its state.json): a JSON object of non-negative integers
    with `step`; anything else is a TirgrpoError naming the file."""
    from tirgrpo.errors import TirgrpoError

    box: list = []
    _restore(path / "state.json", lambda f: box.append(json.loads(f.read_text(encoding="utf-8"))))
    state = box[0]
    if (not isinstance(state, dict) or type(state.get("step")) is not int
            or any(type(v) is not int or v < 0 for v in state.values())):
        raise TirgrpoError(f"{path / 'state.json'}: not a loop state (an object of integers >= 0 with 'step'): "
                           f"{json.dumps(state)[:120]}; {RESUME_HINT}")
    return state


def _load_weights(path: Path, model) -> None:
    """Copy the checkpoint's trainable weights into `model`, refusing weights of another model."""
    from tirgrpo.errors import TirgrpoError

    weights = load_file(str(path / "trainable.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lacks = [n for n in weights if n not in params]
    absent = [n for n in params if n not in weights]
    shapes = [f"{n} {tuple(t.shape)} vs {tuple(params[n].shape)}" for n, t in weights.items()
              if n in params and t.shape != params[n].shape]
    if lacks or absent or shapes:
        raise TirgrpoError(f"checkpoint {path} does not fit the model: " + "; ".join(
            f"{what} {names[:3]}" for what, names in (("weights the model lacks", lacks),
                                                      ("trainable weights of the model it lacks", absent),
                                                      ("other shapes", shapes)) if names)
            + " (was [model] changed in the run's config.toml?)")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(dist.shard_like(t, params[n]))


def _load_optimizer(file: Path, optimizer) -> None:
    sd = torch.load(file, weights_only=False)
    sd["state"] = [{k: dist.shard_like(t, mine[k]) for k, t in theirs.items()}
                   for theirs, mine in zip(sd["state"], optimizer.state)]
    optimizer.load_state_dict(sd)


def _load_rng(file: Path) -> None:
    rng = torch.load(file, weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Load weights, optimizer and RNG states from `path` in place; return the loop state.
    Either kind of checkpoint, at any number of ranks (the model and optimizer may be sharded).
    A missing, damaged or foreign file is a TirgrpoError naming it."""
    state = read_state(path)
    if (path / "dcp").is_dir():
        load_sharded(path, model, optimizer)
    else:
        _restore(path / "trainable.safetensors", lambda f: _load_weights(path, model))
        _restore(path / "optimizer.pt", lambda f: _load_optimizer(f, optimizer))
    _restore(path / "rng.pt", _load_rng)
    return state


def load_sharded(path: Path, model, optimizer=None, collective: bool = True) -> None:
    """Fill the model's trainable weights (and the optimizer) from the DCP folder of `path`,
    resharded to this run's ranks. collective False: this process alone (an export)."""
    import torch.distributed.checkpoint as dcp

    state = sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=path / "dcp", no_dist=not (collective and dist.active()))
    if optimizer is None:
        return
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    optimizer.steps, optimizer.lr = meta["steps"], meta["lr"]
    with torch.no_grad():
        for p, st in zip(optimizer.params, optimizer.state):
            if "master" in st:
                p.data.copy_(st["master"])


def _check_export_folder(out: Path) -> None:
    """Refuse, before the model is built, an output that `save_hf_folder` (which replaces the folder
    as a whole) must not take: a file, an unwritable place, or a folder with files but no
    config.json, i.e. not an earlier export (a user's own folder would be deleted)."""
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.files import check_output_dir

    check_output_dir(out, "output folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise TirgrpoError(f"output folder {out} exists and is not an earlier export (it has no config.json); "
                           f"choose a new folder")


def export_hf_folder(checkpoint: Path, out: Path) -> Path:
    """A plain transformers folder (`model.save_hf_folder`: LoRA merged) of a checkpoint of
    either kind, built in this process on the CPU in the run's dtype from the checkpoint's
    config.toml and plan.toml. Returns `out`."""
    from tirgrpo.config import TrainConfig, from_dict, read_config_dict
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.train.model import load_policy, resolve_init, save_hf_folder, tokenizer_spec
    from tirgrpo.train.plan import read_plan

    checkpoint = Path(checkpoint)
    if not (checkpoint / "state.json").is_file() or not (checkpoint / "config.toml").is_file():
        raise TirgrpoError(f"{checkpoint}: not a tirgrpo checkpoint folder (state.json, config.toml)")
    _check_export_folder(Path(out))
    cfg = from_dict(TrainConfig, read_config_dict(str(checkpoint / "config.toml")))
    plan = read_plan(checkpoint / "plan.toml")
    model = load_policy(cfg.model, torch.device("cpu"), plan.torch_dtype, cfg.run.seed, checkpointing=False)
    if (checkpoint / "dcp").is_dir():
        load_sharded(checkpoint, model, collective=False)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in load_file(str(checkpoint / "trainable.safetensors")).items():
                params[n].copy_(t)
    save_hf_folder(model, load_tokenizer(tokenizer_spec(resolve_init(cfg.model))), out)
    return Path(out)
