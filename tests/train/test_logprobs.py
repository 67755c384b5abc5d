"""Chunked log-probs equal the naive full-logits computation, in values and gradients,
and never build a [tokens, vocab] tensor for more than one chunk of tokens."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tirgrpo.train.logprobs import chunked_token_logprobs, token_logprobs

ATOL = 1e-5


class ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor any aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.records: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(o, torch.Tensor):
                self.records.append((str(func), tuple(o.shape)))
        return out


def naive_logprobs(hidden, weight, targets, temperature=1.0, bias=None):
    logits = F.linear(hidden, weight, bias).float() / temperature  # [N, V]: what we avoid
    logsm = torch.log_softmax(logits, dim=-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logsm.gather(1, targets[:, None]).squeeze(1), entropy


# --------------------------------------------------------------------------- the bare function


@pytest.mark.parametrize("chunk", [1, 7, 37, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_matches_naive(chunk, temperature, with_bias):
    g = torch.Generator().manual_seed(0)
    n, h, v = 37, 16, 53  # 37 tokens: chunks of 7 leave a remainder of 2
    hidden0 = torch.randn(n, h, generator=g)
    weight0 = torch.randn(v, h, generator=g) * 0.5
    bias0 = torch.randn(v, generator=g) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # arbitrary dL/dlogp, so every row's scale is tested

    def run(fn):
        hd = hidden0.clone().requires_grad_(True)
        wt = weight0.clone().requires_grad_(True)
        bs = bias0.clone().requires_grad_(True) if with_bias else None
        lp, ent = fn(hd, wt, bs)
        (lp * upstream).sum().backward()
        return lp.detach(), ent.detach(), hd.grad, wt.grad, (bs.grad if with_bias else None)

    ours = run(lambda hd, wt, bs: chunked_token_logprobs(hd, wt, targets, chunk, temperature, bias=bs))
    ref = run(lambda hd, wt, bs: naive_logprobs(hd, wt, targets, temperature, bias=bs))
    for name, a, b in zip(["logp", "entropy", "grad_hidden", "grad_weight", "grad_bias"], ours, ref):
        if b is None:
            assert a is None
            continue
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_chunked_entropy_has_no_grad_and_frozen_weight_gets_none():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    weight = torch.randn(20, 8, generator=g)  # LoRA case: the head is frozen
    targets = torch.randint(0, 20, (9,), generator=g)
    lp, ent = chunked_token_logprobs(hidden, weight, targets, chunk_tokens=4)
    assert lp.requires_grad and not ent.requires_grad
    lp.sum().backward()
    assert weight.grad is None
    ref_h = hidden.detach().clone().requires_grad_(True)
    naive_logprobs(ref_h, weight, targets)[0].sum().backward()
    torch.testing.assert_close(hidden.grad, ref_h.grad, atol=ATOL, rtol=1e-5)


def test_chunked_never_materialises_all_logits():
    g = torch.Generator().manual_seed(2)
    n, h, v, chunk = 300, 8, 4096, 64
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    targets = torch.randint(0, v, (n,), generator=g)
    with ShapeRecorder() as rec:
        lp, _ = chunked_token_logprobs(hidden, weight, targets, chunk)
        lp.sum().backward()
    biggest = max(torch.Size(s).numel() for _, s in rec.records)
    # the largest tensor anywhere is one chunk of logits (64 x 4096), far below 300 x 4096
    assert biggest == chunk * v
    logit_blocks = [s for f, s in rec.records if f == "aten.mm.default" and s[-1] == v]
    # forward: ceil(300 / 64) = 5 blocks; backward recomputes them: 10 logits matmuls in all
    assert len(logit_blocks) == 10 and all(s[0] <= chunk for s in logit_blocks)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_chunked_bf16_on_cuda_is_close_to_fp32():
    g = torch.Generator(device="cuda").manual_seed(3)
    n, h, v = 1000, 256, 32000
    hidden = torch.randn(n, h, generator=g, device="cuda") * 0.5
    weight = torch.randn(v, h, generator=g, device="cuda") * 0.05
    targets = torch.randint(0, v, (n,), generator=g, device="cuda")
    hb = hidden.bfloat16().requires_grad_(True)
    wb = weight.bfloat16().requires_grad_(True)
    lp, ent = chunked_token_logprobs(hb, wb, targets, 256)
    lp.sum().backward()
    # reference: fp32 math on the same bf16-rounded inputs; the matmul accumulates in fp32,
    # so only the fp32-vs-tensor-core summation order separates the two
    h32 = hb.detach().float().requires_grad_(True)
    w32 = wb.detach().float().requires_grad_(True)
    rlp, rent = naive_logprobs(h32, w32, targets)
    rlp.sum().backward()
    assert lp.dtype == torch.float32 and hb.grad.dtype == torch.bfloat16 and wb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(lp, rlp, atol=2e-3, rtol=0)
    torch.testing.assert_close(ent, rent, atol=2e-3, rtol=0)
    torch.testing.assert_close(hb.grad.float(), h32.grad, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(wb.grad.float(), w32.grad, atol=2e-2, rtol=2e-2)


# --------------------------------------------------------------------------- through a model


def tiny_model(arch="qwen2", tie=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    kw = dict(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    cfg = Qwen2Config(**kw) if arch == "qwen2" else LlamaConfig(**kw)
    model = (Qwen2ForCausalLM if arch == "qwen2" else LlamaForCausalLM)(cfg).float().eval()
    # random init gives near-uniform logits; sharpen the head so log-probs vary by token
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20.0)
    return model


def padded_batch(padding: str, seed=0):
    """3 sequences (prompt + completion) of different lengths, padded to T = 14."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens, completion_lens, t = [5, 3, 6], [7, 4, 8], 14
    ids = torch.zeros(3, t, dtype=torch.long)
    attn = torch.zeros(3, t, dtype=torch.long)
    target = torch.zeros(3, t, dtype=torch.bool)
    for b, (p, c) in enumerate(zip(prompt_lens, completion_lens)):
        start = 0 if padding == "right" else t - p - c
        ids[b, start : start + p + c] = torch.randint(1, 1000, (p + c,), generator=g)
        attn[b, start : start + p + c] = 1
        target[b, start + p : start + p + c] = True
    return ids, attn, target


def naive_model_logprobs(model, ids, attn, target, temperature, position_ids):
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits.float() / temperature
    logsm = torch.log_softmax(logits[:, :-1], dim=-1)  # position t-1 predicts token t
    lp = logsm.gather(2, ids[:, 1:, None]).squeeze(2)
    ent = -(logsm.exp() * logsm).sum(-1)
    zero = torch.zeros(ids.shape[0], 1)
    return (torch.cat([zero, lp], 1) * target, torch.cat([zero, ent], 1) * target)


def compare_with_naive(model, ids, attn, target, temperature=1.0, chunk=5, position_ids=None):
    """Values, entropies and gradients of every trainable parameter, ours vs naive."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    upstream = torch.randn(ids.shape, generator=torch.Generator().manual_seed(7))

    def grads(fn):
        model.zero_grad(set_to_none=True)
        lp, ent = fn()
        (lp * upstream).sum().backward()
        return lp.detach(), ent.detach(), {n: p.grad.clone() for n, p in params if p.grad is not None}

    pos = position_ids if position_ids is not None else (attn.cumsum(-1) - 1).clamp(min=0)
    ours = grads(lambda: token_logprobs(model, ids, attn, target, chunk, temperature, position_ids))
    ref = grads(lambda: naive_model_logprobs(model, ids, attn, target, temperature, pos))
    torch.testing.assert_close(ours[0], ref[0], atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], atol=ATOL, rtol=1e-5)
    assert (ours[0][~target] == 0).all() and (ours[1][~target] == 0).all()
    assert ours[2].keys() == ref[2].keys() and len(ours[2]) == len(params)
    for name, r in ref[2].items():
        # float32 tolerance on the gradient's own scale (the sharpened head makes some ~100)
        err = (ours[2][name] - r).abs().max().item()
        assert err <= ATOL * max(1.0, r.abs().max().item()), f"{name}: max error {err}"
    return ours


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_logprobs_matches_full_logits_qwen2(padding, temperature):
    model = tiny_model("qwen2")
    ids, attn, target = padded_batch(padding)
    # 19 targets in chunks of 5: the last chunk holds 4
    compare_with_naive(model, ids, attn, target, temperature, chunk=5)


def test_token_logprobs_left_padding_equals_unpadded():
    # the attention mask hides the left padding: a padded row scores like the bare row
    # (RoPE sees only relative positions, so this checks masking rather than the offset)
    model = tiny_model("qwen2")
    ids, attn, target = padded_batch("left")
    lp, _ = token_logprobs(model, ids, attn, target, chunk_tokens=4)
    b = 1
    keep = attn[b].bool()
    lp1, _ = token_logprobs(model, ids[b : b + 1, keep], attn[b : b + 1, keep], target[b : b + 1, keep], 4)
    torch.testing.assert_close(lp[b, keep], lp1[0], atol=ATOL, rtol=1e-5)


def test_token_logprobs_explicit_position_ids_and_tied_llama():
    model = tiny_model("llama", tie=True)  # SmolLM2 ties its head to the embeddings
    ids, attn, target = padded_batch("right")
    # stretched positions (0, 2, 4, ...) change RoPE's relative distances, so ignoring the
    # position_ids argument would show up as a mismatch with the naive pass that uses them
    pos = (2 * torch.arange(ids.shape[1])).expand_as(ids).contiguous()
    compare_with_naive(model, ids, attn, target, temperature=1.0, chunk=3, position_ids=pos)


def test_token_logprobs_peft_lora_and_disabled_adapters_are_the_base_model():
    peft = pytest.importorskip("peft")
    base = tiny_model("qwen2")
    ids, attn, target = padded_batch("left")
    with torch.no_grad():
        base_lp, _ = token_logprobs(base, ids, attn, target, 4)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    model = peft.get_peft_model(base, cfg)  # init_lora_weights=False: B != 0, adapters change the output
    # gradients reach exactly the LoRA parameters, equal to the naive ones
    lp, _, grads = compare_with_naive(model, ids, attn, target, temperature=1.0, chunk=4)
    assert grads and all("lora_" in n for n in grads)
    assert (lp - base_lp).abs().max() > 1e-3  # the adapters are really in the path
    # the reference policy: the same model with adapters disabled is the base model
    with model.disable_adapter(), torch.no_grad():
        ref_lp, _ = token_logprobs(model, ids, attn, target, 4)
    torch.testing.assert_close(ref_lp, base_lp, atol=ATOL, rtol=1e-5)


def test_token_logprobs_touches_the_head_only_for_targets():
    model = tiny_model("qwen2")
    ids, attn, target = padded_batch("right")
    n_targets = int(target.sum())  # 19 of 42 positions
    v = model.config.vocab_size
    with ShapeRecorder() as rec:
        lp, _ = token_logprobs(model, ids, attn, target, chunk_tokens=8)
        lp.sum().backward()
    head_blocks = [s for f, s in rec.records if f == "aten.mm.default" and s[-1] == v]
    # forward chunks 8 + 8 + 3 and their recomputation in backward; no prompt rows at all
    assert sorted(s[0] for s in head_blocks) == [3, 3, 8, 8, 8, 8]
    assert sum(s[0] for s in head_blocks) == 2 * n_targets
    # every vocab-sized tensor is a weight-shaped one ([V, H] grads, transposes) or one chunk
    h = model.config.hidden_size
    for f, s in rec.records:
        if v in s and sorted(s) != sorted((v, h)):
            assert all(d <= 8 for d in s if d != v), f"{f} made a tensor of shape {s}"


def test_token_logprobs_rejects_target_at_position_zero():
    model = tiny_model("qwen2")
    ids, attn, target = padded_batch("right")
    target[0, 0] = True
    with pytest.raises(ValueError, match="position 0|first token"):
        token_logprobs(model, ids, attn, target)


@pytest.mark.parametrize("lora", [False, True])
def test_token_logprobs_with_gradient_checkpointing(lora):
    # the trainer checkpoints decoder layers; calling the decoder directly must keep that path
    model = tiny_model("qwen2")
    if lora:
        peft = pytest.importorskip("peft")
        cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        model = peft.get_peft_model(model, cfg)
    ids, attn, target = padded_batch("left")
    ref = compare_with_naive(model, ids, attn, target, chunk=6)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()  # checkpointing is active only in training mode; dropout is 0 in these configs
    # count runs of layer 0's MLP (module hooks are silenced during recomputation, so wrap forward)
    calls = []
    mlp0 = next(m for n, m in model.named_modules() if n.endswith("layers.0.mlp"))
    mlp0_forward = mlp0.forward
    mlp0.forward = lambda *a, **k: calls.append(1) or mlp0_forward(*a, **k)
    ours = compare_with_naive(model, ids, attn, target, chunk=6)
    assert len(calls) == 4  # (forward + recompute in backward) for ours and for the naive pass
    for name, g in ref[2].items():
        torch.testing.assert_close(ours[2][name], g, atol=1e-5, rtol=1e-4)
