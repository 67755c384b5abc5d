"""What one sandboxed execution returns, and how its output is captured and truncated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Output beyond this (stdout + stderr) is not read: the run is killed. Far above what is shown
# (4,000 characters) but high enough that a program printing a big table is not cut short.
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024

# The original harness's truncation: long outputs keep their first and last 2,000 characters,
# lines over 1,000 characters keep their first and last 100.
HEAD_CHARS = TAIL_CHARS = 2000
MAX_LINE_CHARS = 1000
LINE_KEEP_CHARS = 100
# Raw bytes kept per stream before truncation: enough for HEAD/TAIL_CHARS of any UTF-8 text.
_KEEP_BYTES = 64 * 1024


@dataclass
class SandboxResult:
    """What one execution did. `stdout`/`stderr` are truncated and cleaned of temp paths.

    exit_code: the program's exit status, -N if signal N killed it, None if we killed it
        (timeout, output limit) or it could not be known.
    killed_by: None when the program ended on its own; else what stopped it: "timeout",
        "output" (output limit), "cpu" (CPU-time limit), "memory" (address-space limit),
        "file-size", or "signal SIGxxx".
    """

    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_by: str | None
    truncated: bool
    wall_s: float
    mode: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def output(self) -> str:
        """The text a TIR bridge shows: stdout, then stderr, then a note on why it stopped."""
        parts = [p.rstrip("\n") for p in (self.stdout, self.stderr) if p.strip()]
        if self.timed_out:
            parts.append(f"TimeoutError: execution stopped after the time limit ({self.wall_s:.0f} s)")
        elif self.killed_by in ("output", "cpu", "file-size") or (self.killed_by or "").startswith("signal"):
            parts.append(f"Execution stopped: {self.killed_by} limit" if "signal" not in self.killed_by
                         else f"Execution stopped: killed by {self.killed_by[7:]}")
        return "\n".join(parts)


# ----------------------------------------------------------------------------- output handling


def truncate_output(text: str) -> tuple[str, bool]:
    """(text with long lines and long outputs cut as the original did, whether anything was cut)."""
    cut = False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if len(line) > MAX_LINE_CHARS:
            omitted = len(line) - 2 * LINE_KEEP_CHARS
            lines[i] = f"{line[:LINE_KEEP_CHARS]}... [{omitted} characters omitted] ...{line[-LINE_KEEP_CHARS:]}"
            cut = True
    text = "\n".join(lines)
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        omitted = len(text) - HEAD_CHARS - TAIL_CHARS
        text = f"{text[:HEAD_CHARS]}\n... [{omitted} characters omitted] ...\n{text[-TAIL_CHARS:]}"
        cut = True
    return text, cut


class _Capture:
    """Keeps the first and last _KEEP_BYTES of a stream and counts the rest."""

    def __init__(self):
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = _KEEP_BYTES - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > _KEEP_BYTES:
                del self.tail[: len(self.tail) - _KEEP_BYTES]

    def text(self) -> tuple[str, bool]:
        dropped = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        if dropped <= 0:
            return (head + self.tail.decode("utf-8", errors="replace")), False
        tail = self.tail.decode("utf-8", errors="replace")
        return f"{head}\n... [{dropped} bytes omitted] ...\n{tail}", True


def clean_paths(text: str, workdir: str) -> str:
    """Remove the temporary working directory from tracebacks and messages ("main.py", ".")."""
    return text.replace(workdir + "/", "").replace(workdir, ".")


