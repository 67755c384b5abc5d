"""Verifier-gated answer selection on hand-made candidate sets."""

import math

import pytest

from tirgrpo.data.records import Transcript, Turn
from tirgrpo.eval.selection import (Candidate, answer_ranking, bootstrap_ci, compare_selection, differences_to_majority,
                                    expected_accuracy, group_candidates, judge_answer, judge_tokens, judge_tokens_line,
                                    select,
                                    selection_table, transcript_decision_prompt, vote)
from tirgrpo.data.templates import SEED_BRIDGE, bridge


def C(answer, p):
    return Candidate(answer, p)


def test_vote_counts_integers_as_equal_and_skips_non_votes():
    assert vote(["1", "2", "1", None]) == ["1"]
    assert vote(["250", "7", "250.0"]) == ["250"]  # the same integer; the first spelling stands for it
    assert vote(["1", "2"]) == ["1", "2"]  # a tie keeps both
    assert vote([None, None]) == [] and vote([]) == []
    assert vote(["1", "2", "2"], [3.0, 1.0, 1.0]) == ["1"]  # 3 > 1 + 1
    assert vote(["1", "2"], [0.0, 0.0]) == []  # zero weight is no vote
    assert vote(["1", "2", "2"], [0.3, 0.1, 0.2]) == ["1", "2"]  # 0.1 + 0.2 ties 0.3 despite float rounding


# Five problems; for each, what the three methods pick and the expected accuracy (ties share):
PROBLEMS = {
    # majority: 3 (3 votes to 2) wrong; gated (p >= 0.5): 7, 7 -> right; weighted: 7 1.7 vs 3 0.6 -> right
    "A": ("7", [C("3", 0.1), C("3", 0.2), C("3", 0.3), C("7", 0.9), C("7", 0.8), C(None, 1.0)]),
    # nothing submitted: gated falls back to the plain vote (5); weighted: 5 has 0.4 -> all right
    "B": ("5", [C("5", 0.0), C("5", 0.4), C("2", 0.0)]),
    # majority 9 wrong; gated 4 vs 9 one each: a tie, 1/2; weighted 0.6 vs 0.6: a tie, 1/2
    "C": ("4", [C("4", 0.6), C("9", 0.6), C("9", 0.0)]),
    # every weight 0: gated and weighted fall back to the plain vote, 1 (wrong)
    "D": ("2", [C("1", 0.0), C("2", 0.0), C("1", 0.0)]),
    # majority 6 wrong; gated: 8 and 6 submitted once each, a tie, 1/2; weighted: 8 0.95 vs 6 0.9 -> right
    "E": ("8", [C("8", 0.95), C("6", 0.5), C("6", 0.4)]),
}


def test_select_on_hand_made_problems():
    expect = {"A": ("3", "7", "7"), "B": ("5", "5", "5"), "C": ("9", ["4", "9"], ["4", "9"]),
              "D": ("1", "1", "1"), "E": ("6", ["8", "6"], "8")}
    for pid, (maj, gated, weighted) in expect.items():
        _, cands = PROBLEMS[pid]
        as_list = lambda x: x if isinstance(x, list) else [x]  # noqa: E731
        assert select(cands, "majority") == as_list(maj), pid
        assert select(cands, "gated") == as_list(gated), pid
        assert select(cands, "weighted") == as_list(weighted), pid
    with pytest.raises(ValueError, match="unknown selection method"):
        select(PROBLEMS["A"][1], "best")


def test_gated_threshold():
    cands = [C("1", 0.3), C("2", 0.6), C("2", 0.7), C("1", 0.3), C("1", 0.3)]
    assert select(cands, "gated", threshold=0.5) == ["2"]  # only the 2s are submitted
    assert select(cands, "gated", threshold=0.2) == ["1"]  # all submitted: 1 wins 3 to 2
    assert select(cands, "gated", threshold=0.9) == ["1"]  # none: the plain vote


def test_completed_lets_submitted_judge_answers_vote_for_runs_without_one():
    """Answers 3, 3, 7 and three runs without one, whose judge answers are 7 (P 0.9), 7 (P 0.5:
    at the threshold, it votes) and 3 (P 0.4: below, it does not). completed: 7 three votes
    to 3's two. A run with its own answer keeps it whatever the judge boxes."""
    J = lambda answer, p, theirs: Candidate(answer, p, True, theirs)  # noqa: E731
    cands = [J("3", 0.2, "7"), J("3", 0.2, None), J("7", 0.9, "7"), J(None, 0.9, "7"), J(None, 0.5, "7.0"),
             J(None, 0.4, "3")]
    assert select(cands, "majority") == ["3"]
    assert select(cands, "completed") == ["7"]
    assert select(cands, "completed", threshold=0.95) == ["3"]  # none of the judge's answers votes
    assert select([J(None, 0.1, "7")], "completed") == []  # nothing votes at all
    res = compare_selection({"P": ("7", cands)}, n_boot=50)
    assert res["methods"]["completed"]["accuracy"] == 1.0 and res["completed_votes"] == {"transcripts": 2, "right": 2}


def test_judge_answer_is_the_most_frequent_submitted_box():
    texts = ["\\boxed{12}", "so \\boxed{12.0}", "\\boxed{9}", "\\boxed{9}\n```python\nprint(1)", "\\boxed{5}"]
    # the fourth declines (its box is followed by code: decide reads it as a decline); the fifth's
    # decision is invalid: neither counts. 12 and 12.0 are one integer: two votes to 9's one.
    decisions = ["submit", "submit", "submit", "decline", "invalid"]
    assert judge_answer(texts, decisions) == "12"
    assert judge_answer(["\\boxed{4}", "\\boxed{6}"], ["submit", "submit"]) == "4"  # a tie: the first seen
    assert judge_answer(["x \\boxed{8} ```python\nprint(2)\n``` \\boxed{3}"], ["submit"]) == "8"  # before the code
    assert judge_answer(["check"], ["decline"]) is None and judge_answer([], []) is None


def test_expected_accuracy_shares_ties():
    assert expected_accuracy(["4", "9"], "4") == 0.5
    assert expected_accuracy(["4.0"], "4") == 1.0
    assert expected_accuracy([], "4") == 0.0


def test_compare_selection_accuracies():
    res = compare_selection(PROBLEMS, n_boot=500)
    acc = {m: v["accuracy"] for m, v in res["methods"].items()}
    assert acc == pytest.approx({
        "majority": 0.2,      # only B
        "gated": 0.6,         # (1 + 1 + 0.5 + 0 + 0.5) / 5
        "weighted": 0.7,      # (1 + 1 + 0.5 + 0 + 1) / 5
        "completed": 0.2,     # no judge answers recorded: majority's
        "any_correct": 1.0,   # every problem has a right transcript
    })
    for v in res["methods"].values():
        assert 0.0 <= v["ci_low"] <= v["accuracy"] <= v["ci_high"] <= 1.0
    a = res["per_problem"][0]
    assert (a["problem"], a["transcripts"], a["submitted"], a["majority_answers"]) == ("A", 6, 3, ["3"])
    table = selection_table(res)
    assert "| gated | 0.600 |" in table and "5 problems" in table


def test_answer_ranking_pools_answered_transcripts_and_averages_contested_problems():
    """Contested (majority wrong, some transcript right): A, C, D, E. Within each, right vs wrong
    answers: A 1.0 (0.9, 0.8 over 0.1-0.3), C (0.6 ties 0.6, beats 0) 0.75, D (0 ties 0, 0) 0.5,
    E 1.0 -> mean 0.8125. Pooled over all five, the seven right answers' P(submit) 0.9, 0.8, 0, 0.4,
    0.6, 0, 0.95 against the ten wrong ones win 10 + 10 + 2 + 7.5 + 9.5 + 2 + 10 = 51 of 70 pairs;
    A's unanswered transcript (P = 1.0) is left out."""
    rank = answer_ranking(PROBLEMS)
    assert rank["contested_problems"] == 4 and rank["contested_auroc"] == pytest.approx(0.8125)
    # Vote shares (of each problem's transcripts): the right answers 1/3 (A's 7s of 6, C, D, E) five
    # times and 2/3 (B's 5s) twice; the wrong 1/2 (A's 3s) three times, 1/3 (B's 2) once, 2/3 six
    # times. A right 1/3 ties one wrong (0.5); a right 2/3 beats four and ties six (7): (2.5 + 14) / 70.
    assert rank["vote_share_auroc"] == pytest.approx(16.5 / 70)
    assert rank["auroc"] == pytest.approx(51 / 70)
    assert compare_selection(PROBLEMS, n_boot=50)["answer_ranking"] == rank
    assert math.isnan(answer_ranking({"B": PROBLEMS["B"]})["contested_auroc"])  # majority right: nothing contested


def test_differences_to_majority_are_paired_per_problem():
    """Per problem (A..E) majority scores 0, 1, 0, 0, 0; gated 1, 1, 0.5, 0, 0.5; weighted 1, 1, 0.5, 0, 1:
    gated - majority = (1 + 0 + 0.5 + 0 + 0.5) / 5 = 0.4 over 3 better problems and none worse."""
    res = compare_selection(PROBLEMS, n_boot=500)
    diff = res["vs_majority"]
    assert diff["gated"]["difference"] == pytest.approx(0.4) and (diff["gated"]["better"], diff["gated"]["worse"]) == (3, 0)
    assert diff["weighted"]["difference"] == pytest.approx(0.5) and diff["weighted"]["better"] == 3
    for v in diff.values():  # resampled problems: never below 0 (no problem got worse), never above 1
        assert 0.0 <= v["ci_low"] <= v["difference"] <= v["ci_high"] <= 1.0
    assert differences_to_majority(res["per_problem"], n_boot=500) == diff  # the same rows, the same seed
    # One problem a method loses and one it wins: a difference of 0 whose interval spans both signs.
    rows = [{"majority": 1.0, "gated": 0.0, "weighted": 1.0}, {"majority": 0.0, "gated": 1.0, "weighted": 0.0}] * 20
    gated = differences_to_majority(rows, n_boot=1000)["gated"]
    assert "completed" not in differences_to_majority(rows)  # rows stored before that method existed
    assert gated["difference"] == 0.0 and gated["ci_low"] < 0 < gated["ci_high"] and gated["worse"] == 20
    assert "| gated | +0.400 |" in selection_table(res)


def test_judge_tokens_by_hand():
    """Two judged transcripts: prompts of 100 and 300 tokens, judgements of (20, 22) and (21, 25)
    tokens: 400 prompt tokens (200 each), 88 generated (44 each)."""
    cost = judge_tokens([100, 300], [[20, 22], [21, 25]])
    assert cost == {"transcripts": 2, "prompt": 400, "generated": 88, "prompt_per_transcript": 200.0,
                    "generated_per_transcript": 44.0}
    table = selection_table({**compare_selection(PROBLEMS, n_boot=50), "judge_tokens": cost})
    # after the tables, as a paragraph of its own (not read as one more table row)
    assert "|\n\nJudging cost: 2 transcripts judged, 400 prompt tokens read (200 a transcript) and 88 tokens " \
        "generated (44" in table
    empty = judge_tokens([], [])
    assert math.isnan(empty["prompt_per_transcript"]) and judge_tokens_line(empty) == judge_tokens_line(None) == ""
    with pytest.raises(ValueError, match="2 prompts but 1 judged"):
        judge_tokens([100, 300], [[20, 22]])


def test_bootstrap_ci():
    assert bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    lo, hi = bootstrap_ci([0.0, 1.0] * 50, n_boot=1000, seed=1)
    # the mean of 100 coin flips has standard error 0.05: a 95% interval about 0.5 +- 0.1
    assert 0.37 < lo < 0.45 and 0.55 < hi < 0.63
    assert bootstrap_ci([0.0, 1.0] * 50, n_boot=1000, seed=1) == (lo, hi)  # seeded
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_group_candidates_by_problem_in_order():
    groups = group_candidates(["q2", "q1", "q2"], ["5", "3", "5"], ["5", None, "6"], [1.0, 0.5, 0.0])
    assert list(groups) == ["q2", "q1"]
    assert groups["q2"] == ("5", [C("5", 1.0), C("6", 0.0)])
    assert groups["q1"] == ("3", [C(None, 0.5)])


def _turn(text, code=None, output=None):
    return Turn(text=text, code=code, output=output, finish_reason=None, wall_s=None)


def test_transcript_decision_prompt_is_the_text_up_to_the_last_bridge():
    t = Transcript(problem_id="p", sample=0, question="q", correct_answer="42", eventual_answer="42",
                   prompt="P:", bridge=SEED_BRIDGE,
                   turns=(_turn("a```python\nprint(1)\n```", "print(1)", "1"),
                          _turn("b```python\nprint(42)\n```", "print(42)", "42"),
                          _turn(" fine</think>\\boxed{42}")))
    expected = "P:" + "a```python\nprint(1)\n```" + bridge("1") + "b```python\nprint(42)\n```" + bridge("42")
    assert transcript_decision_prompt(t) == expected
    no_code = Transcript(problem_id="p", sample=1, question="q", correct_answer="42", eventual_answer="41",
                         prompt="P:", bridge=SEED_BRIDGE, turns=(_turn("</think>\\boxed{41}"),))
    assert transcript_decision_prompt(no_code) is None
