"""How well the solver itself did on its TIR transcripts, before any judge: pass@1, majority@K
and pass@K over problems (with bootstrap 95% intervals), how many code outputs and judge
segments a transcript gives, how long transcripts are (tokens, seconds) and how they ended.

    python -m tirgrpo.eval.solver WORK/transcripts.jsonl --tokenizer MODEL --out WORK/solver.json

writes the report as JSON and the same as Markdown next to it (suffix .md). Only transcripts
with a known `correct_answer` count. Per problem with n transcripts of which c are right:
pass@1 = c / n, majority@K = the share of the tied most frequent eventual answers that are
right (`selection.vote`, no answer casts no vote), pass@K = 1 if c > 0; each is averaged over
problems, with intervals from resampling problems (`selection.bootstrap_ci`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, Callable, Sequence

from tirgrpo.data.records import Transcript, answers_match


def _summary(values: Sequence[float]) -> dict[str, float]:
    """min / p50 / p90 / max / mean of `values` (all 0 when empty)."""
    from tirgrpo.data.prepare import percentile

    if not values:
        return {"min": 0, "p50": 0.0, "p90": 0.0, "max": 0, "mean": 0.0}
    return {"min": min(values), "p50": round(percentile(values, 50), 1), "p90": round(percentile(values, 90), 1),
            "max": max(values), "mean": round(sum(values) / len(values), 2)}


def solver_report(transcripts: Sequence[Transcript], count_tokens: Callable[[str], int] | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The solver's scores and transcript statistics (see the module docstring).

    count_tokens: text -> tokens, for the generated tokens per transcript (the model's turn
    texts, without prompt, bridges or code outputs); None leaves `tokens` out.
    """
    from tirgrpo.data.prepare import extract_segments
    from tirgrpo.eval.selection import bootstrap_ci, expected_accuracy, vote

    known = [t for t in transcripts if t.correct_answer is not None]
    by_problem: dict[str, list[Transcript]] = {}
    for t in known:
        by_problem.setdefault(str(t.problem_id), []).append(t)
    scores: dict[str, list[float]] = {"pass@1": [], "majority@K": [], "pass@K": []}
    for ts in by_problem.values():
        right = [answers_match(t.correct_answer, t.eventual_answer) for t in ts]
        scores["pass@1"].append(sum(right) / len(ts))
        scores["majority@K"].append(expected_accuracy(vote([t.eventual_answer for t in ts]), ts[0].correct_answer))
        scores["pass@K"].append(float(any(right)))
    metrics = {}
    for name, vals in scores.items():
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
        metrics[name] = {"value": sum(vals) / len(vals) if vals else float("nan"), "ci_low": lo, "ci_high": hi}
    samples = Counter(len(ts) for ts in by_problem.values())
    report: dict[str, Any] = {
        "problems": len(by_problem),
        "transcripts": len(known),
        "transcripts_without_correct_answer": len(transcripts) - len(known),
        "samples_per_problem": {str(k): v for k, v in sorted(samples.items())},
        "metrics": metrics,
        "answered": sum(t.eventual_answer is not None for t in known) / len(known) if known else float("nan"),
        "code_outputs_per_transcript": _summary([sum(u.output is not None for u in t.turns) for t in known]),
        "segments_per_transcript": _summary([len(extract_segments(t, "", "")) for t in known]),
        "turns_per_transcript": _summary([len(t.turns) for t in known]),
        "last_turn_finish": dict(Counter(str(t.turns[-1].finish_reason) for t in known).most_common()),
        "seconds_per_transcript": _summary([round(sum(u.wall_s or 0.0 for u in t.turns), 3) for t in known]),
    }
    if count_tokens is not None:
        report["tokens_per_transcript"] = _summary([sum(count_tokens(u.text) for u in t.turns if u.text)
                                                    for t in known])
    return report


def solver_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the scores with intervals, then the transcript statistics."""
    lines = [f"Solver on {report['problems']} problems, {report['transcripts']} transcripts "
             f"(samples per problem: {report['samples_per_problem']}):", "",
             "| metric | value | 95% CI |", "|---|---:|---|"]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | {m['value']:.3f} | [{m['ci_low']:.3f}, {m['ci_high']:.3f}] |")
    lines += ["", f"answered (a boxed integer): {report['answered']:.3f}; "
              f"last turn ended by: {report['last_turn_finish']}", "",
              "| per transcript | min | p50 | p90 | max | mean |", "|---|---:|---:|---:|---:|---:|"]
    for key in ("turns", "code_outputs", "segments", "tokens", "seconds"):
        s = report.get(f"{key}_per_transcript")
        if s is not None:
            lines.append(f"| {key.replace('_', ' ')} | {s['min']} | {s['p50']} | {s['p90']} | {s['max']} | {s['mean']} |")
    if "generation_seconds" in report:
        lines += ["", f"generation wall time: {report['generation_seconds']:.1f} s"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tirgrpo.eval.solver TRANSCRIPTS [--tokenizer T] [--out FILE] [--generation-seconds S]`."""
    from tirgrpo.data.records import read_transcripts
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.files import atomic_write_text, report_paths

    p = argparse.ArgumentParser(prog="python -m tirgrpo.eval.solver", description=__doc__.split("\n\n")[0])
    p.add_argument("transcripts", help="transcript JSONL (tirgrpo generate's output)")
    p.add_argument("--tokenizer", default=None, help="count generated tokens with this tokenizer (default: none)")
    p.add_argument("--out", default="solver.json", help="report JSON (the Markdown goes next to it)")
    p.add_argument("--generation-seconds", type=float, default=None, help="wall time of generate, to record")
    args = p.parse_args(argv)
    try:
        out, md_path = report_paths(args.out)
        transcripts = read_transcripts(args.transcripts)
        if not transcripts:
            raise TirgrpoError(f"{args.transcripts}: no transcripts")
        count = None
        if args.tokenizer:
            from tirgrpo.data.tokenizer import load_tokenizer

            tok = load_tokenizer(args.tokenizer)
            count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        report = solver_report(transcripts, count)
    except TirgrpoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["data"] = args.transcripts
    if args.generation_seconds is not None:
        report["generation_seconds"] = args.generation_seconds
    md = solver_markdown(report)
    atomic_write_text(out, json.dumps(report, indent=1))
    atomic_write_text(md_path, md)
    print(md)
    print(f"wrote {out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
