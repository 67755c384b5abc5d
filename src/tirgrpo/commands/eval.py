"""`tirgrpo eval`: the verifier's decision quality on labelled examples, against baselines,
and (with `--selection`) what it does to answer selection by vote.

    tirgrpo eval --model runs/demo --data bundled:gsm8k-verify-eval
    tirgrpo eval --model runs/demo --transcripts runs.jsonl --selection

The protocol: K sampled completions per example (--samples, default 8) at --temperature
(default 1.0, the training temperature) give P(submit) per example, the headline metrics
and their bootstrap 95% intervals (resampling questions); one greedy completion per example
is reported beside them (--no-greedy to skip). Sampling runs through the fast rollout engine
(prompt KV once per group, CUDA graphs on a GPU).

Writes OUT (default RUN_DIR/eval.json for a run folder, else ./eval.json) and the same
tables as Markdown next to it (OUT with suffix .md). Metric definitions: evaluate.py and
selection.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tirgrpo.errors import TirgrpoError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH|RUN_DIR",
                   help="a model (HF folder, .gguf, smollm2-135m-instruct) or a run folder (its final/ model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="labelled examples (.jsonl/.parquet or bundled:NAME)")
    src.add_argument("--transcripts", help="transcript JSONL: judge each run at its last code output")
    p.add_argument("--samples", type=int, default=8, metavar="K", help="completions sampled per example (default 8)")
    p.add_argument("--no-greedy", dest="greedy", action="store_false",
                   help="skip the separate greedy completion per example")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples of the questions for the 95%% intervals (default 1000; 0 = none)")
    p.add_argument("--selection", action="store_true",
                   help="also compare majority vote, verifier-gated vote and P(submit)-weighted vote per question")
    p.add_argument("--threshold", type=float, default=0.5, help="P(submit) at which a transcript counts as submitted")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature of the K samples (default 1.0; 0 = greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's rollout.max_new_tokens, else 1024")
    p.add_argument("--max-examples", type=int, default=0, help="evaluate at most this many examples (0 = all)")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="drop longer prompts (0 = no limit)")
    p.add_argument("--tokenizer", default="", help="tokenizer name or path (default: the model's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="most sequences decoded at once")
    p.add_argument("--kernels", default="auto", choices=("auto", "torch", "triton"),
                   help="decode kernels of the fast engine (auto: Triton on CUDA, else torch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="where to write eval.json (the Markdown goes next to it)")


def _run_config(model: str):
    """The TrainConfig of a run folder, or None for a plain model."""
    from tirgrpo.config import TrainConfig, load_config

    path = Path(model) / "config.toml"
    if Path(model).is_dir() and path.is_file():
        try:
            return load_config(TrainConfig, path, [])
        except TirgrpoError:
            return None  # e.g. an SFT run's config: its model is still usable, with defaults
    return None


def _transcript_examples(path: str):
    """Pseudo-examples (one per transcript that has a correct answer) and their decision prompts.

    Returns (examples, problem ids, prompts or None where no code output was shown).
    """
    from tirgrpo.data.records import Example, label_for, read_transcripts
    from tirgrpo.eval.selection import transcript_decision_prompt

    examples, problem_ids, prompts = [], [], []
    for t in read_transcripts(path):
        if t.correct_answer is None:
            continue
        prompt = transcript_decision_prompt(t)
        examples.append(Example(question=t.question, prompt=prompt or "", completion="", correct_answer=t.correct_answer,
                                eventual_answer=t.eventual_answer, label=label_for(t.correct_answer, t.eventual_answer),
                                prompt_tokens=0, completion_tokens=0, source=Path(path).name))
        problem_ids.append(t.problem_id)
        prompts.append(prompt)
    if not examples:
        raise TirgrpoError(f"{path}: no transcript has a correct_answer; nothing to evaluate")
    return examples, problem_ids, prompts


def run(args) -> int:
    import torch

    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.config import ModelConfig
    from tirgrpo.data.records import read_examples
    from tirgrpo.eval.evaluate import eval_rewards, evaluate_examples, markdown_table, summarize
    from tirgrpo.files import atomic_write_text
    from tirgrpo.train.model import load_base_model, resolve_device, resolve_dtype, tokenizer_spec
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.engine import FastEngine
    from tirgrpo.eval.selection import compare_selection, group_candidates, selection_table
    from tirgrpo.data.tokenizer import load_tokenizer

    if args.samples < 1:
        raise TirgrpoError("--samples must be >= 1")
    if args.bootstrap < 0:
        raise TirgrpoError("--bootstrap must be >= 0")
    run_cfg = _run_config(args.model)
    rollout = run_cfg.rollout if run_cfg else None
    rewards = eval_rewards(run_cfg.rewards if run_cfg else None)
    max_new = args.max_new_tokens or (rollout.max_new_tokens if rollout else 1024)
    params = SamplingParams(max_new, args.temperature, rollout.top_p if rollout else 1.0,
                            rollout.top_k if rollout else 0, list(rollout.stop) if rollout else ["```python"])

    model_cfg = ModelConfig(name_or_path=args.model, tokenizer=args.tokenizer)
    if run_cfg and not args.tokenizer and run_cfg.model.tokenizer:
        model_cfg.tokenizer = run_cfg.model.tokenizer
    tokenizer = load_tokenizer(tokenizer_spec(model_cfg))

    if args.data:
        examples = read_examples(bundled_path(args.data))
        problem_ids = [ex.question for ex in examples]
        prompts: list[str | None] = [ex.prompt for ex in examples]
    else:
        examples, problem_ids, prompts = _transcript_examples(args.transcripts)
    keep = [i for i, p in enumerate(prompts)
            if p is None or args.max_prompt_tokens <= 0 or len(tokenizer(p)["input_ids"]) <= args.max_prompt_tokens]
    if args.max_examples > 0:
        keep = keep[: args.max_examples]
    if not keep:
        raise TirgrpoError("no example left to evaluate (check --max-prompt-tokens / --max-examples)")
    examples = [examples[i] for i in keep]
    problem_ids = [problem_ids[i] for i in keep]
    prompts = [prompts[i] for i in keep]
    judged = [i for i, p in enumerate(prompts) if p is not None]

    device = resolve_device(args.device)
    model = load_base_model(model_cfg, device, resolve_dtype(args.dtype, device), args.seed)
    model.requires_grad_(False).eval()
    engine = FastEngine(model, tokenizer, max_batch=args.batch_size, kernels=args.kernels)
    t0 = time.perf_counter()
    with torch.no_grad():
        result = evaluate_examples(engine, tokenizer, [examples[i] for i in judged],
                                   [tokenizer(prompts[i])["input_ids"] for i in judged],
                                   params, args.samples, args.seed, rewards, greedy=args.greedy,
                                   bootstrap=args.bootstrap) if judged else summarize([], [], [], [], [])
    result.update({"model": args.model, "data": args.data or args.transcripts, "temperature": args.temperature,
                   "max_new_tokens": max_new, "unjudged": len(prompts) - len(judged),
                   "seconds": time.perf_counter() - t0, "device": str(device)})
    md = markdown_table(result)
    if args.selection:
        # Transcripts that never showed a code output have nothing to judge: they count as submitted.
        p_submit = [1.0] * len(examples)
        for i, comp in zip(judged, result.get("completions", [])):
            p_submit[i] = sum(s["decision"] == "submit" for s in comp["samples"]) / len(comp["samples"])
        grouped = group_candidates(problem_ids, [ex.correct_answer for ex in examples],
                                   [ex.eventual_answer for ex in examples], p_submit)
        result["selection"] = compare_selection(grouped, threshold=args.threshold, seed=args.seed)
        md += "\n" + selection_table(result["selection"])

    out = Path(args.out) if args.out else (Path(args.model) / "eval.json" if run_cfg else Path("eval.json"))
    atomic_write_text(out, json.dumps(result, indent=1, ensure_ascii=False))
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
