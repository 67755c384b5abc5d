"""`tirgrpo memory`: where every byte of a GRPO step's peak goes, before anything is loaded
(the estimate: tirgrpo.perf.estimate), and optionally one measured step (tirgrpo.perf.measure)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from tirgrpo.errors import TirgrpoError
from tirgrpo.perf.estimate import estimate, largest_fitting
from tirgrpo.perf.fit import suggest_changes
from tirgrpo.perf.measure import measure_config
from tirgrpo.perf.shape import shape_from_spec
from tirgrpo.perf.workload import GiB


def parse_bytes(text: str) -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2^30, '79.6' (GiB) -> bytes."""
    t = text.strip().upper().replace(" ", "")
    units = {"GIB": GiB, "GB": 10**9, "MIB": 2**20, "MB": 10**6, "TIB": 2**40, "TB": 10**12, "G": GiB}
    number, mult = t, GiB
    for u, m in units.items():
        if t.endswith(u):
            number, mult = t[: -len(u)], m
            break
    try:
        amount = float(number) * mult
    except ValueError:
        raise TirgrpoError(f"--gpu-memory {text!r}: expected e.g. 80GB, 79.6GiB") from None
    # float() also reads nan and inf (and 1e400 as inf): no GPU has that much, and int() of them raises.
    if not math.isfinite(amount) or amount < 1:
        raise TirgrpoError(f"--gpu-memory {text!r}: must be a finite amount above zero, e.g. 80GB, 79.6GiB")
    return int(amount)


def format_table(est: dict, measured: dict | None = None, gpu_bytes: int | None = None) -> str:
    """The human-readable report of `estimate` (GiB = 2^30 bytes)."""
    shape, wl = est["shape"], est["workload"]
    lines = [f"model {shape['name'] or '?'}: {est['params'] / 1e9:.3f}B params, hidden {shape['hidden']}, "
             f"{shape['layers']} layers, {shape['heads']}/{shape['kv_heads']} heads, MLP {shape['intermediate']}, "
             f"vocab {shape['vocab']}{', tied' if shape['tied'] else ''}",
             f"step: {wl['prompts_per_step']} prompts x G={wl['group_size']}, {wl['prompt_tokens']} + "
             f"{wl['completion_tokens']} tokens, {'bf16' if wl['dtype_bytes'] == 2 else 'fp32'}, "
             f"checkpointing {'on' if wl['checkpointing'] else 'off'}, "
             f"{'LoRA r=%d' % wl['lora_r'] if wl['lora'] else 'full'}, "
             f"reference copy {'yes' if wl['reference_model'] else 'no'}, optimizer "
             f"{'fp32 master' if wl['master_fp32'] else 'bf16 ' + wl['bf16_update']}",
             f"layout: shared prefix {wl['prefix']}{' (packed groups)' if wl['prefix'] != 'off' else ' (padded rows)'}, "
             f"{wl['engine']} rollout engine, micro-batch budget {wl['micro_batch_tokens']} tokens",
             ""]
    if wl.get("world_size", 1) > 1:
        lines.insert(-1, f"per rank of {wl['world_size']} (FSDP2): 1/{wl['world_size']} of weights, gradients and "
                         f"optimizer states, {wl['prompts_per_step'] // wl['world_size']} prompts each")
    for phase in [p for p in ("rollout", "train", "eval") if p in est]:
        r = est[phase]
        plan = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["plan"].items())
        lines.append(f"{phase} phase: peak at {r['moment']} ({plan})")
        for k, v in r["parts"].items():
            if v:
                lines.append(f"  {k:<44}{v / GiB:>9.2f} GiB")
        lines.append(f"  {'total (max_memory_allocated)':<44}{r['total'] / GiB:>9.2f} GiB")
        if measured and phase in measured:
            m = measured[phase]
            lines.append(f"  {'measured (' + measured.get('how', '') + ')':<44}{m / GiB:>9.2f} GiB  "
                         f"({100 * (r['total'] - m) / m:+.1f}% estimate vs measured)")
        lines.append("")
    t = est["train"]
    lines.append("sizes for reference:")
    for k, v in {**t["sizes"], **est["rollout"]["sizes"]}.items():
        lines.append(f"  {k:<44}{v / GiB:>9.3f} GiB" if v >= 2**20 else f"  {k:<44}{v / 1024:>9.1f} KiB")
    per_tok = sum(t["per_token_layer"].values())
    lines.append(f"  {'saved per token per layer':<44}{per_tok:>9d} B  (" + ", ".join(
        f"{k} {v}" for k, v in t["per_token_layer"].items() if v) + ")")
    lines.append("")
    lines.append(f"peak {est['peak'] / GiB:.2f} GiB + allocator slack and CUDA context ~{est['slack'] / GiB:.2f} GiB"
                 f" = device need {est['need'] / GiB:.2f} GiB")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tirgrpo.config import add_config_arguments
    from tirgrpo.validate import device

    add_config_arguments(p, example="rollout.group_size=16")
    p.add_argument("--gpu-memory", default="80GB", help="GPU memory to fit (e.g. 80GB, 79.6GiB); default 80GB")
    p.add_argument("--device", type=device, default="cuda",
                   help="device the estimate is for (cuda: bf16 under dtype=auto; cpu: fp32)")
    p.add_argument("--world-size", "--gpus", type=int, default=1, metavar="N",
                   help="ranks (GPUs) the run is sharded over with torchrun; the estimate is per GPU (default 1)")
    p.add_argument("--measure", action="store_true",
                   help="also run one real step (rollout + train phase) and print the measured peaks")
    p.add_argument("--json", metavar="FILE", help="write the estimate (and measurement) as JSON")


def run(args) -> int:
    from tirgrpo.config import TrainConfig, load_config
    from tirgrpo.files import atomic_write_text, check_output_file

    if args.json:  # before the estimate (and a --measure step): a bad path fails at once
        check_output_file(args.json, "--json")
    cfg = load_config(TrainConfig, args.config, args.set)
    shape = shape_from_spec(cfg.model.name_or_path)
    gpu = parse_bytes(args.gpu_memory)
    import torch

    from tirgrpo.train.plan import planned_workload

    device_type = "cpu" if args.device == "cpu" else "cuda"
    wl = planned_workload(cfg, torch.device(device_type))[1]
    if args.world_size != 1:
        if args.world_size < 1 or cfg.rollout.prompts_per_step % args.world_size:
            raise TirgrpoError(f"--world-size {args.world_size}: must be >= 1 and divide rollout.prompts_per_step "
                               f"({cfg.rollout.prompts_per_step})")
        if args.measure:
            raise TirgrpoError("--measure runs one process; measure several ranks with torchrun (docs/distributed.md)")
        wl = dataclasses.replace(wl, world_size=args.world_size)
    measured = None
    if args.measure:
        from tirgrpo.train.model import resolve_device

        dev = resolve_device("auto" if args.device == "cuda" else args.device)
        if dev.type != device_type:
            print(f"note: no CUDA device here; measuring on {dev} instead (fp32 under dtype=auto, eager optimizer)")
            wl = planned_workload(cfg, dev)[1]
        measured = measure_config(cfg, dev)
        measured["how"] = ("torch.cuda.max_memory_allocated" if dev.type == "cuda"
                           else "CPU: torch.profiler allocation timeline, not a GPU number")
    est = estimate(shape, wl)
    print(format_table(est, measured, gpu))
    big = largest_fitting(shape, wl, gpu)
    print(f"fits {args.gpu_memory} ({gpu / GiB:.1f} GiB): {'yes' if est['need'] <= gpu else 'NO'}; "
          f"largest group size that fits "
          f"{big['group_size'] or 'none'}; largest completion length {big['completion_tokens'] or 'none'} "
          f"(context {big['context_tokens'] or '-'} tokens)")
    if est["need"] > gpu:
        for tip in suggest_changes(shape, wl, gpu):
            print(f"  would fit: {tip}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"estimate": est, "measured": measured, "largest": big}, indent=1))
    return 0
