"""Train-phase benchmark: time and peak memory of one GRPO update on a 1.5B-shape model.

Random-init DeepSeek-R1-Distill-Qwen-1.5B shape, bf16, sdpa, 3072-token prompts + 1024-token
completions, reference model loaded (beta 0.1), two updates per rollout (old log-probs
recorded). For each case it reports, as medians over `--repeats` steps after one warm-up,
timed with CUDA events:
  fwd_bwd_opt  policy forward + backward over all micro-batches + clipping + AdamW step
               (the part TRL 1.16.0's train step measures)
  phase        reference log-probs + fwd_bwd_opt: what the trainer runs per update (it takes
               the old log-probs from the first update's own forward, docs/algorithm.md)
  phase_with_old_pass  phase + a separate no-grad forward for the old log-probs (the
               log-probs recorded, reference, forward/backward, step)
  opt          clipping + AdamW step + zero_grad
and the peak of torch.cuda.max_memory_allocated over the whole case (GiB = 2**30 bytes; the
JSON also gives GB = 1e9 bytes).

    python benchmarks/train_phase.py --cases g4,g16 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from tirgrpo.config import GRPOConfig
from tirgrpo.train.model import build_random_model, compile_decoder_layers
from tirgrpo.train.optim import AdamW
from tirgrpo.train.prefix import use_prefix_attention
from tirgrpo.train.step import GRPOObjective, build_micro_batches, grpo_update, micro_batch_logprobs

CASES = {
    # name: (prompts, G, checkpointing, optimizer mode, micro-batch token budget[, prefix mask[, compile]])
    # prefix mask: "" unshared, "dense", "block" or "split" shared prefix (each group packed
    # as [prompt, completion_1..G]); compile: torch.compile each decoder layer.
    "g4": (2, 4, True, "stochastic", 16384),
    "g4-master": (2, 4, True, "master", 16384),
    "g4-kahan": (2, 4, True, "kahan", 16384),
    "g4-nockpt": (2, 4, False, "stochastic", 16384),
    "g16": (1, 16, True, "stochastic", 16384),
    "g16-master": (1, 16, True, "master", 16384),
    "g16-mb8k": (1, 16, True, "stochastic", 8192),
    "g4-mb8k": (2, 4, True, "stochastic", 8192),
    "g4-mb32k": (2, 4, True, "stochastic", 32768),
    "g4-compiled": (2, 4, True, "stochastic", 16384, "", True),
    "g4-mb8k-compiled": (2, 4, True, "stochastic", 8192, "", True),
    "g4-mb4k-compiled": (2, 4, True, "stochastic", 4096, "", True),
    "g16-compiled": (1, 16, True, "stochastic", 16384, "", True),
    "g16-unshared-compiled": (1, 16, True, "stochastic", 32768, "", True),
    "g4-block-compiled": (2, 4, True, "stochastic", 32768, "block", True),
    "g64-block-compiled": (1, 64, True, "stochastic", 32768, "block", True),
    "g16-16k-block-compiled": (1, 16, True, "stochastic", 32768, "block", True),
    "g4-split-compiled": (2, 4, True, "stochastic", 32768, "split", True),
    "g64-split-compiled": (1, 64, True, "stochastic", 32768, "split", True),
    "g16-16k-split-compiled": (1, 16, True, "stochastic", 32768, "split", True),
    "g16-dense": (1, 16, True, "stochastic", 32768, "dense"),
    "g16-block": (1, 16, True, "stochastic", 32768, "block"),
    "g16-block-compiled": (1, 16, True, "stochastic", 32768, "block", True),
    "g16-split": (1, 16, True, "stochastic", 32768, "split"),
    "g16-split-compiled": (1, 16, True, "stochastic", 32768, "split", True),
    "g16-unshared": (1, 16, True, "stochastic", 32768, ""),
    "g4-dense": (2, 4, True, "stochastic", 32768, "dense"),
    "g4-block": (2, 4, True, "stochastic", 32768, "block"),
    "g64-dense": (1, 64, True, "stochastic", 32768, "dense"),
    "g64-block": (1, 64, True, "stochastic", 32768, "block"),
    "g16-16k-dense": (1, 16, True, "stochastic", 32768, "dense"),
    "g16-16k-block": (1, 16, True, "stochastic", 32768, "block"),
}


def events():
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def run_case(name: str, prompt_len: int, comp_len: int, repeats: int, beta: float = 0.1, chunk: int = 256) -> dict:
    prompts, G, ckpt, mode, budget, *rest = CASES[name]
    prefix_mask = rest[0] if rest else "off"
    compiled = len(rest) > 1 and rest[1]
    if "16k" in name:  # the long-context case: 12k prompt + 4k completion
        prompt_len, comp_len = 12288, 4096
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    dev = torch.device("cuda")
    model = build_random_model("r1-distill-qwen-1.5b", torch.bfloat16, "sdpa", seed=0, device=dev)
    model.config.use_cache = False
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = build_random_model("r1-distill-qwen-1.5b", torch.bfloat16, "sdpa", seed=0, device=dev).eval()
    ref.requires_grad_(False)
    if prefix_mask in ("block", "split"):
        for m in (model, ref):
            use_prefix_attention(m)
    if compiled:
        for m in (model, ref):
            compile_decoder_layers(m)
    opt = AdamW(model.parameters(), lr=3e-5, master_fp32=(mode == "master"),
                bf16_update="kahan" if mode == "kahan" else "stochastic")
    cfg = GRPOConfig(beta=beta, num_iterations=2, loss_type="dapo")
    g = torch.Generator().manual_seed(0)
    prompt_ids = [torch.randint(0, 151643, (prompt_len,), generator=g).tolist() for _ in range(prompts)]
    rows_p = [p for p in prompt_ids for _ in range(G)]
    rows_c = [torch.randint(0, 151643, (comp_len,), generator=g).tolist() for _ in rows_p]
    batches = build_micro_batches(rows_p, rows_c, G, budget, prefix_mask, 151643, dev)
    advs = [torch.randn(len(b.rows), generator=g).to(dev) for b in batches]
    n_seq, n_tok = len(rows_p), len(rows_p) * comp_len
    times = {"old_logp": [], "ref_logp": [], "fwd_bwd_opt": [], "phase": [], "phase_with_old_pass": []}
    model.train()
    warmup = 0.0
    for step in range(repeats + 1):
        t_step = time.perf_counter()
        e0, e1 = events(); e2, e3 = events()
        e0.record()
        with torch.no_grad():
            old = [micro_batch_logprobs(model, b, chunk, 1.0, grad=False)[0] for b in batches]
        e1.record()
        with torch.no_grad():
            refs = [micro_batch_logprobs(ref, b, chunk, 1.0, grad=False)[0] for b in batches]
        e2.record()
        # a later iteration of the rollout: the recorded old log-probs give the ratio
        grpo_update(model, opt, batches, GRPOObjective(cfg, advs, refs, comp_len, n_seq, n_tok, old=old), 1.0, chunk)
        e3.record()
        torch.cuda.synchronize()
        if step == 0:
            warmup = time.perf_counter() - t_step  # includes compilation where there is one
        if step > 0:
            times["old_logp"].append(e0.elapsed_time(e1) / 1e3)
            times["ref_logp"].append(e1.elapsed_time(e2) / 1e3)
            times["fwd_bwd_opt"].append(e2.elapsed_time(e3) / 1e3)
            times["phase"].append(e1.elapsed_time(e3) / 1e3)
            times["phase_with_old_pass"].append(e0.elapsed_time(e3) / 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**30
    out = {"case": name, "sequences": n_seq, "tokens": n_seq * (prompt_len + comp_len), "checkpointing": ckpt,
           "optimizer": mode, "micro_batch_tokens": budget, "micro_batches": len(batches), "prefix_mask": prefix_mask,
           "logprob_chunk_tokens": chunk,
           "compiled": bool(compiled), "warmup_s": round(warmup, 1),
           "forward_tokens": sum(b.tokens for b in batches),
           "peak_gib": round(peak, 2), "peak_gb": round(peak * 2**30 / 1e9, 2)}
    for k, v in times.items():
        out[f"{k}_s"] = round(statistics.median(v), 3)
    out["fwd_bwd_opt_tokens_per_s"] = round(out["tokens"] / out["fwd_bwd_opt_s"])
    del model, ref, opt, batches, old, refs
    gc.collect()
    torch.cuda.empty_cache()
    return out


def profile_case(name: str, prompt_len: int, comp_len: int) -> None:
    """torch.profiler over the timed steps of one case: where the GPU time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_case(name, prompt_len, comp_len, repeats=1)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="g4,g16")
    ap.add_argument("--prompt-len", type=int, default=3072)
    ap.add_argument("--comp-len", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=256, help="LM-head chunk (system.logprob_chunk_tokens)")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--profile", help="profile one fwd+bwd+opt step of this case and print the top kernels")
    args = ap.parse_args()
    if args.profile:
        profile_case(args.profile, args.prompt_len, args.comp_len)
    rows = []
    for name in filter(None, args.cases.split(",")):
        try:
            rows.append(run_case(name, args.prompt_len, args.comp_len, args.repeats, chunk=args.chunk))
        except torch.cuda.OutOfMemoryError:
            rows.append({"case": name, "error": "out of memory"})
            gc.collect(); torch.cuda.empty_cache()
        except Exception as e:  # one failing variant must not lose the other rows
            rows.append({"case": name, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            gc.collect(); torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'case':<19}{'seqs':>5}{'tokens':>8}{'fwd tok':>8}{'opt':>11}{'mb':>4}{'peak GiB':>9}{'fwd+bwd+opt s':>15}{'tok/s':>9}{'phase s':>9}{'+old pass':>10}{'warm s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<19} {r['error']}")
            continue
        print(f"{r['case']:<19}{r['sequences']:>5}{r['tokens']:>8}{r['forward_tokens']:>8}{r['optimizer']:>11}{r['micro_batches']:>4}"
              f"{r['peak_gib']:>9.2f}{r['fwd_bwd_opt_s']:>15.3f}{r['fwd_bwd_opt_tokens_per_s']:>9}{r['phase_s']:>9.3f}{r['phase_with_old_pass_s']:>10.3f}{r['warmup_s']:>8.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
