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


def test_selection_votes_with_unjudged_transcripts_but_ranks_only_the_judged():
    """One problem: 5 (right, judged, P 0.9), 4 (judged, P 0.1), 4 (no code output: unjudged, P 1
    in the vote). Majority picks 4; gated ties 5 with the unjudged 4 (1/2); the judge's ranking
    sees only its own two: right above wrong, AUROC 1."""
    examples = [SimpleNamespace(correct_answer="5", eventual_answer=a) for a in ("5", "4", "4")]
    def judged(submits):  # 10 judgements, `submits` of them submitting
        return {"samples": [{"decision": "submit", "tokens": 3, "text": "\\boxed{5}"}] * submits
                + [{"decision": "decline", "tokens": 5, "text": "no"}] * (10 - submits)}

    result = {"completions": [judged(9), judged(1)]}
    sel = verifier.selection(result, [0, 1], [40, 60], examples, ["p", "p", "p"], threshold=0.5, seed=0)
    acc = {m: v["accuracy"] for m, v in sel["methods"].items()}
    assert acc["majority"] == 0.0 and acc["gated"] == 0.5
    # the vote shares: the right 5 one of three transcripts, the wrong 4 two: AUROC 0
    assert sel["answer_ranking"] == {"auroc": 1.0, "vote_share_auroc": 0.0, "contested_problems": 1,
                                     "contested_auroc": 1.0}
    # judging cost: the two judged prompts (40 + 60 tokens); 9 x 3 + 1 x 5 and 1 x 3 + 9 x 5 generated
    assert (sel["judge_tokens"]["prompt"], sel["judge_tokens"]["generated"]) == (100, 80)


def test_selection_lets_the_judge_answer_for_a_run_without_an_answer():
    """Two runs answered 4 (wrong; the judge submits 1 in 10); four never answered, and at their
    last code output the judge boxes 5 with P 0.8, 0.6, 0.2 and 0.9 (the last as "5.0").
    Majority: 4. completed: the three at P >= 0.5 vote 5, three votes to two."""
    examples = [SimpleNamespace(correct_answer="5", eventual_answer=a) for a in ("4", "4", None, None, None, None)]
    def judged(submits, box="5"):  # 10 judgements, `submits` of them box `box` before any code
        return {"samples": [{"decision": "submit", "tokens": 3, "text": f"so \\boxed{{{box}}}."}] * submits
                + [{"decision": "decline", "tokens": 5, "text": "check"}] * (10 - submits)}

    result = {"completions": [judged(1), judged(1), judged(8), judged(6), judged(2), judged(9, "5.0")]}
    sel = verifier.selection(result, list(range(6)), [10] * 6, examples, ["p"] * 6, threshold=0.5, seed=0)
    acc = {m: v["accuracy"] for m, v in sel["methods"].items()}
    assert acc["majority"] == 0.0 and acc["completed"] == 1.0
    assert sel["completed_votes"] == {"transcripts": 3, "right": 3}  # the P 0.2 run does not vote
    assert sel["per_problem"][0]["completed_answers"] == ["5"]


def test_eval_refuses_a_run_given_twice_before_loading_the_model(tmp_path, tiny_model_dir, capsys):
    import json

    from tirgrpo.cli import main
    from tirgrpo.data.records import Transcript, Turn, transcript_to_dict
    from tirgrpo.data.templates import SEED_BRIDGE

    run = Transcript("a", 0, "qa", "4", "4", "<｜User｜>q<｜Assistant｜><think>\n", SEED_BRIDGE,
                     (Turn("x```python\nprint(4)\n```", "print(4)", "4", None, None), Turn("\\boxed{4}", None, None,
                                                                                        "eos", None)))
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps(transcript_to_dict(run)) + "\n" + json.dumps(transcript_to_dict(run)) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--transcripts", str(path), "--selection", "--device", "cpu",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 2: problem_id 'a' sample 0 again (first on line 1)" in err and "internal" not in err
    assert not out.exists()
