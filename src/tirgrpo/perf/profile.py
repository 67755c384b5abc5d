"""Where a FastEngine decode step spends its time: kernels (CUDA) or ops (CPU) grouped by
what they do, in ms per decode step (benchmarks/profile_rollout.py --by-category).

The engine runs eagerly (no CUDA graph) under torch.profiler, with its decode-step
operations wrapped in named profiler ranges (`label_decode_ops`), so the torch kernel set's
many small kernels and the LM head's GEMM (a GEMM like any other by its kernel name) land in
their own category. Anything outside a range is grouped by its kernel name
(`kernel_category`); the prefill is left out. Per decode step = totals over the profiled
call / decode steps run (a call of N new tokens runs N samplings and N - 1 decode steps).

On CUDA the times are kernel times on the device (gaps between kernels are not counted: a
CUDA-graph step takes longer than their sum); on a CPU they are each op's own (self) CPU
time, and the Python time between ops counts for the labelled range it ran in (the step's
own: copies / other).
"""

from __future__ import annotations

import re
from collections import deque
from contextlib import contextmanager

import torch

CATEGORIES = ("matmul", "attention", "rotary + cache write", "add + RMSNorm", "silu * mul", "LM head / logits",
              "sampling", "copies / other")
STEP_LABEL = "decode::step"
# Profiler ranges opened by `label_decode_ops` -> the category of all they contain (None: left out).
LABELS = {
    "decode::prefill": None,
    "decode::add_rmsnorm": "add + RMSNorm",
    "decode::rotary_cache_write": "rotary + cache write",
    "decode::decode_attention": "attention",
    "decode::silu_mul": "silu * mul",
    # the small-batch GEMV projections (kernels/gemv.py); gate_up_silu's SiLU * up is in its epilogue
    "decode::linears": "matmul",
    "decode::gate_up_silu": "matmul",
    "decode::lm_head": "LM head / logits",
    "decode::sample": "sampling",
}
SCOPE_SEP = " > "
# Kernel/op names outside a labelled range, first match wins (case-insensitive). Attention
# comes before matmul: flash-attention kernels' names mention cutlass.
NAME_PATTERNS = (
    ("attention", r"attention|attn|flash|fmha|sdpa"),
    ("rotary + cache write", r"rotary|rope"),
    ("add + RMSNorm", r"rmsnorm|rms_norm"),
    ("silu * mul", r"silu"),
    ("matmul", r"gemm|gemv|nvjet|cutlass|xmma|cublas|splitkreduce|aten::(mm|addmm|bmm|linear|matmul)$"),
    # kernels/sampling.py's Triton kernels are launched by Triton, outside any op: by name
    ("sampling", r"exponential|multinomial|searchsorted|argmax|softmax|topk|sort|cumsum|_sample_"),
)


def split_scope(name: str) -> tuple[str, str]:
    """("decode::lm_head", "nvjet_...") from "decode::lm_head > nvjet_..."; ("", name) when
    `name` carries no labelled range. Only a label counts as a scope: C++ kernel names hold
    " > " themselves (`...OpaqueType<2> > >(...)`), so splitting at the last one would
    cut the kernel's name and lose its range."""
    head, sep, tail = name.partition(SCOPE_SEP)
    return (head, tail) if sep and head in LABELS else ("", name)


def kernel_category(name: str) -> str | None:
    """The category (one of CATEGORIES) of a kernel or op `name`, or None (left out: prefill).

    `name` may carry the profiler range it ran in, "decode::lm_head > nvjet_tst_..."; a
    labelled range decides (LABELS), else the kernel name does (NAME_PATTERNS), else
    "copies / other".
    """
    scope, kernel = split_scope(name)
    if scope:
        return LABELS[scope]
    if kernel in LABELS:  # the range's own (CPU) time
        return LABELS[kernel]
    for category, pattern in NAME_PATTERNS:
        if re.search(pattern, kernel, re.IGNORECASE):
            return category
    return "copies / other"


def per_step_table(entries: list[tuple[str, float, int]], steps: int, top: int = 3) -> dict:
    """Group (name, microseconds, count) entries by `kernel_category` into ms per decode step.

    Returns {"steps", "total_ms_per_step", "categories": [{"category", "ms_per_step",
    "percent" (of the total), "kernels_per_step", "top": [[name, ms per step], ...]}]}, the
    categories in CATEGORIES order (all of them, zeros included); `top` = the largest names.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    us = {c: 0.0 for c in CATEGORIES}
    count = {c: 0 for c in CATEGORIES}
    by_name: dict[str, dict[str, float]] = {c: {} for c in CATEGORIES}
    for name, t, n in entries:
        category = kernel_category(name)
        if category is None:
            continue
        us[category] += t
        count[category] += n
        kernel = split_scope(name)[1]
        by_name[category][kernel] = by_name[category].get(kernel, 0.0) + t
    total = sum(us.values())
    rows = []
    for c in CATEGORIES:
        largest = sorted(by_name[c].items(), key=lambda kv: -kv[1])[:top]
        rows.append({"category": c, "ms_per_step": us[c] / steps / 1e3,
                     "percent": 100.0 * us[c] / total if total > 0 else 0.0,
                     "kernels_per_step": count[c] / steps,
                     "top": [[k, t / steps / 1e3] for k, t in largest]})
    return {"steps": steps, "total_ms_per_step": total / steps / 1e3, "categories": rows}


def format_table(table: dict) -> str:
    """The printed form of `per_step_table`'s result."""
    counted = "ops/step" if table.get("time", "").startswith("cpu") else "kernels/step"
    lines = [f"{'category':<22}{'ms/step':>9}{'%':>7}{counted:>14}  largest"]
    for r in table["categories"]:
        name = r["top"][0][0][:60] if r["top"] else ""
        lines.append(f"{r['category']:<22}{r['ms_per_step']:>9.3f}{r['percent']:>6.1f}%"
                     f"{r['kernels_per_step']:>14.1f}  {name}")
    lines.append(f"{'sum':<22}{table['total_ms_per_step']:>9.3f}{100.0:>6.1f}%   over {table['steps']} decode steps")
    return "\n".join(lines)


def _ranged(label: str, fn):
    """`fn` run inside the profiler range `label`."""
    def run(*args, **kwargs):
        with torch.profiler.record_function(label):
            return fn(*args, **kwargs)
    return run


@contextmanager
def label_decode_ops(engine):
    """Within: `engine`'s decode-step kernels, LM head, prefill, step and sampler run inside
    the profiler ranges of LABELS and STEP_LABEL. Wraps the same callables (numerics
    unchanged); everything is put back on exit."""

    kernels, lm_head = engine.kernels, engine.lm_head
    step_fn, prefill = engine._step_fn, engine._prefill
    engine.kernels = kernels._replace(**{op: _ranged(f"decode::{op}", getattr(kernels, op)) for op in
                                         ("add_rmsnorm", "rotary_cache_write", "decode_attention", "silu_mul",
                                          "linears", "gate_up_silu", "sample")})
    engine.lm_head = _ranged("decode::lm_head", lm_head)
    engine._prefill = _ranged("decode::prefill", prefill)
    engine._step_fn = lambda B: _ranged(STEP_LABEL, step_fn(B))
    try:
        yield engine
    finally:
        engine.kernels, engine.lm_head = kernels, lm_head
        del engine._step_fn, engine._prefill  # the instance attributes: the class's methods again


def _scope(event) -> str | None:
    """The innermost LABELS range around a profiler event (itself included), or None."""
    while event is not None:
        if event.name in LABELS:
            return event.name
        event = event.cpu_parent
    return None


def _launcher_by_correlation(ops, device_events):
    """Device event -> the op that launched it, by the event's `linked_correlation_id`."""
    by_id = {e.id: e for e in ops}
    return lambda event: by_id.get(event.linked_correlation_id)


def _launcher_by_kernel_list(ops, device_events):
    """Device event -> the op that launched it, for torch releases whose events carry no
    `linked_correlation_id` (2.11). There each op lists its kernels as (name, device,
    duration) in `op.kernels`, so a device event is matched by its name and duration. Many
    kernels share both (the same GEMM in every layer), so matches go in time order: on one
    stream kernels run in launch order, and the k-th run of a (name, duration) belongs to the
    k-th op, by start time, that lists it. A kernel no op lists (e.g. one launched by Triton's
    own launcher) gets None, like an unlinked event in newer torch."""
    pending: dict[tuple[str, float], deque] = {}
    for op in sorted(ops, key=lambda e: e.time_range.start):
        for k in getattr(op, "kernels", ()):
            pending.setdefault((k.name, k.duration), deque()).append(op)
    launcher = {}
    for event in sorted(device_events, key=lambda e: e.time_range.start):
        waiting = pending.get((event.name, event.time_range.elapsed_us()))
        launcher[id(event)] = waiting.popleft() if waiting else None
    return lambda event: launcher[id(event)]


def profile_entries(prof, device_type: str) -> tuple[list[tuple[str, float, int]], int]:
    """(entries for `per_step_table`, decode steps) of a finished torch.profiler run.

    cuda: every device kernel/memcpy, named with the labelled range of the op that launched
    it. cpu: every op's self CPU time, named with its labelled range.
    """
    from torch.autograd import DeviceType

    events = prof.events()
    linked = not events or hasattr(events[0], "linked_correlation_id")
    ops = [e for e in events
           if e.device_type == DeviceType.CPU and not e.is_async and (not linked or e.linked_correlation_id == 0)]
    steps = sum(e.name == STEP_LABEL for e in ops)

    def named(scope, name):
        return f"{scope}{SCOPE_SEP}{name}" if scope and scope != name else name

    if device_type == "cuda":
        # A labelled range also shows up as a device event spanning its kernels (a GPU user
        # annotation, torch 2.11): a span, not a kernel, so it is left out.
        kernels = [e for e in events
                   if e.device_type == DeviceType.CUDA and e.name not in LABELS and e.name != STEP_LABEL]
        launcher_of = (_launcher_by_correlation if linked else _launcher_by_kernel_list)(ops, kernels)
        entries = [(named(_scope(launcher_of(e)), e.name), e.time_range.elapsed_us(), 1) for e in kernels]
    else:
        entries = [(named(_scope(e), e.name), e.self_cpu_time_total, 1) for e in ops]
    return entries, steps


def profile_decode(engine, prompt_ids: list[list[int]], group_size: int, params, generator=None) -> dict:
    """`per_step_table` of one `engine.generate` call under torch.profiler, after a warm-up
    call (Triton compilation, allocator). Run the engine with use_cuda_graphs=False: the
    profiler sees no kernel inside a graph replay."""
    from torch.profiler import ProfilerActivity, profile

    device_type = engine.device.type
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    engine.generate(prompt_ids, group_size, params, generator)
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with label_decode_ops(engine), profile(activities=activities) as prof:
        engine.generate(prompt_ids, group_size, params, generator)
        sync()
    entries, steps = profile_entries(prof, device_type)
    return {**per_step_table(entries, steps), "time": "cuda kernel" if device_type == "cuda" else "cpu self"}
