"""Completion records to score (`tirgrpo score`): read from JSONL or CSV, each checked before anything is scored.

The same limits as every other reader (data/limits.py): file size, row count, field size and
NUL characters, checked while reading, before anything is tokenized; every error names the
file, line (or row) and field.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tirgrpo.data.limits import check_columns_once, check_file_size, check_row_count, strip_bom, text_problem
from tirgrpo.errors import TirgrpoError

OPTIONAL_FIELDS = ("finish_reason", "stop", "eventual_answer", "label")
_MISSING = object()  # csv.DictReader's value for the cells a short row lacks


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """(records, where each came from) of a JSONL or CSV (by suffix) file.

    A malformed line raises, naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        raise TirgrpoError(f"input {path}: is a folder, not a file")
    if not path.is_file():
        raise TirgrpoError(f"input file not found: {path}")
    check_file_size(path)
    try:
        text = strip_bom(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TirgrpoError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise TirgrpoError(f"cannot read {path}: {e.strerror or e}") from None
    records = _read_csv(path, text) if path.suffix.lower() == ".csv" else _read_jsonl(path, text)
    if not records:
        raise TirgrpoError(f"{path}: no records")
    for where, record in records:
        _check_strings(record, where)
    return [r for _, r in records], [where for where, _ in records]


def _check_strings(record: dict, where: str) -> None:
    """Refuse an over-long or NUL-carrying string anywhere in a record (values of any depth)."""
    stack: list[tuple[str, Any]] = [(k, v) for k, v in record.items()]
    while stack:
        name, value = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise TirgrpoError(f"{where}, field {name!r}: {problem}")
        elif isinstance(value, dict):
            stack += [(f"{name}.{k}", v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    for key in record:
        problem = text_problem(str(key))
        if problem:
            raise TirgrpoError(f"{where}: a field name {problem}")


def _read_jsonl(path: Path, text: str) -> list[tuple[str, dict]]:
    records = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        check_row_count(len(records) + 1, path)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TirgrpoError(f"{path}, line {lineno}: not valid JSON ({e})") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4,300 digits; nesting too deep
            raise TirgrpoError(f"{path}, line {lineno}: not usable JSON ({type(e).__name__}: {e})") from None
        if not isinstance(record, dict):
            raise TirgrpoError(f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((f"{path}, line {lineno}", record))
    return records


def _read_csv(path: Path, text: str) -> list[tuple[str, dict]]:
    # Transcripts are long: lift the csv module's 128 kB per-field default; our own limit
    # (checked per field afterwards, naming it) applies instead.
    csv.field_size_limit(2**31 - 1)
    records = []
    reader = csv.DictReader(io.StringIO(text, newline=""), restval=_MISSING)
    try:
        header = reader.fieldnames or []
        check_columns_once(f"{path}, header (line 1)", header, header)
        for n, row in enumerate(reader, start=1):
            check_row_count(n, path)
            where = f"{path}, row {n} (line {reader.line_num})"
            if None in row:  # more cells than the header has columns
                raise TirgrpoError(f"{where}: more fields than the header has columns")
            if _MISSING in row.values():  # not "field 'completion' must be a string, got None"
                raise TirgrpoError(f"{where}: fewer fields than the header has columns ({len(header)})")
            record = {k: v for k, v in row.items()}
            for key in OPTIONAL_FIELDS:
                if record.get(key) == "":
                    record[key] = None
            records.append((where, record))
    except csv.Error as e:
        raise TirgrpoError(f"{path}, line {reader.line_num}: malformed CSV ({e})") from None
    return records


def check_records(records: list[dict], locations: list[str], reward_set: str) -> None:
    """Raise on the first record that cannot be scored, naming its file, line and field."""
    from tirgrpo.score.rewards import record_problem

    for where, record in zip(locations, records):
        problem = record_problem(record, reward_set)
        if problem:
            raise TirgrpoError(f"{where}: {problem}")


def summarize(scores: list[dict]) -> str:
    """Mean of each reward and the decision mix, in a few lines."""
    from collections import Counter

    n = len(scores)
    keys = [k for k in scores[0] if k not in ("valid", "decision") and not k.startswith("w_")]
    weights = {k: scores[0][k] for k in scores[0] if k.startswith("w_")}
    decisions = Counter(s["decision"] for s in scores)
    mix = ", ".join(f"{d} {decisions.get(d, 0)}" for d in ("submit", "decline", "invalid"))
    lines = [f"{n} records; decisions: {mix}"]
    lines.append("weights: " + ", ".join(f"{k} {v:.4f}" for k, v in weights.items()))
    lines.append("means:   " + ", ".join(f"{k} {sum(s[k] for s in scores) / n:+.4f}" for k in keys))
    return "\n".join(lines)
