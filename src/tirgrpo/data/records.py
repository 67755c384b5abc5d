"""The data formats of tirgrpo, read and written with strict checks (see docs/data-format.md).

- `Example`: one training/eval example (JSONL or Parquet), what `tirgrpo prepare` writes.
- `Segment`: an example before tokenization, as read from a seed-style CSV or cut from a transcript.
- `Transcript`: one multi-turn TIR run (transcript JSONL, written by the TIR harness).

Every reader fails with a `TirgrpoError` that names the file, the row and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tirgrpo.data.limits import check_columns_once, check_file_size, check_row_count, strip_bom, text_problem
from tirgrpo.errors import TirgrpoError
from tirgrpo.files import atomic_path
from tirgrpo.data.templates import fields as template_fields


LABELS = ("correct", "wrong")

_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")


# ----------------------------------------------------------------------------- answers and labels


def parse_int_answer(value: Any) -> int | None:
    """The integer an answer stands for ("250", "250.0", 250, 250.0 -> 250), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        try:
            return int(value.strip().split(".")[0])
        except ValueError:  # over Python's 4,300-digit limit for int(str): no answer is that long
            return None
    return None


def answers_match(correct: Any, eventual: Any) -> bool:
    """True when the two answers are equal: as integers when both parse, else as stripped text."""
    if correct is None or eventual is None:
        return False
    a, b = parse_int_answer(correct), parse_int_answer(eventual)
    if a is not None and b is not None:
        return a == b
    return str(correct).strip() == str(eventual).strip()


def label_for(correct_answer: Any, eventual_answer: Any) -> str:
    """`"correct"` iff the transcript's eventual answer equals the correct answer, else `"wrong"`."""
    return "correct" if answers_match(correct_answer, eventual_answer) else "wrong"


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Example:
    """One example: the model sees `prompt` and is judged on what it writes next.

    Answers are canonical integer strings ("250"); `eventual_answer` is None when the
    transcript never gave one. Token counts are in tokens of the tokenizer used by
    `prepare`: `prompt_tokens` includes the bos it prepends, `completion_tokens` has none
    (0 = not counted, e.g. for in-memory test data).
    """

    question: str
    prompt: str
    completion: str
    correct_answer: str
    eventual_answer: str | None
    label: str
    prompt_tokens: int
    completion_tokens: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


EXAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Example))


@dataclass(frozen=True)
class Segment:
    """An example before tokenization. `where` says where it came from (for messages)."""

    question: str
    prompt: str
    completion: str
    correct_answer: str
    eventual_answer: str | None
    source: str
    where: str

    @property
    def label(self) -> str:
        return label_for(self.correct_answer, self.eventual_answer)


@dataclass(frozen=True)
class Turn:
    """One model turn of a transcript: its text, the code it ran and what that printed.

    text: the model's text of this turn, as generated (without the end-of-sentence token);
        when it ran code, it ends with the closing ``` of that code block.
    code: the code that was executed (None if the turn ran none; then it is the last turn).
    output: the execution output inserted into the bridge (None when nothing was executed).
    finish_reason: why generation stopped ("code", "eos", "length", ...), free text or None.
    wall_s: seconds the turn took (generation + execution), or None.
    """

    text: str
    code: str | None
    output: str | None
    finish_reason: str | None
    wall_s: float | None


@dataclass(frozen=True)
class Transcript:
    """One sampled TIR run of one problem (one line of a transcript JSONL).

    The full text is `prompt + turns[0].text + fill(bridge, output=turns[0].output) +
    turns[1].text + ...`; a bridge follows every turn whose `output` is not None.
    """

    problem_id: str
    sample: int
    question: str
    correct_answer: str | None
    eventual_answer: str | None
    prompt: str
    bridge: str
    turns: tuple[Turn, ...]

    def text(self) -> str:
        """The whole transcript as the model saw and wrote it."""
        from tirgrpo.data.templates import bridge

        parts = [self.prompt]
        for turn in self.turns:
            parts.append(turn.text)
            if turn.output is not None:
                parts.append(bridge(turn.output, self.bridge))
        return "".join(parts)


# ----------------------------------------------------------------------------- field checks


class _Row:
    """Checks the fields of one input row, with errors naming file, row and field."""

    def __init__(self, path: Path, where: str, data: dict[str, Any]):
        self.path, self.where, self.data = path, where, data

    def fail(self, field: str | None, problem: str) -> TirgrpoError:
        at = f", field {field!r}" if field else ""
        return TirgrpoError(f"{self.path}, {self.where}{at}: {problem}")

    def get(self, field: str, data: dict[str, Any] | None = None, name: str | None = None) -> Any:
        data = self.data if data is None else data
        if field not in data:
            raise self.fail(name or field, "missing")
        return data[field]

    def text(self, field: str, data: dict[str, Any] | None = None, name: str | None = None,
             allow_empty: bool = False, allow_none: bool = False) -> str | None:
        name = name or field
        value = self.get(field, data, name)
        if value is None and allow_none:
            return None
        if not isinstance(value, str):
            raise self.fail(name, f"must be a string, got {type(value).__name__}")
        problem = text_problem(value)
        if problem:
            raise self.fail(name, problem)
        if not allow_empty and not value.strip():
            raise self.fail(name, "is empty")
        return value

    def answer(self, field: str, allow_none: bool) -> str | None:
        """An integer answer as canonical text ("250.0" -> "250"); None only if allowed."""
        value = self.get(field)
        if value is None:
            if allow_none:
                return None
            raise self.fail(field, "is null; an integer is required")
        if isinstance(value, str) and not value.strip():
            raise self.fail(field, "is empty")
        n = parse_int_answer(value)
        if n is None:
            shown = str(value) if len(str(value)) < 40 else str(value)[:40] + "..."
            raise self.fail(field, f"must be an integer, got {shown!r}")
        return str(n)

    def integer(self, field: str, minimum: int) -> int:
        value = self.get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"must be an integer, got {value!r:.80}")
        if value < minimum:
            raise self.fail(field, f"must be >= {minimum}, got {value}")
        return value


def _example_from_dict(row: _Row) -> Example:
    if not isinstance(row.data, dict):
        raise row.fail(None, f"must be a JSON object, got {type(row.data).__name__}")
    correct = row.answer("correct_answer", allow_none=False)
    eventual = row.answer("eventual_answer", allow_none=True)
    label = row.get("label")
    if label not in LABELS:
        raise row.fail("label", f"must be one of {LABELS}, got {label!r:.80}")
    if label != label_for(correct, eventual):
        raise row.fail(
            "label", f"is {label!r} but correct_answer={correct} and eventual_answer={eventual}"
        )
    return Example(
        question=row.text("question"),
        prompt=row.text("prompt"),
        completion=row.text("completion"),
        correct_answer=correct,
        eventual_answer=eventual,
        label=label,
        prompt_tokens=row.integer("prompt_tokens", 0),
        completion_tokens=row.integer("completion_tokens", 0),
        source=row.text("source"),
    )


# ----------------------------------------------------------------------------- file helpers


def _read_text(path: Path) -> str:
    """The whole file as UTF-8 (a leading byte order mark dropped); a bad byte is reported with its line number."""
    check_file_size(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TirgrpoError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return strip_bom(data.decode("utf-8"))  # decoded whole first: byte offsets count from the file's start
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TirgrpoError(
            f"{path}, line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed JSON value) for each non-blank line of a JSONL file."""
    path = Path(path)
    rows = 0
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        rows += 1
        check_row_count(rows, path)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise TirgrpoError(f"{path}, line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4,300 digits; nesting too deep
            raise TirgrpoError(f"{path}, line {lineno}: not usable JSON ({type(e).__name__}: {e})") from None
        yield lineno, value


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise TirgrpoError(f"{path}: unknown example file type {suffix!r}; use .jsonl or .parquet")
    return suffix


# ----------------------------------------------------------------------------- Example files


def read_examples(path: str | os.PathLike) -> list[Example]:
    """Read examples from a `.jsonl` or `.parquet` file, checking every field."""
    path = Path(path)
    if _suffix(path) == ".jsonl":
        return [_example_from_dict(_Row(path, f"line {n}", obj)) for n, obj in iter_jsonl(path)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_file_size(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as e:  # a truncated or foreign file: ArrowInvalid
        raise TirgrpoError(f"cannot read {path} as Parquet: {e}") from None
    check_row_count(table.num_rows, path)
    missing = [f for f in EXAMPLE_FIELDS if f not in table.column_names]
    if missing:
        raise TirgrpoError(f"{path}: missing column(s) {missing}")
    rows = table.select(list(EXAMPLE_FIELDS)).to_pylist()
    return [_example_from_dict(_Row(path, f"row {i}", obj)) for i, obj in enumerate(rows, start=1)]


def write_examples(path: str | os.PathLike, examples: list[Example]) -> None:
    """Write examples to `.jsonl` (one JSON object a line) or `.parquet`, atomically."""
    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                for ex in examples:
                    f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema(
                [(name, pa.int64() if name.endswith("_tokens") else pa.string()) for name in EXAMPLE_FIELDS]
            )
            table = pa.Table.from_pylist([ex.to_dict() for ex in examples], schema=schema)
            pq.write_table(table, tmp)


# ----------------------------------------------------------------------------- seed-style CSV

SEED_CSV_COLUMNS = ("prompt", "completion", "question", "correct_answer", "eventual_answer")


def read_seed_csv(path: str | os.PathLike) -> list[Segment]:
    """Read a seed-style CSV: columns prompt, completion, question, correct_answer, eventual_answer.

    Extra columns are ignored (the seed's own token counts are recounted by `prepare`). Rows
    are numbered from 1 after the header; messages also give the line where the row starts.
    """
    path = Path(path)
    text = _read_text(path)
    # The csv module refuses fields over 128 KiB by default; real prompts are longer. We lift
    # its limit and apply our own, which names the row and field.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise TirgrpoError(f"{path}: empty file, expected a header with {list(SEED_CSV_COLUMNS)}") from None
    except csv.Error as e:
        raise TirgrpoError(f"{path}, line 1: malformed CSV header ({e})") from None
    missing = [c for c in SEED_CSV_COLUMNS if c not in header]
    if missing:
        raise TirgrpoError(f"{path}, header (line 1): missing column(s) {missing}; found {header}")
    check_columns_once(f"{path}, header (line 1)", header, SEED_CSV_COLUMNS)
    segments = []
    row_no, start_line = 0, reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise TirgrpoError(f"{path}, row {row_no + 1} (line {start_line}): malformed CSV ({e})") from None
        row_no += 1
        check_row_count(row_no, path)
        where = f"row {row_no} (line {start_line})"
        start_line = reader.line_num + 1
        if not values:  # a blank line
            continue
        row = _Row(path, where, dict(zip(header, values)))
        if len(values) != len(header):
            raise row.fail(None, f"has {len(values)} fields, the header has {len(header)}")
        for column in header:  # also the ignored ones: a 50 MB field is an error anywhere
            row.text(column, allow_empty=True)
        segments.append(
            Segment(
                question=row.text("question").strip(),
                prompt=row.text("prompt"),
                completion=row.text("completion"),
                correct_answer=row.answer("correct_answer", allow_none=False),
                eventual_answer=row.answer("eventual_answer", allow_none=False),
                source=path.name,
                where=f"{path}, {where}",
            )
        )
    return segments


# ----------------------------------------------------------------------------- transcript JSONL


def _turn_from_dict(row: _Row, i: int, obj: Any, last: bool) -> Turn:
    name = f"turns[{i}]"
    if not isinstance(obj, dict):
        raise row.fail(name, f"must be an object, got {type(obj).__name__}")
    text = row.text("text", obj, f"{name}.text", allow_empty=True)
    code = row.text("code", obj, f"{name}.code", allow_empty=True, allow_none=True)
    output = row.text("output", obj, f"{name}.output", allow_empty=True, allow_none=True)
    if output is not None and code is None:
        raise row.fail(f"{name}.output", "is set but the turn has no code")
    if output is None and not last:
        raise row.fail(f"{name}.output", "is null but later turns follow (only the last turn may end without output)")
    finish = obj.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise row.fail(f"{name}.finish_reason", f"must be a string or null, got {finish!r:.80}")
    wall = obj.get("wall_s")
    # json.loads reads NaN and Infinity, which `not wall >= 0` also refuses (no JSON writer takes them back).
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))
                             or not 0 <= wall < math.inf):
        raise row.fail(f"{name}.wall_s", f"must be a finite number >= 0 or null, got {wall!r:.80}")
    return Turn(text=text, code=code, output=output, finish_reason=finish, wall_s=wall)


def _transcript_from_dict(row: _Row) -> Transcript:
    if not isinstance(row.data, dict):
        raise row.fail(None, f"must be a JSON object, got {type(row.data).__name__}")
    problem_id = row.get("problem_id")
    if isinstance(problem_id, bool) or not isinstance(problem_id, (str, int)) or str(problem_id).strip() == "":
        raise row.fail("problem_id", f"must be a non-empty string or an integer, got {problem_id!r:.80}")
    if isinstance(problem_id, str):
        row.text("problem_id")
    bridge = row.text("bridge")
    if template_fields(bridge) != {"output"} or bridge.count("{output}") != 1:
        raise row.fail("bridge", "must contain the field {output} exactly once and no other {field}")
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns:
        raise row.fail("turns", "must be a non-empty list")
    return Transcript(
        problem_id=str(problem_id),
        sample=row.integer("sample", 0),
        question=row.text("question").strip(),
        correct_answer=row.answer("correct_answer", allow_none=True),
        eventual_answer=row.answer("eventual_answer", allow_none=True),
        prompt=row.text("prompt"),
        bridge=bridge,
        turns=tuple(_turn_from_dict(row, i, t, i == len(turns) - 1) for i, t in enumerate(turns)),
    )


def read_transcripts(path: str | os.PathLike) -> list[Transcript]:
    """Read a transcript JSONL file (one TIR run a line), checking every field."""
    return [t for _, t in _numbered_transcripts(Path(path))]


def _numbered_transcripts(path: Path) -> list[tuple[int, Transcript]]:
    return [(n, _transcript_from_dict(_Row(path, f"line {n}", obj))) for n, obj in iter_jsonl(path)]


def read_transcripts_for_votes(path: str | os.PathLike) -> list[Transcript]:
    """`read_transcripts` for a vote over each problem's runs (`tirgrpo eval --transcripts`): a run
    given twice (the same problem_id and sample) would vote twice, and a problem whose lines
    disagree on its correct_answer has no one right answer; both are refused, naming the lines."""
    path = Path(path)
    numbered = _numbered_transcripts(path)
    runs: dict[tuple[str, int], int] = {}
    answers: dict[str, tuple[int, str]] = {}
    for n, t in numbered:
        first = runs.setdefault((t.problem_id, t.sample), n)
        if first != n:
            raise TirgrpoError(f"{path}, line {n}: problem_id {t.problem_id!r} sample {t.sample} again (first on "
                               f"line {first}); each run votes once: remove the repeat or give it its own sample")
        if t.correct_answer is not None:
            line, answer = answers.setdefault(t.problem_id, (n, t.correct_answer))
            if answer != t.correct_answer:
                raise TirgrpoError(f"{path}, line {n}, field 'correct_answer': {t.correct_answer!r} for problem_id "
                                   f"{t.problem_id!r}, which line {line} gives as {answer!r}")
    return [t for _, t in numbered]


def transcript_to_dict(t: Transcript) -> dict[str, Any]:
    """The JSON object of one transcript line (what `read_transcripts` reads back)."""
    d = dataclasses.asdict(t)
    d["turns"] = [dataclasses.asdict(turn) for turn in t.turns]
    return d
