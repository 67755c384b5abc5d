"""The LR schedule on hand numbers, and AdamW: equal to torch's on fp32, and keeping the
small updates that plain bf16 AdamW rounds away."""

import io
import math

import pytest
import torch

from tirgrpo.train.optim import AdamW, lr_multiplier


# --------------------------------------------------------------------------- schedule


def test_lr_multiplier_warmup_is_linear_and_reaches_one():
    # warmup 4: steps 0..3 -> 1/4, 2/4, 3/4, 4/4 (the last warm-up step already runs at full lr)
    assert [lr_multiplier(s, 20, 4) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])


def test_lr_multiplier_cosine_hand_numbers():
    # total 10, warmup 2: the cosine spans steps 2..10 (8 steps)
    assert lr_multiplier(2, 10, 2) == pytest.approx(1.0)  # progress 0
    # step 4: progress 2/8 = 0.25 -> 0.5 * (1 + cos(pi/4)) = 0.5 * 1.7071068 = 0.8535534
    assert lr_multiplier(4, 10, 2) == pytest.approx(0.8535534, abs=1e-7)
    assert lr_multiplier(6, 10, 2) == pytest.approx(0.5)  # progress 1/2 -> 0.5 * (1 + 0)
    # step 8: progress 0.75 -> 0.5 * (1 + cos(3pi/4)) = 0.5 * 0.2928932 = 0.1464466
    assert lr_multiplier(8, 10, 2) == pytest.approx(0.1464466, abs=1e-7)
    assert lr_multiplier(10, 10, 2) == pytest.approx(0.0, abs=1e-12)  # end
    assert lr_multiplier(15, 10, 2) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at the floor


def test_lr_multiplier_min_ratio():
    # min_ratio 0.1: 0.1 + 0.9 * cosine
    assert lr_multiplier(0, 10, 2, min_ratio=0.1) == pytest.approx(0.5)  # warm-up ignores the floor
    assert lr_multiplier(6, 10, 2, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # 0.55
    assert lr_multiplier(4, 10, 2, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.8535534, abs=1e-7)  # 0.8681981
    assert lr_multiplier(10, 10, 2, min_ratio=0.1) == pytest.approx(0.1)


def test_lr_multiplier_without_warmup_starts_at_one():
    assert lr_multiplier(0, 4, 0) == pytest.approx(1.0)
    # step 2 of 4: progress 0.5 -> 0.5
    assert lr_multiplier(2, 4, 0) == pytest.approx(0.5)


# --------------------------------------------------------------------------- AdamW, fp32


def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_fp32_matches_torch(weight_decay):
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    b0 = torch.randn(3)
    ours = [w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)]
    ref = [w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)]
    frozen = torch.zeros(2, requires_grad=False)  # not trainable: ignored by our AdamW
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay)
    opt = AdamW(ours + [frozen], **kw)
    assert len(opt.params) == 2
    ropt = torch.optim.AdamW(ref, **kw)
    gw, gb = _grads((5, 3), 6, seed=1), _grads((3,), 6, seed=2)
    for step in range(6):
        for ps in (ours, ref):
            ps[0].grad, ps[1].grad = gw[step].clone(), gb[step].clone()
        opt.step()
        ropt.step()
        opt.zero_grad()
        ropt.zero_grad()
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert ours[0].grad is None
    # and the parameters did move (lr 1e-2 over 6 steps: ~6e-2 per element)
    assert (ours[0] - w0).abs().min() > 1e-3


def test_adamw_skips_params_without_grad():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(3, requires_grad=True)
    opt = AdamW([a, b], lr=0.1)
    a.grad = torch.ones(3)
    opt.step()
    # first Adam step: m_hat = g, v_hat = g^2 -> update = lr * g / (|g| + eps) = 0.1
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(b.detach(), torch.ones(3))


# --------------------------------------------------------------------------- AdamW, bf16

# bf16 keeps 8 significant bits: just below 1.0 the spacing is 2^-8 = 0.0039, so a weight
# of 1.0 only changes once the accumulated update passes half a spacing (0.00195). With
# lr 1e-5 and a constant gradient each Adam update is ~1e-5: every single update rounds
# away, but 400 of them add up to ~4e-3 -> one bf16 step down, to 0.99609375.
LR, STEPS = 1e-5, 400


def _run_bf16(make_opt, steps=STEPS):
    p = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    opt = make_opt([p])
    for _ in range(steps):
        p.grad = torch.ones(8, dtype=torch.bfloat16)
        opt.step()
        opt.zero_grad()
    return p.detach()


def test_plain_bf16_torch_adamw_loses_small_updates():
    """The problem our AdamW solves: torch's AdamW on bf16 weights never moves them."""
    p = _run_bf16(lambda ps: torch.optim.AdamW(ps, lr=LR, betas=(0.9, 0.99), weight_decay=0.0))
    assert torch.equal(p, torch.ones(8, dtype=torch.bfloat16))


def test_bf16_master_fp32_accumulates_small_updates():
    opt_holder = {}

    def make(ps):
        opt_holder["opt"] = AdamW(ps, lr=LR, betas=(0.9, 0.99), master_fp32=True)
        return opt_holder["opt"]

    p = _run_bf16(make)
    assert p.dtype == torch.bfloat16
    master = opt_holder["opt"].state[0]["master"]
    assert master.dtype == torch.float32
    # the master weight took every update: 1 - 400 * 1e-5 = 0.996 (Adam's step is ~lr for a constant gradient)
    torch.testing.assert_close(master, torch.full((8,), 0.996), rtol=0, atol=2e-5)
    # and the bf16 weight is the master rounded: 0.996 -> 0.99609375 (= 1 - 2^-8)
    assert torch.equal(p, torch.full((8,), 1 - 2**-8, dtype=torch.bfloat16))


def test_bf16_kahan_accumulates_small_updates():
    opt_holder = {}

    def make(ps):
        opt_holder["opt"] = AdamW(ps, lr=LR, betas=(0.9, 0.99), master_fp32=False)
        return opt_holder["opt"]

    p = _run_bf16(make)
    st = opt_holder["opt"].state[0]
    assert "master" not in st and st["comp"].dtype == torch.bfloat16 and st["m"].dtype == torch.bfloat16
    # as above, the weight moved one bf16 step to 1 - 2^-8; the rest of the updates wait in
    # the compensation buffer. The sum is not exact: the bf16 buffer and bf16 moments round
    # too (seen: m stalls at 0.984375, v at 0.8046875, effective weight 0.99648 instead of
    # 0.996, i.e. 88% of the exact 4e-3 of progress), so the check is on the order of it.
    assert torch.equal(p, torch.full((8,), 1 - 2**-8, dtype=torch.bfloat16))
    effective = p.float() + st["comp"].float()
    progress = 1.0 - effective
    assert bool(((progress > 0.8 * STEPS * LR) & (progress < 1.2 * STEPS * LR)).all()), progress


def test_bf16_first_steps_do_not_move_weight_but_master_does():
    """After 10 steps (1e-4 in total) the bf16 weight is still 1.0, the master is not."""
    opt = {}

    def make(ps):
        opt["o"] = AdamW(ps, lr=LR, master_fp32=True)
        return opt["o"]

    p = _run_bf16(make, steps=10)
    assert torch.equal(p, torch.ones(8, dtype=torch.bfloat16))
    assert float(opt["o"].state[0]["master"][0]) == pytest.approx(1 - 10 * LR, abs=1e-6)


# --------------------------------------------------------------------------- state dict


@pytest.mark.parametrize("dtype,master", [(torch.float32, True), (torch.bfloat16, True), (torch.bfloat16, False)])
def test_state_dict_round_trip_continues_identically(dtype, master):
    torch.manual_seed(0)
    w0 = torch.randn(4, 4).to(dtype)
    grads = [g.to(dtype) for g in _grads((4, 4), 6, seed=3)]

    def step(opt, p, g):
        p.grad = g.clone()
        opt.step()
        opt.zero_grad()

    # uninterrupted: 6 steps
    a = w0.clone().requires_grad_(True)
    opt_a = AdamW([a], lr=1e-3, weight_decay=0.01, master_fp32=master)
    for g in grads:
        step(opt_a, a, g)

    # interrupted after 3 steps: save weights + optimizer, restore into fresh objects
    b = w0.clone().requires_grad_(True)
    opt_b = AdamW([b], lr=1e-3, weight_decay=0.01, master_fp32=master)
    for g in grads[:3]:
        step(opt_b, b, g)
    buf = io.BytesIO()
    torch.save({"w": b.detach().clone(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    c = torch.zeros_like(w0).requires_grad_(True)  # wrong weights: must come from the checkpoint
    with torch.no_grad():
        c.copy_(saved["w"])
    opt_c = AdamW([c], lr=0.5, weight_decay=0.01, master_fp32=master)  # wrong lr: must come from the checkpoint
    opt_c.load_state_dict(saved["opt"])
    assert opt_c.steps == 3 and opt_c.lr == 1e-3
    for g in grads[3:]:
        step(opt_c, c, g)
    assert torch.equal(c.detach(), a.detach())
    for k in opt_a.state[0]:
        assert torch.equal(opt_c.state[0][k], opt_a.state[0][k]), k


def test_load_state_dict_restores_bf16_weight_from_master():
    p = torch.ones(3, dtype=torch.bfloat16, requires_grad=True)
    opt = AdamW([p], lr=1e-3, master_fp32=True)
    sd = {"steps": 5, "lr": 1e-3, "state": [{"master": torch.full((3,), 0.5), "m": torch.zeros(3), "v": torch.zeros(3)}]}
    opt.load_state_dict(sd)
    assert torch.equal(p.detach(), torch.full((3,), 0.5, dtype=torch.bfloat16))


def test_load_state_dict_rejects_wrong_parameter_count():
    opt = AdamW([torch.ones(2, requires_grad=True)], lr=1e-3)
    other = AdamW([torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)], lr=1e-3)
    with pytest.raises(ValueError, match="2 tensors"):
        opt.load_state_dict(other.state_dict())


def test_adamw_bias_correction_hand_numbers():
    # one fp32 weight, g = 2 then g = -1, lr 0.1, betas (0.5, 0.5), eps 0
    # step 1: m = 1, v = 2, m_hat = 1/0.5 = 2, v_hat = 2/0.5 = 4 -> update 0.1 * 2/2 = 0.1 -> w = 0.9
    # step 2: m = 0.5 - 0.5 = 0, -> update 0 -> w = 0.9
    w = torch.ones(1, requires_grad=True)
    opt = AdamW([w], lr=0.1, betas=(0.5, 0.5), eps=0.0)
    w.grad = torch.tensor([2.0])
    opt.step()
    assert float(w.detach()) == pytest.approx(0.9)
    w.grad = torch.tensor([-1.0])
    opt.step()
    # step 2: m = 0.5*1 + 0.5*(-1) = 0 -> no move
    assert float(w.detach()) == pytest.approx(0.9)
    assert not math.isnan(float(w.detach()))


# --------------------------------------------------------------------------- sliced updates, stochastic rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sliced_update_equals_whole_tensor_update(monkeypatch, dtype):
    """Large tensors are updated in slices of optim.CHUNK elements; with a slice size that
    does not divide the tensor (7 into 15), the result equals the unsliced update."""
    import tirgrpo.train.optim as optim

    torch.manual_seed(0)
    w0 = torch.randn(5, 3).to(dtype)
    grads = [g.to(dtype) for g in _grads((5, 3), 4, seed=5)]

    def run(chunk):
        monkeypatch.setattr(optim, "CHUNK", chunk)
        w = w0.clone().requires_grad_(True)
        opt = AdamW([w], lr=1e-2, weight_decay=0.1)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.detach(), opt.state[0]

    (ws, ss), (wf, sf) = run(7), run(1 << 24)
    assert torch.equal(ws, wf)
    for k in sf:
        assert torch.equal(ss[k], sf[k]), k
    if dtype == torch.float32:  # and both equal torch's AdamW
        ref = w0.clone().requires_grad_(True)
        ropt = torch.optim.AdamW([ref], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
        for g in grads:
            ref.grad = g.clone()
            ropt.step()
        torch.testing.assert_close(ws, ref.detach(), rtol=1e-6, atol=1e-7)


def test_bf16_stochastic_rounding_accumulates_in_expectation():
    # 4096 weights of 1.0, the same 400 updates of ~1e-5: each weight ends at 1.0 or one or
    # two bf16 steps below, but the mean follows the exact sum (~4e-3 of progress; the bf16
    # moments stall as in the Kahan case, so allow +-20%). Rounding noise of the mean:
    # per weight ~ sqrt(400 * p(1-p)) * 2^-8 ~ 4e-3 with p = 1e-5 / 2^-8, over 4096 weights ~ 6e-5.
    def run(seed):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = AdamW([p], lr=LR, master_fp32=False, bf16_update="stochastic", seed=seed)
        assert set(opt.state[0]) == {"m", "v"}  # no master, no compensation buffer
        for _ in range(STEPS):
            p.grad = torch.ones(4096, dtype=torch.bfloat16)
            opt.step()
        return p.detach()

    a = run(0)
    progress = 1.0 - a.float().mean().item()
    assert 0.8 * STEPS * LR < progress < 1.2 * STEPS * LR, progress
    assert len(torch.unique(a)) > 1  # individual weights rounded differently
    assert torch.equal(run(0), a)  # seeded: reproducible (resume needs this)
    assert not torch.equal(run(1), a)


def test_stochastic_round_bf16_is_unbiased_and_exact_on_bf16_values():
    from tirgrpo.train.optim import stochastic_round_bf16

    # bf16 values pass through unchanged
    exact = torch.tensor([1.0, -2.5, 0.0, 1 - 2**-8, 3.0 * 2**-20])
    assert torch.equal(stochastic_round_bf16(exact).float(), exact)
    # above 1.0 the bf16 spacing is 2^-7, so 1 + 2^-9 lies 1/4 of the way from 1.0 to
    # 1 + 2^-7: P(round up) = 0.25. The mean of 100,000 draws has a std of
    # 2^-7 * sqrt(0.25 * 0.75) / sqrt(100000) = 1.1e-5; allow 5e-5.
    x = torch.full((100_000,), 1 + 2**-9)
    r = stochastic_round_bf16(x, torch.Generator().manual_seed(0)).float()
    assert set(r.unique().tolist()) == {1.0, 1 + 2**-7}
    assert (r == 1 + 2**-7).float().mean().item() == pytest.approx(0.25, abs=0.01)
    assert r.mean().item() == pytest.approx(1 + 2**-9, abs=5e-5)
    # negative values: same magnitude rule, mirrored
    rn = stochastic_round_bf16(-x, torch.Generator().manual_seed(1)).float()
    assert rn.mean().item() == pytest.approx(-(1 + 2**-9), abs=5e-5)
