"""The Triton softmax-statistics kernel (logprob_kernels.py) against logprobs.softmax_stats_torch.

On a CPU it runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on
CUDA compiled; without triton it is skipped.
"""

from __future__ import annotations

import math

import pytest
import torch

from tirgrpo.kernels import logprob as logprob_kernels
from tirgrpo.train.logprobs import softmax_stats_torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not logprob_kernels.available(torch.device(DEVICE)),
                                reason="needs triton, and CUDA or TRITON_INTERPRET=1 before import")


def test_softmax_stats_by_hand():
    # one row, logits [0, log 3] over two entries: p = [1/4, 3/4], lse = log 4
    z = torch.tensor([[0.0, math.log(3)]], device=DEVICE)
    logp, ent, lse = logprob_kernels.softmax_stats(z, torch.tensor([1], device=DEVICE))
    assert lse.item() == pytest.approx(math.log(4), abs=1e-6)
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)


@pytest.mark.parametrize("vocab", [1000, 2 * logprob_kernels.SPLIT + 5])  # one slice; several, ragged last
def test_softmax_stats_kernel_equals_torch(vocab):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, vocab, generator=g) * 4).to(DEVICE)
    z[2, 7] = 60.0  # a peaked row: exp would overflow without the max shift
    targets = torch.randint(0, vocab, (6,), generator=g).to(DEVICE)
    for got, want in zip(logprob_kernels.softmax_stats(z, targets), softmax_stats_torch(z, targets)):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5), (got - want).abs().max()


def test_softmax_stats_kernel_rejects_bad_input():
    with pytest.raises(ValueError, match="fp32"):
        logprob_kernels.softmax_stats(torch.zeros(2, 4, dtype=torch.float64, device=DEVICE),
                                      torch.zeros(2, dtype=torch.long, device=DEVICE))
