"""Memory estimate vs measurement on one GPU (issue #7): `tirgrpo.perf.memory` against
`torch.cuda.max_memory_allocated`, per phase, for configurations of the 1.5B shape.

For each configuration it builds the random-init DeepSeek-R1-Distill-Qwen-1.5B shape in
bf16 on CUDA (policy, reference copy unless LoRA, `optim.AdamW` with its states), then runs
`tirgrpo.perf.memory.measure_step`, which does what `train.py` does:
  rollout  SimpleEngine prefill + `--decode-tokens` decode steps (eos forbidden), G samples
           per prompt, peak measured over the whole `generate` call;
  train    old-policy log-probs, reference log-probs, forward + backward of every
           micro-batch (pack_by_tokens, right-padded; the last completion of each group is
           one token shorter, so micro-batches of several rows carry a padding mask, as in
           real runs), gradient clipping, the optimizer step.
Each phase's peak is compared with `rollout_phase(..., decode_tokens)` / `train_phase(...)`.
Configurations whose estimated peak exceeds the free memory are not run (recorded as such);
a real out-of-memory is recorded too. Shared prefix is a later issue: n/a here.

    PYTHONPATH=$PWD/src python3 benchmarks/memory_check.py --json memory_check.json
    python benchmarks/memory_check.py --dry-run          # estimates only, no GPU needed
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from dataclasses import asdict, replace

from tirgrpo.perf.estimate import rollout_phase, train_phase
from tirgrpo.perf.shape import shape_from_spec
from tirgrpo.perf.workload import GiB, Workload

SHAPE = "random:r1-distill-qwen-1.5b"
# name: (prompts, G, prompt tokens, completion tokens, checkpointing, LoRA, optimizer)
# optimizer: "master" (fp32 master + moments, the default), "stochastic" (bf16 states).
# Micro-batches hold 16k tokens (--micro-batch-tokens) except where OVERRIDE_MB says otherwise.
CONFIGS = {
    "g4-4k": (2, 4, 3072, 1024, True, False, "master"),
    "g4-4k-nockpt": (2, 4, 3072, 1024, False, False, "stochastic"),
    "g16-4k": (1, 16, 3072, 1024, True, False, "stochastic"),
    "g64-4k": (1, 64, 3072, 1024, True, False, "stochastic"),
    "g4-16k": (1, 4, 12288, 4096, True, False, "stochastic"),
    "g16-4k-lora": (1, 16, 3072, 1024, True, True, "master"),
    "g4-16k-lora": (1, 4, 12288, 4096, True, True, "master"),
    "g4-4k-lora-nockpt": (1, 4, 3072, 1024, False, True, "master"),
    "g16-4k-nockpt": (1, 16, 3072, 1024, False, False, "stochastic"),
    "g16-16k": (1, 16, 12288, 4096, True, False, "stochastic"),
    "g64-16k-lora": (1, 64, 12288, 4096, True, True, "master"),
}
OVERRIDE_MB = {"g4-4k-lora-nockpt": 8192}  # LoRA without checkpointing saves fp32 casts: 73 GiB at 16k
# Every dimension (G 4/16/64, 4k/16k, checkpointing on/off, LoRA on/off) is covered by the first six.
DEFAULT = ["g4-4k", "g16-4k-lora", "g4-4k-nockpt", "g4-16k", "g64-4k", "g4-4k-lora-nockpt", "g16-4k",
           "g4-16k-lora", "g16-4k-nockpt"]


def workload(name: str, micro_batch_tokens: int, fused: bool) -> Workload:
    """The estimator's view of configuration `name` (bf16, padded micro-batches)."""
    P, G, tp, tc, ckpt, lora, opt = CONFIGS[name]
    return Workload(prompt_tokens=tp, completion_tokens=tc, group_size=G, prompts_per_step=P,
                    rollout_batch_size=64, micro_batch_tokens=micro_batch_tokens, logprob_chunk_tokens=1024,
                    dtype_bytes=2, checkpointing=ckpt, lora=lora, lora_r=16, reference_model=not lora,
                    master_fp32=opt == "master", bf16_update="stochastic", fused_optimizer=fused,
                    variable_lengths=True)


def estimate_row(name: str, args) -> dict:
    """Estimates (bytes) of both phases of `name`, rollout with `args.decode_tokens` decode steps."""
    shape = shape_from_spec(SHAPE)
    mb = OVERRIDE_MB.get(name, args.micro_batch_tokens)
    wl = workload(name, mb, fused=True)
    r = rollout_phase(shape, wl, decode_tokens=args.decode_tokens)
    t = train_phase(shape, wl)
    P, G, tp, tc, ckpt, lora, opt = CONFIGS[name]
    return {"case": name, "prompts": P, "G": G, "prompt_tokens": tp, "completion_tokens": tc,
            "context": tp + tc, "checkpointing": ckpt, "lora": lora, "optimizer": "lora-fp32" if lora else opt,
            "shared_prefix": "n/a", "micro_batch_tokens": mb,
            "micro_batches": t["plan"]["micro_batches"], "rows_per_micro_batch": t["plan"]["rows"],
            "decode_tokens": args.decode_tokens,
            "est_rollout": r["total"], "est_train": t["total"], "est_train_moment": t["moment"],
            "est_rollout_moment": r["moment"], "est_train_parts": t["parts"], "est_rollout_parts": r["parts"],
            "workload": asdict(wl)}


def measure_row(row: dict, args) -> dict:
    """Build the model(s) on CUDA and measure both phases of `row` (fills meas_* and err_*)."""
    import torch

    from tirgrpo.perf.measure import measure_step, synthetic_batch
    from tirgrpo.train.model import build_random_model
    from tirgrpo.train.optim import AdamW

    dev = torch.device("cuda")
    name = row["case"]
    P, G, tp, tc, ckpt, lora, opt = CONFIGS[name]
    wl = Workload(**{**row["workload"], "lora_targets": tuple(row["workload"]["lora_targets"])})
    model = build_random_model(SHAPE.split(":", 1)[1], torch.bfloat16, "sdpa", seed=0, device=dev)
    model.config.use_cache = False
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = None
    if lora:
        from tirgrpo.config import ModelConfig
        from tirgrpo.train.model import add_lora

        model = add_lora(model, ModelConfig(lora=True, lora_r=16, lora_alpha=32))
    else:
        ref = build_random_model(SHAPE.split(":", 1)[1], torch.bfloat16, "sdpa", seed=0, device=dev)
        ref.requires_grad_(False).eval()
    optimizer = AdamW(model.parameters(), lr=3e-5, master_fp32=opt == "master", bf16_update="stochastic")
    shape = shape_from_spec(SHAPE)
    prompts = synthetic_batch(shape, P, tp, seed=0)
    try:
        m = measure_step(model, ref, optimizer, prompts, wl, dev, decode_tokens=args.decode_tokens)
    finally:
        del model, ref, optimizer
        gc.collect()
        torch.cuda.empty_cache()
    row.update(meas_rollout=m["rollout"], meas_train=m["train"], measured_micro_batches=m["micro_batches"])
    row["err_rollout_pct"] = round(100 * (row["est_rollout"] - m["rollout"]) / m["rollout"], 2)
    row["err_train_pct"] = round(100 * (row["est_train"] - m["train"]) / m["train"], 2)
    row["status"] = "ok" if max(abs(row["err_rollout_pct"]), abs(row["err_train_pct"])) <= 10 else "off by >10%"
    return row


def print_table(rows: list[dict]) -> None:
    g = lambda b: f"{b / GiB:7.2f}" if isinstance(b, (int, float)) else f"{'-':>7}"  # noqa: E731
    print(f"\n{'case':<20}{'G':>4}{'ctx':>7}{'ckpt':>6}{'LoRA':>6}{'prefix':>7}{'mb':>4}"
          f"{'roll est':>9}{'meas':>8}{'err%':>7}{'train est':>10}{'meas':>8}{'err%':>7}  status")
    for r in rows:
        er = f"{r['err_rollout_pct']:+7.1f}" if "err_rollout_pct" in r else f"{'-':>7}"
        et = f"{r['err_train_pct']:+7.1f}" if "err_train_pct" in r else f"{'-':>7}"
        print(f"{r['case']:<20}{r['G']:>4}{r['context']:>7}{'on' if r['checkpointing'] else 'off':>6}"
              f"{'on' if r['lora'] else 'off':>6}{'n/a':>7}{r['micro_batches']:>4}"
              f"{g(r['est_rollout'])}  {g(r.get('meas_rollout'))}{er}{g(r['est_train'])}   {g(r.get('meas_train'))}{et}"
              f"  {r.get('status', '')}")
    print("(GiB = 2^30 bytes; est = tirgrpo.perf.memory, meas = torch.cuda.max_memory_allocated; "
          "err = (est - meas) / meas)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(DEFAULT), help=f"comma-separated, or 'all'; known: {','.join(CONFIGS)}")
    ap.add_argument("--decode-tokens", type=int, default=8, help="decode steps of the measured rollout")
    ap.add_argument("--micro-batch-tokens", type=int, default=16384)
    ap.add_argument("--time-budget", type=float, default=270, help="seconds; later cases are skipped past it")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--dry-run", action="store_true", help="estimates only (no GPU)")
    args = ap.parse_args(argv)
    names = list(CONFIGS) if args.cases == "all" else [c for c in args.cases.split(",") if c]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {list(CONFIGS)}")
    rows = [estimate_row(n, args) for n in names]
    env = {"python": platform.python_version()}
    if not args.dry_run:
        import torch
        import transformers

        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run for the estimates alone", file=sys.stderr)
            return 2
        env.update(device=torch.cuda.get_device_name(), torch=torch.__version__, transformers=transformers.__version__,
                   total_gib=round(torch.cuda.get_device_properties(0).total_memory / GiB, 2))
        try:
            import peft

            env["peft"] = peft.__version__
        except ImportError:
            env["peft"] = None
        t0 = time.time()
        for row in rows:
            gc.collect()
            torch.cuda.empty_cache()
            free = torch.cuda.mem_get_info()[0]
            need = max(row["est_rollout"], row["est_train"])
            if row["lora"] and env["peft"] is None:
                row["status"] = "skipped: peft not installed"
            elif need > 0.97 * free:
                row["status"] = f"skipped: estimated {need / GiB:.1f} GiB > {free / GiB:.1f} GiB free (OOM by the estimate)"
            elif time.time() - t0 > args.time_budget:
                row["status"] = "skipped: time budget"
            else:
                t = time.time()
                try:
                    measure_row(row, args)
                except torch.cuda.OutOfMemoryError:
                    row["status"] = "out of memory"
                row["seconds"] = round(time.time() - t, 1)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("est_") or k in
                              ("est_rollout", "est_train")} | {"workload": None}), flush=True)
        print(f"\n{env}")
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
