"""`tirgrpo prepare`: turn TIR transcripts (seed-style CSV or transcript JSONL) into examples.

Steps, in order: read every input (all checked before anything is written), cut transcripts
into segments (prompt up to and including a code-output bridge, completion up to the next
```python), tokenize, drop segments over the token limits, keep one correct and one wrong
segment per question (--pairs-per-question K: up to K such pairs; --no-pairing: every
segment), split train/eval by question, and write
OUT/train.jsonl, OUT/eval.jsonl and OUT/stats.json in one atomic step.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from tirgrpo.data.records import (
    Example,
    Segment,
    Transcript,
    read_seed_csv,
    read_transcripts,
    write_examples,
)
from tirgrpo.data.limits import check_file_size
from tirgrpo.errors import TirgrpoError
from tirgrpo.data.templates import CODE_BLOCK_START, bridge

DEFAULT_TOKENIZER = "r1-distill-qwen"
PERCENTILES = (50, 90, 99)


# ----------------------------------------------------------------------------- reading


def extract_segments(t: Transcript, source: str, where: str) -> list[Segment]:
    """Every training-eligible segment of one transcript (see docs/data-format.md).

    After each turn whose code output was shown, the prompt is the whole transcript up to
    and including that bridge, and the completion is the next turn's text up to (not
    including) its first "```python", or all of it. Empty completions are skipped. A
    transcript without `correct_answer` gives no segments (its label is unknown).
    """
    if t.correct_answer is None:
        return []
    segments = []
    context = t.prompt
    for k, turn in enumerate(t.turns):
        context += turn.text
        if turn.output is None:
            break
        context += bridge(turn.output, t.bridge)
        if k + 1 < len(t.turns):
            completion = t.turns[k + 1].text.split(CODE_BLOCK_START, 1)[0]
            if completion.strip():
                segments.append(
                    Segment(
                        question=t.question,
                        prompt=context,
                        completion=completion,
                        correct_answer=t.correct_answer,
                        eventual_answer=t.eventual_answer,
                        source=source,
                        where=f"{where}, segment after turn {k}",
                    )
                )
    return segments


def read_inputs(paths: Sequence[str | Path]) -> tuple[list[Segment], dict[str, int]]:
    """Read all inputs into segments. Returns (segments, counts of what was read and skipped)."""
    from tirgrpo.data.bundled import bundled_path

    segments: list[Segment] = []
    counts = Counter()
    for spec in paths:
        path = bundled_path(str(spec))
        if not path.is_file():
            raise TirgrpoError(f"input {path}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
        check_file_size(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = read_seed_csv(path)
            counts["csv_rows"] += len(rows)
            segments.extend(rows)
        elif suffix == ".jsonl":
            transcripts = read_transcripts(path)
            counts["transcripts"] += len(transcripts)
            for i, t in enumerate(transcripts, start=1):
                found = extract_segments(t, path.name, f"{path}, transcript {i}")
                if t.correct_answer is None:
                    counts["transcripts_without_correct_answer"] += 1
                counts["transcript_segments"] += len(found)
                segments.extend(found)
        else:
            raise TirgrpoError(
                f"input {path}: unknown type {suffix!r}; expected a seed-style .csv or a transcript .jsonl"
            )
    return segments, dict(counts)


# ----------------------------------------------------------------------------- the steps

# The judge's target decisions (`--judge-targets`). A solver's own next text is no judge
# target: on a transcript that ended wrong it usually boxes the wrong answer. They continue
# the bridge's pre-fill ("Looking at my code,") and end as `score.rewards.decide` reads them:
# a boxed answer (submit) or an opened python block (decline).
JUDGE_SUBMIT = " the output answers the problem, so it is right.\n</think>\n\n\\boxed{{{answer}}}"
JUDGE_DECLINE = " the output does not answer the problem correctly, so I will fix the code.\n</think>\n\n" + CODE_BLOCK_START


def judge_target(segment: Segment) -> Segment:
    """The segment with its completion replaced by the judge's right decision for its label:
    submit the transcript's own eventual answer (`correct`), or decline (`wrong`)."""
    if segment.label == "correct":
        return dataclasses.replace(segment, completion=JUDGE_SUBMIT.format(answer=segment.eventual_answer))
    return dataclasses.replace(segment, completion=JUDGE_DECLINE)


def tokenize(segments: Sequence[Segment], tokenizer, progress: bool = True, batch: int = 64) -> list[Example]:
    """Count tokens and build examples: prompt_tokens with the tokenizer's bos, completion without."""
    from tqdm import tqdm

    examples = []
    with tqdm(total=len(segments), desc="tokenizing", unit="ex", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(segments), batch):
            chunk = segments[start : start + batch]
            prompts = tokenizer([s.prompt for s in chunk], add_special_tokens=True)["input_ids"]
            completions = tokenizer([s.completion for s in chunk], add_special_tokens=False)["input_ids"]
            for s, p, c in zip(chunk, prompts, completions):
                examples.append(
                    Example(
                        question=s.question,
                        prompt=s.prompt,
                        completion=s.completion,
                        correct_answer=s.correct_answer,
                        eventual_answer=s.eventual_answer,
                        label=s.label,
                        prompt_tokens=len(p),
                        completion_tokens=len(c),
                        source=s.source,
                    )
                )
            bar.update(len(chunk))
    return examples


def within_limits(examples: Sequence[Example], max_prompt: int, max_completion: int) -> tuple[list[Example], list[Example]]:
    """(examples with prompt_tokens <= max_prompt, then those also with completion_tokens <= max_completion).

    A limit of 0 means no limit. The two lists let the caller report each filter's effect.
    """
    after_prompt = [e for e in examples if max_prompt <= 0 or e.prompt_tokens <= max_prompt]
    after_completion = [e for e in after_prompt if max_completion <= 0 or e.completion_tokens <= max_completion]
    return after_prompt, after_completion


def _questions_in_order(examples: Sequence[Example]) -> list[str]:
    return list(dict.fromkeys(e.question for e in examples))


def pair_by_question(examples: Sequence[Example], seed: int, pairs_per_question: int = 1) -> list[Example]:
    """Per question, up to `pairs_per_question` pairs of one `correct` and one `wrong` example
    (correct, wrong, correct, wrong, ...; no example twice); other questions are dropped.

    The choice within a question depends only on the seed and the question's text, so adding
    or removing other questions does not change it; with one pair a question (the default)
    the picks are those of one `random.choice` per label. Questions keep their first-seen order.
    """
    by_question: dict[str, dict[str, list[Example]]] = {}
    for e in examples:
        by_question.setdefault(e.question, {"correct": [], "wrong": []})[e.label].append(e)
    paired = []
    for question, groups in by_question.items():
        k = min(pairs_per_question, len(groups["correct"]), len(groups["wrong"]))
        if k:
            rng = random.Random(f"{seed}\0{question}")
            right, wrong = rng.sample(groups["correct"], k), rng.sample(groups["wrong"], k)
            paired += [e for pair in zip(right, wrong) for e in pair]
    return paired


def eval_question_count(n_questions: int, eval_fraction: float) -> int:
    """How many questions go to eval: round(fraction * n), at least 1 and at most n - 1.

    With fewer than 2 questions, or a fraction of 0, everything is train.
    """
    if eval_fraction <= 0 or n_questions < 2:
        return 0
    return min(n_questions - 1, max(1, round(eval_fraction * n_questions)))


def split_by_question(examples: Sequence[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, eval): whole questions go to one side, never both; reproducible by seed."""
    questions = sorted(_questions_in_order(examples))
    random.Random(seed).shuffle(questions)
    eval_questions = set(questions[: eval_question_count(len(questions), eval_fraction)])
    train = [e for e in examples if e.question not in eval_questions]
    held = [e for e in examples if e.question in eval_questions]
    return train, held


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[int], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _step(name: str, examples: Sequence[Example]) -> dict[str, Any]:
    labels = Counter(e.label for e in examples)
    return {
        "step": name,
        "rows": len(examples),
        "questions": len(_questions_in_order(examples)),
        "correct": labels["correct"],
        "wrong": labels["wrong"],
    }


def _lengths(values: Sequence[int]) -> dict[str, float]:
    out = {"min": min(values, default=0), "max": max(values, default=0)}
    out["mean"] = round(sum(values) / len(values), 1) if values else 0.0
    out.update({f"p{q}": round(percentile(values, q), 1) for q in PERCENTILES})
    return out


def format_table(stats: dict[str, Any]) -> str:
    """The summary printed by `prepare`: one line per step, then token-length percentiles."""
    rows = [("step", "rows", "questions", "correct", "wrong")]
    rows += [(s["step"], s["rows"], s["questions"], s["correct"], s["wrong"]) for s in stats["steps"]]
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [
        "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    keys = ["min", *[f"p{q}" for q in PERCENTILES], "max", "mean"]
    lines.append("tokens      " + "".join(k.rjust(9) for k in keys))
    for name in ("prompt", "completion"):
        lens = stats["tokens"][name]
        lines.append(f"{name:<12}" + "".join(f"{lens[k]:>9g}" for k in keys))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def prepare(
    segments: Sequence[Segment],
    tokenizer,
    max_prompt_tokens: int = 3000,
    max_completion_tokens: int = 1000,
    pairing: bool = True,
    eval_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    pairs_per_question: int = 1,
    wrong_examples: str = "all",
) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Run tokenize -> token limits -> (wrong kind) -> pairing (`pairs_per_question`
    correct/wrong pairs a question) -> split. Returns (train, eval, stats).

    wrong_examples: "all", or "answered": keep only the `wrong` segments whose transcript boxed
    an answer (a wrong one). Most `wrong` segments of real transcripts come from runs that never
    box any; a judge trained on those learns to spot unfinished work, not wrong answers, and
    answer selection needs the second (eval.evaluate.wrong_kind_split measures both).
    """
    if wrong_examples not in WRONG_EXAMPLES:
        raise TirgrpoError(f"wrong_examples must be one of {', '.join(WRONG_EXAMPLES)}, not {wrong_examples!r}")
    examples = tokenize(segments, tokenizer, progress=progress)
    after_prompt, after_completion = within_limits(examples, max_prompt_tokens, max_completion_tokens)
    steps = [
        _step("segments read", examples),
        _step(f"prompt <= {max_prompt_tokens} tokens" if max_prompt_tokens > 0 else "prompt: no limit", after_prompt),
        _step(
            f"completion <= {max_completion_tokens} tokens" if max_completion_tokens > 0 else "completion: no limit",
            after_completion,
        ),
    ]
    kept = after_completion
    if wrong_examples == "answered":
        kept = [e for e in kept if e.label == "correct" or e.eventual_answer is not None]
        steps.append(_step("wrong: boxed answers only", kept))
    if pairing:
        kept = pair_by_question(kept, seed, pairs_per_question)
        label = "1 correct + 1 wrong" if pairs_per_question == 1 else f"<= {pairs_per_question} correct/wrong pairs"
        steps.append(_step(f"paired ({label})", kept))
    train, held = split_by_question(kept, eval_fraction, seed)
    steps += [_step("train", train), _step("eval", held)]
    stats = {
        "steps": steps,
        "tokens": {
            "prompt": _lengths([e.prompt_tokens for e in kept]),
            "completion": _lengths([e.completion_tokens for e in kept]),
        },
    }
    return train, held, stats


WRONG_EXAMPLES = ("all", "answered")  # prepare's wrong_examples


def _check_out(out: Path) -> None:
    from tirgrpo.files import check_output_dir

    check_output_dir(out)
    # The output folder is replaced as a whole; refuse to do that to a folder that is not ours.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "stats.json").is_file())):
        raise TirgrpoError(f"--out {out} exists and is not an earlier prepare output; choose a new folder")


def prepare_folder(inputs: Sequence[str], out: Path, tokenizer_name: str, max_prompt_tokens: int,
                   max_completion_tokens: int, pairing: bool, eval_fraction: float, seed: int,
                   progress: bool = False, keep_duplicates: bool = False,
                   judge_targets: bool = False, pairs_per_question: int = 1,
                   wrong_examples: str = "all") -> tuple[int, int, dict[str, Any]]:
    """`prepare` from input files to OUT/train.jsonl, OUT/eval.jsonl and OUT/stats.json, written
    in one atomic step after every input is read and checked. Repeated segments are dropped with a
    count unless `keep_duplicates`; with `judge_targets` every completion becomes `judge_target`'s.
    Returns (train rows, eval rows, stats)."""
    from tirgrpo.data.limits import drop_duplicates, report_duplicates
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.files import atomic_dir

    _check_out(out)
    segments, read_counts = read_inputs(inputs)
    if judge_targets:
        segments = [judge_target(seg) for seg in segments]
    segments, duplicates = drop_duplicates(segments, key=lambda s: (s.question, s.prompt, s.completion,
                                                                     s.correct_answer, s.eventual_answer),
                                           keep=keep_duplicates)
    report_duplicates(duplicates, "segments (same question, prompt, completion and answers)", keep_duplicates)
    read_counts["duplicate_segments"] = duplicates
    if not segments:
        raise TirgrpoError(f"no segments found in {inputs}")
    tokenizer = load_tokenizer(tokenizer_name)
    train, held, stats = prepare(segments, tokenizer, max_prompt_tokens=max_prompt_tokens,
                                 max_completion_tokens=max_completion_tokens, pairing=pairing,
                                 eval_fraction=eval_fraction, seed=seed, progress=progress,
                                 pairs_per_question=pairs_per_question, wrong_examples=wrong_examples)
    settings = {"tokenizer": tokenizer_name, "max_prompt_tokens": max_prompt_tokens,
                "max_completion_tokens": max_completion_tokens, "pairing": pairing,
                "pairs_per_question": pairs_per_question, "wrong_examples": wrong_examples,
                "eval_fraction": eval_fraction, "seed": seed, "judge_targets": judge_targets}
    stats = {"inputs": [str(p) for p in inputs], "input_counts": read_counts, "settings": settings, **stats}
    if not train and not held:
        # An empty data set would only fail later, in training; say here where the rows went.
        hint = " (no question has both a correct and a wrong segment: try --no-pairing)" if pairing else ""
        raise TirgrpoError(f"no example left after filtering{hint}; nothing written to {out}\n{format_table(stats)}")
    with atomic_dir(out) as tmp:
        write_examples(tmp / "train.jsonl", train)
        write_examples(tmp / "eval.jsonl", held)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(train), len(held), stats
