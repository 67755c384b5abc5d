"""benchmarks/selection_weights.py: reweighted and gated votes on two hand-made problems."""

from __future__ import annotations

import json

import pytest

# A (right answer "1"): "1" with P(submit) 1, "2" twice with 0 -> majority picks "2".
# B (right answer "3"): "3" with 0.5, "4" with 1 -> majority ties (0.5).
ROWS = [("A", "1", "1", "ssss"), ("A", "1", "2", "dddd"), ("A", "1", "2", "dddd"),
        ("B", "3", "3", "ssdd"), ("B", "3", "4", "ssss")]


@pytest.fixture
def transcripts(tmp_path):
    path = tmp_path / "selection-transcripts.jsonl"
    path.write_text("".join(json.dumps({"question": q, "correct_answer": c, "eventual_answer": a, "label": "x",
                                        "decisions": d}) + "\n" for q, c, a, d in ROWS))
    return str(path)


def test_each_rule_scores_as_worked_out_by_hand(transcripts, load_benchmark):
    bench = load_benchmark("selection_weights")
    problems = bench.read_problems(transcripts)
    assert problems["B"] == ("3", [("3", 0.5), ("4", 1.0)])
    rules = bench.rules()
    score = {name: [bench.score(*problems[q], rules[name]) for q in ("A", "B")] for name in rules}
    assert score["P^0"] == [0.0, 0.5]  # every weight 1: majority ("2" on A, a tie on B)
    assert score["P^1"] == [1.0, 0.0]  # "1" alone has weight on A; 1.0 > 0.5 picks "4" on B
    assert score["P^0.5"] == [1.0, 0.0]
    assert score["P>=0.5"] == [1.0, 0.5]  # both of B's pass the gate: a tie again
    assert score["P>=0.625"] == [1.0, 0.0]


def test_cross_fitted_choice_is_scored_on_the_other_fold(load_benchmark):
    bench = load_benchmark("selection_weights")
    table = {"P^0": [0.0, 0.5], "P^0.5": [1.0, 0.0], "P>=0.5": [1.0, 0.5]}
    # Fold of A: chosen on B, where P^0 and P>=0.5 tie at 0.5 (the first wins): P^0 scores 0 - 0 on A.
    # Fold of B: chosen on A: P^0.5 (first of the 1.0s) scores 0 - 0.5 on B.  Mean -0.25.
    diffs, chosen = bench.cross_fitted(table, table["P^0"], folds=2, seed=0)
    assert sorted(diffs) == [-0.5, 0.0] and sorted(chosen) == ["P^0", "P^0.5"]


def test_the_command_prints_each_rule_and_refuses_one_fold(transcripts, load_benchmark, capsys):
    bench = load_benchmark("selection_weights")
    assert bench.main([transcripts, "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 problems, 5 judged transcripts" in out and "| P^1 | 0.500 | +0.250 | 1 / 1 |" in out
    assert "cross-fitted over 2 folds: -0.250 [" in out
    with pytest.raises(SystemExit):
        bench.main([transcripts, "--folds", "1"])
    assert "--folds must be at least 2" in capsys.readouterr().err


def test_a_bad_row_names_the_file_and_line(tmp_path, load_benchmark):
    bench = load_benchmark("selection_weights")
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"question": "A", "correct_answer": "1", "eventual_answer": "1", "decisions": "s"})
                    + "\n" + json.dumps({"question": "A"}) + "\n")
    with pytest.raises(SystemExit, match=r"t\.jsonl:2: not a selection transcript row"):
        bench.read_problems(str(path))


def test_vote_share_bands_by_hand(transcripts, load_benchmark, capsys):
    """A: "1" (right, 1 of 3 transcripts, P 1) and "2" twice (2/3, P 0); B: "3" (right, 1/2, P 0.5)
    and "4" (1/2, P 1). Vote share ranks: right 1/3 and 1/2 against wrong 2/3, 2/3 and 1/2: the
    1/2 ties one, so 0.5 of 6 pairs. Bands: [0.25, 0.5) holds A's "1" alone (AUROC nan: one class);
    [0.5, 0.75) holds the other four: right "3" (P 0.5) against 0, 0 and 1: 2 of 3."""
    bench = load_benchmark("selection_weights")
    bands = {b: (n, r, a) for b, n, r, a in bench.by_vote_share(bench.read_problems(transcripts))}
    assert bands["[0.5, 0.75)"] == (4, 1, pytest.approx(2 / 3)) and bands["[0, 0.25)"][:2] == (0, 0)
    assert bands["[0.25, 0.5)"][:2] == (1, 1) and bands["[0.75, 1]"][:2] == (0, 0)
    bench.main([transcripts, "--folds", "2"])
    out = capsys.readouterr().out
    # pooled P(submit): right 1 and 0.5 against wrong 0, 0, 1: (2.5 + 2) / 6
    assert "AUROC of P(submit) 0.750, of the answer's vote share 0.083" in out
