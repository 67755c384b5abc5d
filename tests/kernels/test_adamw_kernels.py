"""The Triton AdamW kernels (adamw_kernels.py) against the torch update of optim.AdamW.

On a CPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on
CUDA compiled; without triton they are skipped.
"""

from __future__ import annotations

import pytest
import torch

from tirgrpo.kernels import adamw as adamw_kernels
from tirgrpo.train.optim import AdamW

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not adamw_kernels.available(torch.device(DEVICE)),
                                reason="needs triton, and CUDA or TRITON_INTERPRET=1 before import")


def _param(n: int, seed: int) -> torch.nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(n, generator=g).to(DEVICE, torch.bfloat16))
    p.grad = (torch.randn(n, generator=g) * 1e-2).to(DEVICE, torch.bfloat16)
    return p


def _steps(fused: bool, master: bool, steps: int = 3, seed: int = 0):
    p = _param(5000, 1)  # not a multiple of the block: the masked tail is exercised
    opt = AdamW([p], lr=1e-2, weight_decay=0.1, master_fp32=master, bf16_update="stochastic", fused=fused, seed=seed)
    for _ in range(steps):
        opt.step()
    return p.detach().float().cpu(), {k: t.float().cpu() for k, t in opt.state[0].items()}


def test_master_kernel_equals_torch_update():
    p_k, st_k = _steps(fused=True, master=True)
    p_t, st_t = _steps(fused=False, master=True)
    for k in ("master", "m", "v"):
        assert torch.allclose(st_k[k], st_t[k], rtol=1e-5, atol=1e-7), k
    # the bf16 weight is the rounded master (within one bf16 step: the interpreter truncates,
    # and a master differing in its last fp32 bit can round the other way)
    assert torch.allclose(p_k, p_t, rtol=2 ** -7, atol=0)


def test_stochastic_kernel_rounds_to_a_neighbour_of_the_exact_update():
    p = _param(5000, 2)
    w0, g = p.detach().float().clone(), p.grad.float()
    opt = AdamW([p], lr=1e-2, weight_decay=0.1, master_fp32=False, bf16_update="stochastic", fused=True)
    opt.step()
    # first step from zero moments: m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected m/sqrt(v) = g/|g|
    b1, b2 = opt.betas
    m, v = (1 - b1) * g, (1 - b2) * g * g
    exact = w0 - 1e-2 * ((m / (1 - b1)) / ((v / (1 - b2)).sqrt() + opt.eps) + 0.1 * w0)
    for got, want in ((p.detach(), exact), (opt.state[0]["m"], m), (opt.state[0]["v"], v)):
        got = got.float()
        down = want.to(torch.bfloat16).float()  # a bf16 neighbour; the other is one step further out
        lo = torch.minimum(down, torch.nextafter(down.to(torch.bfloat16), torch.full_like(down, -float("inf"))
                                                 .to(torch.bfloat16)).float())
        hi = torch.maximum(down, torch.nextafter(down.to(torch.bfloat16), torch.full_like(down, float("inf"))
                                                 .to(torch.bfloat16)).float())
        assert ((got >= lo) & (got <= hi)).all()


def test_stochastic_kernel_is_unbiased():
    """1 + 2^-9 lies a quarter of the way from 1 to 1 + 2^-7 (bf16 neighbours): it rounds up a
    quarter of the time. First step from zero moments with weight 1 and gradient 1: the
    update is lr * m_hat / sqrt(v_hat) = lr, so lr = -2^-9 gives exactly 1 + 2^-9."""
    n = 20000
    p = torch.ones(n, device=DEVICE, dtype=torch.bfloat16)
    grad, m, v = torch.ones_like(p), torch.zeros_like(p), torch.zeros_like(p)
    adamw_kernels.adamw_stochastic_(p, grad, m, v, -2 ** -9, (0.9, 0.99), (0.1, 0.01), 0.0, 0.0, seed=5)
    r = p.float()
    assert set(r.unique().tolist()) == {1.0, 1 + 2 ** -7}
    assert (r > 1).float().mean().item() == pytest.approx(0.25, abs=0.015)  # std 0.003
    # different seeds draw different noise
    q = torch.ones_like(p)
    adamw_kernels.adamw_stochastic_(q, grad, torch.zeros_like(p), torch.zeros_like(p), -2 ** -9, (0.9, 0.99),
                                    (0.1, 0.01), 0.0, 0.0, seed=6)
    assert not torch.equal(p, q)


def test_stochastic_kernel_moves_weights_like_the_torch_update():
    """Ten steps: the same mean movement as the eager update (different noise, same expectation)."""
    torch.manual_seed(0)
    w0 = torch.randn(4000).to(torch.bfloat16)
    ps = [torch.nn.Parameter(w0.clone().to(DEVICE)) for _ in range(2)]
    opts = [AdamW([p], lr=1e-3, weight_decay=0.01, master_fp32=False, bf16_update="stochastic", fused=fused)
            for p, fused in zip(ps, (False, True))]
    for _ in range(10):
        g = torch.randn(4000).to(torch.bfloat16).to(DEVICE)
        for p, o in zip(ps, opts):
            p.grad = g.clone()
            o.step()
    moved = [(p.detach().float().cpu() - w0.float()).mean() for p in ps]
    assert abs(moved[0] - moved[1]) < 2e-4, moved
