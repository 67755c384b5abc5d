"""Splitting TIR transcripts into train and held-out problems, by problem id.

`prepare` splits examples by question; this splits the transcripts themselves, before
`prepare`, so that the held-out side keeps every transcript of its problems — also those
that give no judge example (no code output) — for answer selection (`tirgrpo eval
--selection`), and the judge is trained and evaluated on disjoint problems.

A problem is held out when its hash (sha256 of the seed and the id) is among the
`eval_question_count(n, fraction)` smallest of the file's problems: the choice depends only
on the ids and the seed, never on the file's order, and both sides get at least one problem
when there are two or more. Problems of one question (the same text under two ids) go to the
held-out side together, so the judge is never evaluated on a question it trained on.

The training side may also take the transcripts of other problems (`extra_train`: e.g. the
solver's transcripts of GSM8K's train split beside those of its test split), so the judge trains
on more problems than the held-out file's run holds; they must share no problem with it. With
them, a fraction of 1 holds out every problem of the input.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence


def problem_hash(problem_id: str, seed: int) -> int:
    """A problem's place in the held-out order: sha256 of "seed", NUL, id, as a 256-bit integer."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{problem_id}".encode("utf-8")).digest(), "big")


def heldout_problems(problem_ids: Sequence[str], fraction: float, seed: int = 0) -> set[str]:
    """The held-out ids: the round(fraction x n) distinct ids (at least 1, at most n - 1 when n >= 2;
    none when fraction is 0) with the smallest `problem_hash`."""
    from tirgrpo.data.prepare import eval_question_count

    ids = sorted(set(problem_ids), key=lambda pid: (problem_hash(pid, seed), pid))
    return set(ids[: eval_question_count(len(ids), fraction)])


def split_transcripts(path: str | Path, train_out: str | Path, heldout_out: str | Path, fraction: float,
                      seed: int = 0, extra_train: Sequence[str | Path] = ()) -> dict[str, int]:
    """Write the transcripts of `path` (read with the strict reader) to `train_out` and
    `heldout_out` by `heldout_problems`, each file atomically, lines in input order; then the
    transcripts of each `extra_train` file to `train_out` too. Returns the counts of problems
    and transcripts on each side (extras included) and of the extras alone."""
    from tirgrpo.data.gsm8k import question_key
    from tirgrpo.data.records import read_transcripts, transcript_to_dict
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.files import atomic_write_text, check_distinct_files, check_output_file

    check_output_file(train_out, "--train")
    check_output_file(heldout_out, "--heldout")
    check_distinct_files({"--input": path, "--train": train_out, "--heldout": heldout_out,
                          **{f"--extra-train {e}": e for e in extra_train}})
    transcripts = read_transcripts(path)
    if not transcripts:
        raise TirgrpoError(f"{path}: no transcripts to split")
    ids = {str(t.problem_id) for t in transcripts}
    questions = {question_key(t.question) for t in transcripts}
    extras = []
    for extra in extra_train:
        for t in read_transcripts(extra):
            if str(t.problem_id) in ids or question_key(t.question) in questions:
                raise TirgrpoError(f"{extra}: problem {t.problem_id!r} ({t.question[:60]!r}) is also in {path}; "
                                   "the extra training transcripts must come from other problems")
            extras.append(t)
    held = (ids if extras and fraction >= 1 else heldout_problems(sorted(ids), fraction, seed))
    held_questions = {question_key(t.question) for t in transcripts if str(t.problem_id) in held}
    held |= {str(t.problem_id) for t in transcripts if question_key(t.question) in held_questions}
    sides: dict[bool, list[str]] = {False: [], True: []}
    for t in transcripts + extras:
        sides[str(t.problem_id) in held].append(json.dumps(transcript_to_dict(t), ensure_ascii=False) + "\n")
    atomic_write_text(Path(train_out), "".join(sides[False]))
    atomic_write_text(Path(heldout_out), "".join(sides[True]))
    n_extra = len({str(t.problem_id) for t in extras})
    return {"train_problems": len(ids) - len(held) + n_extra, "heldout_problems": len(held),
            "train_transcripts": len(sides[False]), "heldout_transcripts": len(sides[True]),
            "extra_problems": n_extra, "extra_transcripts": len(extras)}
