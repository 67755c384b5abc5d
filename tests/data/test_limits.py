"""One limit policy across the readers: field size, row count, file size and NUL refused while
reading (before any tokenizing), duplicates dropped with a count unless --keep-duplicates."""

import json
import time

import pytest

import tirgrpo.data.limits as limits
from tirgrpo.cli import main
from tirgrpo.data.gsm8k import read_gsm8k
from tirgrpo.data.limits import drop_duplicates, text_problem
from tirgrpo.data.records import read_examples, read_seed_csv, read_transcripts
from tirgrpo.errors import TirgrpoError
from tirgrpo.score.records import read_records

NATALIA_Q = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?")
NATALIA_A = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
             "altogether in April and May.\n#### 72")


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_text_problem():
    assert text_problem("fine") is None
    assert "U+0000" in text_problem("a\x00b")
    assert "over the limit" in text_problem("x" * (limits.MAX_FIELD_CHARS + 1))


def test_gsm8k_verify_huge_field_fails_fast_before_tokenizing(tmp_path, capsys):
    src = jsonl(tmp_path / "g.jsonl", [{"question": NATALIA_Q, "answer": NATALIA_A},
                                       {"question": "x " * 25_000_000, "answer": NATALIA_A}])  # 50 MB
    t = time.perf_counter()
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert time.perf_counter() - t < 10
    err = capsys.readouterr().err
    assert "line 2, field 'question'" in err and "over the limit" in err
    assert not (tmp_path / "o.jsonl").exists()


def _example(**change):
    row = {"question": "q", "prompt": "p", "completion": "c", "correct_answer": "1", "eventual_answer": "1",
           "label": "correct", "prompt_tokens": 1, "completion_tokens": 1, "source": "s"}
    return {**row, **change}


def _transcript(**change):
    row = {"problem_id": "a", "sample": 0, "question": "q", "correct_answer": "1", "eventual_answer": "1",
           "prompt": "p", "bridge": "```output\n{output}\n```",
           "turns": [{"text": "t", "code": None, "output": None, "finish_reason": "eos", "wall_s": 0.1}]}
    return {**row, **change}


@pytest.mark.parametrize("reader, row, field", [
    (read_examples, _example(prompt="a\x00b"), "prompt"),
    (read_transcripts, _transcript(question="a\x00b"), "question"),
    (read_transcripts, _transcript(problem_id="a\x00"), "problem_id"),
    (read_gsm8k, {"question": "q\x00", "answer": "a"}, "question"),
    (read_records, {"completion": "x\x00", "correct_answer": "1"}, "completion"),
])
def test_nul_refused_in_every_jsonl_reader(tmp_path, reader, row, field):
    with pytest.raises(TirgrpoError, match=rf"line 1, field '{field}'.*U\+0000"):
        reader(jsonl(tmp_path / "f.jsonl", [row]))


def _with_lone_surrogate(row: dict, field: str) -> str:
    """The JSON line of `row` with `field`'s text holding the escape \\ud800: valid JSON, but a
    lone surrogate is no character, and no UTF-8 file (or tokenizer) can take it."""
    return json.dumps({**row, field: "aSURROGATEb"}).replace("SURROGATE", "\\ud800") + "\n"


@pytest.mark.parametrize("reader, row, field", [
    (read_examples, _example(), "prompt"),
    (read_transcripts, _transcript(), "question"),
    (read_gsm8k, {"question": "q", "answer": "a"}, "question"),
    (read_records, {"completion": "x", "correct_answer": "1"}, "completion"),
])
def test_a_lone_surrogate_is_refused_in_every_jsonl_reader(tmp_path, reader, row, field):
    path = tmp_path / "f.jsonl"
    path.write_text(_with_lone_surrogate(row, field), encoding="utf-8")
    with pytest.raises(TirgrpoError, match=rf"line 1, field '{field}'.*U\+D800"):
        reader(path)


@pytest.mark.parametrize("argv, row, field", [
    (["prepare", "--input", "{src}", "--out", "{out}", "--no-pairing"], _transcript(), "question"),
    (["data", "format-warmup", "--input", "{src}", "--out", "{out}.jsonl"], _example(), "prompt"),
    (["data", "split-transcripts", "--input", "{src}", "--train", "{out}.a", "--heldout", "{out}.b"],
     _transcript(), "prompt"),
    (["score", "--input", "{src}", "--out", "{out}.jsonl"], {"completion": "x", "correct_answer": "1"},
     "completion"),
])
def test_a_lone_surrogate_is_an_error_naming_the_field_not_a_crash(tmp_path, capsys, argv, row, field):
    # Before: json.loads took the escape, and the command died writing its output
    # (UnicodeEncodeError) or tokenizing (TypeError), as an "internal error".
    src = tmp_path / "in.jsonl"
    src.write_text(_with_lone_surrogate(row, field), encoding="utf-8")
    out = tmp_path / "out"
    assert main([a.format(src=src, out=out) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"{src}, line 1, field '{field}'" in err and "U+D800" in err, err
    assert "internal error" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["in.jsonl"]  # nothing written


def test_nul_refused_in_csv_readers(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("prompt,completion,question,correct_answer,eventual_answer\np\x00,c,q,1,1\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"row 1 .*field 'prompt'.*U\+0000"):
        read_seed_csv(p)
    p.write_text("completion,correct_answer\nc\x00,1\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"row 1 .*field 'completion'.*U\+0000"):
        read_records(p)


def test_row_and_file_limits(tmp_path, monkeypatch):
    p = jsonl(tmp_path / "f.jsonl", [_example()] * 4)
    monkeypatch.setattr(limits, "MAX_ROWS", 3)
    for reader in (read_examples, read_records):
        with pytest.raises(TirgrpoError, match="more than 3 rows"):
            reader(p)
    monkeypatch.setattr(limits, "MAX_ROWS", 10)
    monkeypatch.setattr(limits, "MAX_FILE_BYTES", 100)
    for reader in (read_examples, read_records, read_gsm8k):
        with pytest.raises(TirgrpoError, match="over the limit"):
            reader(p)


def test_drop_duplicates_counts():
    assert drop_duplicates([1, 2, 1, 3, 2], key=lambda x: x) == ([1, 2, 3], 2)
    assert drop_duplicates([1, 1], key=lambda x: x, keep=True) == ([1, 1], 1)


def test_prepare_same_file_twice_drops_duplicates(tmp_path, capsys):
    rows = "prompt,completion,question,correct_answer,eventual_answer\n" \
           "p1,fine.,Q1,5,5\np2,wrong.,Q1,5,6\np3,ok.,Q2,7,7\np4,bad.,Q2,7,8\n"
    (tmp_path / "a.csv").write_text(rows, encoding="utf-8")
    base = ["prepare", "--input", str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--no-pairing",
            "--eval-fraction", "0"]
    assert main(base + ["--out", str(tmp_path / "o1")]) == 0
    assert "4 duplicate segments" in capsys.readouterr().err
    assert len(read_examples(tmp_path / "o1" / "train.jsonl")) == 4
    stats = json.loads((tmp_path / "o1" / "stats.json").read_text())
    assert stats["input_counts"]["duplicate_segments"] == 4
    assert main(base + ["--out", str(tmp_path / "o2"), "--keep-duplicates"]) == 0
    assert "kept" in capsys.readouterr().err
    assert len(read_examples(tmp_path / "o2" / "train.jsonl")) == 8


def test_gsm8k_and_score_drop_duplicates(tmp_path, capsys):
    src = jsonl(tmp_path / "g.jsonl", [{"question": NATALIA_Q, "answer": NATALIA_A}] * 3)
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "2 duplicate questions" in capsys.readouterr().err
    assert len(read_examples(tmp_path / "o.jsonl")) == 2
    rec = {"completion": "so \\boxed{5}", "correct_answer": "5", "finish_reason": "eos"}
    src = jsonl(tmp_path / "s.jsonl", [rec, rec, {**rec, "correct_answer": "6"}])
    assert main(["score", "--input", str(src), "--out", str(tmp_path / "s.out.jsonl")]) == 0
    assert "1 duplicate records" in capsys.readouterr().err
    assert len((tmp_path / "s.out.jsonl").read_text().splitlines()) == 2
    assert main(["score", "--input", str(src), "--out", str(tmp_path / "s.out.jsonl"), "--keep-duplicates"]) == 0
    assert len((tmp_path / "s.out.jsonl").read_text().splitlines()) == 3


def test_generate_problems_and_sft_targets_follow_the_policy(tmp_path):
    from tirgrpo.tir.generate import read_problems
    from tirgrpo.train.sft import read_targets

    p = tmp_path / "problems.csv"
    p.write_text("id,problem,answer\na,what\x00is it,1\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"row 1.*U\+0000"):
        read_problems(p)
    with pytest.raises(TirgrpoError, match=r"line 1, field 'completion'.*U\+0000"):
        read_targets(str(jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "completion": "c\x00"}])))
