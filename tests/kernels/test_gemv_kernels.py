"""Small-batch projection kernels (kernels/gemv.py): the torch twins on hand-worked numbers, the
Triton kernels against the twins, and FastEngine through them (plain and LoRA-wrapped modules).

The Triton tests run on a CPU in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), on CUDA compiled; without triton they are skipped.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.kernels import decode as K
from tirgrpo.kernels import gemv as G
from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.engine import FastEngine
from triton_devices import on_devices, tol


def randn(*shape, dtype, device, generator, scale=1.0):
    return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------- torch twins by hand


def test_linears_torch_by_hand():
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    w_a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # identity rows, then the sum
    w_b = torch.tensor([[2.0, -1.0]])
    a, b = G.linears_torch(x, [w_a, w_b], [torch.tensor([0.5, 0.0, -1.0]), torch.tensor([10.0])])
    assert a.tolist() == [[1.5, 2.0, 2.0], [0.5, -1.0, -2.0]]
    assert b.tolist() == [[10.0], [11.0]]
    assert G.linear_torch(x, w_b).tolist() == [[0.0], [1.0]]


def test_gate_up_silu_torch_by_hand():
    # gate = x0 - x1, up = x0 + x1: row [1, 1] gives gate 0 (SiLU 0), row [2, 1] gives
    # gate 1, up 3: SiLU(1) * 3 = 3 / (1 + e^-1)
    x = torch.tensor([[1.0, 1.0], [2.0, 1.0]])
    out = G.gate_up_silu_torch(x, torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]]))
    assert out[0, 0].item() == 0.0
    assert out[1, 0].item() == pytest.approx(3 / (1 + math.exp(-1)), abs=1e-6)
    # biases: gate + 1, up - 1 on row [1, 1]: SiLU(1) * 1
    out = G.gate_up_silu_torch(x[:1], torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]]),
                               torch.tensor([1.0]), torch.tensor([-1.0]))
    assert out.item() == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-6)


def test_default_config():
    n_sm = 132
    # the engine's launches: what the H200 sweep measured fastest (docs/benchmarks.md)
    assert G.default_config(8, (1536, 256, 256), 1536, n_sm) == G.GemvConfig(16, 256, 1, 4, 3)
    assert G.default_config(8, (8960,), 1536, n_sm, glu=True) == G.GemvConfig(128, 64, 1, 4, 4)
    # one matrix: the sweep's best for o (K 1536) and the LM head, unsplit; for down (K 8960),
    # K split in 4
    assert G.default_config(8, (1536,), 1536, n_sm) == G.GemvConfig(64, 128, 1, 4, 4)
    assert G.default_config(8, (151936,), 1536, n_sm) == G.GemvConfig(64, 128, 1, 4, 4)
    assert G.default_config(8, (1536,), 8960, n_sm) == G.GemvConfig(64, 128, 4, 4, 4)


def test_supports_only_plain_linears():
    x = torch.randn(2, 8)
    plain, plain_b = torch.nn.Linear(8, 4, bias=False), torch.nn.Linear(8, 4)

    class Sub(torch.nn.Linear):
        pass

    device_ok = G.kernels_available(x.device)
    assert G.supports(x, [plain]) is device_ok
    assert G.supports(x, [plain_b, torch.nn.Linear(8, 2)]) is device_ok
    assert not G.supports(x, [])
    assert not G.supports(x, [plain, plain_b])  # biases all or none
    assert not G.supports(x, [Sub(8, 4)])  # subclasses may change forward
    assert not G.supports(x, [torch.nn.Linear(8, 4).to(torch.bfloat16)])  # dtype differs from x
    assert not G.supports(x, [torch.nn.Linear(6, 4)])  # reads another width
    t = torch.nn.Linear(4, 8, bias=False)
    t.weight = torch.nn.Parameter(torch.randn(4, 8).t())  # [8, 4] viewed [4, 8]: not contiguous
    assert not G.supports(torch.randn(2, 4), [t])
    assert not G.supports(x.t().contiguous().t(), [plain])  # x's rows are not contiguous


def test_supports_checks_biases_as_the_launch_does():
    """A bias the launch's `_check` would reject (another dtype, shape or layout) makes
    `supports` False, so the engine runs the module instead of raising in the decode step."""
    x = torch.randn(2, 8)
    device_ok = G.kernels_available(x.device)
    m = torch.nn.Linear(8, 4)
    assert G.supports(x, [m]) is device_ok
    m.bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))  # weight fp32, bias fp64
    assert not G.supports(x, [m])
    m.bias = torch.nn.Parameter(torch.randn(1, 4))  # [1, 4], not [4]
    assert not G.supports(x, [m])
    m.bias = torch.nn.Parameter(torch.randn(8)[::2])  # [4] strided: not contiguous
    assert not G.supports(x, [m])


def test_supports_gate_up_needs_equal_shapes():
    """glu=True (the engine's fused gate/up): gate and up must have the same [I, K] weight."""
    x = torch.randn(2, 8)
    device_ok = G.kernels_available(x.device)
    gate, up = torch.nn.Linear(8, 6, bias=False), torch.nn.Linear(8, 6, bias=False)
    assert G.supports(x, [gate, up], glu=True) is device_ok
    assert not G.supports(x, [gate, torch.nn.Linear(8, 5, bias=False)], glu=True)
    assert G.supports(x, [gate, torch.nn.Linear(8, 5, bias=False)]) is device_ok  # stacked: fine


# ---------------------------------------------------------------------------- Triton against the twins

# Shapes the kernel must get right: batch 1, odd, a full 16 and past 16 (B_PAD 32); widths not
# multiples of the block; K not a multiple of BLOCK_K; split-K on (2 and 3 slices) and off.
CONFIGS = [G.GemvConfig(16, 32, 1), G.GemvConfig(32, 32, 2), G.GemvConfig(16, 16, 3)]


@on_devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 3, 16, 20])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"n{c.block_n}k{c.block_k}s{c.split_k}")
def test_linears_match_torch(device, dtype, batch, config):
    g = torch.Generator().manual_seed(batch)
    K_ = 80
    x = randn(batch, K_, dtype=dtype, device=device, generator=g)
    ws = [randn(n, K_, dtype=dtype, device=device, generator=g, scale=K_**-0.5) for n in (40, 24, 8)]
    bs = [randn(n, dtype=dtype, device=device, generator=g) for n in (40, 24, 8)]
    for n_w in (1, 2, 3):
        for biases in (bs[:n_w], None):
            out = G.linears(x, ws[:n_w], biases, config=config)
            ref = G.linears_torch(x, ws[:n_w], biases)
            for a, b in zip(out, ref):
                torch.testing.assert_close(a, b, **tol(dtype, device))
    # the views share one buffer, q/k/v-style: [B, 40 + 24 + 8], row stride 72
    q, k, v = G.linears(x, ws, bs, config=config)
    assert q.stride() == (72, 1) and k.data_ptr() == q.data_ptr() + 40 * q.element_size()
    torch.testing.assert_close(G.linear(x, ws[0], bs[0], config=config), G.linear_torch(x, ws[0], bs[0]),
                               **tol(dtype, device))


@on_devices
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 5, 16])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"n{c.block_n}k{c.block_k}s{c.split_k}")
@pytest.mark.parametrize("bias", [True, False])
def test_gate_up_silu_matches_torch(device, dtype, batch, config, bias):
    g = torch.Generator().manual_seed(10 + batch)
    K_, I = 80, 40
    x = randn(batch, K_, dtype=dtype, device=device, generator=g)
    w_gate, w_up = (randn(I, K_, dtype=dtype, device=device, generator=g, scale=K_**-0.5) for _ in range(2))
    b_gate, b_up = (randn(I, dtype=dtype, device=device, generator=g) if bias else None for _ in range(2))
    out = G.gate_up_silu(x, w_gate, w_up, b_gate, b_up, config=config)
    assert out.shape == (batch, I) and out.is_contiguous()
    torch.testing.assert_close(out, G.gate_up_silu_torch(x, w_gate, w_up, b_gate, b_up), **tol(dtype, device))


@on_devices
def test_bad_arguments_are_refused(device):
    x = torch.randn(2, 8, device=device)
    w = torch.randn(4, 8, device=device)
    with pytest.raises(ValueError, match="1 to 3"):
        G.linears(x, [w] * 4)
    with pytest.raises(ValueError, match="bias"):
        G.linears(x, [w, w], [torch.randn(4, device=device), None])
    with pytest.raises(ValueError, match="contiguous"):
        G.linear(x, torch.randn(8, 4, device=device).t())
    with pytest.raises(ValueError, match="differ"):
        G.gate_up_silu(x, w, w[:2])


# ---------------------------------------------------------------------------- the engine through them


def _count_calls(engine):
    """Wrap the engine's GEMV entry points; returns the list each call appends its name to."""
    calls = []

    def counted(name, fn):
        def run(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        return run

    engine.kernels = engine.kernels._replace(linears=counted("linears", engine.kernels.linears),
                                             gate_up_silu=counted("gate_up_silu", engine.kernels.gate_up_silu))
    return calls


@on_devices
def test_engine_uses_gemv_only_where_it_should(device, tiny_model_dir, byte_tokenizer):
    """triton: q/k/v and gate/up through the GEMV at batch <= 16 (one launch each per layer;
    o, down and the LM head stay modules); not at batch 32; never with triton-nogemv. Same
    greedy tokens in every case."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().to(device)
    ps = [byte_tokenizer(t)["input_ids"] for t in ("hello", "x")]
    params = SamplingParams(max_new_tokens=4, temperature=0.0, min_new_tokens=4)  # no row ends early
    layers = model.config.num_hidden_layers
    tokens = {}
    for kind, group in (("triton", 2), ("triton", 16), ("triton-nogemv", 2)):
        # no CUDA graphs: a graph replays its launches without Python calls to count
        engine = FastEngine(model, byte_tokenizer, max_batch=32, length_buckets=(64,), kernels=kind,
                            use_cuda_graphs=False)
        calls = _count_calls(engine)
        out = engine.generate(ps, group, params)
        tokens[kind, group] = [out[i][0].token_ids for i in range(len(ps))]
        steps = params.max_new_tokens - 1
        if kind == "triton" and group * len(ps) <= G.GEMV_MAX_BATCH:
            # per layer: one q/k/v launch and one gate/up launch
            assert calls.count("linears") == steps * layers
            assert calls.count("gate_up_silu") == steps * layers
        else:
            assert calls == []
    assert len({tuple(map(tuple, t)) for t in tokens.values()}) == 1


@on_devices
def test_engine_with_lora_modules(device, tiny_model_dir, byte_tokenizer):
    """peft LoRA on q_proj and down_proj (adapters made non-zero): q/k/v run as modules (a
    group with a LoRA module), gate/up through the GEMV, down as its LoRA module;
    greedy tokens equal transformers' generate and the torch kernel set's, log-probs too."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # peft starts B at 0: the adapters would change nothing
    model = model.to(device).eval()
    ps = [byte_tokenizer(t)["input_ids"] for t in ("hello", "a much longer prompt than the others")]
    params = SamplingParams(max_new_tokens=10, temperature=0.0, min_new_tokens=10)  # no row ends early
    runs = {}
    for kind in ("torch", "triton"):
        # no CUDA graphs: a graph replays its launches without Python calls to count
        engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64,), kernels=kind,
                            use_cuda_graphs=False)
        calls = _count_calls(engine)
        runs[kind] = engine.generate(ps, 2, params)
        if kind == "triton":
            layers = base.config.num_hidden_layers
            assert calls.count("gate_up_silu") == (params.max_new_tokens - 1) * layers
            assert "linears" not in calls
    for p, a, b in zip(ps, runs["torch"], runs["triton"]):
        with torch.no_grad():
            ref = model.generate(input_ids=torch.tensor([p], device=device), max_new_tokens=10,
                                 min_new_tokens=10, do_sample=False)[0, len(p):].tolist()
        for ca, cb in zip(a, b):
            assert ca.token_ids == cb.token_ids == ref[: len(ca.token_ids)]
            assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not (K.HAVE_TRITON and torch.cuda.is_available()), reason="needs triton and CUDA")
@pytest.mark.parametrize("batch", [1, 8, 16])
def test_kernels_at_the_benchmark_shape(batch):
    """R1-Distill-Qwen-1.5B's projections in bf16 with the default configs (q/k/v stacked,
    gate/up fused, down alone with K split), against the torch twins (cuBLAS)."""
    g = torch.Generator().manual_seed(batch)
    dev, bf16, H, I = "cuda", torch.bfloat16, 1536, 8960
    x = randn(batch, H, dtype=bf16, device=dev, generator=g)
    wq, wk, wv = (randn(n, H, dtype=bf16, device=dev, generator=g, scale=H**-0.5) for n in (H, 256, 256))
    bq, bk, bv = (randn(n, dtype=bf16, device=dev, generator=g) for n in (H, 256, 256))
    for a, b in zip(G.linears(x, [wq, wk, wv], [bq, bk, bv]), G.linears_torch(x, [wq, wk, wv], [bq, bk, bv])):
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    w_gate, w_up = (randn(I, H, dtype=bf16, device=dev, generator=g, scale=H**-0.5) for _ in range(2))
    act = G.gate_up_silu(x, w_gate, w_up)
    torch.testing.assert_close(act, G.gate_up_silu_torch(x, w_gate, w_up), atol=1e-2, rtol=1e-2)
    w_down = randn(H, I, dtype=bf16, device=dev, generator=g, scale=I**-0.5)
    torch.testing.assert_close(G.linear(act, w_down), G.linear_torch(act, w_down), atol=1e-2, rtol=1e-2)
