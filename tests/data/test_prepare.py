"""`tirgrpo prepare`: segments, token limits, pairing, split by question, errors, acceptance."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tirgrpo.cli import main
from tirgrpo.data.prepare import (
    eval_question_count,
    extract_segments,
    pair_by_question,
    percentile,
    split_by_question,
    tokenize,
    within_limits,
)
from tirgrpo.data.records import Example, Segment, Transcript, Turn, transcript_to_dict
from tirgrpo.data.templates import SEED_BRIDGE, bridge, code_prompt

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CSV = REPO.parent / "shared" / "data" / "tir" / "r1_distill_7b_tir_sample.csv"
if not SAMPLE_CSV.is_file():  # no shared/ beside this clone: the copy in tests/fixtures
    SAMPLE_CSV = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "r1_distill_7b_tir_sample.csv"
HEADER = ["prompt", "completion", "question", "correct_answer", "eventual_answer"]


class WordTokenizer:
    """Stand-in tokenizer with hand-countable lengths: one token per word, plus a bos."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[0] * add_special_tokens + [1] * len(t.split()) for t in texts]}


def ex(question: str, label: str, prompt_tokens: int = 10, completion_tokens: int = 5, tag: str = "") -> Example:
    return Example(
        question=question, prompt=f"prompt {tag}", completion=f"completion {tag}", correct_answer="1",
        eventual_answer="1" if label == "correct" else "2", label=label,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source="test",
    )  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- segments


def test_extract_segments_cuts_after_each_bridge_and_before_new_code():
    t0 = "Plan: multiply.\n```python\nprint(6*8)\n```"
    t1 = " that is wrong, it should be 6*7.\n</think>\n\n```python\nprint(6*7)\n```"
    t2 = " right.\n</think>\n\n\\boxed{42}"
    t = Transcript(
        problem_id="p", sample=0, question="6*7?", correct_answer="42", eventual_answer="42",
        prompt=code_prompt("6*7?"), bridge=SEED_BRIDGE,
        turns=(Turn(t0, "print(6*8)", "48", "code", None), Turn(t1, "print(6*7)", "42", "code", None),
               Turn(t2, None, None, "eos", None)),
    )  # fmt: skip
    first, second = extract_segments(t, "t.jsonl", "t.jsonl, transcript 1")
    assert first.prompt == code_prompt("6*7?") + t0 + bridge("48")
    assert first.completion == " that is wrong, it should be 6*7.\n</think>\n\n"
    assert second.prompt == code_prompt("6*7?") + t0 + bridge("48") + t1 + bridge("42")
    assert second.completion == t2
    assert first.label == second.label == "correct" and first.source == "t.jsonl"
    # A completion that goes straight to new code is empty: no segment.
    straight = Transcript(**{**t.__dict__, "turns": (t.turns[0], Turn("```python\nx\n```", "x", "", None, None))})
    assert extract_segments(straight, "t", "t") == []
    # Without a correct answer there is no label, so no segment.
    assert extract_segments(Transcript(**{**t.__dict__, "correct_answer": None}), "t", "t") == []


def test_tokenize_counts_bos_on_prompts_only():
    seg = Segment("q", "one two three", "four five", "1", "2", "s", "here")
    (e,) = tokenize([seg], WordTokenizer(), progress=False)
    assert (e.prompt_tokens, e.completion_tokens, e.label) == (4, 2, "wrong")


# ----------------------------------------------------------------------------- filters


def test_token_limits_and_zero_means_no_limit():
    a, b, c = ex("q1", "correct", 3, 10, "a"), ex("q2", "correct", 5, 2, "b"), ex("q3", "wrong", 8, 4, "c")
    assert within_limits([a, b, c], 5, 4) == ([a, b], [b])
    assert within_limits([a, b, c], 0, 4) == ([a, b, c], [b, c])
    assert within_limits([a, b, c], 0, 0) == ([a, b, c], [a, b, c])


def test_pairing_keeps_one_correct_and_one_wrong_per_question():
    c1, c2, w1 = ex("Q1", "correct", tag="c1"), ex("Q1", "correct", tag="c2"), ex("Q1", "wrong", tag="w1")
    only = ex("Q2", "correct", tag="only")
    c3, w3, w4 = ex("Q3", "correct", tag="c3"), ex("Q3", "wrong", tag="w3"), ex("Q3", "wrong", tag="w4")
    data = [c1, only, w1, c3, c2, w3, w4]
    paired = pair_by_question(data, seed=0)
    assert [(e.question, e.label) for e in paired] == [("Q1", "correct"), ("Q1", "wrong"), ("Q3", "correct"), ("Q3", "wrong")]
    assert paired[0] in (c1, c2) and paired[1] == w1 and paired[2] == c3 and paired[3] in (w3, w4)
    assert pair_by_question(data, seed=0) == paired  # reproducible
    # The seed decides: over a few seeds both correct rows of Q1 get picked.
    assert {pair_by_question(data, seed=s)[0].prompt for s in range(20)} == {"prompt c1", "prompt c2"}
    # A question's pick does not depend on which other questions are present.
    for s in range(5):
        assert pair_by_question([c1, w1, c2], seed=s)[:2] == pair_by_question(data, seed=s)[:2]


def test_pairing_keeps_up_to_k_distinct_pairs_per_question():
    c1, c2, c3 = (ex("Q1", "correct", tag=t) for t in ("c1", "c2", "c3"))
    w1, w2 = ex("Q1", "wrong", tag="w1"), ex("Q1", "wrong", tag="w2")
    c4, w4 = ex("Q2", "correct", tag="c4"), ex("Q2", "wrong", tag="w4")
    data = [c1, w1, c2, c4, w2, c3, w4]
    paired = pair_by_question(data, seed=0, pairs_per_question=3)
    # Q1: min(3, 3 correct, 2 wrong) = 2 pairs, then Q2's one; correct, wrong alternate
    assert [(e.question, e.label) for e in paired] == [("Q1", "correct"), ("Q1", "wrong")] * 2 + [
        ("Q2", "correct"), ("Q2", "wrong")]
    assert {paired[1].prompt, paired[3].prompt} == {"prompt w1", "prompt w2"}  # no example twice
    assert len({paired[0].prompt, paired[2].prompt}) == 2
    # one pair a question: the picks of one random.choice per label, as before K existed
    import random

    for s in range(5):
        rng = random.Random(f"{s}\0Q1")
        expected = [rng.choice([c1, c2, c3]), rng.choice([w1, w2])]
        assert pair_by_question(data, seed=s, pairs_per_question=1)[:2] == expected


@pytest.mark.parametrize("n, fraction, expected", [(0, 0.1, 0), (1, 0.5, 0), (2, 0.1, 1), (3, 0.1, 1), (10, 0.2, 2), (10, 0.99, 9), (5, 0.0, 0)])
def test_eval_question_count(n, fraction, expected):
    assert eval_question_count(n, fraction) == expected


def test_split_is_by_question_and_reproducible():
    data = [ex(f"Q{i}", label, tag=f"{i}{label}") for i in range(10) for label in ("correct", "wrong")]
    train, held = split_by_question(data, 0.2, seed=3)
    assert len(train) == 16 and len(held) == 4
    assert not {e.question for e in train} & {e.question for e in held}
    assert sorted(train + held, key=data.index) == data
    assert split_by_question(data, 0.2, seed=3) == (train, held)
    helds = {frozenset(e.question for e in split_by_question(data, 0.2, seed=s)[1]) for s in range(10)}
    assert len(helds) > 1  # the seed changes which questions are held out


def test_percentile_interpolates_like_numpy():
    assert [percentile([1, 2, 3, 4], q) for q in (0, 50, 90, 100)] == [1, 2.5, 3.7, 4]
    assert percentile([], 50) == 0.0


# ----------------------------------------------------------------------------- the command


def make_inputs(tmp_path: Path) -> list[str]:
    """Q1: 2 correct + 1 wrong, Q2: 1 + 1, Q3: correct only (CSV); Q4: 1 + 1 (transcripts)."""
    rows = [
        ["<｜User｜>Q1 prompt a", "fine.\n</think>\n\n\\boxed{5}", "Q1", "5", "5"],
        ["<｜User｜>Q1 prompt b", "ok.\n</think>\n\n\\boxed{5}", "Q1", "5", "5.0"],
        ["<｜User｜>Q1 prompt c", "wrong output, fix it.\n</think>\n\n", "Q1", "5", "6"],
        ["<｜User｜>Q2 prompt " + "word " * 1000, "fine.", "Q2", "7", "7"],  # 1,006 tokens
        ["<｜User｜>Q2 prompt b", "hmm.", "Q2", "7", "8"],
        ["<｜User｜>Q3 prompt", "fine.", "Q3", "9", "9"],
    ]
    csv_path = write_csv(tmp_path / "seed.csv", rows)

    def transcript(sample: int, eventual: str, verdict: str) -> dict:
        t = Transcript(
            problem_id="q4", sample=sample, question="Q4", correct_answer="4", eventual_answer=eventual,
            prompt=code_prompt("Q4"), bridge=SEED_BRIDGE,
            turns=(Turn("```python\nprint(2+2)\n```", "print(2+2)", eventual, "code", 0.1),
                   Turn(verdict, None, None, "eos", 0.1)),
        )  # fmt: skip
        return transcript_to_dict(t)

    jsonl = tmp_path / "runs.jsonl"
    jsonl.write_text(
        json.dumps(transcript(0, "4", " right.\n</think>\n\n\\boxed{4}")) + "\n"
        + json.dumps(transcript(1, "3", " it prints 3.\n</think>\n\n\\boxed{3}")) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    return [str(csv_path), str(jsonl)]


def test_prepare_pairs_filters_and_splits(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["prepare", "--input", *make_inputs(tmp_path), "--out", str(out), "--max-prompt-tokens", "500",
            "--eval-fraction", "0.34", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    stats = json.loads((out / "stats.json").read_text())
    steps = {s["step"]: (s["rows"], s["questions"], s["correct"], s["wrong"]) for s in stats["steps"]}
    assert steps == {
        "segments read": (8, 4, 5, 3),
        "prompt <= 500 tokens": (7, 4, 4, 3),  # Q2's long prompt is dropped; Q4's have 359 tokens
        "completion <= 1000 tokens": (7, 4, 4, 3),
        "paired (1 correct + 1 wrong)": (4, 2, 2, 2),  # Q2 and Q3 now lack a wrong or a correct row
        "train": (2, 1, 1, 1),
        "eval": (2, 1, 1, 1),
    }
    assert stats["input_counts"] == {"csv_rows": 6, "transcripts": 2, "transcript_segments": 2, "duplicate_segments": 0}
    train, held = read_jsonl(out / "train.jsonl"), read_jsonl(out / "eval.jsonl")
    assert {r["question"] for r in train + held} == {"Q1", "Q4"}
    assert len({r["question"] for r in train} & {r["question"] for r in held}) == 0
    q4 = [r for r in train + held if r["question"] == "Q4"]
    assert sorted(r["label"] for r in q4) == ["correct", "wrong"] and {r["source"] for r in q4} == {"runs.jsonl"}
    assert q4[0]["prompt"] == code_prompt("Q4") + "```python\nprint(2+2)\n```" + bridge(q4[0]["eventual_answer"])
    printed = capsys.readouterr().out
    assert "paired (1 correct + 1 wrong)" in printed and "wrote 2 train + 2 eval examples" in printed
    # The same command again replaces the earlier output; the same seed gives the same files.
    before = (out / "train.jsonl").read_text()
    assert main(argv) == 0 and (out / "train.jsonl").read_text() == before


def test_prepare_no_pairing_keeps_every_segment(tmp_path):
    out = tmp_path / "out"
    argv = ["prepare", "--input", *make_inputs(tmp_path), "--out", str(out), "--no-pairing", "--eval-fraction", "0"]
    assert main(argv) == 0
    assert len(read_jsonl(out / "train.jsonl")) == 8 and read_jsonl(out / "eval.jsonl") == []


def test_wrong_examples_answered_drops_the_runs_that_never_boxed_an_answer(tmp_path):
    """make_inputs' 8 segments (3 wrong, each with a boxed wrong answer) plus a Q4 run that never
    boxes one: `all` keeps 9, `answered` the 8 (every correct one and the 3 boxed wrong ones)."""
    never = Transcript(problem_id="q4", sample=2, question="Q4", correct_answer="4", eventual_answer=None,
                       prompt=code_prompt("Q4"), bridge=SEED_BRIDGE,
                       turns=(Turn("```python\nprint(1)\n```", "print(1)", "1", "code", 0.1),
                              Turn(" wrong, retry.\n```python\nprint(2)\n```", "print(2)", None, "code", 0.1)))
    extra = tmp_path / "never.jsonl"
    extra.write_text(json.dumps(transcript_to_dict(never)) + "\n", encoding="utf-8")
    counts = {}
    for kind in ("all", "answered"):
        out = tmp_path / kind
        assert main(["prepare", "--input", *make_inputs(tmp_path), str(extra), "--out", str(out), "--no-pairing",
                     "--eval-fraction", "0", "--wrong-examples", kind]) == 0
        rows = read_jsonl(out / "train.jsonl")
        counts[kind] = (len(rows), sum(r["eventual_answer"] is None for r in rows))
        stats = json.loads((out / "stats.json").read_text())
        assert stats["settings"]["wrong_examples"] == kind
    assert counts == {"all": (9, 1), "answered": (8, 0)}
    step = next(s for s in stats["steps"] if s["step"] == "wrong: boxed answers only")
    assert (step["rows"], step["correct"], step["wrong"]) == (8, 5, 3)


def test_judge_targets_replace_completions_by_the_right_decision(tmp_path):
    from tirgrpo.data.prepare import judge_target
    from tirgrpo.score.rewards import decide

    seg = Segment("Q", "P", "the solver's text", "5", "5.0", "s", "w")
    right = judge_target(seg)
    assert right.completion == " the output answers the problem, so it is right.\n</think>\n\n\\boxed{5.0}"
    assert decide(right.completion, "stop", None) == "submit" and right.label == "correct"
    for eventual in ("6", None):  # a wrong answer, or none at all
        wrong = judge_target(Segment("Q", "P", "x", "5", eventual, "s", "w"))
        assert wrong.completion.endswith("</think>\n\n```python") and decide(wrong.completion, "eos", None) == "decline"
    out = tmp_path / "out"
    argv = ["prepare", "--input", *make_inputs(tmp_path), "--out", str(out), "--no-pairing", "--eval-fraction", "0",
            "--judge-targets"]
    assert main(argv) == 0
    rows = read_jsonl(out / "train.jsonl")
    assert len(rows) == 8 and json.loads((out / "stats.json").read_text())["settings"]["judge_targets"] is True
    for r in rows:
        assert r["completion"] == judge_target(Segment(r["question"], r["prompt"], "-", r["correct_answer"],
                                                       r["eventual_answer"], "", "")).completion


@pytest.mark.parametrize(
    "bad_row, message",
    [
        (["P", "C", "Q", "5", "five"], "bad.csv, row 2 (line 3), field 'eventual_answer': must be an integer"),
        (["P", "", "Q", "5", "5"], "bad.csv, row 2 (line 3), field 'completion': is empty"),
        (["P", "C", "Q", "5", "5", "extra"], "bad.csv, row 2 (line 3): has 6 fields"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(tmp_path, capsys, bad_row, message):
    bad = write_csv(tmp_path / "bad.csv", [["P", "C", "Q", "5", "5"], bad_row])
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(bad), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_bad_transcript_and_bad_bytes_fail_cleanly(tmp_path, capsys):
    good = make_inputs(tmp_path)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(Path(good[1]).read_text().replace('"correct_answer": "4"', '"correct_answer": "4.5"'))
    out = tmp_path / "out"
    assert main(["prepare", "--input", good[0], str(broken), "--out", str(out)]) == 2
    assert "broken.jsonl, line 1, field 'correct_answer': must be an integer" in capsys.readouterr().err
    data = Path(good[0]).read_bytes().replace(b"Q3 prompt", b"Q3 \xff prompt")
    Path(good[0]).write_bytes(data)
    line = data[: data.index(b"\xff")].count(b"\n") + 1  # row 6, after multi-line fields
    assert main(["prepare", "--input", good[0], "--out", str(out)]) == 2
    assert f"seed.csv, line {line}: not valid UTF-8" in capsys.readouterr().err
    assert not out.exists()


def test_nothing_left_is_an_error_not_an_empty_data_set(tmp_path, capsys):
    only_correct = write_csv(tmp_path / "c.csv", [["P1", "C", "Q1", "5", "5"], ["P2", "C", "Q2", "5", "5"]])
    out = tmp_path / "out"
    assert main(["prepare", "--input", str(only_correct), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "paired (1 correct + 1 wrong)" in err and "no example left after filtering" in err and "--no-pairing" in err
    assert not out.exists()


def test_out_folder_that_is_not_ours_is_refused(tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert main(["prepare", "--input", make_inputs(tmp_path)[0], "--out", str(out)]) == 2
    assert "is not an earlier prepare output" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["precious.txt"]


@pytest.mark.skipif(not SAMPLE_CSV.is_file(), reason=f"{SAMPLE_CSV} not present")
def test_acceptance_sample_csv_all_rows_with_exact_token_counts(tmp_path):
    out = tmp_path / "x"
    argv = ["prepare", "--input", str(SAMPLE_CSV), "--out", str(out), "--no-pairing",
            "--max-prompt-tokens", "0", "--max-completion-tokens", "0"]  # fmt: skip
    assert main(argv) == 0
    written = read_jsonl(out / "train.jsonl") + read_jsonl(out / "eval.jsonl")
    csv.field_size_limit(2**31 - 1)
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    expected = {(r["prompt"], r["completion"]): (int(r["prompt_length"]), int(r["completion_length"]) - 1) for r in rows}
    assert len(written) == 14
    assert sorted((w["prompt"], w["completion"]) for w in written) == sorted(expected)
    for w in written:
        assert (w["prompt_tokens"], w["completion_tokens"]) == expected[(w["prompt"], w["completion"])]
        assert w["label"] == "correct" and w["source"] == SAMPLE_CSV.name


def test_pairs_per_question_with_no_pairing_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prepare", "--input", make_inputs(tmp_path)[0], "--out", str(out), "--no-pairing"]
    for k in ("1", "2"):
        assert main(args + ["--pairs-per-question", k]) == 2
        assert "give one of them" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage and the message, exit 2
        main(args[:-1] + ["--pairs-per-question", "0"])
    assert exit_info.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_an_input_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    # Before: "input DIR: no such file", though it is there (a folder given for a file).
    folder = tmp_path / "transcripts.jsonl"
    folder.mkdir()
    assert main(["prepare", "--input", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert f"input {folder}: is a folder, not a file" in capsys.readouterr().err
