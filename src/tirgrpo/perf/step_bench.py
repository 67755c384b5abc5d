"""`tirgrpo bench step`: the trainer's whole GRPO step (rollout + update), on one GPU or under
torchrun on several: random weights and synthetic prompts of a fixed length (`--shape`), or a
real model (`--model`) on real prompts (`--data`, by default the seed config's `data.train`)
with its own EOS and the config's stop strings, so completions have their real lengths.

It runs the loop's own phases (train/loop.py: `setup`, `rollout_and_score`, `update`,
`log_rollout`) for `--rollouts` rollouts and reports the median of those after `--warmup`
(default: all but the last, i.e. the last one; the first pays for compilation and CUDA-graph
capture); no evaluation, no checkpoint. Per rollout: the step, rollout (generation), reference
pass and update (the `num_iterations` optimizer steps) seconds, completion lengths and how
they ended (eos, stop string, length), all kept under `per_step`. Each call appends one
row to `--results` (JSON lines) and prints the table of every row there, so calls at 1 and
N GPUs print side by side; benchmarks/trl_step.py appends TRL's rows in the same format, and
TRL's times over ours follow the table. Throughput = completion tokens of the whole step (all
ranks) per second of the step; the speed-up compares rows with the same work per GPU (N GPUs with N
times the prompts of one), since splitting one GPU's prompts over two leaves each with a
decode step that costs about as much (decoding is bound by reading the weights). Memory: the largest `torch.cuda.max_memory_allocated` of any rank in
GiB (2**30 bytes), beside the plan's per-rank estimate (train/plan.py).
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import time
from pathlib import Path

import torch

from tirgrpo.errors import TirgrpoError

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


def model_label(spec: str) -> str:
    """A model's name in the results table: a named model as named, a path by its last part."""
    return Path(spec).name.removesuffix(".gguf") or spec


def bench_config(args, data: Path, out_dir: Path):
    """The seed config with the benchmark's model, group, lengths and a throwaway run folder.
    A real model (`--model`) uses its own tokenizer (the seed config names R1-Distill's)."""
    from tirgrpo.config import TrainConfig, load_config

    model = args.model if getattr(args, "model", None) else f"random:{args.shape}"
    own_tokenizer = ["model.tokenizer="] if getattr(args, "model", None) else []
    sets = [f"model.name_or_path={model}", *own_tokenizer, f"data.train={data}", "data.eval=", "data.paired=false",
            f"data.max_prompt_tokens={args.prompt_tokens}", f"rollout.group_size={args.group_size}",
            f"rollout.prompts_per_step={args.prompts}", f"rollout.max_new_tokens={args.new_tokens}",
            "optim.total_steps=100000", "run.eval_every=0", "run.save_every=0", f"run.out_dir={out_dir}",
            *args.set]
    return load_config(TrainConfig, ROOT / "configs" / "seed-r1-distill-1.5b.toml", sets)


def seed_data_path() -> str:
    """The seed config's `data.train` (`tirgrpo prepare` output of the seed CSV)."""
    from tirgrpo.config import TrainConfig, load_config

    return load_config(TrainConfig, ROOT / "configs" / "seed-r1-distill-1.5b.toml", []).data.train


def warmup_count(args) -> int:
    """Rollouts left out of the medians: `--warmup`, default all but the last."""
    warmup = args.rollouts - 1 if getattr(args, "warmup", None) is None else args.warmup
    if args.rollouts < 1 or not 0 <= warmup < args.rollouts:
        raise TirgrpoError(f"--warmup {warmup} must leave at least one of --rollouts {args.rollouts} to measure")
    return warmup


def median(values: list[float]) -> float:
    """The median, NaN for none."""
    return float(statistics.median(values)) if values else float("nan")


def summarize(per_step: list[dict], lengths: list[list[int]], finishes: list[list[str]], warmup: int) -> dict:
    """The medians over the rollouts after `warmup`, the largest peak, and the completion
    lengths and finish reasons of those rollouts. The same for every trainer (TRL's too)."""
    steps, lens = per_step[warmup:], [n for ls in lengths[warmup:] for n in ls]
    ends = [f for fs in finishes[warmup:] for f in fs]
    out = {key: median([p[key] for p in steps]) for key in
           ("step_s", "rollout_s", "reference_s", "update_s", "score_s", "train_s", "tokens")}
    out["tokens_per_s"] = median([p["tokens"] / p["step_s"] for p in steps])
    out["peak_gib"] = max(p["peak_gib"] for p in steps)
    out["steps"], out["warmup"] = len(steps), warmup
    out["completion_tokens"] = {"mean": sum(lens) / max(1, len(lens)), "min": min(lens, default=0),
                                "max": max(lens, default=0)}
    out["finish"] = {k: sum(f == k for f in ends) / max(1, len(ends)) for k in ("eos", "stop", "length")}
    return out


def step_entry(seconds: float, row: dict, tokens: int, data_pos: int) -> dict:
    """One rollout's `per_step` entry from its wall seconds and its metrics row."""
    return {"step_s": seconds, "rollout_s": row["time/rollout_s"], "score_s": row["time/score_s"],
            "reference_s": row["time/reference_s"],
            # as TRL's row defines it: the step less its timed parts (the optimizer's queued
            # work included, which the trainer's own train_s may not wait for)
            "update_s": seconds - row["time/rollout_s"] - row["time/score_s"] - row["time/reference_s"],
            "train_s": row["time/train_s"], "data_pos": data_pos, "tokens": tokens, "peak_gib": row["memory/peak_gib"],
            "rollout_peak_gib": row["memory/rollout_peak_gib"], "train_peak_gib": row["memory/train_peak_gib"]}


def bench_step(args) -> dict:
    """Run the rollouts; return the row of the measured ones (the same on every rank)."""
    from tirgrpo.data.records import write_examples
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.train import dist, loop
    from tirgrpo.train.model import RANDOM_SHAPES

    warmup = warmup_count(args)
    real = bool(getattr(args, "model", None))
    dist.init()
    work = Path(args.work)
    if real:
        given = getattr(args, "data", None)
        data = Path(given or seed_data_path())
        if not data.is_file() and given:
            raise TirgrpoError(f"--data {data}: no such file")
        if not data.is_file():
            raise TirgrpoError(f"{data} (the seed config's data.train): no such file; make it with `tirgrpo prepare "
                               f"--input tests/fixtures/r1_distill_7b_tir_sample.csv --out {data.parent} --no-pairing "
                               f"--max-prompt-tokens 0 --max-completion-tokens 0 --eval-fraction 0` (or pass --data)")
    else:
        data = work / "train.jsonl"
        if dist.is_main():
            work.mkdir(parents=True, exist_ok=True)
            tokenizer = load_tokenizer(RANDOM_SHAPES[args.shape]["tokenizer"])
            write_examples(data, synthetic_examples(tokenizer, 4 * args.prompts, args.prompt_tokens, 0))
    dist.barrier()
    label = model_label(args.model) if real else args.shape
    cfg = bench_config(args, data, work / f"run-{label}-{dist.world_size()}")
    s = loop.setup(cfg, None, resume=False, overwrite=True)
    per_step, lengths, finishes = [], [], []
    for i in range(args.rollouts):
        if i == warmup:
            # the measured rollouts take the stream's prompts from its start, as TRL's steps do
            # (benchmarks/trl_step.py): prompt lengths differ, so both must time the same ones
            s.progress.data_pos = 0
        data_pos = s.progress.data_pos
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
        ends = [e for part in dist.gather_objects([(len(c.token_ids), c.finish_reason) for c in rollout.completions])
                for e in part]
        s.progress.rollout += 1
        s.progress.data_pos += cfg.rollout.prompts_per_step
        row = loop.log_rollout(s, rollout, stats)
        lengths.append([n for n, _ in ends])
        finishes.append([f for _, f in ends])
        per_step.append(step_entry(seconds, row, sum(lengths[-1]), data_pos))
    s.log.close()
    measured = per_step[warmup:]
    out = {"trainer": "tirgrpo", "shape": label, "model": args.model if real else f"random:{args.shape}",
           "data": str(data) if real else None, "gpus": dist.world_size(), "prompts": cfg.rollout.prompts_per_step,
           "G": cfg.rollout.group_size,
           "context": f"real+{args.new_tokens}" if real else f"{args.prompt_tokens}+{args.new_tokens}",
           "prompt_tokens_mean": sum(len(p.ids) for p in s.train_prompts) / len(s.train_prompts),
           "lora": cfg.model.lora, "profiled": bool(getattr(args, "profile", None)),
           **summarize(per_step, lengths, finishes, warmup),
           "estimate_gib": s.plan.memory.peak_gib if s.plan.memory else None,
           "rollout_peak_gib": max(p["rollout_peak_gib"] for p in measured),
           "train_peak_gib": max(p["train_peak_gib"] for p in measured),
           "estimate_rollout_gib": s.plan.memory.rollout_gib if s.plan.memory else None,
           "estimate_train_gib": s.plan.memory.train_gib if s.plan.memory else None,
           "device": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu",
           "per_step": per_step}
    return out


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
    """The 1-GPU row that row i's speed-up is taken over: of the same trainer, shape, G and
    lengths, with the same work per GPU (each GPU keeps its load) or, when no row has it, the
    same prompts per step (one GPU does the whole step's work); of several, the nearest in the
    file, since a call that measures a baseline beside a run writes them next to each other. A
    profiled row has none (the profiler's own cost is in its time)."""
    r = rows[i]
    if r.get("profiled") or field(r, "trainer") != "tirgrpo":
        return None  # another trainer's row is compared with ours below the table (`comparisons`)
    if r["gpus"] == 1:
        return r

    def nearest(prompts: int) -> dict | None:
        same = [j for j, o in enumerate(rows) if o["gpus"] == 1 and not o.get("profiled") and
                same_work(o, r, prompts)]
        return rows[min(same, key=lambda j: abs(j - i))] if same else None

    return nearest(r["prompts"] // r["gpus"]) or nearest(r["prompts"])


def same_work(a: dict, b: dict, prompts: int | None = None, trainer: bool = True) -> bool:
    """Rows of the same model, data, G, lengths and prompts per step (`prompts`: b's count
    instead); `trainer`: of the same trainer too."""
    key = ("shape", "G", "context", "data") + (("trainer",) if trainer else ())
    return (all(field(a, k) == field(b, k) for k in key)
            and a["prompts"] == (b["prompts"] if prompts is None else prompts))


def field(r: dict, key: str):
    """A row's value; rows written before a key existed: tirgrpo's, no data file."""
    return r.get(key, "tirgrpo" if key == "trainer" else None)


def row_label(r: dict) -> str:
    """The table's first column: the shape or model, and the trainer when not tirgrpo."""
    trainer = field(r, "trainer")
    return r["shape"] if trainer == "tirgrpo" else f"{r['shape']} [{trainer}]"


def seconds(r: dict, key: str, width: int) -> str:
    """r[key] right-aligned in `width` characters, one decimal; "-" when the row lacks it."""
    value = r.get(key)
    return f"{value:>{width}.1f}" if value is not None else f"{'-':>{width}}"


def table(rows: list[dict]) -> str:
    """Rows side by side; `speed-up` is tokens/s over the row's `baseline`. `update s` is the
    `num_iterations` optimizer steps without the reference pass (`ref s`); rows written before
    the reference pass was timed show their whole train phase there."""
    w = max([22] + [len(row_label(r)) + 1 for r in rows])
    head = (f"{'shape':<{w}}{'gpus':>5}{'prompts':>8}{'/gpu':>5}{'G':>4}{'context':>11}{'step s':>8}{'rollout s':>10}"
            f"{'ref s':>7}{'update s':>9}{'tok/s':>8}{'speed-up':>9}{'peak GiB':>9}{'est GiB':>8}")
    lines = [head]
    for i, r in enumerate(rows):
        one = baseline(rows, i)
        speed = f"{r['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else ("profiled" if r.get("profiled") else "-")
        est = f"{r['estimate_gib']:.1f}" if r.get("estimate_gib") is not None else "-"
        update = {"update_s": r.get("update_s", r.get("train_s"))}
        lines.append(f"{row_label(r):<{w}}{r['gpus']:>5}{r['prompts']:>8}{r['prompts'] // r['gpus']:>5}{r['G']:>4}"
                     f"{r['context']:>11}{r['step_s']:>8.1f}{r['rollout_s']:>10.1f}{seconds(r, 'reference_s', 7)}"
                     f"{seconds(update, 'update_s', 9)}{r['tokens_per_s']:>8.0f}{speed:>9}{r['peak_gib']:>9.1f}{est:>8}")
    return "\n".join(lines)


def comparisons(rows: list[dict]) -> list[str]:
    """For each row of another trainer (TRL), its step, rollout and update beside the nearest
    tirgrpo row of the same work on as many GPUs: how many times longer each takes."""
    out = []
    for i, r in enumerate(rows):
        if field(r, "trainer") == "tirgrpo":
            continue
        ours = [j for j, o in enumerate(rows) if field(o, "trainer") == "tirgrpo" and o["gpus"] == r["gpus"]
                and same_work(o, r, trainer=False)]
        if not ours:
            continue
        o = rows[min(ours, key=lambda j: abs(j - i))]
        parts = [f"{name} {r[key]:.2f} s / {o[key]:.2f} s = {r[key] / o[key]:.1f}x"
                 for name, key in (("step", "step_s"), ("rollout", "rollout_s"), ("reference", "reference_s"),
                                   ("update", "update_s"))
                 if r.get(key) and o.get(key)]
        out.append(f"{row_label(r)} vs tirgrpo: " + "; ".join(parts))
    return out


def append_and_print(results: str | Path, row: dict) -> None:
    """Append `row` to the JSON lines file and print the table of all its rows, then how each
    other trainer's row compares with ours."""
    results = Path(results)
    results.parent.mkdir(parents=True, exist_ok=True)
    with results.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(table(rows))
    for line in comparisons(rows):
        print(line)


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
    append_and_print(args.results, row)
    return 0
