"""`tirgrpo score`: reading records, checking them, writing scores (or nothing on failure)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import tirgrpo.data.tokenizer
from tirgrpo.cli import main

SAMPLE_CSV = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tir" / "r1_distill_7b_tir_sample.csv"
if not SAMPLE_CSV.is_file():  # no shared/ beside this clone: the copy in tests/fixtures
    SAMPLE_CSV = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "r1_distill_7b_tir_sample.csv"
STOP = "```python"


class WordTokenizer:
    """bos, then one token per whitespace-separated word."""

    def encode(self, text: str) -> list[int]:
        return [0] + [1 + i for i, _ in enumerate(text.split())]


@pytest.fixture
def word_tokenizer(monkeypatch):
    # The command loads its tokenizer by name; unit tests give it a counting one instead.
    monkeypatch.setattr(tirgrpo.data.tokenizer, "load_tokenizer", lambda spec: WordTokenizer())


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


RECORDS = [
    {"id": "right", "completion": "Done.\n</think>\n\n\\boxed{250}", "correct_answer": 250, "finish_reason": "eos"},
    {"id": "decline", "completion": "Hmm.\n</think>\n\nLet me check.\n\n", "correct_answer": "250",
     "finish_reason": "stop", "stop": STOP},
    {"id": "truncated", "completion": "Done.\n</think>\n\n\\boxed{250}", "correct_answer": 250, "finish_reason": "length"},
]  # fmt: skip


def test_score_writes_every_record_back_with_scores(tmp_path, word_tokenizer, capsys):
    src, out = write_jsonl(tmp_path / "in.jsonl", RECORDS), tmp_path / "out.jsonl"
    assert main(["score", "--input", str(src), "--out", str(out), "--step", "100", "--total-steps", "100"]) == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["right", "decline", "truncated"]  # input fields kept, in order
    assert [r["decision"] for r in rows] == ["submit", "decline", "invalid"]
    assert [r["valid"] for r in rows] == [True, True, False]
    assert [r["correctness"] for r in rows] == [1.0, 0.0, -1.0]
    for r in rows:
        assert (r["w_length"], r["w_formatting"], r["w_correctness"]) == (0.125, 0.125, 0.75)
        total = 0.125 * r["length"] + 0.125 * r["formatting"] + 0.75 * r["correctness"]
        assert r["total"] == pytest.approx(total)
    # The truncated copy of "right" differs only by the -1 validity penalty on length and formatting.
    assert rows[2]["length"] == pytest.approx(rows[0]["length"] - 1)
    assert rows[2]["formatting"] == pytest.approx(rows[0]["formatting"] - 1)
    printed = capsys.readouterr().out
    assert "3 records; decisions: submit 1, decline 1, invalid 1" in printed
    assert "correctness +0.0000" in printed  # mean of 1, 0, -1


def test_score_seed_set_calls_the_stripped_decline_invalid(tmp_path, word_tokenizer):
    src, out = write_jsonl(tmp_path / "in.jsonl", RECORDS), tmp_path / "out.jsonl"
    assert main(["score", "--rewards", "seed", "--input", str(src), "--out", str(out)]) == 0
    rows = read_jsonl(out)
    # seed ignores finish_reason: the truncated copy is a valid submission (+1), the decline -1.5.
    assert [r["decision"] for r in rows] == ["submit", "invalid", "submit"]
    assert [r["correctness"] for r in rows] == [1.0, -1.5, 1.0]


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"completion": "a", "correct_answer": 1}', '{"correct_answer": 1}'], "line 2: field 'completion'"),
        (['{"completion": "a", "correct_answer": 1}', "", "{not json"], "line 3: not valid JSON"),
        (['{"completion": "a"}'], "line 1: field 'correct_answer' is missing"),
        (['{"completion": "a", "correct_answer": "x+1"}'], "line 1: field 'correct_answer' must be an integer"),
        (['{"completion": "a", "correct_answer": 1, "finish_reason": "done"}'], "line 1: field 'finish_reason'"),
        (['{"completion": "a", "correct_answer": 1, "stop": 3}'], "line 1: field 'stop'"),
        (["[1, 2]"], "line 1: expected a JSON object"),
        ([""], "no records"),
    ],
)
def test_score_bad_rows_name_file_line_and_field(tmp_path, word_tokenizer, capsys, lines, message):
    src, out = tmp_path / "bad.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["score", "--input", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(src) in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.jsonl"]  # no temp file either


def test_score_missing_input(tmp_path, capsys):
    assert main(["score", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "input file not found" in capsys.readouterr().err


def test_score_reads_csv_with_empty_optional_cells(tmp_path, word_tokenizer):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    with src.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["completion", "correct_answer", "finish_reason", "stop"])
        w.writerow(["Done.\n</think>\n\n\\boxed{250}", "250", "", ""])
        w.writerow(["Hmm.\n</think>\n\nLet me check.\n\n", "250", "stop", STOP])
        w.writerow(["x", "250", "finished", ""])
    assert main(["score", "--input", str(src), "--out", str(out)]) == 2  # row 3's finish_reason
    rows_ok = src.read_text(encoding="utf-8").replace("finished", "length")
    src.write_text(rows_ok, encoding="utf-8")
    assert main(["score", "--input", str(src), "--out", str(out)]) == 0
    assert [r["decision"] for r in read_jsonl(out)] == ["submit", "decline", "invalid"]


@pytest.mark.skipif(not SAMPLE_CSV.is_file(), reason=f"{SAMPLE_CSV} not present")
def test_score_sample_csv_converted_to_jsonl_with_r1_tokenizer(tmp_path, capsys):
    try:
        tirgrpo.data.tokenizer.load_tokenizer("r1-distill-qwen")
    except Exception as e:
        pytest.skip(f"r1-distill-qwen tokenizer unavailable: {e}")
    # Convert: the CSV's completion and correct_answer (and its completion_length, kept to check
    # token counts); the sample recorded no finish_reason, so decisions come from the text.
    csv.field_size_limit(2**31 - 1)
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    src = write_jsonl(
        tmp_path / "sample.jsonl",
        [{"completion": r["completion"], "correct_answer": r["correct_answer"],
          "completion_length": int(r["completion_length"])} for r in rows],
    )  # fmt: skip
    for rewards in ("default", "seed"):
        out = tmp_path / f"scored-{rewards}.jsonl"
        argv = ["score", "--rewards", rewards, "--input", str(src), "--out", str(out), "--tokenizer", "r1-distill-qwen"]
        assert main(argv + ["--step", "0", "--total-steps", "100"]) == 0
        scored = read_jsonl(out)
        assert len(scored) == len(rows)
        for r in scored:
            assert {"valid", "decision", "length", "formatting", "correctness", "total"} <= set(r)
            assert -1.0 <= r["length"] <= 1.0 and -1.0 <= r["formatting"] <= 1.0
            # k = 0: w = (0.5, 0.5, 0), so the total is the mean of length and formatting.
            assert r["total"] == pytest.approx(0.5 * r["length"] + 0.5 * r["formatting"])
        # Every sample transcript ends in the right boxed answer...
        if rewards == "default":
            assert all(r["decision"] == "submit" and r["correctness"] == 1.0 for r in scored)
        else:
            # ...but the seed calls the transcripts without "</think>" invalid (-1 + 1 = 0).
            no_think = ["</think>" not in r["completion"] for r in scored]
            assert [r["decision"] == "invalid" for r in scored] == no_think
            assert [r["correctness"] for r in scored] == [0.0 if n else 1.0 for n in no_think]
    assert "decisions: submit" in capsys.readouterr().out


@pytest.mark.skipif(not SAMPLE_CSV.is_file(), reason=f"{SAMPLE_CSV} not present")
def test_sample_token_counts_match_the_recorded_completion_length():
    # The sample's completion_length was counted by the original pipeline: encode with bos.
    try:
        tok = tirgrpo.data.tokenizer.load_tokenizer("r1-distill-qwen")
    except Exception as e:
        pytest.skip(f"r1-distill-qwen tokenizer unavailable: {e}")
    from tirgrpo.score.rewards import token_counts

    csv.field_size_limit(2**31 - 1)
    with SAMPLE_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [token_counts(r["completion"], tok)[1] for r in rows] == [int(r["completion_length"]) for r in rows]


def test_a_byte_order_mark_before_the_header_is_skipped(tmp_path):
    # Before: the first column read as '\ufeffcompletion', and the error said the row's
    # 'completion' "must be a string, got None".
    from tirgrpo.score.records import read_records

    path = tmp_path / "c.csv"
    path.write_text("\ufeffcompletion,correct_answer\nx,5\n", encoding="utf-8")
    assert read_records(path)[0] == [{"completion": "x", "correct_answer": "5"}]


def test_an_input_that_is_a_folder_is_named_as_one(tmp_path, capsys):
    # Before: "input file not found: DIR", though it is there (a folder given for a file).
    folder = tmp_path / "completions.jsonl"
    folder.mkdir()
    assert main(["score", "--input", str(folder), "--out", str(tmp_path / "s.jsonl")]) == 2
    assert f"input {folder}: is a folder, not a file" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("completion,correct_answer,completion\nx,5,y\n", "column(s) ['completion'] appear more than once"),
    ("completion,correct_answer\nx\n", "row 1 (line 2): fewer fields than the header has columns (2)"),
])
def test_a_csv_whose_header_and_rows_disagree_is_named(tmp_path, text, message):
    # Before: a column named twice silently took the last one; a short row read as
    # "field 'correct_answer' must be ..., got None".
    from tirgrpo.score.records import read_records
    from tirgrpo.errors import TirgrpoError

    path = tmp_path / "c.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TirgrpoError) as e:
        read_records(path)
    assert message in str(e.value)
