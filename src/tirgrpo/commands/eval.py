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
    from tirgrpo.validate import device, non_negative_int, positive_int, seed, temperature, unit_interval

    p.add_argument("--model", required=True, metavar="PATH|RUN_DIR",
                   help="a model (HF folder, .gguf, smollm2-135m-instruct) or a run folder (its final/ model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="labelled examples (.jsonl/.parquet or bundled:NAME)")
    src.add_argument("--transcripts", help="transcript JSONL: judge each run at its last code output")
    p.add_argument("--samples", type=positive_int, default=8, metavar="K", help="completions sampled per example (default 8)")
    p.add_argument("--no-greedy", dest="greedy", action="store_false",
                   help="skip the separate greedy completion per example")
    p.add_argument("--bootstrap", type=non_negative_int, default=1000, metavar="B",
                   help="bootstrap resamples of the questions for the 95%% intervals (default 1000; 0 = none)")
    p.add_argument("--selection", action="store_true",
                   help="also compare majority vote, verifier-gated vote, P(submit)-weighted vote and the vote "
                        "with the verifier's own answer for runs that gave none (completed) per question")
    p.add_argument("--threshold", type=unit_interval, default=0.5, help="P(submit) at which a transcript counts as submitted")
    p.add_argument("--temperature", type=temperature, default=1.0,
                   help="sampling temperature of the K samples (default 1.0; 0 = greedy)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: the run's rollout.max_new_tokens, else 1024")
    p.add_argument("--max-examples", type=non_negative_int, default=0,
                   help="evaluate at most this many examples (0 = all); with --transcripts, whole problems")
    p.add_argument("--max-prompt-tokens", type=non_negative_int, default=0,
                   help="drop longer prompts (0 = no limit); with --transcripts, leave them unjudged (they "
                        "still vote in --selection)")
    p.add_argument("--tokenizer", default="", help="tokenizer name or path (default: the model's own)")
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-size", type=positive_int, default=64, help="most sequences decoded at once")
    p.add_argument("--kernels", default="auto", choices=("auto", "torch", "triton"),
                   help="decode kernels of the fast engine (auto: Triton on CUDA, else torch)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the sampled judgements (default 0)")
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


def run(args) -> int:
    from tirgrpo.config import ModelConfig
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.eval.evaluate import eval_rewards, markdown_table
    from tirgrpo.eval.selection import selection_table
    from tirgrpo.eval.verifier import examples_to_judge, judge, selection
    from tirgrpo.files import atomic_write_text, check_distinct_files, report_paths
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.train.model import load_base_model, resolve_device, resolve_dtype, tokenizer_spec

    if args.samples < 1:
        raise TirgrpoError("--samples must be >= 1")
    run_cfg = _run_config(args.model)
    # checked before the model loads and the evaluation runs, not after
    out, md_path = report_paths(Path(args.out) if args.out else
                                (Path(args.model) / "eval.json" if run_cfg else Path("eval.json")))
    source = ("--data", args.data) if args.data else ("--transcripts", args.transcripts)
    if not source[1].startswith("bundled:"):  # the reports must not replace the examples they judge
        check_distinct_files({source[0]: source[1], "--out": out, "the Markdown report beside --out": md_path})
    rollout = run_cfg.rollout if run_cfg else None
    max_new = args.max_new_tokens or (rollout.max_new_tokens if rollout else 1024)
    params = SamplingParams(max_new, args.temperature, rollout.top_p if rollout else 1.0,
                            rollout.top_k if rollout else 0, list(rollout.stop) if rollout else ["```python"])
    tokenizer_name = args.tokenizer or (run_cfg.model.tokenizer if run_cfg else "")
    model_cfg = ModelConfig(name_or_path=args.model, tokenizer=tokenizer_name)
    tokenizer = load_tokenizer(tokenizer_spec(model_cfg))
    examples, problem_ids, prompts = examples_to_judge(args.data, args.transcripts, tokenizer, args.max_prompt_tokens,
                                                       args.max_examples)
    if not args.selection and all(p is None for p in prompts):
        raise TirgrpoError(f"{args.transcripts}: no transcript shows a code output (or each such prompt is over "
                           "--max-prompt-tokens): nothing to judge (with --selection the runs still vote)")
    device = resolve_device(args.device)
    model = load_base_model(model_cfg, device, resolve_dtype(args.dtype, device), args.seed)
    model.requires_grad_(False).eval()
    start = time.perf_counter()
    result = judge(model, tokenizer, examples, prompts, params, args.samples, args.seed,
                   eval_rewards(run_cfg.rewards if run_cfg else None), args.batch_size, greedy=args.greedy,
                   bootstrap=args.bootstrap, kernels=args.kernels)
    judged, prompt_lengths = result.pop("judged"), result.pop("prompt_lengths")
    result.update({"model": args.model, "data": args.data or args.transcripts, "temperature": args.temperature,
                   "max_new_tokens": max_new, "seconds": time.perf_counter() - start, "device": str(device)})
    md = markdown_table(result)
    if args.selection:
        result["selection"] = selection(result, judged, prompt_lengths, examples, problem_ids, args.threshold,
                                        args.seed)
        md += "\n" + selection_table(result["selection"])
    atomic_write_text(out, json.dumps(result, indent=1, ensure_ascii=False))
    atomic_write_text(md_path, md)
    print(md)
    print(f"wrote {out} and {md_path}")
    return 0
