"""The GRPO loop on one device: `train(cfg)`, in named phases.

    setup             resolve the system plan (before any weights load), load data, models,
                      optimizer, rollout engine, restore a checkpoint; then, every refusal behind
                      it, lock-held, write config.toml and plan.toml
    rollout_and_score take `prompts_per_step` prompts, sample G completions each (`rollout/`),
                      score them (`score/rewards.py`), group advantages (`loss.group_advantages`)
    update            `num_iterations` optimizer steps on that rollout, each one `step.grpo_update`
                      over the same micro-batches
    log_rollout       one metrics row and the kept samples; evaluate and save as scheduled
    finish            last checkpoint (run.save_final_checkpoint), final model, evaluation after
                      training, summary.json

Plots and the HTML report are made from the run folder afterwards (`tirgrpo train` does).
Checkpoints make the run resumable so that a resumed run's metrics equal an uninterrupted
run's (CPU, seeded).

Under torchrun (train/dist.py, docs/distributed.md) every rank runs this loop on its share of
each step's prompts, with the weights sharded by FSDP2; one process is the same loop with
every `dist` call a no-op. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tirgrpo.config import TrainConfig, dumps_toml, to_dict
from tirgrpo.errors import TirgrpoError
from tirgrpo.files import atomic_write_text
from tirgrpo.train import dist
from tirgrpo.train.metrics import DeviceTimer, peak_memory_gib
from tirgrpo.train.plan import Plan
from tirgrpo.train.run_folder import claim_run_dir, find_checkpoint



@dataclass
class Progress:
    """Where the run is; saved in every checkpoint (state.json). `step`: optimizer steps
    taken; `rollout`: rollouts done; `data_pos`: prompts consumed from the training stream;
    `nonfinite`: updates skipped for a non-finite loss or gradient."""

    step: int = 0
    rollout: int = 0
    data_pos: int = 0
    nonfinite: int = 0


@dataclass
class Session:
    """Everything `setup` builds and the phases share."""

    cfg: TrainConfig
    plan: Plan
    run_dir: Path
    device: torch.device
    config_toml: str
    plan_toml: str
    tokenizer: object
    train_prompts: list
    eval_prompts: list
    model: object
    ref_model: object
    optimizer: object
    engine: object
    progress: Progress
    log: object
    train_pairs: list = field(default_factory=list)  # (correct, wrong) prompt indices, with data.paired
    eval_before: dict = field(default_factory=dict)
    last_save: int = 0
    counts: tuple[int, int] = (0, 0)  # (trainable, total) parameters
    nonfinite_at_start: int = 0  # progress.nonfinite when this session began (a resume starts afresh)

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.total_steps

    def save(self) -> None:
        from tirgrpo.train.checkpoint import save_checkpoint

        save_checkpoint(self.run_dir, self.progress.step, self.model, self.optimizer,
                        dataclasses.asdict(self.progress), self.config_toml, self.plan_toml)
        self.last_save = self.progress.step


@dataclass
class Rollout:
    """One rollout, scored: completions[i] answers prompts[i] (G consecutive completions per
    prompt); scores[i] its reward components; advantages [n] float32; seconds per phase."""

    prompts: list
    completions: list
    scores: list[dict]
    advantages: torch.Tensor
    zero_std_groups: int
    rollout_seconds: float
    score_seconds: float
    peak_gib: float = float("nan")  # of the rollout phase (GiB; CPU: peak RSS so far)
    credits: list[list[float]] | None = None  # per completion token (`grpo.credit`); None: all
    include: torch.Tensor | None = None  # [n] bool: in the loss (`grpo.mask_truncated`); None: all


@dataclass
class UpdateStats:
    """The `num_iterations` updates of one rollout: per-update loss and grad norm (applied
    updates only), token-weighted sums of the objective's statistics, and the micro-batching."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    stat_sums: dict[str, float] = field(default_factory=dict)
    stat_tokens: float = 0.0
    skipped: int = 0
    forward_tokens: int = 0
    micro_batches: int = 0
    row_tokens: int = 0
    seconds: float = 0.0  # the whole phase: micro-batches, reference pass, updates
    ref_seconds: float = 0.0  # of which the reference pass (0 without one)
    peak_gib: float = float("nan")  # of the update phase: reference pass + updates (GiB; CPU: peak RSS so far)


# --------------------------------------------------------------------------- setup


def make_engine(plan: Plan, model, tokenizer):
    """The rollout engine of the plan; both engines hold the policy itself, not a copy."""
    if plan.engine == "fast":
        from tirgrpo.rollout.engine import FastEngine

        return FastEngine(model, tokenizer, max_batch=plan.rollout_batch_size, kernels=plan.kernels)
    from tirgrpo.rollout.simple import SimpleEngine

    return SimpleEngine(model, tokenizer, batch_size=plan.rollout_batch_size)


def load_models(cfg: TrainConfig, plan: Plan, device: torch.device):
    """(policy, reference or None): the reference is a frozen copy when beta > 0 without
    LoRA (with LoRA it is the policy with adapters off). Packed groups of the block and split
    forms switch the attention to `prefix.PREFIX_ATTENTION`; compiled layers as planned."""
    from tirgrpo.train.model import compile_decoder_layers, load_base_model, load_policy, resolve_init
    from tirgrpo.train.prefix import use_prefix_attention

    model = load_policy(cfg.model, device, plan.torch_dtype, cfg.run.seed, attention=plan.attention,
                        checkpointing=plan.gradient_checkpointing)
    ref_model = None
    if cfg.grpo.beta > 0 and not cfg.model.lora:
        ref_model = load_base_model(resolve_init(cfg.model), device, plan.torch_dtype, cfg.run.seed,
                                    attention=plan.attention)
        ref_model.requires_grad_(False).eval()
    for m in (model, ref_model):
        if m is None:
            continue
        if plan.shared_prefix in ("block", "split"):
            use_prefix_attention(m)
        if plan.compile_layers:
            compile_decoder_layers(m)
    return model, ref_model


def training_pairs(cfg: TrainConfig, prompts: list) -> list[tuple[int, int]]:
    """With data.paired, the (correct, wrong) pairs of training prompts that share a question
    (refused when there are none or prompts_per_step is odd); else []."""
    from tirgrpo.data.prompts import question_pairs

    if not cfg.data.paired:
        return []
    if cfg.rollout.prompts_per_step % 2:
        raise TirgrpoError(f"data.paired takes whole correct/wrong pairs: rollout.prompts_per_step must be even, "
                           f"got {cfg.rollout.prompts_per_step}")
    pairs, unpaired = question_pairs([p.example.question for p in prompts], [p.example.label for p in prompts])
    if not pairs:
        raise TirgrpoError(f"data.paired: no question of {cfg.data.train} has both a correct and a wrong example")
    if unpaired:
        print(f"note: data.paired leaves out {unpaired} of {len(prompts)} training examples without a partner "
              f"of the other label")
    return pairs


def check_world_size(cfg: TrainConfig) -> None:
    """Each rank takes whole groups of an equal share of the step's prompts (with data.paired,
    whole correct/wrong pairs): refuse a prompts_per_step that does not split so."""
    world = dist.world_size()
    unit = 2 * world if cfg.data.paired else world
    if cfg.rollout.prompts_per_step % unit:
        raise TirgrpoError(f"rollout.prompts_per_step = {cfg.rollout.prompts_per_step} does not split into {world} "
                           f"equal shares{' of whole pairs (data.paired)' if cfg.data.paired else ''}: use a multiple "
                           f"of {unit}")


class NullLog:
    """The run log of ranks other than 0: they write nothing."""

    def log(self, row: dict) -> None:
        pass

    def samples(self, step: int, records: list) -> None:
        pass

    def close(self) -> None:
        pass


def setup(cfg: TrainConfig, requested: dict | None, resume: bool, overwrite: bool) -> Session:
    """Resolve (or, resuming, read) the plan, load everything the loop needs, then write
    config.toml and plan.toml. Nothing loads before the plan is known to fit, and nothing is
    written before every refusal (config, memory, data, model) is behind us."""
    from tirgrpo.data.prompts import load_prompts
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train.checkpoint import load_checkpoint, read_state
    from tirgrpo.train.metrics import RunLog
    from tirgrpo.train.model import count_parameters, resolve_device, resolve_init, tokenizer_spec
    from tirgrpo.train.optim import AdamW
    from tirgrpo.train.plan import describe_plan, plan_to_toml, read_plan, resolve_plan

    if cfg.rollout.group_size < 2:
        raise TirgrpoError("rollout.group_size must be >= 2: advantages compare samples within a group")
    check_world_size(cfg)
    run_dir = Path(cfg.run.out_dir)
    ckpt = find_checkpoint(run_dir, resume, overwrite)
    reached = read_state(ckpt)["step"] if ckpt is not None else 0
    if reached > cfg.optim.total_steps:
        raise TirgrpoError(f"--resume {run_dir}: its checkpoint is at step {reached}, past optim.total_steps = "
                           f"{cfg.optim.total_steps}; set optim.total_steps >= {reached}, or start a new run")
    dist.barrier()  # every rank has read the folder before rank 0 writes to it
    recorded = run_dir / "plan.toml"
    if resume and not recorded.is_file():  # a run folder of an older tirgrpo, before plans were recorded
        print(f"note: {recorded} is missing; resolving the plan again for this resume")
    plan = read_plan(recorded) if resume and recorded.is_file() else resolve_plan(cfg)
    if resume and plan.world_size != dist.world_size():  # resumed at another number of ranks
        plan = dataclasses.replace(plan, world_size=dist.world_size())
    if dist.is_main():
        print(describe_plan(plan))
    config_toml = dumps_toml(to_dict(cfg) if requested is None else requested)
    plan_toml = plan_to_toml(plan)

    random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    device = resolve_device(plan.device)  # a resumed plan's GPU may not be on this machine
    tokenizer = load_tokenizer(tokenizer_spec(resolve_init(cfg.model)))
    train_prompts = load_prompts(cfg.data.train, tokenizer, cfg.data.max_prompt_tokens)
    train_pairs = training_pairs(cfg, train_prompts)
    eval_prompts = load_prompts(cfg.data.eval, tokenizer, cfg.data.max_prompt_tokens) if cfg.data.eval else []
    if cfg.run.eval_max_examples > 0:
        eval_prompts = eval_prompts[: cfg.run.eval_max_examples]
    model, ref_model = load_models(cfg, plan, device)
    for m in (model, ref_model):
        if m is not None:
            dist.shard(m)  # FSDP2 across ranks; one process: nothing
    optimizer = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
                      master_fp32=plan.master_fp32, bf16_update=plan.bf16_update, seed=cfg.run.seed)
    engine = make_engine(plan, model, tokenizer)
    progress = Progress(**load_checkpoint(ckpt, model, optimizer)) if ckpt is not None else Progress()
    if dist.is_main():
        claim_run_dir(run_dir, resume, config_toml, plan_toml)
        log = RunLog(run_dir, cfg.run.tensorboard, resume_step=progress.step if resume else None,
                     redo_evals=resume and progress.step >= cfg.optim.total_steps)
    else:
        log = NullLog()
    return Session(cfg, plan, run_dir, device, config_toml, plan_toml, tokenizer, train_prompts, eval_prompts, model,
                   ref_model, optimizer, engine, progress, log, train_pairs=train_pairs, last_save=progress.step,
                   counts=count_parameters(model), nonfinite_at_start=progress.nonfinite)


# --------------------------------------------------------------------------- the phases


def sampling_params(cfg: TrainConfig, temperature: float):
    from tirgrpo.rollout import SamplingParams

    r = cfg.rollout
    return SamplingParams(r.max_new_tokens, temperature, r.top_p, r.top_k, list(r.stop))


def run_eval(s: Session, tag: str) -> dict:
    """Evaluate on the eval prompts; write eval_{tag}.json (overall, baselines, per question,
    completions) and return it ({} without eval data)."""
    from tirgrpo.eval.evaluate import eval_rewards, evaluate_examples, resolve_eval_temperature
    from tirgrpo.train.model import eager_layers

    if not s.eval_prompts:
        return {}
    start = time.perf_counter()
    temperature = resolve_eval_temperature(s.cfg.run.eval_temperature, s.cfg.rollout.temperature)
    with eager_layers(), dist.gathered(s.model):  # several ranks: rank 0 evaluates, on the gathered weights
        if not dist.is_main():
            return {}
        result = evaluate_examples(s.engine, s.tokenizer, [p.example for p in s.eval_prompts],
                                   [p.ids for p in s.eval_prompts], sampling_params(s.cfg, temperature),
                                   s.cfg.run.eval_samples, seed=s.cfg.run.seed + 7919,
                                   rewards=eval_rewards(s.cfg.rewards))
    s.engine.release_cache()  # its greedy pass (a prompt slot per row) outgrew a training rollout's cache
    result["seconds"] = time.perf_counter() - start
    atomic_write_text(s.run_dir / f"eval_{tag}.json", json.dumps(result, indent=1, ensure_ascii=False))
    return result


def next_prompts(s: Session) -> list[int]:
    """Indices of the training prompts of the next rollout: a pure function of the position in
    the stream (`data.paired`: whole correct/wrong pairs of one question, data/prompts.py)."""
    from tirgrpo.data.prompts import paired_prompts, prompts_for_rollout

    cfg = s.cfg
    count, position = cfg.rollout.prompts_per_step, s.progress.data_pos
    if cfg.data.paired:
        return paired_prompts(s.train_pairs, position, count, cfg.run.seed, cfg.data.shuffle)
    return prompts_for_rollout(len(s.train_prompts), position, count, cfg.run.seed, cfg.data.shuffle)


def rollout_and_score(s: Session) -> Rollout:
    """Sample G completions for each of the next prompts and score them."""
    from tirgrpo.score.credit import completion_credits
    from tirgrpo.score.rewards import score_records
    from tirgrpo.train.loss import group_advantages
    from tirgrpo.train.model import eager_layers

    cfg, group_size = s.cfg, s.cfg.rollout.group_size
    start = time.perf_counter()
    batch_prompts = [s.train_prompts[i] for i in dist.my_share(next_prompts(s))]
    seed = cfg.run.seed * 1_000_003 + s.progress.rollout + dist.rank() * 1_000_000_007
    generator = torch.Generator(device=s.device).manual_seed(seed)
    with eager_layers(), dist.gathered(s.model):  # several ranks: full weights while generating
        groups = s.engine.generate([p.ids for p in batch_prompts], group_size, sampling_params(cfg, cfg.rollout.temperature),
                                   generator)
    generated = time.perf_counter()
    peak = peak_memory_gib(s.device)
    if s.device.type == "cuda":  # the update phase's peak is measured on its own
        torch.cuda.reset_peak_memory_stats(s.device)
    completions = [c for g in groups for c in g]
    prompts = [p for p in batch_prompts for _ in range(group_size)]
    records = [{"completion": c.text, "correct_answer": p.example.correct_answer, "finish_reason": c.finish_reason,
                "stop": c.stop, "eventual_answer": p.example.eventual_answer, "label": p.example.label}
               for c, p in zip(completions, prompts)]
    scores = score_records(records, cfg.rewards, s.tokenizer, step=s.progress.step, total_steps=s.total_steps)
    rewards = torch.tensor([score["total"] for score in scores], dtype=torch.float32)
    include = torch.tensor([c.finish_reason != "length" for c in completions]) if cfg.grpo.mask_truncated else None
    advantages, zero_std_groups = group_advantages(rewards, group_size, cfg.grpo.scale_rewards, include=include)
    credits = completion_credits(completions, [score["decision"] for score in scores], cfg.grpo.credit, s.tokenizer)
    return Rollout(prompts, completions, scores, advantages, zero_std_groups, generated - start,
                   time.perf_counter() - generated, peak, credits, include)


def update(s: Session, rollout: Rollout) -> UpdateStats:
    """`num_iterations` optimizer steps on one rollout (fewer when the run ends first): the
    micro-batches and reference log-probs are built once and serve every update."""
    from tirgrpo.train.optim import lr_multiplier
    from tirgrpo.train.step import build_micro_batches, grpo_update, reference_logprobs, rollout_objective

    cfg, plan, start = s.cfg, s.plan, time.perf_counter()
    prompt_ids = [p.ids for p in rollout.prompts]
    completion_ids = [c.token_ids for c in rollout.completions]
    batches = build_micro_batches(prompt_ids, completion_ids, cfg.rollout.group_size, plan.micro_batch_tokens,
                                  plan.shared_prefix, s.engine.pad_id, s.device)
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
    s.model.train()
    stats = UpdateStats(forward_tokens=sum(b.tokens for b in batches), micro_batches=len(batches),
                        row_tokens=sum(len(a) + len(b) for a, b in zip(prompt_ids, completion_ids)))
    refs, ref_timer = [None] * len(batches), DeviceTimer(s.device)  # events: no wait on the hot path
    if cfg.grpo.beta > 0:
        ref_timer.start()
        with dist.gathered(s.ref_model if s.ref_model is not None else s.model):  # ranks differ in passes
            refs = [reference_logprobs(s.model, s.ref_model, b, plan.logprob_chunk_tokens, temperature)
                    for b in batches]
        ref_timer.stop()
    objective = rollout_objective(cfg.grpo, batches, refs, rollout.advantages, completion_ids, cfg.rollout.max_new_tokens,
                                  rollout.credits, rollout.include, s.device)
    for _ in range(cfg.grpo.num_iterations):
        if s.progress.step >= s.total_steps:
            break
        s.optimizer.lr = cfg.optim.lr * lr_multiplier(s.progress.step, s.total_steps, cfg.optim.warmup_steps,
                                                      cfg.optim.min_lr_ratio)
        result = grpo_update(s.model, s.optimizer, batches, objective, cfg.optim.max_grad_norm,
                             plan.logprob_chunk_tokens, temperature)
        if result.applied:
            stats.losses.append(result.loss)
            stats.grad_norms.append(result.grad_norm)
            for key, value in result.stats.items():
                stats.stat_sums[key] = stats.stat_sums.get(key, 0.0) + value * result.num_tokens
            stats.stat_tokens += result.num_tokens
        else:
            stats.skipped += 1
            s.progress.nonfinite += 1
        s.progress.step += 1
    stats.seconds = time.perf_counter() - start
    stats.ref_seconds = ref_timer.seconds()  # 0 without a reference pass; the update has synchronised
    stats.peak_gib = peak_memory_gib(s.device)
    return stats


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def metrics_row(s: Session, rollout: Rollout, stats: UpdateStats) -> dict:
    """The metrics.jsonl row of one rollout and its updates."""
    from tirgrpo.eval.label_split import label_split_metrics

    scores, completions, advantages = rollout.scores, rollout.completions, rollout.advantages
    count = len(completions)
    completion_tokens = sum(len(c.token_ids) for c in completions)
    row = {"step": s.progress.step, "rollout": s.progress.rollout, "lr": s.optimizer.lr}
    for key in ("total", "length", "formatting", "correctness", "w_length", "w_formatting", "w_correctness"):
        values = [score[key] for score in scores if key in score]
        if values:
            row[f"weight/{key[2:]}" if key.startswith("w_") else f"reward/{key}"] = mean(values)
    for decision in ("submit", "decline", "invalid"):
        row[f"decision/{decision}"] = sum(score["decision"] == decision for score in scores) / len(scores)
    row.update(label_split_metrics([p.example.label for p in rollout.prompts], [score["decision"] for score in scores],
                                   [score["total"] for score in scores], advantages.tolist(),
                                   [len(c.token_ids) for c in completions]))
    row.update({f"train/{k}": v / (stats.stat_tokens or 1.0) for k, v in stats.stat_sums.items()})
    row.update({
        "train/loss": mean(stats.losses), "train/grad_norm": mean(stats.grad_norms),
        "train/skipped_nonfinite": stats.skipped,
        "adv/mean": float(advantages.mean()), "adv/std": float(advantages.std()),
        "adv/abs_mean": float(advantages.abs().mean()), "adv/zero_std_groups": rollout.zero_std_groups,
        "completion/tokens_mean": completion_tokens / count,
        "completion/truncated": sum(c.finish_reason == "length" for c in completions) / count,
        "time/rollout_s": rollout.rollout_seconds, "time/score_s": rollout.score_seconds, "time/train_s": stats.seconds,
        "time/reference_s": stats.ref_seconds,  # part of time/train_s
        "throughput/gen_tokens_per_s": completion_tokens / max(1e-9, rollout.rollout_seconds),
        "throughput/train_tokens_per_s": stats.row_tokens * s.cfg.grpo.num_iterations / max(1e-9, stats.seconds),
        # tokens the forward passes ran (fewer than prompt + completion per row with a shared prefix)
        "train/forward_tokens": stats.forward_tokens, "train/micro_batches": stats.micro_batches,
        # per phase, as the plan's estimate splits it (plan.toml [memory])
        "memory/rollout_peak_gib": rollout.peak_gib, "memory/train_peak_gib": stats.peak_gib,
        "memory/peak_gib": max(rollout.peak_gib, stats.peak_gib),
    })
    return row


def merge_ranks(s: Session, rollout: Rollout, stats: UpdateStats) -> tuple[Rollout, UpdateStats]:
    """Every rank's rollout and update statistics as one (in rank order), peak memory the
    largest of any rank. The loss, grad norm and objective statistics are already global."""
    parts = dist.gather_objects((rollout, stats))
    rollouts, all_stats = [p[0] for p in parts], [p[1] for p in parts]
    merged = Rollout([p for r in rollouts for p in r.prompts], [c for r in rollouts for c in r.completions],
                     [x for r in rollouts for x in r.scores], torch.cat([r.advantages for r in rollouts]),
                     sum(r.zero_std_groups for r in rollouts), max(r.rollout_seconds for r in rollouts),
                     max(r.score_seconds for r in rollouts), max(r.peak_gib for r in rollouts))
    total = dataclasses.replace(stats, forward_tokens=sum(x.forward_tokens for x in all_stats),
                                micro_batches=sum(x.micro_batches for x in all_stats),
                                row_tokens=sum(x.row_tokens for x in all_stats),
                                seconds=max(x.seconds for x in all_stats),
                                ref_seconds=max(x.ref_seconds for x in all_stats),
                                peak_gib=max(x.peak_gib for x in all_stats))
    return merged, total


def log_rollout(s: Session, rollout: Rollout, stats: UpdateStats) -> dict:
    """Append the metrics row and the kept samples (rank 0; every rank's completions); return the row."""
    if dist.active():
        rollout, stats = merge_ranks(s, rollout, stats)
    row = metrics_row(s, rollout, stats)
    s.log.log(row)
    keep = min(s.cfg.run.keep_samples, len(rollout.completions))
    s.log.samples(s.progress.step, [sample_record(rollout, i) for i in range(keep)])
    return row


def sample_record(rollout: Rollout, i: int) -> dict:
    """Completion i of a rollout as samples.jsonl keeps it."""
    prompt, completion, score = rollout.prompts[i], rollout.completions[i], rollout.scores[i]
    return {"prompt_tail": prompt.example.prompt[-300:], "label": prompt.example.label,
            "correct_answer": prompt.example.correct_answer, "completion": completion.text,
            "finish_reason": completion.finish_reason, "stop": completion.stop,
            **{k: score[k] for k in ("decision", "length", "formatting", "correctness", "total") if k in score},
            "advantage": float(rollout.advantages[i])}


def after_rollout(s: Session, step_before: int) -> None:
    """Stop on too many non-finite updates (counted since this session began: a run resumed
    after such a stop gets its chance); evaluate and save when their interval is crossed."""
    from tirgrpo.eval.evaluate import log_values

    cfg, step = s.cfg, s.progress.step
    skipped = s.progress.nonfinite - s.nonfinite_at_start
    if skipped >= cfg.run.max_nonfinite:
        s.save()
        raise TirgrpoError(f"{skipped} steps had a non-finite loss or gradient (run.max_nonfinite="
                           f"{cfg.run.max_nonfinite}); stopped at step {step}, checkpoint saved. "
                           f"Lower optim.lr or check the data.")
    every = cfg.run.eval_every
    if every and step // every > step_before // every and step < s.total_steps:
        result = run_eval(s, f"step_{step:06d}")
        s.log.log({"step": step, **log_values(result)})
    if cfg.run.save_every and step - s.last_save >= cfg.run.save_every and step < s.total_steps:
        s.save()


def finish(s: Session) -> dict:
    """Last checkpoint, the final model (a plain transformers folder), the evaluation after
    training; writes and returns the summary."""
    from tirgrpo.eval.evaluate import BRIEF_KEYS, log_values, overall_of
    from tirgrpo.train.model import save_hf_folder

    # a sharded run reaches a plain folder through its checkpoint, so it always saves one
    if s.cfg.run.save_final_checkpoint or dist.active():
        s.save()
    if dist.active():
        from tirgrpo.train.checkpoint import export_hf_folder

        if dist.is_main():
            export_hf_folder(s.run_dir / "checkpoints" / f"step_{s.progress.step:06d}", s.run_dir / "final")
        dist.barrier()
    else:
        save_hf_folder(s.model, s.tokenizer, s.run_dir / "final")
    eval_after = run_eval(s, "after")
    if eval_after:
        s.log.log({"step": s.progress.step, **log_values(eval_after)})
    s.log.close()

    def brief(result: dict) -> dict:  # the summary keeps the numbers, not the completions
        if not result:
            return {}
        return {"overall": overall_of(result), **{k: result[k] for k in BRIEF_KEYS if k in result}}

    summary = {"run_dir": str(s.run_dir), "steps": s.progress.step, "trainable_params": s.counts[0],
               "total_params": s.counts[1], "eval_before": brief(s.eval_before), "eval_after": brief(eval_after),
               "final_model": str(s.run_dir / "final"), "device": str(s.device)}
    if dist.active():
        summary["world_size"] = dist.world_size()
    if dist.is_main():
        atomic_write_text(s.run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


# --------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, requested: dict | None = None, resume: bool = False, overwrite: bool = False) -> dict:
    """Run GRPO as configured; returns the summary (eval before/after, paths).

    requested: what the user asked (the config file plus `--set`, as a dict), written as
    RUN_DIR/config.toml; None writes `cfg` whole. `cfg` is never changed. The run folder is
    locked for the run's life (one writer per folder); a refused run leaves nothing in it.
    """
    from tirgrpo.score.rewards import get_reward
    from tirgrpo.train.model import check_model_source, resolve_init
    from tirgrpo.train.runlock import RunLock
    from tirgrpo.validate import check_config

    check_config(cfg)  # configs built in code skip load_config's check
    for name in cfg.rewards.weights:  # a user's module:function imports now, not after the first evaluation
        get_reward(name, cfg.rewards.set)
    check_model_source(resolve_init(cfg.model).name_or_path)
    dist.init()  # under torchrun: join the ranks; one process: nothing
    with RunLock(cfg.run.out_dir) if dist.is_main() else contextlib.nullcontext():
        return run_loop(cfg, requested, resume, overwrite)


def run_loop(cfg: TrainConfig, requested: dict | None, resume: bool, overwrite: bool) -> dict:
    """setup -> (rollout and score -> update x num_iterations -> log) until total_steps -> finish."""
    from tqdm import tqdm

    s = setup(cfg, requested, resume, overwrite)
    before = s.run_dir / "eval_before.json"
    if resume and before.is_file():
        s.eval_before = json.loads(before.read_text())
    elif cfg.run.eval_before:
        s.eval_before = run_eval(s, "before")
    bar = tqdm(total=s.total_steps, initial=s.progress.step, desc="GRPO steps", unit="step", dynamic_ncols=True,
               disable=not dist.is_main())
    while s.progress.step < s.total_steps:
        step_before = s.progress.step
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        rollout = rollout_and_score(s)
        stats = update(s, rollout)
        s.progress.rollout += 1
        s.progress.data_pos += cfg.rollout.prompts_per_step
        row = log_rollout(s, rollout, stats)
        bar.update(s.progress.step - step_before)
        bar.set_postfix(reward=f"{row['reward/total']:.3f}", corr=f"{row.get('reward/correctness', 0):.2f}")
        after_rollout(s, step_before)
    bar.close()
    return finish(s)
