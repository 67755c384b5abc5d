"""SimpleEngine: greedy output equal to `transformers` generate, log-probs equal to the
trainer's recomputation, finish reasons (eos / stop / length), group structure, seeds.

A scripted stand-in model (it emits a fixed token sequence per prompt) pins down the
bookkeeping of eos, stop strings and length limits exactly; the tiny Qwen2 checks the
numbers against `transformers` and `tirgrpo.train.logprobs`.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from tirgrpo.train.batching import right_pad
from tirgrpo.config import ModelConfig
from tirgrpo.train.logprobs import token_logprobs
from tirgrpo.train.model import load_base_model, load_policy
from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.simple import SimpleEngine, eos_ids

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- scripted model


class ScriptedCache:
    """Stands in for a transformers KV cache: which script each row follows, and the step."""

    def __init__(self, keys: list[int], prompt_len: int):
        self.keys, self.T, self.step = keys, prompt_len, 0

    def batch_repeat_interleave(self, repeats: int) -> None:  # as transformers' DynamicCache
        self.keys = [k for k in self.keys for _ in range(repeats)]


class ScriptedLM(torch.nn.Module):
    """Emits `scripts[last prompt token]` one token per step (logit 10, all others 0),
    then `filler` forever. Records what the engine feeds it back."""

    def __init__(self, vocab: int, scripts: dict[int, list[int]], eos: int, filler: int):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(eos_token_id=eos)
        self.generation_config = None
        self.vocab, self.scripts, self.filler = vocab, scripts, filler
        self.fed: list[list[int]] = []

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=None):
        if past_key_values is None:  # prefill: left padded, so the last prompt token is at -1
            assert attention_mask[:, -1].all()
            cache = ScriptedCache(input_ids[:, -1].tolist(), input_ids.shape[1])
        else:
            cache = past_key_values
            cache.step += 1
            self.fed.append(input_ids[:, 0].tolist())
            assert attention_mask.shape == (len(cache.keys), cache.T + cache.step)
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for i, key in enumerate(cache.keys):
            script = self.scripts[key]
            tok = script[cache.step] if cache.step < len(script) else self.filler
            logits[i, 0, tok] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=cache)


# log p of the scripted token under softmax of (10, 0 x 261): 10 - log(e^10 + 261) = -0.011784
SCRIPTED_LOGP = 10 - math.log(math.exp(10) + 261)


@pytest.fixture()
def scripted(byte_tokenizer):
    tok = byte_tokenizer
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    A, B, C = enc("A")[0], enc("B")[0], enc("C")[0]
    scripts = {
        A: enc("hi there") + [eos] + enc("junk after eos"),
        B: enc("no\n```python\nprint(1)") + [eos],
        C: enc("a" * 50),
    }
    model = ScriptedLM(len(tok), scripts, eos, filler=enc("z")[0])
    bos = tok.bos_token_id
    prompts = {"A": [bos] + enc("xx") + [A], "B": [bos, B], "C": [bos] + enc("yyyyy") + [C]}
    return SimpleNamespace(model=model, tok=tok, enc=enc, eos=eos, prompts=prompts)


def test_eos_finish_text_without_eos(scripted):
    s = scripted
    engine = SimpleEngine(s.model, s.tok)
    (c,), = engine.generate([s.prompts["A"]], 1, SamplingParams(max_new_tokens=40, temperature=0.0, stop=["```python"]))
    assert c.finish_reason == "eos" and c.stop is None
    assert c.text == "hi there"
    assert c.token_ids == s.enc("hi there") + [s.eos]  # the eos is trained on
    assert len(c.logprobs) == len(c.token_ids) == 9
    assert c.logprobs == pytest.approx([SCRIPTED_LOGP] * 9, abs=1e-6)


def test_stop_string_finish_cuts_text_keeps_tokens(scripted):
    s = scripted
    engine = SimpleEngine(s.model, s.tok)
    (c,), = engine.generate([s.prompts["B"]], 1, SamplingParams(max_new_tokens=40, temperature=0.0, stop=["```python"]))
    assert c.finish_reason == "stop" and c.stop == "```python"
    assert c.text == "no\n"  # cut before the stop string
    # every token that spelled the stop string is kept, and nothing after it
    assert c.token_ids == s.enc("no\n```python")
    assert len(c.logprobs) == 12


def test_length_finish(scripted):
    s = scripted
    engine = SimpleEngine(s.model, s.tok)
    (c,), = engine.generate([s.prompts["C"]], 1, SamplingParams(max_new_tokens=6, temperature=0.0, stop=["```python"]))
    assert c.finish_reason == "length" and c.stop is None
    assert c.token_ids == s.enc("aaaaaa") and c.text == "aaaaaa"
    assert len(c.logprobs) == 6


def test_mixed_batch_groups_in_order_and_finished_rows_get_padding(scripted):
    s = scripted
    engine = SimpleEngine(s.model, s.tok, batch_size=4)  # 2 prompts x G=2 per batch: [A A B B], [C C]
    params = SamplingParams(max_new_tokens=15, temperature=0.0, stop=["```python"])
    groups = engine.generate([s.prompts["A"], s.prompts["B"], s.prompts["C"]], 2, params)
    assert [len(g) for g in groups] == [2, 2, 2]
    assert [[c.finish_reason for c in g] for g in groups] == [["eos"] * 2, ["stop"] * 2, ["length"] * 2]
    assert [g[0].text for g in groups] == ["hi there", "no\n", "a" * 15]
    assert all(g[0] == g[1] for g in groups)
    # first batch: rows A finish at step 8 (eos), rows B at step 11 (stop); after that the
    # engine feeds padding for them. fed[k] is what went in after sampling step k.
    first_batch = s.model.fed[:11]
    pad = engine.pad_id
    assert len(first_batch[0]) == 4
    for k, row in enumerate(first_batch):
        a_expected = s.enc("hi there")[k] if k < 8 else pad
        assert row[0] == row[1] == a_expected, k
        assert row[2] == row[3] == s.enc("no\n```python")[k], k
    # the first batch stopped once every row finished (12 tokens for B): no 12th feed
    assert len(s.model.fed) == 11 + 14  # second batch: 15 tokens -> 14 feeds


def test_min_new_tokens_bans_eos(scripted):
    s = scripted
    engine = SimpleEngine(s.model, s.tok)
    # script A puts eos at step 8; min_new_tokens 10 forbids it, the argmax falls elsewhere
    (c,), = engine.generate([s.prompts["A"]], 1, SamplingParams(max_new_tokens=12, temperature=0.0, min_new_tokens=10))
    assert s.eos not in c.token_ids[:10]
    assert c.token_ids[:8] == s.enc("hi there")


def test_eos_ids_collects_tokenizer_and_model_ids(byte_tokenizer):
    model = SimpleNamespace(config=SimpleNamespace(eos_token_id=[7, 8]),
                            generation_config=SimpleNamespace(eos_token_id=9))
    assert eos_ids(model, byte_tokenizer) == {byte_tokenizer.eos_token_id, 7, 8, 9}


# --------------------------------------------------------------------------- tiny Qwen2


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, byte_tokenizer):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir))
    ref = load_base_model(cfg, CPU, torch.float32).eval()
    policy = load_policy(cfg, CPU, torch.float32)  # as the trainer holds it: use_cache off, checkpointing on
    policy.train()
    tok = byte_tokenizer
    prompts = [tok(t)["input_ids"] for t in ["Is 3 = 3?", "Hi", "A longer prompt, with more tokens in it."]]
    return SimpleNamespace(ref=ref, policy=policy, tok=tok, prompts=prompts)


def test_greedy_equals_transformers_generate(tiny):
    engine = SimpleEngine(tiny.policy, tiny.tok, batch_size=64)
    N = 12
    groups = engine.generate(tiny.prompts, 1, SamplingParams(max_new_tokens=N, temperature=0.0))
    assert tiny.policy.training  # the engine restores the mode it found
    eos = tiny.tok.eos_token_id
    # (1) each prompt alone, no padding at all
    for p, (c,) in zip(tiny.prompts, groups):
        out = tiny.ref.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                do_sample=False, max_new_tokens=N, eos_token_id=eos, pad_token_id=eos)
        assert c.token_ids == out[0, len(p):].tolist()
    # (2) transformers' own left-padded batch
    T = max(len(p) for p in tiny.prompts)
    ids = torch.tensor([[eos] * (T - len(p)) + p for p in tiny.prompts])
    attn = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in tiny.prompts])
    out = tiny.ref.generate(ids, attention_mask=attn, do_sample=False, max_new_tokens=N, eos_token_id=eos,
                            pad_token_id=eos)
    for i, (c,) in enumerate(groups):
        new = out[i, T:].tolist()
        assert c.token_ids == new[: len(c.token_ids)]
        if c.finish_reason == "length":
            assert len(c.token_ids) == N
    # the prompts really differ in length, so left padding was exercised
    assert len({len(p) for p in tiny.prompts}) == 3


@pytest.mark.parametrize("temperature,top_p", [(0.0, 1.0), (0.8, 0.95), (1.0, 1.0)])
def test_logprobs_equal_trainer_recomputation(tiny, temperature, top_p):
    engine = SimpleEngine(tiny.policy, tiny.tok, batch_size=4)  # G=2: two prompts per batch, the third alone
    g = torch.Generator().manual_seed(0)
    groups = engine.generate(tiny.prompts, 2, SamplingParams(max_new_tokens=10, temperature=temperature, top_p=top_p), g)
    assert [len(gr) for gr in groups] == [2, 2, 2]
    prompts = [p for p in tiny.prompts for _ in range(2)]
    comps = [c for gr in groups for c in gr]
    ids, attn, mask = right_pad(prompts, [c.token_ids for c in comps], tiny.tok.pad_token_id)
    # the trainer scores at temperature T (greedy rollouts: T = 1, the unscaled softmax)
    with torch.no_grad():
        logp, _ = token_logprobs(tiny.policy, ids, attn, mask, temperature=temperature if temperature > 0 else 1.0)
    for i, c in enumerate(comps):
        assert len(c.logprobs) == len(c.token_ids) >= 1
        ours = logp[i][mask[i]]
        # a completion compared with the wrong prompt (groups out of order) would fail here too
        torch.testing.assert_close(torch.tensor(c.logprobs), ours, atol=1e-5, rtol=0)


def test_same_seed_same_samples(tiny):
    engine = SimpleEngine(tiny.policy, tiny.tok)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)

    def draw(seed):
        groups = engine.generate(tiny.prompts, 3, params, torch.Generator().manual_seed(seed))
        return [[c.token_ids for c in g] for g in groups]

    a, b, c = draw(3), draw(3), draw(4)
    assert a == b
    assert a != c
    # the G samples of a group are drawn independently (not copies of one another)
    assert any(len({tuple(x) for x in g}) > 1 for g in a)
