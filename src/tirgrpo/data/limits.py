"""One limit policy for every reader of user data (examples, transcripts, seed CSVs, GSM8K, score input).

Checked while reading, before anything is tokenized, so a broken file fails in seconds with a
message naming the file, row and field instead of running for minutes:

- a file over MAX_FILE_BYTES is refused before it is read;
- a text field over MAX_FIELD_CHARS characters is refused (no prompt is that long: the
  longest context these models take, 128k tokens, is about 500,000 characters; a field this
  big is far more likely a broken CSV quote swallowing the rest of the file);
- a file with more than MAX_ROWS rows is refused;
- U+0000 (NUL) in any text is refused like other malformed text (tokenizers and C-string
  consumers treat it as an end of text), and so is a lone surrogate (a JSON escape such as
  \\ud800 without its pair: no character, so no tokenizer or UTF-8 output file takes it);
- duplicate rows are counted, reported and dropped (`drop_duplicates`), unless the command
  is given `--keep-duplicates`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable, Hashable, Iterable, TypeVar

from tirgrpo.errors import TirgrpoError

MAX_FILE_BYTES = 4 * 2**30      # 4 GiB
MAX_FIELD_CHARS = 1_000_000
MAX_ROWS = 2_000_000

T = TypeVar("T")

# U+D800..U+DFFF: halves of a UTF-16 pair. json.loads makes one of a "\ud800" escape without its
# pair (a UTF-8 file's own bytes cannot hold one), and it breaks every writer and tokenizer later.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_file_size(path: str | os.PathLike) -> None:
    """Refuse a file over MAX_FILE_BYTES before reading it (reading it whole would exhaust memory)."""
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise TirgrpoError(f"cannot read {path}: {e.strerror or e}") from None
    if size > MAX_FILE_BYTES:
        raise TirgrpoError(f"{path}: {size / 2**30:.1f} GiB, over the limit of {MAX_FILE_BYTES / 2**30:.0f} GiB "
                           f"per input file; split it")


def text_problem(value: str) -> str | None:
    """Why a text field is refused (too long, contains NUL or a lone surrogate), or None when it is fine."""
    if len(value) > MAX_FIELD_CHARS:
        return f"is {len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,}"
    if "\x00" in value:
        return f"contains a NUL character (U+0000) at position {value.index(chr(0))}"
    return surrogate_problem(value)


def surrogate_problem(value: str) -> str | None:
    """Why a text with a lone surrogate is refused (naming it and where it is), or None without one."""
    lone = _SURROGATE.search(value)
    if lone:
        return (f"contains a lone surrogate (U+{ord(lone.group()):04X}, a \\u escape without its pair) "
                f"at position {lone.start()}; it is no character")
    return None


def strip_bom(text: str) -> str:
    """`text` without a leading byte order mark (U+FEFF), which Excel's "CSV UTF-8" and some Windows
    editors write: left in, it glues itself to the first CSV column's name or the first JSON line."""
    return text[1:] if text.startswith("\ufeff") else text


def check_columns_once(where: str, header: list[str], columns: Iterable[str | None]) -> None:
    """Refuse a CSV header that names one of `columns` (the ones the reader uses; None: unused)
    more than once: which the user meant is unknowable, and a row would silently take the last."""
    twice = sorted({c for c in columns if c is not None and header.count(c) > 1})
    if twice:
        raise TirgrpoError(f"{where}: column(s) {twice} appear more than once; found {header}")


def check_row_count(n: int, path: str | os.PathLike) -> None:
    """Raise once a file's row number `n` goes past MAX_ROWS."""
    if n > MAX_ROWS:
        raise TirgrpoError(f"{path}: more than {MAX_ROWS:,} rows, over the limit per input file; split it")


def drop_duplicates(items: Iterable[T], key: Callable[[T], Hashable], keep: bool = False) -> tuple[list[T], int]:
    """(items without repeats of an earlier item's key, how many were dropped); first ones win.

    With `keep`, nothing is dropped but the repeats are still counted (for the report)."""
    seen: set = set()
    out, dropped = [], 0
    for item in items:
        k = key(item)
        if k in seen:
            dropped += 1
            if not keep:
                continue
        seen.add(k)
        out.append(item)
    return out, dropped


def report_duplicates(n: int, what: str, kept: bool) -> None:
    """Tell the user (on stderr) how many duplicate rows were dropped or kept."""
    if n:
        action = "kept (--keep-duplicates)" if kept else "dropped (keep them with --keep-duplicates)"
        print(f"{n} duplicate {what} {action}", file=sys.stderr)
