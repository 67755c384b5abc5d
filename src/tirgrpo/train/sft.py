"""`tirgrpo sft`: supervised warm start on completions (loss on completion tokens only).

The original work concluded it might have needed SFT before GRPO: a policy that never
writes `</think>` followed by `\\boxed{}` or a new code block gets no useful reward signal.
This trains the same model (same loading, LoRA, checkpointing and logging as `train`)
on each example's `completion` given its `prompt`; `tirgrpo train` can then start from
the result with `--set model.init_from=RUN_DIR`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tirgrpo.config import ExecutionConfig, ModelConfig, OptimConfig, dumps_toml, to_dict
from tirgrpo.errors import TirgrpoError


@dataclass
class SFTDataConfig:
    """Where the examples come from (the `[data]` keys sft uses)."""

    train: str = "bundled:gsm8k-verify-train"
    """Path to examples (JSONL/Parquet), or `bundled:NAME`; their completions are the targets
    unless `targets` is set."""
    max_prompt_tokens: int = 3072
    """Examples with longer prompts are dropped at load time (0 = no limit)."""
    shuffle: bool = True


@dataclass
class SFTRunConfig:
    """Where sft writes (the `[run]` keys sft uses)."""

    out_dir: str = "runs/sft"
    seed: int = 0
    tensorboard: bool = True


@dataclass
class SFTConfig:
    """`tirgrpo sft` settings: only the keys sft uses; any other key is an error naming it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=5, total_steps=50))
    run: SFTRunConfig = field(default_factory=SFTRunConfig)
    system: ExecutionConfig = field(default_factory=ExecutionConfig)
    batch_size: int = 8
    """Examples per optimizer step."""
    append_eos: bool = True
    """End each target with the tokenizer's eos, unless the completion opens a code block
    (a decline ends at the stop string, where generation would stop)."""
    code_stop: str = "```python"
    targets: str = ""
    """A JSONL file of target completions, one {"prompt": ..., "completion": ...} object a line
    (other fields are ignored), e.g. written by a larger model; when set, SFT learns these
    instead of the completions of `data.train`'s examples. Empty: no such file."""


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Negative log-likelihood of the target tokens: -(sum of masked logp) / num_tokens.

    logp, mask: [B, T]; num_tokens: target tokens in the whole batch (so micro-batch
    losses add up to the batch's mean).
    """
    return -(logp * mask).sum() / max(1, num_tokens)


@dataclass
class SFTObjective:
    """Negative log-likelihood of the target tokens, averaged over the whole batch's
    `num_tokens` target tokens (so micro-batch losses add up to the batch mean)."""

    num_tokens: int

    def __call__(self, i, mb, logp, entropy):
        m = mb.mask
        return sft_loss(logp, m, self.num_tokens), {"num_tokens": m.sum().float()}


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


def sft_examples(cfg: SFTConfig, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, target ids) of every example SFT learns, prompts within the length limit."""
    from tirgrpo.data.prompts import load_prompts

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
    targets = [completion_target_ids(c, tokenizer, cfg.append_eos, cfg.code_stop) for _, c in pairs]
    if not any(targets):
        raise TirgrpoError(f"{source}: every completion is empty; nothing to learn")
    return [ids for ids, _ in pairs], targets


def sft(cfg: SFTConfig, requested: dict | None = None, overwrite: bool = False) -> dict:
    """Run supervised fine-tuning as configured; returns a summary dict. `requested` (what the
    user asked, as a dict) is written as RUN_DIR/config.toml (None: `cfg` whole). The run
    folder is locked for the run's life; a refused run leaves nothing in it. A folder that holds
    a run (SFT or GRPO) is refused unless `overwrite`, which replaces that run."""
    from tirgrpo.train.run_folder import holds_a_run
    from tirgrpo.train.model import check_model_source, resolve_init
    from tirgrpo.train.runlock import RunLock
    from tirgrpo.validate import check_config

    check_config(cfg)
    if holds_a_run(Path(cfg.run.out_dir)) and not overwrite:
        raise TirgrpoError(f"{cfg.run.out_dir} already holds a run; use --overwrite to replace it, "
                           f"or --set run.out_dir=OTHER")
    check_model_source(resolve_init(cfg.model).name_or_path)
    with RunLock(cfg.run.out_dir):
        return run_sft(cfg, requested)


def run_sft(cfg: SFTConfig, requested: dict | None) -> dict:
    """The SFT loop: batches of examples -> `grpo_update` with `SFTObjective` -> log."""
    from tqdm import tqdm

    from tirgrpo.data.prompts import prompts_for_rollout
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.files import atomic_write_text
    from tirgrpo.train.run_folder import clear_earlier_run
    from tirgrpo.train.metrics import RunLog
    from tirgrpo.train.model import compile_decoder_layers, load_policy, resolve_init, save_hf_folder, tokenizer_spec
    from tirgrpo.train.optim import AdamW, lr_multiplier
    from tirgrpo.train.plan import describe_plan, resolve_sft_plan, write_plan
    from tirgrpo.train.step import build_micro_batches, grpo_update

    plan = resolve_sft_plan(cfg.system)
    print(describe_plan(plan))
    run_dir = Path(cfg.run.out_dir)
    torch.manual_seed(cfg.run.seed)
    device = torch.device(plan.device)
    tokenizer = load_tokenizer(tokenizer_spec(resolve_init(cfg.model)))
    prompts, targets = sft_examples(cfg, tokenizer)
    model = load_policy(cfg.model, device, plan.torch_dtype, cfg.run.seed, attention=plan.attention,
                        checkpointing=plan.gradient_checkpointing)
    if plan.compile_layers:
        compile_decoder_layers(model)
    optimizer = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                      master_fp32=plan.master_fp32, bf16_update=plan.bf16_update, seed=cfg.run.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    # Only now, with every refusal (data, model) behind us, does the run folder change.
    run_dir.mkdir(parents=True, exist_ok=True)
    clear_earlier_run(run_dir)
    atomic_write_text(run_dir / "config.toml", dumps_toml(to_dict(cfg) if requested is None else requested))
    write_plan(run_dir, plan)
    log = RunLog(run_dir, cfg.run.tensorboard)
    total_steps = cfg.optim.total_steps
    loss = float("nan")
    model.train()
    for step in tqdm(range(total_steps), desc="SFT steps", unit="step", dynamic_ncols=True):
        start = time.perf_counter()
        picked = prompts_for_rollout(len(prompts), step * cfg.batch_size, cfg.batch_size, cfg.run.seed,
                                     cfg.data.shuffle)
        completions = [targets[i] for i in picked]
        optimizer.lr = cfg.optim.lr * lr_multiplier(step, total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
        batches = build_micro_batches([prompts[i] for i in picked], completions, 1, plan.micro_batch_tokens, "off",
                                      pad, device)
        result = grpo_update(model, optimizer, batches, SFTObjective(sum(len(c) for c in completions)),
                             cfg.optim.max_grad_norm, plan.logprob_chunk_tokens)
        loss = result.loss
        log.log({"step": step + 1, "sft/loss": result.loss, "sft/grad_norm": result.grad_norm, "lr": optimizer.lr,
                 "time/step_s": time.perf_counter() - start})
    log.close()
    save_hf_folder(model, tokenizer, run_dir / "final")
    summary = {"steps": total_steps, "final_loss": loss, "final_model": str(run_dir / "final")}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary
