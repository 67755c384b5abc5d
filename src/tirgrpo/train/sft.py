"""`tirgrpo sft`: supervised warm start on completions (loss on completion tokens only).

The original work concluded it might have needed SFT before GRPO: a policy that never
writes `</think>` followed by `\\boxed{}` or a new code block gets no useful reward signal.
This trains the same model (same loading, LoRA, checkpointing and logging as `train`)
on each example's `completion` given its `prompt`; `tirgrpo train` can then start from
the result with `--set model.init_from=RUN_DIR`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tirgrpo.config import DataConfig, ModelConfig, OptimConfig, RunConfig, add_config_arguments, load_config, to_toml
from tirgrpo.errors import TirgrpoError


@dataclass
class SFTConfig:
    """`tirgrpo sft` settings: the same sections as `train` minus rollout/rewards/grpo."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=5, total_steps=50))
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/sft"))
    batch_size: int = 8
    """Examples per optimizer step."""
    append_eos: bool = True
    """End each target with the tokenizer's eos, unless the completion opens a code block
    (a decline ends at the stop string, where generation would stop)."""
    code_stop: str = "```python"
    targets: str = ""
    """A JSONL file of target completions, one {"prompt": ..., "completion": ...} object a line
    (other fields are ignored), e.g. written by a larger model; when set, SFT learns these
    instead of the completions of `data.train`'s examples."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, "TOML config with [model] [data] [optim] [run] sections and batch_size")


def run(args) -> int:
    cfg = load_config(SFTConfig, args.config, args.set)
    out = sft(cfg)
    print(f"SFT done: {out['steps']} steps, final loss {out['final_loss']:.4f}")
    print(f"final model: {out['final_model']}  (use: tirgrpo train --set model.init_from={cfg.run.out_dir})")
    return 0


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: -(sum of masked logp) / num_tokens.

    logp, mask: [B, T]; num_tokens: target tokens in the whole batch (so micro-batch
    losses add up to the batch's mean).
    """
    return -(logp * mask).sum() / max(1, num_tokens)


def target_ids(example, tokenizer, append_eos: bool, code_stop: str) -> list[int]:
    """Completion token ids to learn: the completion, plus eos when it ends a submission."""
    return completion_target_ids(example.completion, tokenizer, append_eos, code_stop)


def completion_target_ids(completion: str, tokenizer, append_eos: bool, code_stop: str) -> list[int]:
    """`target_ids` of a completion text."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if append_eos and tokenizer.eos_token_id is not None and code_stop not in completion:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def read_targets(path: str) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of a target-completions JSONL file (see `SFTConfig.targets`)."""
    from tirgrpo.data.limits import text_problem
    from tirgrpo.data.records import iter_jsonl

    pairs = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise TirgrpoError(f"{path}, line {n}: must be a JSON object with 'prompt' and 'completion'")
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise TirgrpoError(f"{path}, line {n}, field {key!r}: must be a non-empty string")
            problem = text_problem(obj[key])
            if problem:
                raise TirgrpoError(f"{path}, line {n}, field {key!r}: {problem}")
        pairs.append((obj["prompt"], obj["completion"]))
    if not pairs:
        raise TirgrpoError(f"{path}: no target completions")
    return pairs


def sft(cfg: SFTConfig) -> dict:
    """Run supervised fine-tuning as configured; returns a summary dict.

    The run folder is locked for the run's life; a refused run leaves nothing in it."""
    from tirgrpo.train.model import check_model_source, resolve_init
    from tirgrpo.train.runlock import RunLock
    from tirgrpo.validate import check_config

    check_config(cfg)
    check_model_source(resolve_init(cfg.model).name_or_path)
    with RunLock(cfg.run.out_dir):
        return _sft(cfg)


def _sft(cfg: SFTConfig) -> dict:
    from tqdm import tqdm

    from tirgrpo.files import atomic_write_text
    from tirgrpo.train.step import SFTObjective, build_micro_batches, grpo_update
    from tirgrpo.train.metrics import RunLog
    from tirgrpo.train.model import (compile_decoder_layers, load_policy, resolve_device, resolve_dtype, resolve_init,
                               save_hf_folder, tokenizer_spec)
    from tirgrpo.train.optim import AdamW, lr_multiplier
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train.loop import load_prompts, prompts_for_rollout

    run_dir = Path(cfg.run.out_dir)
    torch.manual_seed(cfg.run.seed)
    device = resolve_device(cfg.run.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    tokenizer = load_tokenizer(tokenizer_spec(resolve_init(cfg.model)))
    if cfg.targets:  # (prompt, completion) pairs, e.g. from a larger model
        limit = cfg.data.max_prompt_tokens
        pairs = [(tokenizer(p)["input_ids"], c) for p, c in read_targets(cfg.targets)]
        pairs = [(ids, c) for ids, c in pairs if limit <= 0 or len(ids) <= limit]
        if not pairs:
            raise TirgrpoError(f"{cfg.targets}: no prompt within {limit} tokens")
        source = cfg.targets
    else:
        pairs = [(p.ids, p.example.completion)
                 for p in load_prompts(cfg.data.train, tokenizer, cfg.data.max_prompt_tokens)]
        source = cfg.data.train
    data = [ids for ids, _ in pairs]
    targets = [completion_target_ids(c, tokenizer, cfg.append_eos, cfg.code_stop) for _, c in pairs]
    if not any(targets):
        raise TirgrpoError(f"{source}: every completion is empty; nothing to learn")
    model = load_policy(cfg.model, device, dtype, cfg.run.seed)
    compile_decoder_layers(model, cfg.optim.compile_layers, device)  # CUDA by default, as in `train`
    optimizer = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                      weight_decay=cfg.optim.weight_decay, master_fp32=cfg.optim.master_weights_fp32,
                      bf16_update=cfg.optim.bf16_update, seed=cfg.run.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    # Only now, with every refusal (data, model) behind us, does the run folder change.
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.toml", to_toml(cfg))
    log = RunLog(run_dir, cfg.run.tensorboard)
    K = cfg.optim.total_steps
    loss_value = float("nan")
    model.train()
    for step in tqdm(range(K), desc="SFT steps", unit="step", dynamic_ncols=True):
        t0 = time.perf_counter()
        idx = prompts_for_rollout(len(data), step * cfg.batch_size, cfg.batch_size, cfg.run.seed, cfg.data.shuffle)
        prompts = [data[i] for i in idx]
        comps = [targets[i] for i in idx]
        n_tok = sum(len(c) for c in comps)
        optimizer.lr = cfg.optim.lr * lr_multiplier(step, K, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        batches = build_micro_batches(prompts, comps, 1, cfg.optim.micro_batch_tokens, "off", pad, device)
        res = grpo_update(model, optimizer, batches, SFTObjective(n_tok), cfg.optim.max_grad_norm,
                          cfg.optim.logprob_chunk_tokens)
        total, gn = res.loss, res.grad_norm
        loss_value = total
        log.log({"step": step + 1, "sft/loss": total, "sft/grad_norm": float(gn), "lr": optimizer.lr,
                 "time/step_s": time.perf_counter() - t0})
    log.close()
    save_hf_folder(model, tokenizer, run_dir / "final")
    summary = {"steps": K, "final_loss": loss_value, "final_model": str(run_dir / "final")}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
