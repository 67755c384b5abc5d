"""Does it fit? Config changes that would make a step fit, and the trainer's check."""

from __future__ import annotations

import warnings
from dataclasses import replace

from tirgrpo.errors import TirgrpoError
from tirgrpo.perf.estimate import estimate, fits, largest_fitting, pick_micro_batch_tokens, train_phase
from tirgrpo.perf.shape import ModelShape, shape_from_spec
from tirgrpo.perf.workload import GiB, Workload, budget_for_rows, workload_from_config


CHANGES = [  # (the --set arguments, the same change to a Workload)
    (("model.gradient_checkpointing=true",), dict(checkpointing=True)),
    (("optim.master_weights_fp32=false", "optim.bf16_update=stochastic"),
     dict(master_fp32=False, bf16_update="stochastic")),
    (("model.lora=true",), dict(lora=True, reference_model=False)),
    (("rollout.batch_size=16",), dict(rollout_batch_size=16)),
    (("optim.logprob_chunk_tokens=256",), dict(logprob_chunk_tokens=256)),
]


def suggest_changes(shape: ModelShape, wl: Workload, gpu_bytes: int) -> list[str]:
    """Config changes (one at a time) that make `wl` fit, each with the micro-batch budget
    re-picked, and the largest group size / completion length that fit unchanged."""
    out = []
    mb = pick_micro_batch_tokens(shape, wl, gpu_bytes)
    if mb and mb != wl.micro_batch_tokens:
        need = estimate(shape, replace(wl, micro_batch_tokens=mb))["need"]
        out.append(f"--set optim.micro_batch_tokens={mb} (needs {need / GiB:.1f} GiB)")
    for sets, change in CHANGES:
        w = replace(wl, **change)
        if w == wl:
            continue
        mb = pick_micro_batch_tokens(shape, w, gpu_bytes)
        if mb or fits(shape, w, gpu_bytes):
            args = [f"--set {x}" for x in sets] + ([] if mb == w.micro_batch_tokens else
                                                   [f"--set optim.micro_batch_tokens={mb}"])
            need = estimate(shape, replace(w, micro_batch_tokens=mb))["need"]
            out.append(f"{' '.join(args)} (needs {need / GiB:.1f} GiB)")
    big = largest_fitting(shape, wl, gpu_bytes)
    if big["group_size"] >= 2:
        out.append(f"--set rollout.group_size={big['group_size']} or less")
    if big["completion_tokens"] >= 1:
        out.append(f"--set rollout.max_new_tokens={big['completion_tokens']} or less")
    return out


def describe(result: dict) -> str:
    """'total X GiB: part a GiB, part b GiB, ...' of a phase, largest parts first."""
    parts = sorted(((k, v) for k, v in result["parts"].items() if v), key=lambda kv: -kv[1])
    return f"{result['total'] / GiB:.1f} GiB at {result['moment']} (" + ", ".join(
        f"{k} {v / GiB:.2f}" for k, v in parts) + ")"


def check_train_config(cfg, device) -> int:
    """The trainer's memory check, before any weights load. Returns the micro-batch token
    budget to use (the configured one when it fits). CUDA: raises TirgrpoError naming the
    parts and changes that would fit when nothing does. Other devices: warns only."""
    import torch

    try:
        shape = shape_from_spec(cfg.model.init_from or cfg.model.name_or_path)
    except TirgrpoError as e:
        warnings.warn(f"memory check skipped: {e}", stacklevel=2)
        return cfg.optim.micro_batch_tokens
    wl = workload_from_config(cfg, device.type)
    if device.type != "cuda":
        import os

        est = estimate(shape, wl)
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        if ram and est["peak"] > ram:
            warnings.warn(f"memory: the estimated peak exceeds this machine's {ram / GiB:.1f} GiB of RAM: "
                          f"train {describe(est['train'])}; rollout {describe(est['rollout'])}", stacklevel=2)
        return cfg.optim.micro_batch_tokens
    free, total = torch.cuda.mem_get_info(device)
    gpu = free + torch.cuda.memory_reserved(device)
    mb = pick_micro_batch_tokens(shape, wl, gpu)
    if mb:
        if mb != wl.micro_batch_tokens:
            print(f"memory: optim.micro_batch_tokens {wl.micro_batch_tokens} -> {mb} to fit "
                  f"{gpu / GiB:.1f} GiB ({describe(train_phase(shape, replace(wl, micro_batch_tokens=mb)))})")
        return mb
    est = estimate(shape, replace(wl, micro_batch_tokens=budget_for_rows(wl, 1)))
    tips = suggest_changes(shape, wl, gpu)
    raise TirgrpoError(
        f"this configuration does not fit the {gpu / GiB:.1f} GiB free on {device} "
        f"(estimated need {est['need'] / GiB:.1f} GiB, one completion per micro-batch).\n"
        f"  train:   {describe(est['train'])}\n  rollout: {describe(est['rollout'])}\n"
        + ("  would fit: " + "; ".join(tips) if tips else "  no single change fits; see `tirgrpo memory`")
        + "\n  (estimate: `tirgrpo memory --config ...`; docs/memory.md)")
