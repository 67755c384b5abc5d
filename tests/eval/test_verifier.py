"""eval/verifier.py: which examples a judge sees, and that answer selection keeps every transcript."""

from types import SimpleNamespace

import pytest

from tirgrpo.errors import TirgrpoError
from tirgrpo.eval import verifier


def _tokenizer(text):
    return {"input_ids": list(range(len(text)))}  # one token a character


def _transcripts(monkeypatch, prompts, problem_ids):
    examples = [SimpleNamespace(i=i) for i in range(len(prompts))]
    monkeypatch.setattr(verifier, "transcript_examples", lambda path: (examples, list(problem_ids), list(prompts)))


def test_transcripts_over_the_prompt_limit_stay_for_selection_unjudged(monkeypatch):
    # p1: two long prompts and a short one; p2: no code output (None) and a short one
    _transcripts(monkeypatch, ["x" * 50, "x" * 50, "x" * 5, None, "x" * 5], ["p1", "p1", "p1", "p2", "p2"])
    examples, ids, prompts = verifier.examples_to_judge(None, "t.jsonl", _tokenizer, 10, 0)
    assert [e.i for e in examples] == [0, 1, 2, 3, 4] and ids == ["p1", "p1", "p1", "p2", "p2"]
    assert prompts == [None, None, "x" * 5, None, "x" * 5]  # the long ones unjudged, not dropped


def test_max_examples_takes_whole_problems_of_transcripts(monkeypatch):
    _transcripts(monkeypatch, ["a"] * 7, ["p1", "p1", "p1", "p2", "p2", "p2", "p3"])
    _, ids, _ = verifier.examples_to_judge(None, "t.jsonl", _tokenizer, 0, 4)
    assert ids == ["p1", "p1", "p1"]  # p2 would make 6 > 4: never half a problem
    _, ids, _ = verifier.examples_to_judge(None, "t.jsonl", _tokenizer, 0, 2)
    assert ids == ["p1", "p1", "p1"]  # at least one whole problem
    _, ids, _ = verifier.examples_to_judge(None, "t.jsonl", _tokenizer, 0, 6)
    assert ids == ["p1"] * 3 + ["p2"] * 3


def test_labelled_examples_over_the_limit_are_dropped(monkeypatch, tmp_path):
    from tirgrpo.data.records import Example, write_examples

    rows = [Example(question=f"q{i}", prompt="x" * n, completion="ok", correct_answer="1", eventual_answer="1",
                    label="correct", prompt_tokens=0, completion_tokens=0, source="t") for i, n in enumerate((5, 50, 6))]
    write_examples(tmp_path / "e.jsonl", rows)
    examples, ids, prompts = verifier.examples_to_judge(str(tmp_path / "e.jsonl"), None, _tokenizer, 10, 0)
    assert ids == ["q0", "q2"] and prompts == ["x" * 5, "x" * 6]
    with pytest.raises(TirgrpoError, match="no example left"):
        verifier.examples_to_judge(str(tmp_path / "e.jsonl"), None, _tokenizer, 1, 0)
