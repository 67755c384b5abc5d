"""Stop strings found on decoded text while tokens arrive one at a time, across token
boundaries, and the text cut before the stop string."""

import pytest

from tirgrpo.rollout.stops import StopMatcher

STOP = "```python"


def first_hit(matcher, ids):
    """Feed tokens one at a time like the engine; return (number of tokens, stop) at the first hit."""
    for k in range(1, len(ids) + 1):
        s = matcher.hit(ids[:k])
        if s is not None:
            return k, s
    return None, None


def test_byte_level_stop_spans_nine_tokens(byte_tokenizer):
    tok = byte_tokenizer
    prefix = tok("Let me check.\n", add_special_tokens=False)["input_ids"]
    stop_ids = tok(STOP, add_special_tokens=False)["input_ids"]
    assert len(stop_ids) == 9  # one byte per token
    ids = prefix + stop_ids + tok("\nx = 1", add_special_tokens=False)["input_ids"]
    m = StopMatcher(tok, [STOP])
    k, s = first_hit(m, ids)
    # the hit comes exactly with the 9th token of the stop string, not one token earlier
    assert (k, s) == (len(prefix) + 9, STOP)
    assert m.hit(ids[: len(prefix) + 8]) is None


def test_byte_level_stop_after_a_long_text(byte_tokenizer):
    """Only a window of tokens is decoded; a stop after 2,000 tokens is still found."""
    tok = byte_tokenizer
    ids = tok("a" * 2000 + "\n" + STOP, add_special_tokens=False)["input_ids"]
    k, s = first_hit(StopMatcher(tok, [STOP]), ids)
    assert (k, s) == (len(ids), STOP)


def test_byte_level_multibyte_stop_string(byte_tokenizer):
    """A stop string of 4-byte characters: 3 characters are 12 byte-tokens."""
    tok = byte_tokenizer
    stop = "😀😀😀"
    ids = tok("ok " + stop + " more", add_special_tokens=False)["input_ids"]
    assert len(tok(stop, add_special_tokens=False)["input_ids"]) == 12
    k, s = first_hit(StopMatcher(tok, [stop]), ids)
    assert (k, s) == (3 + 12, stop)


def test_r1_tokenizer_stop_across_token_boundary(r1_tokenizer):
    tok = r1_tokenizer
    text = "The output 24 is wrong.\n\n" + STOP + "\nprint(48 / 2)\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    m = StopMatcher(tok, [STOP])
    k, s = first_hit(m, ids)
    assert s == STOP
    # the hit is the first prefix whose decoded text holds the stop string
    assert STOP in tok.decode(ids[:k]) and STOP not in tok.decode(ids[: k - 1])
    # and it spans a token boundary: the last token alone ("python") is not the stop string
    assert STOP not in tok.decode(ids[k - 1 : k])
    assert tok.decode(ids[k - 1 : k]) == "python"


def test_no_hit_without_stop_and_on_near_misses(byte_tokenizer):
    tok = byte_tokenizer
    m = StopMatcher(tok, [STOP])
    for text in ["```pytho", "``` python", "```py\nthon", "```output\n24\n```"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert first_hit(m, ids) == (None, None), text


def test_empty_stop_list_never_hits(byte_tokenizer):
    m = StopMatcher(byte_tokenizer, ["", ""])
    assert m.stops == []
    assert m.hit(byte_tokenizer(STOP, add_special_tokens=False)["input_ids"]) is None


def test_several_stops_report_the_one_found(byte_tokenizer):
    tok = byte_tokenizer
    m = StopMatcher(tok, [STOP, "</answer>"])
    ids = tok("x </answer> y", add_special_tokens=False)["input_ids"]
    k, s = first_hit(m, ids)
    assert s == "</answer>" and k == len("x </answer>")


# --------------------------------------------------------------------------- cut


def test_cut_before_the_stop_string(byte_tokenizer):
    m = StopMatcher(byte_tokenizer, [STOP])
    assert m.cut("no wait\n```python\nprint(1)") == ("no wait\n", STOP)
    assert m.cut("```python") == ("", STOP)
    assert m.cut("nothing here") == ("nothing here", None)


def test_cut_takes_the_earliest_of_several_stops(byte_tokenizer):
    m = StopMatcher(byte_tokenizer, [STOP, "STOP"])
    assert m.cut("a STOP b ```python c") == ("a ", "STOP")
    assert m.cut("a ```python b STOP c") == ("a ", STOP)
    # and the first occurrence of one stop string
    assert m.cut("x```pythony```python") == ("x", STOP)


@pytest.mark.parametrize("stops", [[], [""]])
def test_cut_without_stops_keeps_text(byte_tokenizer, stops):
    assert StopMatcher(byte_tokenizer, stops).cut("abc```python") == ("abc```python", None)
