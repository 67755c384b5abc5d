"""FastEngine (static cache, own decode step) against transformers and the simple engine."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tirgrpo.train.logprobs import token_logprobs
from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.engine import FastEngine
from tirgrpo.rollout.simple import SimpleEngine


@pytest.fixture(scope="module")
def models(tiny_model_dir, byte_tokenizer):
    """A tiny Qwen2 (biases on q/k/v, untied head) and a tiny Llama (no biases, tied head)."""
    qwen = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(1)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(byte_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        bos_token_id=byte_tokenizer.bos_token_id, eos_token_id=byte_tokenizer.eos_token_id)).eval()
    return {"qwen2": qwen, "llama": llama}


def prompts(tok):
    return [tok(t)["input_ids"] for t in ("hello", "a much longer prompt than the others", "x")]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_greedy_equals_transformers_generate(models, byte_tokenizer, arch):
    model = models[arch]
    engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64, 128))
    ps = prompts(byte_tokenizer)
    groups = engine.generate(ps, 2, SamplingParams(max_new_tokens=24, temperature=0.0))
    for p, group in zip(ps, groups):
        ref = model.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p):].tolist()
        for c in group:
            assert c.token_ids == ref[: len(c.token_ids)]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_sampled_logprobs_equal_trainer_logprobs(models, byte_tokenizer, arch):
    model = models[arch]
    engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64,))
    ps = prompts(byte_tokenizer)
    groups = engine.generate(ps, 2, SamplingParams(max_new_tokens=16, temperature=0.7),
                             torch.Generator().manual_seed(3))
    for p, group in zip(ps, groups):
        for c in group:
            ids = torch.tensor([p + c.token_ids])
            target = torch.zeros_like(ids, dtype=torch.bool)
            target[0, len(p):] = True
            logp, _ = token_logprobs(model, ids, torch.ones_like(ids), target, temperature=0.7)
            assert torch.allclose(logp[0, len(p):], torch.tensor(c.logprobs), atol=1e-5)


def test_shared_prefill_gives_the_same_samples_as_unshared(models, byte_tokenizer):
    engine = FastEngine(models["qwen2"], byte_tokenizer, max_batch=16, length_buckets=(64,))
    ps = prompts(byte_tokenizer)
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    shared = engine.generate(ps, 4, params, torch.Generator().manual_seed(0))
    unshared = engine.generate(ps, 4, params, torch.Generator().manual_seed(0), share_prefill=False)
    assert [[c.token_ids for c in g] for g in shared] == [[c.token_ids for c in g] for g in unshared]
    # and the 4 samples of a group differ: the cache rows are independent copies
    assert len({tuple(c.token_ids) for c in shared[1]}) > 1


def test_rows_that_finish_early_are_compacted_and_still_right(models, byte_tokenizer):
    """Make a token that greedy decoding emits at different steps per prompt the eos: rows
    finish at different times, the engine drops to smaller batch buckets, and every row's
    tokens still equal the simple engine's (which never compacts)."""
    model = models["qwen2"]
    ps = prompts(byte_tokenizer) + [byte_tokenizer("another prompt")["input_ids"]]
    params = SamplingParams(max_new_tokens=30, temperature=0.0)
    free = SimpleEngine(model, byte_tokenizer).generate(ps, 1, params)
    # a token early in prompt 0's completion that half or more of the prompts' completions hold,
    # but not all: at least 4 of the 8 rows finish (rows 0 and 1 among them), so the live rows
    # move into the 4-row bucket from non-leading positions
    first = [g[0].token_ids for g in free]
    candidates = [t for t in first[0][:10] if len(first) // 2 <= sum(t in f for f in first) < len(first)]
    assert candidates, first
    eos = candidates[0]
    simple = SimpleEngine(model, byte_tokenizer)
    fast = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64,))
    simple.eos = fast.eos = {eos}
    widths, step_fn = [], fast._step_fn
    fast._step_fn = lambda B: widths.append(B) or step_fn(B)
    a = simple.generate(ps, 2, params)
    b = fast.generate(ps, 2, params)
    assert widths[0] == 8 and min(widths) < 8  # compacted
    assert [[(c.token_ids, c.finish_reason) for c in g] for g in a] == [[(c.token_ids, c.finish_reason) for c in g] for g in b]
    reasons = {c.finish_reason for g in b for c in g}
    assert reasons == {"eos", "length"}
    # the log-probs too: the step queued before the host saw a row finish moves with its row
    for ga, gb in zip(a, b):
        for ca, cb in zip(ga, gb):
            assert torch.allclose(torch.tensor(ca.logprobs), torch.tensor(cb.logprobs), atol=1e-5)


def test_min_new_tokens_masks_eos_up_to_its_step(models, byte_tokenizer):
    """min_new_tokens = m: eos is masked at steps 0..m-1 and allowed from step m, with the next
    step queued before the host reads the current one (the step number must follow the token).
    With eos = the unmasked greedy token at step m (absent before), the row ends there; with eos
    = the one at step m - 1, the mask changes the token at m - 1. Both as the simple engine."""
    model = models["qwen2"]
    ps = prompts(byte_tokenizer)[:1]
    g = FastEngine(model, byte_tokenizer, length_buckets=(64,)).generate(ps, 1, SamplingParams(16, 0.0))[0][0].token_ids
    m = next(i for i in range(3, 12) if g[i] not in g[:i] and g[i - 1] not in g[: i - 1])
    for eos, ends_at in ((g[m], m), (g[m - 1], None)):
        runs = []
        for engine in (SimpleEngine(model, byte_tokenizer), FastEngine(model, byte_tokenizer, length_buckets=(64,))):
            engine.eos = {eos}
            (c,), = engine.generate(ps, 1, SamplingParams(16, 0.0, min_new_tokens=m))
            runs.append((c.token_ids, c.finish_reason))
        assert runs[0] == runs[1], (eos, runs)
        if ends_at is not None:
            assert runs[1] == (g[: m + 1], "eos")
        else:
            assert runs[1][0][m - 1] != eos and runs[1][0][: m - 1] == g[: m - 1]


def test_stop_string_and_length(models, byte_tokenizer):
    model = models["qwen2"]
    ps = prompts(byte_tokenizer)
    free = FastEngine(model, byte_tokenizer, length_buckets=(64,)).generate(ps, 1, SamplingParams(20, 0.0))
    text = byte_tokenizer.decode(free[0][0].token_ids)
    stop = text[3:5]  # two characters the greedy continuation of prompt 0 contains
    engine = FastEngine(model, byte_tokenizer, length_buckets=(64,))
    (c,), *_ = engine.generate(ps, 1, SamplingParams(20, 0.0, stop=[stop]))
    assert c.finish_reason == "stop" and c.stop == stop
    assert c.text == text[: text.index(stop)]
    assert byte_tokenizer.decode(c.token_ids).endswith(stop)  # the stop's tokens are kept for training
    (c,), *_ = engine.generate(ps, 1, SamplingParams(5, 0.0))
    assert c.finish_reason == "length" and len(c.token_ids) == 5


def test_weight_updates_reach_the_engine_without_a_copy(models, byte_tokenizer):
    model = AutoModelForCausalLM.from_config(models["qwen2"].config)
    model.load_state_dict(models["qwen2"].state_dict())
    engine = FastEngine(model, byte_tokenizer, length_buckets=(64,))
    ps = prompts(byte_tokenizer)[:1]
    before = engine.generate(ps, 1, SamplingParams(10, 0.0))[0][0].token_ids
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # an in-place "optimizer step"
    after = engine.generate(ps, 1, SamplingParams(10, 0.0))[0][0].token_ids
    ref = model.generate(torch.tensor(ps), max_new_tokens=10, do_sample=False)[0, len(ps[0]):].tolist()
    assert after != before and after == ref[: len(after)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kernels", ["torch", "auto"])  # auto: Triton where it is installed
def test_cuda_graph_decode_equals_eager(models, byte_tokenizer, kernels):
    model = models["qwen2"].cuda()
    ps = prompts(byte_tokenizer)
    params = SamplingParams(20, 0.0)
    eager = FastEngine(model, byte_tokenizer, use_cuda_graphs=False, length_buckets=(64,),
                       kernels=kernels).generate(ps, 2, params)
    graphed = FastEngine(model, byte_tokenizer, use_cuda_graphs=True, length_buckets=(64,),
                         kernels=kernels).generate(ps, 2, params)
    assert [[c.token_ids for c in g] for g in eager] == [[c.token_ids for c in g] for g in graphed]


def test_graph_ms_times_each_captured_width_and_leaves_generation_unchanged(models, byte_tokenizer):
    """Without graphs there is nothing to time; with them, one positive time per batch width
    captured, and replaying the graph does not change what the next generate() samples."""
    ps = prompts(byte_tokenizer)
    params = SamplingParams(12, 0.0)
    # (the shared model may already be on the GPU, moved there by another test)
    eager = FastEngine(models["qwen2"], byte_tokenizer, use_cuda_graphs=False, length_buckets=(64,))
    eager.generate(ps, 2, params)
    assert eager.graph_ms() == {}
    if not torch.cuda.is_available():
        pytest.skip("the timed half needs CUDA")
    engine = FastEngine(models["qwen2"].cuda(), byte_tokenizer, use_cuda_graphs=True, length_buckets=(64,))
    before = engine.generate(ps, 2, params)
    times = engine.graph_ms(repeats=5)
    assert times and all(0 < ms < 1e3 for ms in times.values())
    after = engine.generate(ps, 2, params)
    assert [[c.token_ids for c in g] for g in before] == [[c.token_ids for c in g] for g in after]


def test_release_cache_frees_a_large_batch_and_generation_goes_on(models, byte_tokenizer):
    """A greedy pass over many prompts (one prompt slot per row) grows the cache to max_batch
    slots; release_cache frees it, and the next, smaller batch gets a cache of its own size
    and the same tokens."""
    model = models["qwen2"]
    engine = FastEngine(model, byte_tokenizer, max_batch=8, length_buckets=(64, 128))
    ps = prompts(byte_tokenizer)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    engine.generate(ps * 3, 1, greedy)  # 9 prompts: batches of 8 slots
    assert engine._cache.capacity[0] == 8
    first = engine.generate(ps[:1], 2, greedy)
    engine.release_cache()
    assert engine._cache is None and not engine._graphs
    again = engine.generate(ps[:1], 2, greedy)
    assert engine._cache.capacity[0] == 1  # one prompt slot, not the 8 of the large batch
    assert [c.token_ids for c in again[0]] == [c.token_ids for c in first[0]]
    SimpleEngine(model, byte_tokenizer).release_cache()  # the same interface: nothing to free
