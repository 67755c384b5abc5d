"""TRL's whole GRPO step on the seed setting, beside `tirgrpo bench step --model`: the same
model, prompts, group, lengths, stop strings, EOS and reference model, timed per rollout.

    PYTHONPATH=$PWD/src:/tmp/trlsite python3 benchmarks/trl_step.py --model qwen2.5-coder-1.5b-instruct \
        --data data/prepared/train.jsonl --group-size 4 --prompts 4 --steps 2 --warmup 0 \
        --results runs/bench-step/results.jsonl

Needs TRL 1.16.0 and `datasets` (not project dependencies: install them beside, e.g.
`pip install --target /tmp/trlsite trl==1.16.0 datasets`), and the `gguf` package for a GGUF model.

What runs is TRL's `GRPOTrainer` with `use_vllm=False` (transformers `generate`, dynamic
cache), configured from the same seed config `tirgrpo bench step` builds (`bench_config`: G,
prompts per step, max new tokens, temperature, top-p/k, stop strings, beta, epsilon low/high,
loss type, reward scaling, `num_iterations`, lr, betas, clipping, gradient checkpointing),
bf16 on a GPU, sdpa attention. One "step" here is tirgrpo's unit: one rollout of P prompts x G
completions and its `num_iterations` optimizer steps (TRL: `num_iterations` optimizer steps
per generation, each over `P*G / --micro-batch` micro-batches). Where the two must differ:

* Model and reference: the policy is loaded by tirgrpo's loader (GGUF de-quantised to bf16;
  what transformers' `from_pretrained(gguf_file=...)` gives, minus the GGUF quantizer that
  `Trainer` would refuse to train). TRL builds its reference model by loading the policy's path
  again; here that load returns a frozen copy of the policy as loaded (the same weights and
  dtype, without a second ~40 s GGUF de-quantisation).
* Weights and optimizer: TRL trains the bf16 weights with torch AdamW (bf16 moments); tirgrpo
  keeps fp32 master weights (`system.optimizer = "auto"`).
* Prompts: the same text, tokenized by the same tokenizer object (tirgrpo's `load_tokenizer`
  with the model's own tokenizer; TRL calls `tokenizer(text=prompts)` as `load_prompts`
  does), in the order tirgrpo's stream takes them (`prompts_for_rollout`), so step k of both
  sees the same prompts; TRL's own shuffling is off.
* EOS and stops: the model's generation config gets tirgrpo's EOS set (`eos_ids`); the stop
  strings reach `generate` as `stop_strings` (TRL does not pass the tokenizer that needs, so
  the policy's `generate` gets it bound), and rows that stop early are padded with EOS, so TRL
  masks the padding as it masks what follows an EOS; its mask keeps the first EOS, so a row
  that ended on a stop string trains on one EOS it never sampled (one token more a row than
  tirgrpo's, in TRL's token counts too).
* Reward: tirgrpo's own `score_records` with the config's reward set, on each completion's
  text and finish reason (eos, stop, length) as tirgrpo's tracker reports them.

Timing: a `TrainerCallback` synchronises the GPU at the start of each rollout's first optimizer
step and at the end of its last (`step_s`); inside, the generation (`_generate_single_turn`,
`rollout_s`), the reference pass (`reference_s`), the old log-probs pass (`old_logps_s`: TRL
1.16 runs it when gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0;
here the accumulation steps equal the steps per generation, so it runs whenever
`num_iterations` > 1, i.e. every step of the seed's two updates; tirgrpo has no such pass, it
keeps the first update's log-probs) and the reward
(`score_s`) are each timed between synchronisations. `update_s` = step - rollout - reference
- score (forward/backward/optimizer x `num_iterations`, the old log-probs pass, TRL's
bookkeeping); `train_s` = update + reference, as in tirgrpo's rows. Medians over the steps
after `--warmup`; peak = `torch.cuda.max_memory_allocated` (GiB, reset at each step's start;
CPU: the process's peak RSS, as tirgrpo reports it).
The row is appended to `--results` in `tirgrpo bench step`'s format, and the table of all its
rows printed, with TRL's times over tirgrpo's for rows of the same work.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the same names as `tirgrpo bench step`'s, so one $A serves both)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="as in [model] name_or_path (a named model, .gguf, HF folder)")
    p.add_argument("--data", help="examples (tirgrpo prepare output); default: the seed config's data.train")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--prompt-tokens", type=int, default=3072, help="longest prompt kept (data.max_prompt_tokens)")
    p.add_argument("--new-tokens", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2, help="rollouts (each with num_iterations optimizer steps)")
    p.add_argument("--warmup", type=int, default=0, help="first steps left out of the medians")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="sequences per forward/backward (per_device_train_batch_size); default G: one group")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--work", default="runs/bench-step", help="folder for TRL's output_dir")
    p.add_argument("--results", default="runs/bench-step/results.jsonl",
                   help="JSON lines file the row is appended to (the one `tirgrpo bench step` writes)")
    args = p.parse_args(argv)
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup {args.warmup} must leave at least one of --steps {args.steps} to measure")
    return args


class StepTimes:
    """Seconds per part of the current step, each between two synchronisations."""

    def __init__(self, device: torch.device):
        self.device = device
        self.parts: dict[str, float] = {}
        self.lengths: list[int] = []
        self.finishes: list[str] = []

    def sync(self) -> None:
        """Wait for the GPU's queued work (the timers then measure work, not launches)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, name: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), its synchronised seconds added to parts[name]."""
        self.sync()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.sync()
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start
        return out


def finish_of(ids: list[int], tokenizer, eos: set[int], stops: list[str], max_new: int) -> tuple[str, str, str | None]:
    """(text, finish reason, stop string) of one completion, as tirgrpo's tracker reports it:
    the text without the EOS and cut before a stop string."""
    body = ids[:-1] if ids and ids[-1] in eos else ids
    text = tokenizer.decode(body, skip_special_tokens=False)
    hits = [(text.find(s), s) for s in stops if s in text]
    if hits:
        at, stop = min(hits)
        return text[:at], "stop", stop
    if ids and ids[-1] in eos:
        return text, "eos", None
    return text, "length" if len(ids) >= max_new else "eos", None


def make_reward(cfg, tokenizer, eos: set[int], times: StepTimes, trainer_ref: list):
    """A TRL reward function scoring with tirgrpo's reward set; it records lengths and finish reasons."""
    from tirgrpo.score.rewards import score_records

    stops, max_new = list(cfg.rollout.stop), cfg.rollout.max_new_tokens

    def tirgrpo_reward(prompts, completions, completion_ids, correct_answer, eventual_answer, label, **kwargs):
        records = []
        for ids, ca, ea, lab in zip(completion_ids, correct_answer, eventual_answer, label):
            text, finish, stop = finish_of(list(ids), tokenizer, eos, stops, max_new)
            times.lengths.append(len(ids))
            times.finishes.append(finish)
            records.append({"completion": text, "correct_answer": ca, "finish_reason": finish, "stop": stop,
                            "eventual_answer": ea, "label": lab})
        step = trainer_ref[0].state.global_step if trainer_ref else 0
        return [s["total"] for s in score_records(records, cfg.rewards, tokenizer, step=step,
                                                  total_steps=cfg.optim.total_steps)]

    return tirgrpo_reward


def stream_rows(cfg, prompts: list, steps: int) -> list[dict]:
    """The dataset rows in the order tirgrpo's trainer takes the prompts, `steps` rollouts' worth."""
    from tirgrpo.data.prompts import prompts_for_rollout

    p = cfg.rollout.prompts_per_step
    order = prompts_for_rollout(len(prompts), 0, steps * p, cfg.run.seed, cfg.data.shuffle)
    return [{"prompt": prompts[i].example.prompt, "correct_answer": prompts[i].example.correct_answer,
             "eventual_answer": prompts[i].example.eventual_answer, "label": prompts[i].example.label}
            for i in order]


def grpo_config(cfg, args, steps: int, device: torch.device, out_dir: Path, eos_id: int):
    """TRL's GRPOConfig from the tirgrpo config."""
    from trl import GRPOConfig

    r, g, o = cfg.rollout, cfg.grpo, cfg.optim
    total = r.prompts_per_step * r.group_size
    micro = args.micro_batch or r.group_size
    if total % micro:
        raise SystemExit(f"--micro-batch {micro} must divide the {total} sequences of a step")
    if g.loss_type not in ("grpo", "dr_grpo", "dapo"):
        raise SystemExit(f"grpo.loss_type {g.loss_type!r} has no TRL counterpart here")
    if g.credit != "all_tokens":
        raise SystemExit(f"grpo.credit {g.credit!r} has no TRL counterpart (TRL credits every token)")
    if r.temperature <= 0:
        raise SystemExit("rollout.temperature must be > 0: TRL's GRPOTrainer samples")
    gen = {"pad_token_id": eos_id}  # rows that stop early are padded with EOS: TRL masks after the first EOS
    if r.stop:
        gen["stop_strings"] = list(r.stop)
    cuda = device.type == "cuda"
    return GRPOConfig(
        output_dir=str(out_dir), use_vllm=False, bf16=cuda, use_cpu=not cuda,
        per_device_train_batch_size=micro, gradient_accumulation_steps=total // micro,
        num_generations=r.group_size, max_completion_length=r.max_new_tokens, temperature=r.temperature,
        top_p=r.top_p, top_k=r.top_k, generation_kwargs=gen,
        beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high, num_iterations=g.num_iterations,
        loss_type=g.loss_type, scale_rewards="group" if g.scale_rewards else "none",
        mask_truncated_completions=g.mask_truncated,
        learning_rate=o.lr, adam_beta1=o.betas[0], adam_beta2=o.betas[1], weight_decay=o.weight_decay,
        max_grad_norm=o.max_grad_norm, lr_scheduler_type="constant_with_warmup", warmup_steps=o.warmup_steps,
        gradient_checkpointing=cfg.system.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        max_steps=steps * g.num_iterations, shuffle_dataset=False, seed=cfg.run.seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, log_completions=False,
        dataloader_num_workers=0,
    )


def main(argv: list[str] | None = None) -> int:
    """Run TRL's steps, append the row and print the table; 2 with a message for a user's mistake."""
    from tirgrpo.errors import TirgrpoError

    try:
        return run(parse_args(argv))
    except TirgrpoError as e:
        print(f"trl_step: error: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    """main's body: load, train `--steps` rollouts under TRL, time them."""
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOTrainer
    except ImportError as e:
        print(f"benchmarks/trl_step.py needs trl and datasets ({e}); e.g. pip install --target /tmp/trlsite "
              f"trl==1.16.0 datasets, then PYTHONPATH=/tmp/trlsite", file=sys.stderr)
        return 2
    import trl.trainer.grpo_trainer as grpo_module

    from tirgrpo.data.prompts import load_prompts
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.perf.step_bench import (append_and_print, bench_config, median, model_label, seed_data_path,
                                         summarize)
    from tirgrpo.rollout.simple import eos_ids
    from tirgrpo.train.metrics import peak_memory_gib
    from tirgrpo.train.model import load_base_model, tokenizer_spec

    data = Path(args.data or seed_data_path())
    if not data.is_file():
        print(f"--data {data}: no such file (tirgrpo prepare makes it; see `tirgrpo bench step --help`)",
              file=sys.stderr)
        return 2
    work = Path(args.work)
    args.shape = None  # bench_config reads --model
    cfg = bench_config(args, data, work / "run-trl")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(cfg.run.seed)

    tokenizer = load_tokenizer(tokenizer_spec(cfg.model))
    prompts = load_prompts(cfg.data.train, tokenizer, cfg.data.max_prompt_tokens)
    rows = stream_rows(cfg, prompts, args.steps)
    policy = load_base_model(cfg.model, device, dtype, cfg.run.seed, attention="sdpa")
    eos = eos_ids(policy, tokenizer)
    policy.generation_config.eos_token_id = sorted(eos)
    reference = copy.deepcopy(policy).requires_grad_(False).eval() if cfg.grpo.beta > 0 else None
    if cfg.rollout.stop:  # transformers' stop strings need the tokenizer, which TRL does not pass
        policy.generate = functools.partial(policy.generate, tokenizer=tokenizer)

    copied: list[str] = []

    def reference_model(model_id, **kwargs):  # TRL loads its reference from the policy's path: the same weights
        copied.append(model_id)
        return reference

    grpo_module.create_model_from_path = reference_model

    times = StepTimes(device)
    trainer_ref: list = []
    per_step, lengths, finishes = [], [], []
    iterations = cfg.grpo.num_iterations

    class Timed(GRPOTrainer):
        def _generate_single_turn(self, *a, **k):
            return times.timed("rollout_s", super()._generate_single_turn, *a, **k)

        def _get_per_token_logps_and_entropies(self, model, *a, **k):
            if torch.is_grad_enabled():  # the training forward
                return super()._get_per_token_logps_and_entropies(model, *a, **k)
            name = "reference_s" if model is self.ref_model else "old_logps_s"
            return times.timed(name, super()._get_per_token_logps_and_entropies, model, *a, **k)

        def _calculate_rewards(self, *a, **k):
            return times.timed("score_s", super()._calculate_rewards, *a, **k)

    class StepClock(TrainerCallback):
        """One step = the num_iterations optimizer steps of one generation."""

        def on_step_begin(self, args_, state, control, **kwargs):
            if state.global_step % iterations == 0:
                times.sync()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times.parts, times.lengths, times.finishes = {}, [], []
                self.start = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            if state.global_step % iterations:
                return
            times.sync()
            step_s = time.perf_counter() - self.start
            parts = {k: times.parts.get(k, 0.0) for k in ("rollout_s", "reference_s", "old_logps_s", "score_s")}
            update_s = step_s - parts["rollout_s"] - parts["reference_s"] - parts["score_s"]
            per_step.append({"step_s": step_s, **parts, "update_s": update_s,
                             "train_s": update_s + parts["reference_s"], "tokens": sum(times.lengths),
                             "peak_gib": peak_memory_gib(device)})
            lengths.append(list(times.lengths))
            finishes.append(list(times.finishes))
            print(f"step {len(per_step)}: " + ", ".join(f"{k} {v:.2f}" for k, v in per_step[-1].items()), flush=True)

    trainer = Timed(model=policy, reward_funcs=make_reward(cfg, tokenizer, eos, times, trainer_ref),
                    args=grpo_config(cfg, args, args.steps, device, work / "trl-out", min(eos)),
                    train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[StepClock()])
    trainer_ref.append(trainer)
    trainer.train()
    if len(per_step) != args.steps:
        raise SystemExit(f"expected {args.steps} steps, timed {len(per_step)}")

    summary = summarize(per_step, lengths, finishes, args.warmup)
    summary["old_logps_s"] = median([p["old_logps_s"] for p in per_step[args.warmup:]])
    row = {"trainer": f"trl {trl.__version__}", "shape": model_label(args.model), "model": args.model,
           "data": str(data), "gpus": 1, "prompts": cfg.rollout.prompts_per_step, "G": cfg.rollout.group_size,
           "context": f"real+{args.new_tokens}",
           "prompt_tokens_mean": sum(len(p.ids) for p in prompts) / len(prompts), "lora": False, "profiled": False,
           **summary, "estimate_gib": None,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "settings": {"micro_batch": trainer.args.per_device_train_batch_size,
                        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
                        "steps_per_generation": trainer.args.steps_per_generation,
                        "eos": sorted(eos), "stop": list(cfg.rollout.stop), "dtype": str(dtype).removeprefix("torch."),
                        "gradient_checkpointing": trainer.args.gradient_checkpointing,
                        "reference": "a copy of the policy" if copied else "none"},
           "per_step": per_step}
    append_and_print(args.results, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
