"""Does it fit? Config changes that would make a step fit (the trainer's check is `train.plan.fit_memory`)."""

from __future__ import annotations

from dataclasses import replace

from tirgrpo.perf.estimate import estimate, fits, largest_fitting, pick_micro_batch_tokens
from tirgrpo.perf.shape import ModelShape
from tirgrpo.perf.workload import GiB, Workload


CHANGES = [  # (the --set arguments, the same change to a Workload)
    (("system.gradient_checkpointing=true",), dict(checkpointing=True)),
    (("system.optimizer=bf16-stochastic",), dict(master_fp32=False, bf16_update="stochastic")),
    (("model.lora=true",), dict(lora=True, reference_model=False)),
    (("system.rollout_batch_size=16",), dict(rollout_batch_size=16)),
    (("system.logprob_chunk_tokens=256",), dict(logprob_chunk_tokens=256)),
]


def suggest_changes(shape: ModelShape, wl: Workload, gpu_bytes: int) -> list[str]:
    """Config changes (one at a time) that make `wl` fit, each with the micro-batch budget
    re-picked, and the largest group size / completion length that fit unchanged."""
    out = []
    mb = pick_micro_batch_tokens(shape, wl, gpu_bytes)
    if mb and mb != wl.micro_batch_tokens:
        need = estimate(shape, replace(wl, micro_batch_tokens=mb))["need"]
        out.append(f"--set system.micro_batch_tokens={mb} (needs {need / GiB:.1f} GiB)")
    for sets, change in CHANGES:
        w = replace(wl, **change)
        if w == wl:
            continue
        mb = pick_micro_batch_tokens(shape, w, gpu_bytes)
        if mb or fits(shape, w, gpu_bytes):
            args = [f"--set {x}" for x in sets] + ([] if mb == w.micro_batch_tokens else
                                                   [f"--set system.micro_batch_tokens={mb}"])
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
