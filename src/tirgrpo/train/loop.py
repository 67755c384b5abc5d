"""`tirgrpo train`: GRPO on one device, in one readable loop.

One iteration of the loop is one rollout:
  1. take `prompts_per_step` prompts, sample G completions each (`rollout/`);
  2. score them with the reward set and the curriculum weights (`rewards.py`);
  3. group advantages (`loss.group_advantages`);
  4. `num_iterations` optimizer steps on that batch: micro-batches packed by a token
     budget, log-probs through the chunked LM head (`logprobs.py`), the clipped
     surrogate + k3 KL (`loss.grpo_loss`), gradient accumulation, clipping, AdamW.
Everything is logged to RUN_DIR/metrics.jsonl and TensorBoard; checkpoints make the
run resumable so that a resumed run's metrics equal an uninterrupted run's (CPU, seeded).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from tirgrpo.config import TrainConfig, add_config_arguments, load_config, to_toml
from tirgrpo.errors import TirgrpoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")


def run(args) -> int:
    if args.resume:
        cfg_path = Path(args.resume) / "config.toml"
        cfg = load_config(TrainConfig, cfg_path, args.set)
        cfg.run.out_dir = args.resume
    else:
        cfg = load_config(TrainConfig, args.config, args.set)
    summary = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    print_summary(summary)
    return 0


# --------------------------------------------------------------------------- data


@dataclass
class Prompt:
    example: object  # a tirgrpo.data.records.Example
    ids: list[int]


def load_prompts(spec: str, tokenizer, max_prompt_tokens: int) -> list[Prompt]:
    """Read examples (JSONL/Parquet or `bundled:NAME`), tokenize prompts, drop over-long ones."""
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.records import read_examples

    examples = read_examples(bundled_path(spec))
    out = []
    for ex in examples:
        ids = tokenizer(ex.prompt)["input_ids"]
        if max_prompt_tokens <= 0 or len(ids) <= max_prompt_tokens:
            out.append(Prompt(ex, ids))
    if not out:
        raise TirgrpoError(f"{spec}: no example has a prompt within {max_prompt_tokens} tokens")
    return out


def prompts_for_rollout(n_data: int, position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the next `count` prompts of an endless stream of epochs.

    Each epoch is a permutation seeded by (seed, epoch), so the stream is a pure function
    of its position: resuming needs only the position.
    """
    out = []
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n_data)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            out.append(int(torch.randperm(n_data, generator=g)[i]))
        else:
            out.append(i)
    return out


# --------------------------------------------------------------------------- the train phase


def setup_shared_prefix(model, ref_model, optim, device) -> str:
    """The shared-prefix form of this run: "off", "dense", "block" or "split" (prefix.py).

    Block and split switch the models' attention to `PREFIX_ATTENTION` (FlexAttention or the
    split kernels for packed groups, sdpa for everything else). Dense masks need sdpa or eager.
    """
    from tirgrpo.train.prefix import PREFIX_ATTENTION, mask_kind, use_prefix_attention

    if not optim.shared_prefix:
        return "off"
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl not in ("sdpa", "eager", PREFIX_ATTENTION):
        raise TirgrpoError(f"optim.shared_prefix needs model.attn_implementation 'sdpa' or 'eager' (a custom "
                           f"attention mask); this model uses {impl!r}. Set --set optim.shared_prefix=false "
                           f"or --set model.attn_implementation=sdpa")
    kind = mask_kind(optim.prefix_mask, device, getattr(model, "dtype", torch.float32))
    if kind == "block":
        if torch.device(device).type != "cuda":
            raise TirgrpoError("optim.prefix_mask = 'block' needs CUDA (FlexAttention has no CPU backward); "
                               "use 'auto' or 'dense'")
    if kind in ("block", "split"):
        for m in (model, ref_model):
            if m is not None:
                use_prefix_attention(m)
    return kind


def make_engine(name: str, model, tokenizer, batch_size: int, kernels: str = "auto"):
    """The rollout engine named by `rollout.engine`; both hold the policy itself, not a copy."""
    if name == "fast":
        from tirgrpo.rollout.engine import FastEngine

        return FastEngine(model, tokenizer, max_batch=batch_size, kernels=kernels)
    if name == "simple":
        from tirgrpo.rollout.simple import SimpleEngine

        return SimpleEngine(model, tokenizer, batch_size=batch_size)
    raise TirgrpoError(f"rollout.engine must be 'fast' or 'simple', got {name!r}")


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory (GB) since the last reset; CPU: peak RSS of the process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


# --------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run GRPO as configured; returns a summary dict (eval before/after, paths)."""
    from tqdm import tqdm

    from tirgrpo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from tirgrpo.eval.evaluate import BRIEF_KEYS, eval_rewards, evaluate_examples, overall_of, resolve_eval_temperature
    from tirgrpo.train.loss import group_advantages
    from tirgrpo.train.step import GRPOObjective, build_micro_batches, grpo_update, reference_logprobs
    from tirgrpo.train.metrics import RunLog
    from tirgrpo.train.model import (compile_decoder_layers, count_parameters, eager_layers, load_base_model, load_policy,
                               resolve_device, resolve_dtype, resolve_init, tokenizer_spec)
    from tirgrpo.train.optim import AdamW, lr_multiplier
    from tirgrpo.score.rewards import score_records
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.data.tokenizer import load_tokenizer

    run_dir = Path(cfg.run.out_dir)
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise TirgrpoError(f"--resume {run_dir}: no checkpoint there (checkpoints/latest)")
    else:
        ckpt = None
        if (run_dir / "metrics.jsonl").exists() and not overwrite:
            raise TirgrpoError(f"{run_dir} already holds a run; use --resume {run_dir}, --overwrite, "
                               f"or --set run.out_dir=OTHER")
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "samples.jsonl", "eval_before.json", "eval_after.json"):
            (run_dir / stale).unlink(missing_ok=True)
    config_toml = to_toml(cfg)
    from tirgrpo.files import atomic_write_text

    atomic_write_text(run_dir / "config.toml", config_toml)

    G, P = cfg.rollout.group_size, cfg.rollout.prompts_per_step
    if G < 2:
        raise TirgrpoError("rollout.group_size must be >= 2: advantages compare samples within a group")
    random.seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    device = resolve_device(cfg.run.device)
    dtype = resolve_dtype(cfg.model.dtype, device)
    # Memory (issue #7): before any weights load, the estimate picks the micro-batch token
    # budget and refuses a configuration that cannot fit (CUDA); on other devices it only warns.
    from tirgrpo.perf.memory import check_train_config

    cfg.optim.micro_batch_tokens = check_train_config(cfg, device)

    tokenizer = load_tokenizer(tokenizer_spec(resolve_init(cfg.model)))
    train_prompts = load_prompts(cfg.data.train, tokenizer, cfg.data.max_prompt_tokens)
    eval_prompts = load_prompts(cfg.data.eval, tokenizer, cfg.data.max_prompt_tokens) if cfg.data.eval else []
    if cfg.run.eval_max_examples > 0:
        eval_prompts = eval_prompts[: cfg.run.eval_max_examples]

    model = load_policy(cfg.model, device, dtype, cfg.run.seed)
    ref_model = None
    if cfg.grpo.beta > 0 and not cfg.model.lora:
        ref_model = load_base_model(resolve_init(cfg.model), device, dtype, cfg.run.seed)
        ref_model.requires_grad_(False).eval()
    prefix_mask = setup_shared_prefix(model, ref_model, cfg.optim, device)
    for m in (model, ref_model):
        if m is not None:
            compile_decoder_layers(m, cfg.optim.compile_layers, device)
    trainable, total = count_parameters(model)
    optimizer = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                      weight_decay=cfg.optim.weight_decay, master_fp32=cfg.optim.master_weights_fp32,
                      bf16_update=cfg.optim.bf16_update, seed=cfg.run.seed)
    engine = make_engine(cfg.rollout.engine, model, tokenizer, cfg.rollout.batch_size, cfg.rollout.kernels)
    pad_id = engine.pad_id
    params = SamplingParams(cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p,
                            cfg.rollout.top_k, list(cfg.rollout.stop))
    eval_temp = resolve_eval_temperature(cfg.run.eval_temperature, cfg.rollout.temperature)
    eval_params = SamplingParams(cfg.rollout.max_new_tokens, eval_temp, cfg.rollout.top_p,
                                 cfg.rollout.top_k, list(cfg.rollout.stop))
    temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0

    state = {"step": 0, "rollout": 0, "data_pos": 0, "nonfinite": 0}
    if ckpt is not None:
        state = load_checkpoint(ckpt, model, optimizer)
    log = RunLog(run_dir, cfg.run.tensorboard, resume_step=state["step"] if resume else None)

    def run_eval(tag: str) -> dict:
        """Evaluate; write eval_{tag}.json (overall, baselines, per question, completions) and return it."""
        if not eval_prompts:
            return {}
        t = time.perf_counter()
        with eager_layers():
            m = evaluate_examples(engine, tokenizer, [p.example for p in eval_prompts],
                                  [p.ids for p in eval_prompts], eval_params, cfg.run.eval_samples,
                                  seed=cfg.run.seed + 7919, rewards=eval_rewards(cfg.rewards))
        m["seconds"] = time.perf_counter() - t
        atomic_write_text(run_dir / f"eval_{tag}.json", json.dumps(m, indent=1, ensure_ascii=False))
        return m

    eval_before = (json.loads((run_dir / "eval_before.json").read_text())
                   if resume and (run_dir / "eval_before.json").is_file() else run_eval("before"))

    K, iters = cfg.optim.total_steps, cfg.grpo.num_iterations
    bar = tqdm(total=K, initial=state["step"], desc="GRPO steps", unit="step", dynamic_ncols=True)
    last_save = state["step"]
    while state["step"] < K:
        k0 = state["step"]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # ---- 1. rollout
        t0 = time.perf_counter()
        idx = prompts_for_rollout(len(train_prompts), state["data_pos"], P, cfg.run.seed, cfg.data.shuffle)
        batch_prompts = [train_prompts[i] for i in idx]
        gen = torch.Generator(device=device).manual_seed(cfg.run.seed * 1_000_003 + state["rollout"])
        with eager_layers():
            groups = engine.generate([p.ids for p in batch_prompts], G, params, gen)
        t1 = time.perf_counter()
        # ---- 2. score
        completions = [c for g in groups for c in g]
        owners = [p for p in batch_prompts for _ in range(G)]
        records = [{"completion": c.text, "correct_answer": p.example.correct_answer,
                    "finish_reason": c.finish_reason, "stop": c.stop} for c, p in zip(completions, owners)]
        scores = score_records(records, cfg.rewards, tokenizer, step=k0, total_steps=K)
        rewards = torch.tensor([s["total"] for s in scores], dtype=torch.float32)
        adv, zero_groups = group_advantages(rewards, G, cfg.grpo.scale_rewards)
        t2 = time.perf_counter()
        # ---- 3. train: build micro-batches once, reuse them for every iteration
        prompt_ids = [p.ids for p in owners]
        comp_ids = [c.token_ids for c in completions]
        lengths = [len(a) + len(b) for a, b in zip(prompt_ids, comp_ids)]
        batches = build_micro_batches(prompt_ids, comp_ids, G, cfg.optim.micro_batch_tokens, prefix_mask,
                                      pad_id, device)
        advs = [adv[b.rows].to(device) for b in batches]
        n_seq = len(completions)
        n_tok = sum(len(c) for c in comp_ids)
        chunk = cfg.optim.logprob_chunk_tokens
        model.train()
        refs = [None] * len(batches)
        if cfg.grpo.beta > 0:
            refs = [reference_logprobs(model, ref_model, b, chunk, temperature) for b in batches]
        objective = GRPOObjective(cfg.grpo, advs, refs, cfg.rollout.max_new_tokens, n_seq, n_tok)
        sums: dict[str, float] = {}
        losses, grad_norms, skipped = [], [], 0
        for it in range(iters):
            if state["step"] >= K:
                break
            optimizer.lr = cfg.optim.lr * lr_multiplier(state["step"], K, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
            res = grpo_update(model, optimizer, batches, objective, cfg.optim.max_grad_norm, chunk, temperature)
            if res.applied:
                losses.append(res.loss)
                grad_norms.append(res.grad_norm)
                for key, v in res.stats.items():
                    sums[key] = sums.get(key, 0.0) + v * res.num_tokens
                sums["_w"] = sums.get("_w", 0.0) + res.num_tokens
            else:
                skipped += 1
                state["nonfinite"] += 1
            state["step"] += 1
            bar.update(1)
        t3 = time.perf_counter()
        state["rollout"] += 1
        state["data_pos"] += P

        # ---- 4. log
        row = {"step": state["step"], "rollout": state["rollout"], "lr": optimizer.lr}
        for key in ("total", "length", "formatting", "correctness", "w_length", "w_formatting", "w_correctness"):
            vals = [s[key] for s in scores if key in s]
            if vals:
                row[f"reward/{key}" if not key.startswith("w_") else f"weight/{key[2:]}"] = sum(vals) / len(vals)
        for d in ("submit", "decline", "invalid"):
            row[f"decision/{d}"] = sum(s["decision"] == d for s in scores) / len(scores)
        w = sums.pop("_w", 0.0) or 1.0
        row.update({f"train/{k}": v / w for k, v in sums.items()})
        row.update({
            "train/loss": sum(losses) / len(losses) if losses else float("nan"),
            "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
            "train/skipped_nonfinite": skipped,
            "adv/mean": float(adv.mean()), "adv/std": float(adv.std()), "adv/abs_mean": float(adv.abs().mean()),
            "adv/zero_std_groups": zero_groups,
            "completion/tokens_mean": n_tok / n_seq,
            "completion/truncated": sum(c.finish_reason == "length" for c in completions) / n_seq,
            "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/train_s": t3 - t2,
            "throughput/gen_tokens_per_s": n_tok / max(1e-9, t1 - t0),
            "throughput/train_tokens_per_s": sum(lengths) * iters / max(1e-9, t3 - t2),
            # tokens the forward passes actually ran (fewer than sum(lengths) with shared prefix)
            "train/forward_tokens": sum(b.tokens for b in batches),
            "memory/peak_gb": peak_memory_gb(device),
        })
        log.log(row)
        keep = cfg.run.keep_samples
        log.samples(state["step"], [
            {"prompt_tail": owners[i].example.prompt[-300:], "label": owners[i].example.label,
             "correct_answer": owners[i].example.correct_answer, "completion": completions[i].text,
             "finish_reason": completions[i].finish_reason, "stop": completions[i].stop,
             **{k: scores[i][k] for k in ("decision", "length", "formatting", "correctness", "total") if k in scores[i]},
             "advantage": float(adv[i])}
            for i in range(min(keep, n_seq))
        ])
        bar.set_postfix(reward=f"{row['reward/total']:.3f}", corr=f"{row.get('reward/correctness', 0):.2f}")

        if state["nonfinite"] >= cfg.run.max_nonfinite:
            save_checkpoint(run_dir, state["step"], model, optimizer, state, config_toml)
            raise TirgrpoError(f"{state['nonfinite']} steps had a non-finite loss or gradient (run.max_nonfinite="
                               f"{cfg.run.max_nonfinite}); stopped at step {state['step']}, checkpoint saved. "
                               f"Lower optim.lr or check the data.")
        if cfg.run.eval_every and state["step"] // cfg.run.eval_every > k0 // cfg.run.eval_every and state["step"] < K:
            m = run_eval(f"step_{state['step']:06d}")
            log.log({"step": state["step"], **{f"eval/{k}": v for k, v in overall_of(m).items()}})
        if cfg.run.save_every and state["step"] - last_save >= cfg.run.save_every and state["step"] < K:
            save_checkpoint(run_dir, state["step"], model, optimizer, state, config_toml)
            last_save = state["step"]
    bar.close()

    save_checkpoint(run_dir, state["step"], model, optimizer, state, config_toml)
    from tirgrpo.train.model import save_hf_folder

    save_hf_folder(model, tokenizer, run_dir / "final")
    eval_after = run_eval("after")
    if eval_after:
        log.log({"step": state["step"], **{f"eval/{k}": v for k, v in overall_of(eval_after).items()}})
    log.close()
    from tirgrpo.eval.plot import plot_run

    plots = plot_run(run_dir)

    def brief(m: dict) -> dict:  # the summary keeps the numbers, not the completions
        return {"overall": overall_of(m), **{k: m[k] for k in BRIEF_KEYS if k in m}} if m else {}

    summary = {"run_dir": str(run_dir), "steps": state["step"], "trainable_params": trainable,
               "total_params": total, "eval_before": brief(eval_before), "eval_after": brief(eval_after),
               "plots": [str(p) for p in plots], "final_model": str(run_dir / "final")}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    # The report is derived from the files above; if it fails, the run is still complete.
    from tirgrpo.eval.report import build_report

    try:
        summary["report"] = str(build_report(run_dir, device=str(device)))
    except Exception as e:  # noqa: BLE001
        print(f"tirgrpo train: the report failed ({type(e).__name__}: {e}); "
              f"retry with: tirgrpo report {run_dir}", file=sys.stderr)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    return summary


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
