"""`tirgrpo bench step`: the trainer's whole GRPO step (rollout + update), on one GPU or under
torchrun on several, with random weights and synthetic prompts of a fixed length.

It runs the loop's own phases (train/loop.py: `setup`, `rollout_and_score`, `update`,
`log_rollout`) for `--rollouts` rollouts and reports the last one (the first pays for
compilation and CUDA-graph capture); no evaluation, no checkpoint. Each call appends one
row to `--results` (JSON lines) and prints the table of every row there, so calls at 1 and
N GPUs print side by side. Throughput = completion tokens of the whole step (all ranks) per
second of the step; the speed-up compares rows with the same work per GPU (N GPUs with N
times the prompts of one), since splitting one GPU's prompts over two leaves each with a
decode step that costs about as much (decoding is bound by reading the weights). Memory: the largest `torch.cuda.max_memory_allocated` of any rank in
GiB (2**30 bytes), beside the plan's per-rank estimate (train/plan.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def synthetic_examples(tokenizer, n: int, prompt_tokens: int, seed: int) -> list:
    """`n` examples whose prompts are `prompt_tokens` tokens (bos included) of digits and spaces
    (which tokenize and decode back to the same tokens)."""
    from tirgrpo.data.records import Example

    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = " ".join(str(rng.randrange(10**6)) for _ in range(prompt_tokens))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: prompt_tokens - 8]
        prompt = tokenizer.decode(ids)
        count = len(tokenizer(prompt)["input_ids"])
        out.append(Example(question=f"q{i}", prompt=prompt, completion="unused", correct_answer="1", eventual_answer="1" if i % 2 == 0 else "2",
                           label="correct" if i % 2 == 0 else "wrong", prompt_tokens=count, completion_tokens=0,
                           source="synthetic"))
    return out


def bench_config(args, data: Path, out_dir: Path):
    """The seed config with the benchmark's shape, group, lengths and a throwaway run folder."""
    from tirgrpo.config import TrainConfig, load_config

    sets = [f"model.name_or_path=random:{args.shape}", f"data.train={data}", "data.eval=", "data.paired=false",
            f"data.max_prompt_tokens={args.prompt_tokens}", f"rollout.group_size={args.group_size}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.max_new_tokens={args.new_tokens}",
            "optim.total_steps=100000", "run.eval_every=0", "run.save_every=0", f"run.out_dir={out_dir}",
            *args.set]
    return load_config(TrainConfig, ROOT / "configs" / "seed-r1-distill-1.5b.toml", sets)


def bench_step(args) -> dict:
    """Run the rollouts; return the last one's row (the same on every rank)."""
    from tirgrpo.data.records import write_examples
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train import dist, loop
    from tirgrpo.train.model import RANDOM_SHAPES

    dist.init()
    work = Path(args.work)
    data = work / "train.jsonl"
    if dist.is_main():
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(RANDOM_SHAPES[args.shape]["tokenizer"])
        write_examples(data, synthetic_examples(tokenizer, 4 * args.prompts, args.prompt_tokens, 0))
    dist.barrier()
    cfg = bench_config(args, data, work / f"run-{args.shape}-{dist.world_size()}")
    s = loop.setup(cfg, None, resume=False, overwrite=True)
    for i in range(args.rollouts):
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        dist.barrier()
        start = time.perf_counter()
        rollout = loop.rollout_and_score(s)
        profile_dir = getattr(args, "profile", None) if i == args.rollouts - 1 else None
        with profiled_update(profile_dir, s.device, dist.rank()):
            stats = loop.update(s, rollout)
        if s.device.type == "cuda":
            torch.cuda.synchronize(s.device)
        seconds = max(dist.gather_objects(time.perf_counter() - start))
        s.progress.rollout += 1
        s.progress.data_pos += cfg.rollout.prompts_per_step
        row = loop.log_rollout(s, rollout, stats)
    s.log.close()
    tokens = row["completion/tokens_mean"] * cfg.rollout.prompts_per_step * cfg.rollout.group_size
    return {"shape": args.shape, "gpus": dist.world_size(), "prompts": cfg.rollout.prompts_per_step,
            "G": cfg.rollout.group_size, "context": f"{args.prompt_tokens}+{args.new_tokens}",
            "lora": cfg.model.lora, "profiled": bool(getattr(args, "profile", None)), "step_s": seconds, "rollout_s": row["time/rollout_s"],
            "train_s": row["time/train_s"], "tokens": tokens, "tokens_per_s": tokens / seconds,
            "peak_gib": row["memory/peak_gib"], "estimate_gib": s.plan.memory.peak_gib if s.plan.memory else None,
            "rollout_peak_gib": row["memory/rollout_peak_gib"], "train_peak_gib": row["memory/train_peak_gib"],
            "estimate_rollout_gib": s.plan.memory.rollout_gib if s.plan.memory else None,
            "estimate_train_gib": s.plan.memory.train_gib if s.plan.memory else None}


@contextlib.contextmanager
def profiled_update(out_dir: str | None, device: torch.device, rank: int):
    """With `out_dir`, run the block under torch.profiler and write this rank's operators, by
    self device time (CPU: self CPU time), to OUT_DIR/update_rankN.txt, with the share of
    collective kernels (NCCL/gloo) on the first line. Without it, nothing."""
    if not out_dir:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events)
    comms = sum(getattr(e, key) for e in events if is_collective(e.key))
    path = Path(out_dir) / f"update_rank{rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"rank {rank}: {total / 1e6:.3f} s of {'device' if cuda else 'CPU'} time in operators, "
            f"{comms / 1e6:.3f} s ({100 * comms / max(total, 1):.1f}%) in collectives\n")
    path.write_text(head + events.table(sort_by=key, row_limit=40, max_name_column_width=80), encoding="utf-8")


def is_collective(name: str) -> bool:
    """A communication kernel or op: NCCL kernels, c10d / gloo collectives."""
    lowered = name.lower()
    return any(k in lowered for k in ("nccl", "c10d::", "gloo", "all_gather", "reduce_scatter", "allreduce",
                                      "all_reduce"))


def baseline(rows: list[dict], i: int) -> dict | None:
    """The 1-GPU row that row i's speed-up is taken over: of the same shape, G and lengths,
    with the same work per GPU (each GPU keeps its load) or, when no row has it, the same
    prompts per step (one GPU does the whole step's work); of several, the nearest in the file,
    since a call that measures a baseline beside a run writes them next to each other. A
    profiled row has none (the profiler's own cost is in its time)."""
    r = rows[i]
    if r.get("profiled"):
        return None
    if r["gpus"] == 1:
        return r

    def nearest(prompts: int) -> dict | None:
        same = [j for j, o in enumerate(rows) if o["gpus"] == 1 and not o.get("profiled") and
                (o["shape"], o["prompts"], o["G"], o["context"]) == (r["shape"], prompts, r["G"], r["context"])]
        return rows[min(same, key=lambda j: abs(j - i))] if same else None

    return nearest(r["prompts"] // r["gpus"]) or nearest(r["prompts"])


def table(rows: list[dict]) -> str:
    """Rows side by side; `speed-up` is tokens/s over the row's `baseline`."""
    head = (f"{'shape':<22}{'gpus':>5}{'prompts':>8}{'/gpu':>5}{'G':>4}{'context':>11}{'step s':>8}{'rollout s':>10}"
            f"{'train s':>9}{'tok/s':>8}{'speed-up':>9}{'peak GiB':>9}{'est GiB':>8}")
    lines = [head]
    for i, r in enumerate(rows):
        one = baseline(rows, i)
        speed = f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else ("profiled" if r.get("profiled") else "-")
        est = f"{r['estimate_gib']:.1f}" if r["estimate_gib"] is not None else "-"
        lines.append(f"{r['shape']:<22}{r['gpus']:>5}{r['prompts']:>8}{r['prompts'] // r['gpus']:>5}{r['G']:>4}"
                     f"{r['context']:>11}{r['step_s']:>8.1f}{r['rollout_s']:>10.1f}{r['train_s']:>9.1f}"
                     f"{r['tokens_per_s']:>8.0f}{speed:>9}{r['peak_gib']:>9.1f}{est:>8}")
    return "\n".join(lines)


def run_bench_step(args) -> int:
    """Bench, append the row (rank 0), print the table of all rows."""
    from tirgrpo.train import dist

    try:
        row = bench_step(args)
    except BaseException:
        dist.teardown(finished=False)
        raise
    dist.teardown()
    if not dist.is_main():
        return 0
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(table(rows))
    return 0
