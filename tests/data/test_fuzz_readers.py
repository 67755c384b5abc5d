"""Fuzzing the readers: random bytes, truncated files, huge fields and wrong types must each end
in a valid result or a TirgrpoError (never another exception), each within a time bound."""

import json
import random
import time

import pytest

from tirgrpo.data.gsm8k import read_gsm8k
from tirgrpo.data.records import (Example, Transcript, Turn, read_examples, read_seed_csv, read_transcripts,
                                  transcript_to_dict, write_examples)
from tirgrpo.errors import TirgrpoError
from tirgrpo.score.records import read_records

SECONDS_PER_CASE = 3.0
HUGE = "y" * 1_100_000  # over the field limit

EXAMPLE = Example(question="q", prompt="p", completion="c", correct_answer="1", eventual_answer="2",
                  label="wrong", prompt_tokens=3, completion_tokens=1, source="s").to_dict()
TRANSCRIPT = transcript_to_dict(Transcript(
    problem_id="a", sample=0, question="q", correct_answer="4", eventual_answer="4", prompt="p",
    bridge="```output\n{output}\n```",
    turns=(Turn("```python\nprint(4)\n```", "print(4)", "4", "code", 0.1), Turn("ok", None, None, "eos", 0.1))))
GSM8K = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
SCORE = {"completion": "so \\boxed{5}", "correct_answer": "5", "finish_reason": "eos"}
WRONG_VALUES = [None, True, 7, -1, 1.5, float("nan"), [], {}, ["x"], {"a": 1}, "", " ", HUGE, "\x00", 10**5000]



def read_and_check_scores(path):
    """What `tirgrpo score` reads: the records, then each one's fields checked for scoring."""
    from tirgrpo.score.records import check_records

    records, locations = read_records(path)
    check_records(records, locations, "default")
    return records


JSONL_READERS = {"examples": (read_examples, EXAMPLE), "transcripts": (read_transcripts, TRANSCRIPT),
                 "gsm8k": (read_gsm8k, GSM8K), "score": (read_and_check_scores, SCORE)}


def outcome(reader, path):
    """'ok' or 'error' for one reader on one file; anything else fails the test."""
    t = time.perf_counter()
    try:
        reader(path)
        result = "ok"
    except TirgrpoError as e:
        assert str(e), "an error without a message"
        result = "error"
    assert time.perf_counter() - t < SECONDS_PER_CASE, f"{reader.__name__} took too long on {path}"
    return result


def dumps(obj):
    try:
        return json.dumps(obj)
    except ValueError:  # 10**5000: write the digits by hand
        return json.dumps(obj, default=str)


def wrong_type_lines(row):
    """One JSON line per (field, wrong value), nested turn fields included."""
    for key in row:
        for value in WRONG_VALUES:
            if isinstance(value, int) and value == 10**5000:
                yield json.dumps({**row, key: 0}).replace(f'"{key}": 0', f'"{key}": ' + "9" * 5000, 1)
            else:
                yield json.dumps({**row, key: value})
    if "turns" in row:
        for key in row["turns"][0]:
            for value in WRONG_VALUES[:12]:
                turn = {**row["turns"][0], key: value}
                yield json.dumps({**row, "turns": [turn] + row["turns"][1:]})
    yield "[" * 100_000 + "]" * 100_000  # nesting deeper than the JSON parser's recursion


@pytest.mark.parametrize("name", list(JSONL_READERS))
def test_wrong_types_and_huge_fields(tmp_path, name):
    reader, row = JSONL_READERS[name]
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert outcome(reader, path) == "ok"  # the base row is valid: every change below is the cause
    results = []
    for line in wrong_type_lines(row):
        path.write_text(line + "\n")
        results.append(outcome(reader, path))
    assert results.count("error") > len(results) // 2


@pytest.mark.parametrize("name", list(JSONL_READERS))
def test_random_bytes_and_truncations(tmp_path, name):
    reader, row = JSONL_READERS[name]
    rng = random.Random(name)
    valid = ("\n".join(json.dumps(row) for _ in range(3)) + "\n").encode()
    path = tmp_path / "f.jsonl"
    for _ in range(40):
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        outcome(reader, path)
    for cut in sorted(rng.sample(range(1, len(valid)), 30)):
        path.write_bytes(valid[:cut])
        outcome(reader, path)
    for _ in range(30):  # flip one byte
        data = bytearray(valid)
        data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        outcome(reader, path)


def test_csv_readers(tmp_path):
    rng = random.Random(0)
    seed = "prompt,completion,question,correct_answer,eventual_answer\np,c,q,1,1\n\"p2\",c2,q2,3,4\n"
    score = "completion,correct_answer,finish_reason\nso \\boxed{5},5,eos\nno,6,\n"
    path = tmp_path / "f.csv"
    for reader, valid in ((read_seed_csv, seed), (read_and_check_scores, score)):
        path.write_text(valid)
        assert outcome(reader, path) == "ok"
        for cut in range(1, len(valid)):
            path.write_text(valid[:cut])
            outcome(reader, path)
        for bad in ('"unterminated', "a,b\n" + "x," * 100 + "\n", valid + HUGE + "\n", valid + '"' + HUGE,
                    valid.replace("\n", "\r", 1), "\ufeff" + valid):
            path.write_text(bad)
            outcome(reader, path)
        for _ in range(30):
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            outcome(reader, path)


def test_parquet_examples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "f.parquet"
    write_examples(path, [Example(**EXAMPLE)])
    assert outcome(read_examples, path) == "ok"
    valid = path.read_bytes()
    rng = random.Random(1)
    for cut in sorted(rng.sample(range(1, len(valid)), 25)):
        path.write_bytes(valid[:cut])
        assert outcome(read_examples, path) == "error"
    for key in EXAMPLE:  # one column of the wrong type
        for value in (7, None, 1.5, True):
            pq.write_table(pa.Table.from_pylist([{**EXAMPLE, key: value}]), path)
            outcome(read_examples, path)
