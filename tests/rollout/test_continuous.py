"""Continuous batching (requests joining and leaving a running batch) against FastEngine one at a time."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.continuous import ContinuousBatcher, Group, TokenText, sample_rows
from tirgrpo.rollout.engine import FastEngine
from tirgrpo.rollout.sampling import filter_logits


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def collect(batcher, prompt, n, params, generator=None):
    """Submit a group; returns (completions list filled as rows finish, streamed text per row, group)."""
    done, streamed = [None] * n, [""] * n

    def sink(updates):
        for u in updates:
            streamed[u.index] += u.text
            if u.completion is not None:
                done[u.index] = u.completion

    g = Group(prompt, n, params, sink, generator)
    batcher.submit(g)
    return done, streamed, g


def test_joining_mid_batch_gives_the_one_at_a_time_tokens(model, byte_tokenizer):
    tok = byte_tokenizer
    prompts = [tok(t)["input_ids"] for t in ("hello", "a much longer prompt than the others", "x", "fourth one")]
    lengths = [24, 9, 30, 17]
    stops = [[], [], ["++"], ["zz", "aU1"]]
    engine = FastEngine(model, tok, max_batch=8, length_buckets=(64,))
    refs = [engine.generate([p], 2, SamplingParams(max_new_tokens=m, temperature=0.0, stop=s))[0]
            for p, m, s in zip(prompts, lengths, stops)]

    batcher = ContinuousBatcher(FastEngine(model, tok, max_batch=8, length_buckets=(64,)), max_rows=8,
                                max_prompt_len=64, max_new_tokens=32)
    runs = []
    # Groups 0 and 1 are prefilled together (right-padded), 2 and 3 join two steps later,
    # again together; rows leave as they finish and the last rows move into their places.
    for p, m, s, steps in zip(prompts, lengths, stops, (0, 2, 0, 1)):
        runs.append(collect(batcher, p, 2, SamplingParams(max_new_tokens=m, temperature=0.0, stop=s)))
        for _ in range(steps):
            batcher.step()
    for _ in range(200):
        if not batcher.busy():
            break
        batcher.step()
    assert not batcher.busy() and len(batcher.free_slots) == 8
    for (done, streamed, _), ref in zip(runs, refs):
        for c, r, text in zip(done, ref, streamed):
            assert c.token_ids == r.token_ids and c.finish_reason == r.finish_reason and c.stop == r.stop
            assert c.text == r.text == text  # the streamed pieces add up to the final text
            assert c.logprobs == pytest.approx(r.logprobs, abs=1e-4)
    assert [refs[i][0].stop for i in (2, 3)] == ["++", "aU1"]  # the stop strings did end rows


def test_cancelled_group_frees_its_rows(model, byte_tokenizer):
    batcher = ContinuousBatcher(FastEngine(model, byte_tokenizer, max_batch=4, length_buckets=(64,)), max_rows=4,
                                max_prompt_len=64, max_new_tokens=64)
    params = SamplingParams(max_new_tokens=64, temperature=1.0, min_new_tokens=64)
    done_a, _, a = collect(batcher, [1, 2, 3], 3, params)
    done_b, _, b = collect(batcher, [4, 5], 2, params)  # does not fit beside a: waits
    batcher.step()
    assert len(batcher.rows) == 3 and batcher.queued() == 1
    batcher.cancel(a)
    batcher.step()  # a's rows leave at this boundary, b's join at the next
    batcher.step()
    assert [s.group for s in batcher.rows] == [b, b] and batcher.queued() == 0
    assert all(c is None for c in done_a)
    for _ in range(100):
        if not batcher.busy():
            break
        batcher.step()
    assert all(c.finish_reason == "length" and len(c.token_ids) == 64 for c in done_b)
    assert not batcher.rows and len(batcher.free_slots) == 4


def test_sample_rows_matches_sample_next_per_row():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    temperature = torch.tensor([0.0, 0.7, 1.0, 1.3])
    top_p = torch.tensor([1.0, 0.9, 1.0, 0.5])
    top_k = torch.tensor([0, 0, 5, 3])
    reps = 2000  # each row 2,000 times, in one batch
    tokens, logp = sample_rows(logits.repeat(reps, 1), temperature.repeat(reps), top_p.repeat(reps),
                               top_k.repeat(reps), 1.0 - torch.rand(4 * reps))
    counts = torch.zeros(4, 50)
    counts.index_put_((torch.arange(4).repeat(reps), tokens), torch.ones(4 * reps), accumulate=True)
    tokens, logp = tokens[:4], logp[:4]
    assert counts[0, logits[0].argmax()] == 2000
    for r in range(1, 4):
        want = torch.softmax(filter_logits(logits[r : r + 1] / temperature[r], int(top_k[r]), float(top_p[r])), -1)[0]
        assert (counts[r] / 2000 - want).abs().max() < 0.05
        assert bool((counts[r][want == 0] == 0).all())  # nothing outside the filtered set
    expect = torch.log_softmax(logits / temperature.clamp(min=1e-9)[:, None], -1).gather(-1, tokens[:, None])[:, 0]
    assert torch.allclose(logp[1:], expect[1:], atol=1e-5)


def test_token_text_streams_multibyte_characters(byte_tokenizer):
    ids = byte_tokenizer("héllo ✓ <eos>", add_special_tokens=False)["input_ids"]
    text = TokenText(byte_tokenizer)
    assert text.table is not None
    state, out, pieces = text.start(), "", []
    for i in range(1, len(ids) + 1):
        piece = text.push(state, ids[:i])
        pieces.append(piece)
        out += piece
    assert out == byte_tokenizer.decode(ids, skip_special_tokens=False)
    assert "" in pieces  # the first byte of "é" and of "✓" wait for the rest of the character


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_in_the_background_thread_give_the_one_at_a_time_tokens(tiny_model_dir, byte_tokenizer):
    import threading

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval().cuda()
    tok = byte_tokenizer
    prompts = [tok(t)["input_ids"] for t in ("hello", "a much longer prompt than the others", "x", "fourth one")]
    params = SamplingParams(max_new_tokens=40, temperature=0.0)
    engine = FastEngine(model, tok, max_batch=8, length_buckets=(64,))
    refs = [engine.generate([p], 3, params)[0] for p in prompts]
    batcher = ContinuousBatcher(FastEngine(model, tok, max_batch=8, length_buckets=(64,)), max_rows=8,
                                max_prompt_len=64, max_new_tokens=64)
    batcher.warmup()  # graphs captured here, replayed by the batcher's thread
    batcher.start()
    try:
        finished = threading.Semaphore(0)
        runs = []
        for p in prompts:  # 12 rows through 8: the last group waits for rows
            done = [None] * 3

            def sink(updates, done=done):
                for u in updates:
                    if u.completion is not None:
                        done[u.index] = u.completion
                        finished.release()

            batcher.submit(Group(p, 3, params, sink))
            runs.append(done)
        for _ in range(12):
            assert finished.acquire(timeout=60)
    finally:
        batcher.stop()
    for done, ref in zip(runs, refs):
        assert [c.token_ids for c in done] == [r.token_ids for r in ref]


def test_timing_says_when_a_group_was_admitted_with_whom_and_when_its_first_token_came(model, byte_tokenizer):
    tok = byte_tokenizer
    batcher = ContinuousBatcher(FastEngine(model, tok, max_batch=8, length_buckets=(64,)), max_rows=8,
                                max_prompt_len=64, max_new_tokens=32)
    params = SamplingParams(max_new_tokens=20, temperature=1.0, min_new_tokens=20)
    _, _, a = collect(batcher, tok("running")["input_ids"], 3, params)
    batcher.step()
    batcher.step()
    _, _, b = collect(batcher, tok("b")["input_ids"], 2, params)
    _, _, c = collect(batcher, tok("a longer one")["input_ids"], 1, params)
    batcher.step()  # b and c: one prefill, beside a's 3 running rows
    for g in (b, c):
        t = g.timing
        assert 0 < t.submitted <= t.admitted <= t.first_token
        assert t.prefill_groups == 2 and t.prefill_tokens == 2 * len(c.prompt_ids)
        assert t.running_rows == 3 and t.steps_waited == 0 and t.prefill_s > 0
    assert a.timing.running_rows == 0 and a.timing.prefill_groups == 1
    st = batcher.stats
    assert st["steps"] == 3 and st["rows"] == 3 + 3 + 6
    assert all(st[k] > 0 for k in ("admit_s", "sample_s", "decode_record_s"))


def test_on_cpu_a_step_hands_out_its_tokens_before_the_decode_and_skips_a_decode_nobody_needs(model, byte_tokenizer):
    tok = byte_tokenizer
    batcher = ContinuousBatcher(FastEngine(model, tok, max_batch=4, length_buckets=(64,)), max_rows=4,
                                max_prompt_len=64, max_new_tokens=8)
    seen, decodes = [], []
    decode = batcher._decode

    def spy(tokens):
        decodes.append(list(seen))
        return decode(tokens)

    batcher._decode = spy
    g = Group(tok("hi")["input_ids"], 1, SamplingParams(max_new_tokens=3, temperature=0.0, min_new_tokens=3),
              lambda updates: seen.extend(u.token_ids[0] for u in updates))
    batcher.submit(g)
    for _ in range(3):
        batcher.step()
    # The first token (from the prefill) was out before the first decode ran; the third step's
    # only row finished, so it ran no decode.
    assert len(seen) == 3 and decodes == [seen[:1], seen[:2]] and not batcher.busy()


def test_warm_prefill_runs_each_burst_size_and_leaves_no_trace(model, byte_tokenizer):
    tok = byte_tokenizer

    def fresh():
        return ContinuousBatcher(FastEngine(model, tok, max_batch=8, length_buckets=(64,)), max_rows=8,
                                 max_prompt_len=48, max_new_tokens=16, max_prefill_tokens=80, seed=3)

    warmed, cold = fresh(), fresh()
    sizes = []
    prefill = warmed._prefill
    warmed._prefill = lambda batch: sizes.append((len(batch), len(batch[0].prompt_ids))) or prefill(batch)
    warmed.warm_prefill(width=16)
    # 1, 2, 4 prompts of 16 tokens (8 x 16 is over the 80-token budget), then one longest prompt.
    assert sizes == [(1, 16), (2, 16), (4, 16), (1, 48)]
    assert not warmed.busy() and sorted(warmed.free_slots) == list(range(8))
    assert warmed.steps == 0 and not warmed.stats
    prompt = tok("the same prompt")["input_ids"]
    sampled = SamplingParams(max_new_tokens=12, temperature=1.0)
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    # The batcher's own random numbers were not drawn from, and greedy tokens are those of a cold batcher.
    for params in (sampled, greedy):
        assert [c.token_ids for c in warmed.generate(prompt, 2, params)] == \
            [c.token_ids for c in cold.generate(prompt, 2, params)]


def test_start_warms_on_the_stepping_thread_and_raises_what_warming_raised(model, byte_tokenizer):
    import threading

    batcher = ContinuousBatcher(FastEngine(model, byte_tokenizer, max_batch=4, length_buckets=(64,)), max_rows=4,
                                max_prompt_len=32, max_new_tokens=8)
    threads = []
    batcher.warm_prefill = lambda: threads.append(threading.current_thread().name)
    batcher.start(warm=True)
    try:
        assert threads == ["tirgrpo-batcher"]  # done before start() returned
    finally:
        batcher.stop()

    def fail():
        raise RuntimeError("no memory for the prefill")

    broken = ContinuousBatcher(FastEngine(model, byte_tokenizer, max_batch=4, length_buckets=(64,)), max_rows=4,
                               max_prompt_len=32, max_new_tokens=8)
    broken.warm_prefill = fail
    with pytest.raises(RuntimeError, match="no memory"):
        broken.start(warm=True)


def test_start_raises_a_failure_to_select_the_device_instead_of_hanging(model, byte_tokenizer, monkeypatch):
    """The thread's torch.cuda.set_device runs before start() may return: when it raises,
    start() raises it (it used to wait forever for a thread that had died)."""
    import threading

    engine = FastEngine(model, byte_tokenizer, max_batch=4, length_buckets=(64,))
    batcher = ContinuousBatcher(engine, max_rows=4, max_prompt_len=32, max_new_tokens=8)
    engine.device = torch.device("cuda", 0)  # now, after the set-up: only makes the thread select it

    def set_device(device):
        raise RuntimeError("no such device")

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    raised = []

    def start():
        try:
            batcher.start(warm=False)
        except RuntimeError as e:
            raised.append(e)

    caller = threading.Thread(target=start, daemon=True)  # a hang fails the test, not the run
    caller.start()
    caller.join(timeout=30)
    assert not caller.is_alive(), "start() hung"
    assert [str(e) for e in raised] == ["no such device"]
