"""How much could another use of the judge's P(submit) add to answer selection?

Reads a selection's per-transcript file (`selection-transcripts.jsonl`, as stored under
docs/pipeline/*/: question, correct_answer, eventual_answer and the 8 decisions as a string of
s/d/i) and scores, per problem, votes weighted by P(submit)^a and votes gated at P(submit) >= t,
each against plain majority over the same transcripts (`selection.vote`; ties scored as
`selection.expected_accuracy` does). Then a cross-fitted choice: the problems split into
`--folds` folds, the rule best on the other folds scored on each fold, so the number it
prints is not chosen on the problems it is measured on.

    python benchmarks/selection_weights.py docs/pipeline/train-split-all/selection-transcripts.jsonl

Only judged transcripts are in such a file (those that never showed a code output are not),
so majority here can differ slightly from the selection's own.

It ends with what the judge knows beyond the vote: the AUROC of P(submit) for right against
wrong answers beside that of the answer's vote share (the share of the problem's transcripts
that give it: what majority vote uses), and P(submit)'s AUROC within bands of vote share.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Callable

from tirgrpo.data.records import answers_match
from tirgrpo.eval.evaluate import auroc
from tirgrpo.eval.selection import Candidate, answer_ranking, bootstrap_ci, expected_accuracy, select

SHARE_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
POWERS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
THRESHOLDS = (0.25, 0.375, 0.5, 0.625, 0.75)


def read_problems(path: str) -> dict[str, tuple[str, list[tuple[str | None, float]]]]:
    """question -> (correct answer, [(eventual answer, P(submit))]); P(submit) = the share of 's'."""
    problems: dict[str, tuple[str, list[tuple[str | None, float]]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
                p = r["decisions"].count("s") / len(r["decisions"])
                problems.setdefault(r["question"], (r["correct_answer"], []))[1].append((r["eventual_answer"], p))
            except (ValueError, KeyError, TypeError, ZeroDivisionError) as e:
                sys.exit(f"{path}:{n}: not a selection transcript row ({type(e).__name__}: {e})")
    return problems


def rules() -> dict[str, Callable[[float], float]]:
    """Name -> the vote weight of a transcript with P(submit) p."""
    out: dict[str, Callable[[float], float]] = {f"P^{a:g}": (lambda a: lambda p: p ** a)(a) for a in POWERS}
    out.update({f"P>={t:g}": (lambda t: lambda p: float(p >= t))(t) for t in THRESHOLDS})
    return out


def score(correct: str, cands: list[tuple[str | None, float]], weight: Callable[[float], float]) -> float:
    """Expected accuracy of the vote weighted by weight(P(submit)): `selection.select`'s weighted
    method on those weights (majority when every weight is 0)."""
    return expected_accuracy(select([Candidate(a, weight(p)) for a, p in cands], "weighted"), correct)


def cross_fitted(table: dict[str, list[float]], base: list[float], folds: int,
                 seed: int) -> tuple[list[float], list[str]]:
    """(chosen rule - majority) per problem, each problem's rule chosen on the other folds
    (in shuffled order), and the rule chosen for each fold."""
    idx = list(range(len(base)))
    random.Random(seed).shuffle(idx)
    fold = {i: k % folds for k, i in enumerate(idx)}
    diffs, chosen = [], []
    for f in range(folds):
        best = max(table, key=lambda name: sum(v for i, v in enumerate(table[name]) if fold[i] != f))
        chosen.append(best)
        diffs += [table[best][i] - base[i] for i in idx if fold[i] == f]
    return diffs, chosen


def by_vote_share(problems: dict[str, tuple[str, list[tuple[str | None, float]]]]) -> list[tuple[str, int, int, float]]:
    """P(submit)'s AUROC (right vs wrong answers) within each band of SHARE_BANDS of vote share
    (the last band includes 1): [(band, transcripts with an answer, right ones, AUROC)]."""
    rows = []  # (vote share, P(submit), right) of every transcript with an answer
    for correct, cands in problems.values():
        for a, p in cands:
            if a is not None:
                share = sum(b is not None and answers_match(a, b) for b, _ in cands) / len(cands)
                rows.append((share, p, answers_match(correct, a)))
    out = []
    for lo, hi in SHARE_BANDS:
        band = [r for r in rows if lo <= r[0] < hi or (hi == 1.0 and r[0] == 1.0)]
        out.append((f"[{lo:g}, {hi:g}{']' if hi == 1.0 else ')'}", len(band), sum(r[2] for r in band),
                    auroc([r[1] for r in band], [r[2] for r in band])))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("transcripts", help="selection-transcripts.jsonl")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.folds < 2:
        ap.error(f"--folds must be at least 2 (a rule is chosen on the other folds), not {args.folds}")
    problems = read_problems(args.transcripts)
    keys = list(problems)
    table = {name: [score(*problems[q], w) for q in keys] for name, w in rules().items()}
    base = table["P^0"]  # every weight 1: plain majority
    print(f"{len(keys)} problems, {sum(len(c) for _, c in problems.values())} judged transcripts\n")
    print("| rule | accuracy | − majority | problems better / worse |\n|---|---:|---:|---:|")
    for name, v in table.items():
        d = [a - b for a, b in zip(v, base)]
        print(f"| {name} | {sum(v) / len(v):.3f} | {sum(d) / len(d):+.3f} | "
              f"{sum(x > 0 for x in d)} / {sum(x < 0 for x in d)} |")
    diffs, chosen = cross_fitted(table, base, args.folds, args.seed)
    lo, hi = bootstrap_ci(diffs, seed=args.seed)
    print(f"\ncross-fitted over {args.folds} folds: {sum(diffs) / len(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}] against "
          f"majority (problems resampled; chosen: {', '.join(chosen)})")
    rank = answer_ranking({q: (c, [Candidate(a, p) for a, p in cands]) for q, (c, cands) in problems.items()})
    print(f"\nright vs wrong answers: AUROC of P(submit) {rank['auroc']:.3f}, of the answer's vote share "
          f"{rank['vote_share_auroc']:.3f}\n\n| vote share | answers | right | AUROC of P(submit) |\n|---|---:|---:|---:|")
    for band, n, right, a in by_vote_share(problems):
        print(f"| {band} | {n} | {right} | {a:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
