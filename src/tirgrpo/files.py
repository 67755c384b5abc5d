"""Atomic file output: write to a temporary name next to the target, then rename.

A crash or an error never leaves a half-written file (or folder) under the final name, and
`check_output_file` / `check_output_dir` refuse an output that cannot be written before any
work starts (not after an hour of it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from tirgrpo.errors import TirgrpoError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success rename it to `path`, on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `path` as a whole.

    Used for outputs made of several files (a prepared data set, a checkpoint), so
    that readers see either the old folder or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------- checks before work


def _probe_folder(folder: Path, option: str, given: Path) -> None:
    """Raise TirgrpoError unless a file can be created in `folder` or, if missing, its nearest
    existing ancestor (where the missing folders would be made). Creates and removes one file.
    Messages name `given`, the option's value as the user wrote it (not `folder`, its parent)."""
    here = folder
    while not here.exists():
        if here.parent == here:
            break
        here = here.parent
    if not here.is_dir():
        raise TirgrpoError(f"{option} {given}: {here} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".tirgrpo-write-check.", dir=here)
    except OSError as e:
        raise TirgrpoError(f"{option} {given}: cannot write in {here} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output file that cannot be written: a folder in its place or an unwritable
    folder around it. `option` names the command-line option in the message. Returns the path."""
    path = Path(path)
    if path.is_dir():
        raise TirgrpoError(f"{option} {path}: is a folder; name the output file instead")
    _probe_folder(path.parent, option, path)
    return path


def check_distinct_files(paths: dict[str, str | os.PathLike]) -> None:
    """Refuse two of `paths` ({option or role: path}) naming the same file (after resolving links
    and `..`): a command would write over its own input, or one output over another."""
    seen: dict[Path, str] = {}
    for name, path in paths.items():
        real = Path(path).resolve()
        if real in seen:
            raise TirgrpoError(f"{seen[real]} and {name} are the same file ({path}); name another file")
        seen[real] = name


def report_paths(out: str | os.PathLike, option: str = "--out") -> tuple[Path, Path]:
    """The JSON report `out` and its Markdown beside it (`out` with the suffix .md), both
    checked by `check_output_file`; an `out` ending in .md is refused (the Markdown would
    replace the JSON)."""
    out = check_output_file(out, option)
    if out.suffix == ".md":
        raise TirgrpoError(f"{option} {out}: the Markdown report goes beside the JSON as {out.name}; "
                           "name a .json file")
    return out, out.with_suffix(".md")


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Refuse an output folder that cannot be written as a whole (`atomic_dir` builds it next to
    its final place, so the parent must take new entries). Returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TirgrpoError(f"{option} {path}: is a file, not a folder")
    _probe_folder(path.parent, option, path)
    return path
