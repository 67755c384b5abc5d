import math

import pytest
import torch

from tirgrpo.kernels.split_attention import (SplitSizes, attend, attend_backward, merge_partials,
                                             split_layout, split_prefix_attention)


def test_attend_by_hand():
    # one query [1, 0] over keys [1, 0] and [0, 0], scale 1: scores 1 and 0
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    v = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]])
    out, lse = attend(q, k, v, causal=False, scale=1.0)
    e = math.e
    assert lse.item() == pytest.approx(math.log(e + 1))
    assert out[0, 0].tolist() == pytest.approx([2 * e / (e + 1), 4 / (e + 1)])
    # causal, bottom-right aligned: 1 query, 2 keys -> the query is the last position and sees both
    assert torch.equal(attend(q, k, v, causal=True, scale=1.0)[0], out)


def test_merge_partials_by_hand():
    # part 1: total weight e^0 = 1, output 1; part 2: total weight e^log 3 = 3, output 5
    o1, o2 = torch.full((1, 1, 1), 1.0), torch.full((1, 1, 1), 5.0)
    lse1, lse2 = torch.zeros(1, 1), torch.full((1, 1), math.log(3))
    o, lse = merge_partials(o1, lse1, o2, lse2)
    assert lse.item() == pytest.approx(math.log(4))
    assert o.item() == pytest.approx(0.25 * 1 + 0.75 * 5)


def test_merged_parts_equal_attention_over_all_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(7, 2, 8, dtype=torch.float64), \
        torch.randn(7, 2, 8, dtype=torch.float64)
    whole = attend(q, k, v, False, 0.3)
    merged = merge_partials(*attend(q, k[:5], v[:5], False, 0.3), *attend(q, k[5:], v[5:], False, 0.3))
    for a, b in zip(whole, merged):
        assert torch.allclose(a, b)


def test_attend_backward_equals_autograd():
    torch.manual_seed(0)
    q, k, v = (torch.randn(n, h, 8, dtype=torch.float64, requires_grad=True) for n, h in ((5, 4), (5, 2), (5, 2)))
    out, lse = attend(q, k, v, True, 0.5)
    dout = torch.randn_like(out)
    out.backward(dout)
    got = attend_backward(dout, q.detach(), k.detach(), v.detach(), out.detach(), lse, True, 0.5)
    for g, x in zip(got, (q, k, v)):
        assert torch.allclose(g, x.grad)


def masked_reference(q, k, v, prompts, completions, scale):
    """Prompts first, then each group's completions; a prompt causal, a completion sees its
    group's prompt and its own past: one masked softmax."""
    seg, grp = [], []
    for g, p in enumerate(prompts):
        seg += [0] * p
        grp += [g] * p
    i = 0
    for g, lengths in enumerate(completions):
        for n in lengths:
            i += 1
            seg += [i] * n
            grp += [g] * n
    seg, grp = torch.tensor(seg), torch.tensor(grp)
    # in this layout "causal" is index order: every prompt token precedes every completion token
    t = torch.arange(len(seg))
    visible = ((t[:, None] >= t[None, :]) & (grp[:, None] == grp[None, :])
               & ((seg[None, :] == 0) | (seg[:, None] == seg[None, :])))
    rep = q.shape[1] // k.shape[1]
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(rep, 1)) * scale
    p = s.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.einsum("hqk,khd->qhd", p, v.repeat_interleave(rep, 1))


def _compare(prompts, completions, dtype, device, atol):
    torch.manual_seed(0)
    T = sum(prompts) + sum(map(sum, completions))
    base = [torch.randn(T, h, 16, dtype=torch.float64) for h in (6, 2, 2)]
    dout = torch.randn(T, 6, 16, dtype=torch.float64)
    ref_in = [x.clone().requires_grad_() for x in base]
    ref = masked_reference(*ref_in, prompts, completions, 0.25)
    ref.backward(dout)
    got_in = [x.to(device, dtype).requires_grad_() for x in base]
    bounds, sizes = split_layout(prompts, completions)
    got = split_prefix_attention(*got_in, torch.tensor(bounds, dtype=torch.int32, device=device), sizes, 0.25)
    got.backward(dout.to(device, dtype))
    assert torch.allclose(got.double().cpu(), ref, atol=atol), (got.double().cpu() - ref).abs().max()
    for x, r in zip(got_in, ref_in):
        assert torch.allclose(x.grad.double().cpu(), r.grad, atol=atol), (x.grad.double().cpu() - r.grad).abs().max()


def test_split_layout_by_hand():
    # prompts of 3 and 2 tokens; group 0 has completions of 2, 0, 3 tokens, group 1 one of 1:
    # prompts at [0, 3) and [3, 5); blocks [0, 5) and [5, 6) after them; own [0, 2), [2, 5), [5, 6)
    bounds, sizes = split_layout([3, 2], [[2, 0, 3], [1]])
    assert bounds == [0, 3, 5, 0, 5, 6, 0, 2, 5, 6]
    assert sizes == SplitSizes(groups=2, prompt_tokens=5, longest_prompt=3, longest_block=5, longest=3)
    with pytest.raises(ValueError, match="non-empty prompt"):
        split_layout([0], [[1]])


GROUPS = [([5], [[4, 1, 6]]), ([4], [[4, 4]]), ([6], [[]]),  # one group: ragged, equal, prompt only
          ([5, 3, 4], [[4, 1], [2, 0, 3], [5]]), ([2, 7], [[], [3, 3]])]  # several; one with no completion tokens


@pytest.mark.parametrize("prompts,completions", GROUPS)
def test_split_attention_equals_masked_attention(prompts, completions):
    """Values and gradients of q, k, v (grouped-query heads) against one masked softmax."""
    _compare(prompts, completions, torch.float64, "cpu", 1e-10)


def test_split_attention_operator_registration():
    """The custom operator's fake (torch.compile) and autograd registrations agree with it."""
    from tirgrpo.kernels.split_attention import _split_forward

    torch.manual_seed(0)
    q, k, v = (torch.randn(12, h, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2))
    bounds, sizes = split_layout([4, 3], [[3, 2], [0]])
    torch.library.opcheck(_split_forward, (q, k, v, torch.tensor(bounds, dtype=torch.int32), *sizes, 0.3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cudnn", [True, False])
@pytest.mark.parametrize("prompts,completions", [([300], [[128, 1, 271]]), ([256], [[256, 256]]),
                                                 ([300, 129, 200], [[128, 1, 40], [256], [0, 77]])])
def test_split_attention_on_cuda(prompts, completions, cudnn):
    """cuDNN (one group) or flash-attention prompt part + flash-attention varlen own part, bf16,
    against float64."""
    from tirgrpo.kernels import split_attention

    saved = split_attention._state["cudnn"]
    split_attention._state["cudnn"] = None if cudnn else False
    try:
        _compare(prompts, completions, torch.bfloat16, "cuda", 0.06)
        if cudnn and len(prompts) == 1:
            assert split_attention._state["cudnn"] is not False, "cuDNN attention did not run"
    finally:
        split_attention._state["cudnn"] = saved
