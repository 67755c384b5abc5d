"""GPU time of a call, by CUDA events: one implementation for the benchmarks and the engine."""

from __future__ import annotations

import statistics
from typing import Callable

import torch


def cuda_median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of `fn()` on the current CUDA stream over `repeats` calls, each
    between two CUDA events and waited for before the next (GPU time, the host's launch of the
    first kernel excluded). Warm `fn` up before: its first call is timed like the others."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
