"""Which completion tokens carry the advantage under `grpo.credit`, on hand-made token lists."""

import pytest

from tirgrpo.score.credit import credit_weights, decision_start, first_token_at

# a toy tokenizer: each id is one string piece; decode joins them
PIECES = {1: "The ", 2: "code ", 3: "is ", 4: "right.", 5: "\\boxed{", 6: "24", 7: "0}", 8: "```", 9: "python",
          10: "<eos>", 11: " wrong", 12: "\n"}


def decode(ids):
    return "".join(PIECES[i] for i in ids)


def test_decision_start_submit_decline_invalid():
    assert decision_start("ok \\boxed{} then \\boxed{7}.", "submit") == 17  # "ok " 3 + "\\boxed{}" 8 + " then " 6
    # the last non-empty box before the python block is the decision
    assert decision_start("\\boxed{3} or \\boxed{4}\n```python\n\\boxed{9}", "submit") == 13
    assert decision_start("It is wrong.\n```python\nx = 1", "decline") == 13
    # a decline stopped on the fence: its tokens follow the (stripped) text
    assert decision_start("It is wrong.\n", "decline") == 13
    assert decision_start("no decision", "invalid") is None


def test_first_token_at_binary_search():
    ids = [1, 2, 3, 4, 5, 6, 7]  # "The code is right.\boxed{240}"
    assert first_token_at(ids, 0, decode) == 0
    assert first_token_at(ids, 3, decode) == 0  # the space of "The "
    assert first_token_at(ids, 4, decode) == 1
    assert first_token_at(ids, 18, decode) == 4  # "\" of \boxed{ starts token 4
    assert first_token_at(ids, 100, decode) == 7


@pytest.mark.parametrize("ids, decision, expected", [
    # submit: "\boxed{240}<eos>" credited, the analysis not
    ([1, 2, 3, 4, 5, 6, 7, 10], "submit", [0, 0, 0, 0, 1, 1, 1, 1]),
    # decline stopped on the fence (text without it): the fence tokens
    ([1, 2, 11, 12, 8, 9], "decline", [0, 0, 0, 0, 1, 1]),
    # invalid: every token
    ([1, 2, 3], "invalid", [1, 1, 1]),
])
def test_credit_weights_decision(ids, decision, expected):
    text = decode(ids).replace("<eos>", "")
    if decision == "decline":
        text = text[: text.index("```")]
    assert credit_weights(text, ids, decision, "decision", decode) == expected


def test_credit_weights_all_tokens_and_bad_name():
    assert credit_weights("x \\boxed{1}", [1, 5], "submit", "all_tokens", decode) == [1, 1]
    with pytest.raises(ValueError, match="credit"):
        credit_weights("x", [1], "submit", "decision_only", decode)
