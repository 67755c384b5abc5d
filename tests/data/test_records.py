"""Example / seed CSV / transcript formats: round trips and errors that name file, row and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tirgrpo.data.records import (
    Example,
    Transcript,
    Turn,
    answers_match,
    label_for,
    read_examples,
    read_seed_csv,
    read_transcripts,
    transcript_to_dict,
    write_examples,
)
from tirgrpo.errors import TirgrpoError
from tirgrpo.data.templates import SEED_BRIDGE, bridge, code_prompt


def example(**changes) -> Example:
    fields = dict(
        question="What is 2+3?", prompt="<｜User｜>What is 2+3?", completion="It is 5.</think>\\boxed{5}",
        correct_answer="5", eventual_answer="5", label="correct", prompt_tokens=9, completion_tokens=7,
        source="test",
    )  # fmt: skip
    fields.update(changes)
    return Example(**fields)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    "correct, eventual, match",
    [("250", "250", True), ("250", "250.0", True), ("250", 250, True), ("250", " 250 ", True),
     ("250", "251", False), ("250", None, False), ("250", "25O", False), ("x", "x", True)],
)  # fmt: skip
def test_answers_match_as_integers_when_both_parse(correct, eventual, match):
    assert answers_match(correct, eventual) is match
    assert label_for(correct, eventual) == ("correct" if match else "wrong")


# ----------------------------------------------------------------------------- Example files


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_examples_round_trip(tmp_path, suffix):
    examples = [
        example(),
        example(eventual_answer=None, label="wrong", completion="Not sure.\n```python\n", prompt="ünï 🙂\n" * 3),
        example(question="Q2", eventual_answer="7", label="wrong"),
    ]
    path = tmp_path / f"ex{suffix}"
    write_examples(path, examples)
    assert read_examples(path) == examples
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_example_answers_are_made_canonical(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [example(correct_answer="250.0", eventual_answer=250).to_dict()])
    (ex,) = read_examples(path)
    assert (ex.correct_answer, ex.eventual_answer) == ("250", "250")


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"question": ""}, "question", "is empty"),
        ({"completion": "   \n"}, "completion", "is empty"),
        ({"correct_answer": "1/2"}, "correct_answer", "must be an integer"),
        ({"eventual_answer": "twelve"}, "eventual_answer", "must be an integer"),
        ({"label": "right"}, "label", "must be one of"),
        ({"label": "wrong"}, "label", "is 'wrong' but"),
        ({"prompt_tokens": "9"}, "prompt_tokens", "must be an integer"),
        ({"prompt": 5}, "prompt", "must be a string"),
    ],
)
def test_bad_example_names_file_line_and_field(tmp_path, change, field, problem):
    rows = [example().to_dict(), example().to_dict() | change]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(TirgrpoError) as e:
        read_examples(path)
    assert str(e.value).startswith(f"{path}, line 2, field '{field}': {problem}")


def test_missing_field_and_bad_json_and_bad_utf8(tmp_path):
    row = example().to_dict()
    del row["source"]
    path = write_jsonl(tmp_path / "a.jsonl", [example().to_dict(), example().to_dict(), row])
    with pytest.raises(TirgrpoError, match=r"a\.jsonl, line 3, field 'source': missing"):
        read_examples(path)
    path.write_text(json.dumps(example().to_dict()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"a\.jsonl, line 2: not valid JSON"):
        read_examples(path)
    path.write_bytes(json.dumps(example().to_dict()).encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(TirgrpoError, match=r"a\.jsonl, line 2: not valid UTF-8"):
        read_examples(path)


def test_huge_field_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [example(completion="x" * 50_000_000).to_dict()])
    with pytest.raises(TirgrpoError, match=r"big\.jsonl, line 1, field 'completion': is 50,000,000 characters"):
        read_examples(path)


def test_parquet_missing_column_and_unknown_suffix(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), path)
    with pytest.raises(TirgrpoError, match=r"a\.parquet: missing column\(s\) \['prompt'"):
        read_examples(path)
    with pytest.raises(TirgrpoError, match="use .jsonl or .parquet"):
        write_examples(tmp_path / "a.csv", [example()])


# ----------------------------------------------------------------------------- seed CSV

HEADER = ["prompt", "completion", "question", "correct_answer", "eventual_answer", "prompt_length"]


def test_seed_csv_reads_rows_and_ignores_extra_columns(tmp_path):
    path = write_csv(tmp_path / "s.csv", HEADER, [
        ["P1\nwith a newline", "C1", " Q1 ", "250", "250.0", "99"],
        ["P2", "C2", "Q1", "250", "7", "x"],
    ])  # fmt: skip
    a, b = read_seed_csv(path)
    assert (a.prompt, a.completion, a.question, a.correct_answer, a.eventual_answer) == (
        "P1\nwith a newline", "C1", "Q1", "250", "250",
    )
    assert (a.label, b.label, a.source) == ("correct", "wrong", "s.csv")
    # Row 2 starts on line 4: the header is line 1 and row 1 spans lines 2-3.
    assert b.where == f"{path}, row 2 (line 4)"


@pytest.mark.parametrize(
    "row, message",
    [
        (["P", "", "Q", "1", "1", "0"], "row 2 (line 3), field 'completion': is empty"),
        (["P", "C", "Q", "one", "1", "0"], "row 2 (line 3), field 'correct_answer': must be an integer"),
        (["P", "C", "Q", "1", "", "0"], "row 2 (line 3), field 'eventual_answer': is empty"),
        (["P", "C", "Q", "1", "1"], "row 2 (line 3): has 5 fields, the header has 6"),
        (["P", "C", "Q", "1", "1", "x" * 11_000_000], "row 2 (line 3), field 'prompt_length': is 11,000,000"),
    ],
)
def test_bad_seed_csv_row_is_named(tmp_path, row, message):
    path = write_csv(tmp_path / "s.csv", HEADER, [["P", "C", "Q", "1", "1", "0"], row])
    with pytest.raises(TirgrpoError) as e:
        read_seed_csv(path)
    assert str(e.value).startswith(f"{path}, {message}")


def test_seed_csv_missing_column_and_bad_bytes(tmp_path):
    path = write_csv(tmp_path / "s.csv", ["prompt", "completion", "question", "correct_answer"], [["P", "C", "Q", "1"]])
    with pytest.raises(TirgrpoError, match=r"header \(line 1\): missing column\(s\) \['eventual_answer'\]"):
        read_seed_csv(path)
    path.write_bytes(b"prompt,completion,question,correct_answer,eventual_answer\nP,C,Q,1,1\nP,\xff,Q,1,1\n")
    with pytest.raises(TirgrpoError, match=r"s\.csv, line 3: not valid UTF-8"):
        read_seed_csv(path)


# ----------------------------------------------------------------------------- transcripts


def transcript(**changes) -> dict:
    t = Transcript(
        problem_id="p1", sample=0, question="What is 6*7?", correct_answer="42", eventual_answer="42",
        prompt=code_prompt("What is 6*7?"), bridge=SEED_BRIDGE,
        turns=(
            Turn("I multiply.\n```python\nprint(6*7)\n```", "print(6*7)", "42", "code", 1.5),
            Turn(" it is right.\n</think>\n\n\\boxed{42}", None, None, "eos", 0.5),
        ),
    )  # fmt: skip
    return transcript_to_dict(t) | changes


def test_transcripts_round_trip_and_render(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [transcript(), transcript(sample=1, correct_answer=None)])
    a, b = read_transcripts(path)
    assert transcript_to_dict(a) == transcript()
    assert b.correct_answer is None and b.sample == 1
    assert a.text() == (
        code_prompt("What is 6*7?") + "I multiply.\n```python\nprint(6*7)\n```" + bridge("42")
        + " it is right.\n</think>\n\n\\boxed{42}"
    )  # fmt: skip


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"turns": []}, "turns", "must be a non-empty list"),
        ({"bridge": "no output here"}, "bridge", "must contain the field {output}"),
        ({"eventual_answer": "4.2"}, "eventual_answer", "must be an integer"),
        ({"sample": -1}, "sample", "must be >= 0"),
        ({"problem_id": ""}, "problem_id", "must be a non-empty string"),
    ],
)
def test_bad_transcript_field_is_named(tmp_path, change, field, problem):
    path = write_jsonl(tmp_path / "t.jsonl", [transcript() | change])
    with pytest.raises(TirgrpoError) as e:
        read_transcripts(path)
    assert str(e.value).startswith(f"{path}, line 1, field '{field}': {problem}")


@pytest.mark.parametrize("wall", [float("nan"), float("inf"), -1.0])
def test_a_turn_time_that_is_no_duration_is_named(tmp_path, wall):
    # Before: NaN and Infinity (which json.loads reads) passed the `>= 0` check, and
    # `data split-transcripts` wrote them back out as NaN/Infinity, which is not JSON.
    t = transcript()
    t["turns"][0]["wall_s"] = wall
    path = write_jsonl(tmp_path / "t.jsonl", [t])
    with pytest.raises(TirgrpoError, match=r"line 1, field 'turns\[0\]\.wall_s': must be a finite number >= 0"):
        read_transcripts(path)


def test_bad_turns_are_named(tmp_path):
    t = transcript()
    t["turns"][0]["output"] = None  # a turn without output that is not the last
    path = write_jsonl(tmp_path / "t.jsonl", [transcript(), t])
    with pytest.raises(TirgrpoError, match=r"line 2, field 'turns\[0\]\.output': is null but later turns follow"):
        read_transcripts(path)
    t = transcript()
    del t["turns"][1]["text"]
    path = write_jsonl(tmp_path / "t.jsonl", [t])
    with pytest.raises(TirgrpoError, match=r"line 1, field 'turns\[1\]\.text': missing"):
        read_transcripts(path)


def test_a_byte_order_mark_before_the_first_line_is_skipped(tmp_path):
    # Excel's "CSV UTF-8" and some Windows editors start a file with U+FEFF. Before: the seed
    # CSV's first column was '\ufeffprompt' ("missing column(s) ['prompt']") and a JSONL's first
    # line "not valid JSON (Unexpected UTF-8 BOM)".
    bom = "\ufeff"
    csv_path = tmp_path / "seed.csv"
    csv_path.write_text(bom + "prompt,completion,question,correct_answer,eventual_answer\nP,C,Q,5,5\n",
                        encoding="utf-8")
    assert [s.prompt for s in read_seed_csv(csv_path)] == ["P"]
    jsonl_path = tmp_path / "t.jsonl"
    jsonl_path.write_text(bom + json.dumps(transcript()) + "\n", encoding="utf-8")
    assert transcript_to_dict(read_transcripts(jsonl_path)[0]) == transcript()
    jsonl_path.write_bytes(b"\xef\xbb\xbf" + b'{"a": "\xff"}\n')  # offsets still count from the file's start
    with pytest.raises(TirgrpoError, match=r"line 1: not valid UTF-8 \(byte 0xff at offset 10\)"):
        read_transcripts(jsonl_path)


def test_a_seed_csv_column_named_twice_is_refused(tmp_path):
    # Before: the last 'prompt' column silently won, whichever the user meant.
    path = tmp_path / "seed.csv"
    path.write_text("prompt,completion,question,correct_answer,eventual_answer,prompt\nP,C,Q,5,5,X\n",
                    encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"header \(line 1\): column\(s\) \['prompt'\] appear more than once"):
        read_seed_csv(path)


def test_transcripts_for_a_vote_refuse_a_run_given_twice(tmp_path):
    # Before: `eval --transcripts --selection` judged both copies and counted both votes.
    from tirgrpo.data.records import read_transcripts_for_votes

    path = write_jsonl(tmp_path / "t.jsonl", [transcript(), transcript(sample=1), transcript(sample=1, turns=[
        {"text": "x", "code": None, "output": None, "finish_reason": "eos", "wall_s": None}])])
    assert len(read_transcripts(path)) == 3  # the plain reader keeps them (prepare, split)
    with pytest.raises(TirgrpoError, match=f"{path}, line 3: problem_id 'p1' sample 1 again \\(first on line 2\\)"):
        read_transcripts_for_votes(path)


def test_transcripts_for_a_vote_refuse_two_correct_answers_of_one_problem(tmp_path):
    # Before: the problem was scored against whichever correct_answer came first.
    from tirgrpo.data.records import read_transcripts_for_votes

    path = write_jsonl(tmp_path / "t.jsonl", [transcript(), transcript(sample=1, correct_answer=None),
                                              transcript(sample=2, correct_answer="42.0"),
                                              transcript(sample=3, correct_answer="5")])
    with pytest.raises(TirgrpoError, match=f"{path}, line 4, field 'correct_answer': '5' for problem_id 'p1', "
                                           f"which line 1 gives as '42'"):
        read_transcripts_for_votes(path)
    assert len(read_transcripts_for_votes(write_jsonl(tmp_path / "ok.jsonl", [transcript(), transcript(sample=1)]))) == 2
