"""Where the decode loop's wall time goes, as the engine runs it (CUDA graphs, the queued step).

`perf/profile.py` times each kernel of an eager decode step; inside a captured graph the
profiler sees no kernel, and the loop around the graph (the sampler, the host copy of the
tokens, the host's own bookkeeping) is not in that table at all. On an H200 at batch 8 the
step's graph alone took 1.84 ms and the whole step 2.18 (docs/benchmarks.md): this module
says where the other ~0.3 ms goes.

Stamps go into the stream before and after each part of the loop (the step function: the
graph's input copies and its replay; the sampler; the host copy of the sampled tokens). A
stamp on a GPU is a CUDA event, whose time is when the GPU reaches it: all the work queued
before it has run *and* the host has queued it. So the time from one part's end to the next
part's start is time the GPU had nothing to run, waiting for the host (plus the few small
kernels the loop runs between the parts, e.g. advancing the positions). Each stamp also
keeps the host clock, for the host's own time per step. Recording a stamp costs the host a
few microseconds, six a step: a little of what is measured. On a CPU both clocks are the host's
(everything is synchronous there): the tool then runs, for tests, but says nothing about a GPU.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Sequence

import torch

PARTS = ("forward", "sample", "copy")


class Stamps:
    """Named stamps in stream order: (name, device stamp, host seconds). The device stamp is a
    timing CUDA event on a GPU, None elsewhere (then the host clock stands in)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.marks: list[tuple[str, Any, float]] = []

    def mark(self, name: str) -> None:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.marks.append((name, event, time.perf_counter()))

    def times_ms(self) -> list[tuple[str, float, float]]:
        """(name, device ms, host ms) of each stamp, both from the first stamp (synchronizes)."""
        if not self.marks:
            return []
        if self.cuda:
            torch.cuda.synchronize()
        _, e0, h0 = self.marks[0]
        return [(name, e0.elapsed_time(e) if self.cuda else (h - h0) * 1e3, (h - h0) * 1e3)
                for name, e, h in self.marks]


def _stamped(stamps: Stamps, part: str, fn):
    """`fn` with a stamp before and after it."""
    def run(*args, **kwargs):
        stamps.mark(f"{part}:start")
        out = fn(*args, **kwargs)
        stamps.mark(f"{part}:end")
        return out
    return run


@contextmanager
def stamped_loop(engine, stamps: Stamps):
    """Within: `engine`'s step function, sampler and host copy (rollout.sampling.HostCopy.start,
    for every instance) stamp `stamps` before and after their work. The same callables run
    (tokens unchanged); everything is put back on exit."""
    from tirgrpo.rollout import sampling

    step_fn, sample, start = engine._step_fn, engine._sample, sampling.HostCopy.start
    engine._step_fn = lambda B: _stamped(stamps, "forward", step_fn(B))
    engine._sample = _stamped(stamps, "sample", sample)
    sampling.HostCopy.start = _stamped(stamps, "copy", start)
    try:
        yield engine
    finally:
        sampling.HostCopy.start = start
        del engine._step_fn, engine._sample  # the instance attributes: the class's methods again


def step_timeline(times: Sequence[tuple[str, float, float]]) -> dict[str, Any]:
    """Per decode step, from `Stamps.times_ms` (stamps in stream order, ms): each part's device
    time, the device time between parts (the GPU waiting for the host, and the loop's small
    kernels between parts), the wall time from first to last stamp, and the host's time.

    A part is the span from its "P:start" to its "P:end"; anything from an end to the next start
    is "between". Steps: the number of forward parts. Returns ms per step for each part, for
    "between", "stamped" (first to last stamp) and "host" (the host clock over the same stamps),
    plus "steps"."""
    steps = sum(name == "forward:start" for name, _, _ in times)
    if steps == 0:
        raise ValueError("step_timeline: no forward part among the stamps")
    total = {part: 0.0 for part in PARTS} | {"between": 0.0}
    for (n0, t0, _), (n1, t1, _) in zip(times, times[1:]):
        part, edge = n0.split(":")
        if edge == "start":
            if n1 != f"{part}:end":
                raise ValueError(f"step_timeline: {n0} is followed by {n1}, not its end")
            total[part] += t1 - t0
        else:
            total["between"] += t1 - t0
    span = times[-1][1] - times[0][1]
    host = times[-1][2] - times[0][2]
    return {"steps": steps, **{f"{k}_ms": v / steps for k, v in total.items()},
            "stamped_ms": span / steps, "host_ms": host / steps}


def time_loop(engine, prompt_ids: list[list[int]], group_size: int, params, generator=None) -> dict[str, Any]:
    """`step_timeline` of one `engine.generate` call after a warm-up call (compilation, graph
    capture, allocator), with its "device": "cuda events" on a GPU, else "host clock"."""
    cuda = engine.device.type == "cuda"
    engine.generate(prompt_ids, group_size, params, generator)
    if cuda:
        torch.cuda.synchronize()
    stamps = Stamps(cuda)
    with stamped_loop(engine, stamps):
        engine.generate(prompt_ids, group_size, params, generator)
    return {**step_timeline(stamps.times_ms()), "clock": "cuda events" if cuda else "host clock"}


def format_timeline(t: dict[str, Any]) -> str:
    """`step_timeline`'s numbers as a few aligned lines."""
    rows = [(p, t[f"{p}_ms"]) for p in PARTS] + [("between parts", t["between_ms"]),
                                                 ("first to last stamp", t["stamped_ms"]),
                                                 ("the host's own clock", t["host_ms"])]
    width = max(len(name) for name, _ in rows)
    lines = [f"ms per decode step over {t['steps']} steps ({t['clock']}):"]
    lines += [f"  {name:<{width}}  {ms:8.3f}" for name, ms in rows]
    return "\n".join(lines)
