"""Shared-prefix packing gives the same log-probs and gradients as the unshared batch."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.train.batching import right_pad
from tirgrpo.train.logprobs import token_logprobs
from tirgrpo.train.prefix import (BLOCK, group_attention_mask, group_block_mask, pack_group, pack_groups, packed_logprobs,
                                  split_group, use_prefix_attention)


def test_group_attention_mask_by_hand():
    # prompt of 2 tokens (segment 0), completion 1 of 2 tokens, completion 2 of 1 token
    seg = torch.tensor([0, 0, 1, 1, 2])
    expected = torch.tensor([
        [1, 0, 0, 0, 0],  # prompt token 0: itself
        [1, 1, 0, 0, 0],  # prompt token 1: causal
        [1, 1, 1, 0, 0],  # completion 1, token 0: prompt + itself
        [1, 1, 1, 1, 0],  # completion 1, token 1
        [1, 1, 0, 0, 1],  # completion 2: prompt + itself, not completion 1
    ], dtype=torch.bool)
    assert torch.equal(group_attention_mask(seg), expected)


def test_pack_group_positions_and_sources():
    g = pack_group([7, 8, 9], [[1, 2], [3]], width=4)
    assert g.input_ids.tolist() == [[7, 8, 9, 1, 2, 3]]
    assert g.position_ids.tolist() == [[0, 1, 2, 3, 4, 3]]  # restart at the prompt's end
    assert g.source.tolist() == [2, 3, 2]  # first token of each completion from the last prompt token
    assert g.targets.tolist() == [1, 2, 3]
    assert list(zip(g.row.tolist(), g.col.tolist())) == [(0, 0), (0, 1), (1, 0)]
    assert g.completion_mask.tolist() == [[True, True, False, False], [True, False, False, False]]


def test_split_group_by_budget():
    # prompt 10; completions 5, 5, 5, 20; budget 21 -> [0, 1] (20 tokens), [2] (+20 would pass), [3] alone
    assert split_group(10, [5, 5, 5, 20], 21) == [[0, 1], [2], [3]]
    assert split_group(10, [5, 5, 5, 20], 0) == [[0, 1, 2, 3]]


def unshared(model, prompt, comps, device="cpu"):
    """Log-probs and entropies [rows, width] of each [prompt, completion] as its own padded row;
    prompt: one prompt for every row, or a list of one prompt per row."""
    prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt] * len(comps)
    ids, attn, mask = right_pad(prompts, comps, 0, device)
    logp, ent = token_logprobs(model, ids, attn, mask)
    width = max(len(c) for c in comps)
    out = torch.zeros(len(comps), width, device=device)
    out_e = torch.zeros(len(comps), width, device=device)
    for i, (p, c) in enumerate(zip(prompts, comps)):
        cols = slice(len(p), len(p) + len(c))
        out = out.index_put((torch.full((len(c),), i, device=device), torch.arange(len(c), device=device)), logp[i, cols])
        out_e[i, : len(c)] = ent[i, cols].detach()
    return out, out_e


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("groups", [1, 2])
def test_block_mask_tiles_match_torch_create_block_mask(groups):
    """Our tile classification (full / partial / skipped) equals FlexAttention's own for
    packed segments whose boundaries fall inside tiles and on tile edges (one group, or two
    whose prompts come first: [0, 200) and [200, 256))."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = torch.tensor([0] * 200 + [0 if groups == 2 else 1] * 56 + [2] * 300 + [3] * 5 + [4] * 207)  # 768 = 6 tiles
    grp = torch.tensor([0] * 200 + [1 if groups == 2 else 0] * 56 + [0] * 305 + [groups - 1] * 207)
    ours = group_block_mask(seg, grp, rows_per_pass=256)  # several passes

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (grp[q] == grp[kv]) & ((seg[kv] == 0) | (seg[q] == seg[kv]))

    theirs = create_block_mask(mask_mod, None, None, 768, 768, device="cpu", _compile=False)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    assert torch.equal(ours.kv_num_blocks, theirs.kv_num_blocks)
    # the dense mask of the block mask is the group mask itself
    q, kv = torch.meshgrid(torch.arange(768), torch.arange(768), indexing="ij")
    assert torch.equal(ours.mask_mod(0, 0, q, kv), group_attention_mask(seg, grp))


def test_block_pack_pads_to_tile_size():
    g = pack_group([7, 8, 9], [[1, 2], [3]], width=4, mask="block", pad_id=5)
    assert g.tokens == BLOCK and g.input_ids[0, 6:].eq(5).all()
    assert g.source.tolist() == [2, 3, 2]  # padding is never read


ONE_GROUP = [(9, (4, 1, 6))]  # completions of different lengths: padding
SEVERAL_GROUPS = [(9, (4, 1, 6)), (5, (3, 2)), (7, (6,))]


def _packed_vs_unshared(model_dir, lora, kind, device, spec=ONE_GROUP):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device)
    if kind in ("block", "split"):  # FlexAttention / split attention for packed groups, sdpa otherwise
        use_prefix_attention(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        for n, p in model.named_parameters():  # non-zero adapters, so LoRA changes the output
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.1)
    groups = [(torch.randint(0, 250, (p,)).tolist(), [torch.randint(0, 250, (n,)).tolist() for n in lengths])
              for p, lengths in spec]
    rows_prompts = [prompt for prompt, comps in groups for _ in comps]
    comps = [c for _, cs in groups for c in cs]
    weights = torch.randn(len(comps), 6, device=device)  # an arbitrary loss of the log-probs, so gradients are compared

    ref, ref_e = unshared(model, rows_prompts, comps, device)
    mask = ref != 0
    (ref * weights * mask).sum().backward()
    g_ref = grads(model)
    model.zero_grad()

    packed = pack_groups(groups, width=6, device=device, mask=kind)
    # FlexAttention has no CPU backward: on CPU the block mask is checked on values only.
    with torch.set_grad_enabled(kind != "block" or device != "cpu"):
        got, got_e = packed_logprobs(model, packed)
    assert torch.equal(packed.completion_mask, mask)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got_e, ref_e, atol=1e-5)
    # one group: the packed forward ran 9 + 11 = 20 tokens where the unshared one ran 3 x (9 + 6) = 45
    tokens = sum(p + sum(lengths) for p, lengths in spec)
    assert packed.tokens == (-(-tokens // BLOCK) * BLOCK if kind == "block" else tokens)
    if not got.requires_grad:
        return
    (got * weights * mask).sum().backward()
    g_got = grads(model)
    assert g_ref.keys() == g_got.keys() and g_ref
    for n in g_ref:
        assert torch.allclose(g_got[n], g_ref[n], atol=1e-5, rtol=1e-4), n


@pytest.mark.parametrize("lora,kind", [(False, "dense"), (True, "dense"), (False, "block"), (True, "block"),
                                       (False, "split"), (True, "split")])
def test_packed_equals_unshared_values_and_gradients(tiny_model_dir, lora, kind):
    _packed_vs_unshared(tiny_model_dir, lora, kind, "cpu")


@pytest.mark.parametrize("kind", ["dense", "block", "split"])
def test_several_packed_groups_equal_unshared(tiny_model_dir, kind):
    """Three groups in one pass: each completion sees its own group's prompt only."""
    _packed_vs_unshared(tiny_model_dir, False, kind, "cpu", SEVERAL_GROUPS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lora,kind", [(False, "block"), (True, "block"), (False, "split")])
def test_shared_prefix_gradients_on_cuda(tiny_model_dir, lora, kind):
    """Compiled FlexAttention / split attention (forward and backward) against the unshared
    sdpa batch, float32, one group and several."""
    _packed_vs_unshared(tiny_model_dir, lora, kind, "cuda")
    _packed_vs_unshared(tiny_model_dir, lora, kind, "cuda", SEVERAL_GROUPS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lora,groups", [(False, 1), (True, 1), (False, 3)])
def test_split_bf16_kernels_on_cuda_match_unshared(tiny_model_dir, lora, groups):
    """The split form's CUDA kernels (cuDNN for one group, flash-attention; bf16 only) in a
    whole model: log-probs and gradients of one packed pass against the unshared bf16 batch,
    to bf16 rounding (the float32 test above runs the same math through plain torch)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).to("cuda")
    use_prefix_attention(model)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    spec = [(40, (17, 3, 30, 30)), (25, (9, 30)), (33, (1,))][:groups]
    packed = [(torch.randint(0, 250, (p,)).tolist(), [torch.randint(0, 250, (n,)).tolist() for n in lengths])
              for p, lengths in spec]
    rows_prompts = [prompt for prompt, cs in packed for _ in cs]
    comps = [c for _, cs in packed for c in cs]
    weights = torch.randn(len(comps), 30, device="cuda")
    ref, _ = unshared(model, rows_prompts, comps, "cuda")
    mask = ref != 0
    (ref * weights * mask).sum().backward()
    g_ref = grads(model)
    model.zero_grad()
    got, _ = packed_logprobs(model, pack_groups(packed, width=30, device="cuda", mask="split"))
    (got * weights * mask).sum().backward()
    g_got = grads(model)
    assert (got - ref).abs().max().item() < 0.05
    assert g_ref.keys() == g_got.keys() and g_ref
    for n in g_ref:
        err = (g_got[n].float() - g_ref[n].float()).norm() / g_ref[n].float().norm().clamp(min=1e-6)
        assert err < 0.05, (n, err.item())


def test_pack_groups_layout_by_hand():
    # prompts [7, 8, 9] and [5, 6]; completions [1, 2], [3] of the first, [4] of the second
    g = pack_groups([([7, 8, 9], [[1, 2], [3]]), ([5, 6], [[4]])], width=2, mask="split")
    assert g.input_ids.tolist() == [[7, 8, 9, 5, 6, 1, 2, 3, 4]]  # the prompts first
    assert g.position_ids.tolist() == [[0, 1, 2, 0, 1, 3, 4, 3, 2]]
    assert g.source.tolist() == [2, 5, 2, 4]  # a first token from its own prompt's last token
    assert list(zip(g.row.tolist(), g.col.tolist())) == [(0, 0), (0, 1), (1, 0), (2, 0)]
    # split form: prompts [0, 3), [3, 5); blocks [0, 3), [3, 4) after them; own [0, 2), [2, 3), [3, 4)
    assert g.mask.dtype == torch.int32 and g.mask.tolist() == [[[[0, 3, 5, 0, 3, 4, 0, 2, 3, 4]]]]
    assert g.split.groups == 2 and g.split.prompt_tokens == 5 and g.split.longest == 2
    dense = pack_groups([([7, 8, 9], [[1, 2], [3]]), ([5, 6], [[4]])], width=2).mask[0, 0]
    assert dense[8].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1]  # completion [4]: its prompt [5, 6] and itself
    assert dense[4].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 0]  # prompt token 6: its own prompt only


def test_micro_batches_pack_whole_groups_by_budget():
    from tirgrpo.train.step import build_micro_batches

    prompts = [[1] * 4] * 3 + [[2] * 6] * 3 + [[3] * 2] * 3  # three groups of G = 3
    comps = [[5] * n for n in (2, 3, 1, 4, 4, 4, 1, 1, 1)]  # group tokens: 4 + 6, 6 + 12, 2 + 3
    sizes = lambda b: [(mb.rows, mb.inputs.tokens) for mb in build_micro_batches(prompts, comps, 3, b, "dense", 0, "cpu")]  # noqa: E731
    assert sizes(0) == [(list(range(9)), 33)]  # the whole step in one pass
    assert sizes(28) == [([0, 1, 2, 3, 4, 5], 28), ([6, 7, 8], 5)]  # 10 + 18 fit, + 5 would not
    assert sizes(18) == [([0, 1, 2], 10), ([3, 4, 5], 18), ([6, 7, 8], 5)]
    assert sizes(12) == [([0, 1, 2], 10), ([3], 10), ([4], 10), ([5], 10), ([6, 7, 8], 5)]  # the big group split


def test_shared_prefix_auto_and_errors():
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.train.plan import resolve_prefix

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_prefix("auto", "sdpa", cpu, "fp32") == "dense"
    assert resolve_prefix("auto", "sdpa", cuda, "bf16") == "split"  # flash-attention / cuDNN kernels
    assert resolve_prefix("auto", "sdpa", cuda, "fp32") == "block"  # those kernels take no fp32
    assert resolve_prefix("auto", "flex_attention", cuda, "bf16") == "off"  # a custom mask needs sdpa/eager
    assert resolve_prefix("split", "eager", cpu, "fp32") == "split"
    with pytest.raises(TirgrpoError, match="system.shared_prefix"):
        resolve_prefix("flex", "sdpa", cpu, "fp32")
    with pytest.raises(TirgrpoError, match="needs CUDA"):
        resolve_prefix("block", "sdpa", cpu, "fp32")
    with pytest.raises(TirgrpoError, match="system.attention"):
        resolve_prefix("dense", "flex_attention", cpu, "fp32")
