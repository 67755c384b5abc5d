"""perf/timing.py: GPU time by CUDA events."""

import pytest
import torch

from tirgrpo.perf.timing import cuda_median_ms


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_median_ms_grows_with_the_work_it_times():
    torch.cuda._sleep(1000)  # warm
    short = cuda_median_ms(lambda: torch.cuda._sleep(100_000), repeats=5)
    long = cuda_median_ms(lambda: torch.cuda._sleep(10_000_000), repeats=5)
    assert 0 < short < long  # 100x the cycles: a clock of ~1-2 GHz gives ~0.05-0.1 ms and ~5-10 ms
    assert 2 < long / short < 500
