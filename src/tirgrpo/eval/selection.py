"""Verifier-gated answer selection: does the verifier help pick the final answer?

In the competition a problem is sampled many times (TIR transcripts) and one answer is
picked, usually by majority vote over the transcripts' eventual answers. A verifier
gives each transcript P(submit) at its last code output (the share of K sampled
judgements that submit). Four ways to pick, compared here:

- `majority`: the most frequent eventual answer;
- `gated`: the most frequent answer among transcripts the verifier submits
  (P(submit) >= threshold, 0.5 by default), falling back to `majority` when it submits none;
- `weighted`: each transcript votes with weight P(submit) (falling back to `majority`
  when every weight is 0);
- `completed`: as `majority`, but a transcript that never gave an answer (it ran out of turns
  or tokens still writing code) votes with the answer the verifier boxes at its last code
  output, when the verifier submits there (P(submit) >= threshold). This is the verifier's use
  in a contest: at a code output it either ends the run with an answer or lets it go on, so
  a run the solver did not finish can still vote.

Transcripts without an eventual answer cast no vote. Ties between answers are not broken
by list order (which would favour whatever came first in the data): a problem with a
tie between m answers scores the share of them that are right, the expected accuracy of a
uniformly random tie-break. Accuracy over problems comes with a percentile bootstrap
confidence interval (problems resampled with replacement).

Candidates come from `prepare`'s examples grouped by question (each example's
`eventual_answer`, P(submit) from `tirgrpo eval`) or from transcript JSONL
(each run judged at its last code output, `transcript_decision_prompt`), both through
`tirgrpo eval --selection`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from tirgrpo.data.records import answers_match

METHODS = ("majority", "gated", "weighted", "completed")


@dataclass(frozen=True)
class Candidate:
    """One transcript of a problem: its eventual answer (None: it gave none) and the verifier's
    P(submit); judged False: the verifier never saw it (no code output to judge), p_submit is
    what the vote gives it. judge_answer: the answer the verifier's submitting judgements box
    (`judge_answer`; None when none submits or none was recorded)."""

    answer: str | None
    p_submit: float
    judged: bool = True
    judge_answer: str | None = None


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> list[str]:
    """The answers with the highest total weight (all of them when tied); [] when none votes.

    Answers are compared as `answers_match` does (integers: "250" == "250.0"); the first
    spelling seen stands for its group. None answers and zero weights cast no vote.
    """
    weights = [1.0] * len(answers) if weights is None else list(weights)
    totals: list[list[Any]] = []  # [answer, total]
    for a, w in zip(answers, weights):
        if a is None or w <= 0:
            continue
        for entry in totals:
            if answers_match(entry[0], a):
                entry[1] += w
                break
        else:
            totals.append([a, float(w)])
    if not totals:
        return []
    best = max(t for _, t in totals)
    # float sums: weights such as 0.1 + 0.2 vs 0.3 must still tie
    return [a for a, t in totals if t >= best - 1e-9 * max(1.0, best)]


def select(candidates: Sequence[Candidate], method: str, threshold: float = 0.5) -> list[str]:
    """The winning answers of one problem under `method` (several when tied)."""
    answers = [c.answer for c in candidates]
    plain = vote(answers)
    if method == "majority":
        return plain
    if method == "gated":
        submitted = [c.answer for c in candidates if c.p_submit >= threshold]
        return vote(submitted) or plain
    if method == "weighted":
        return vote(answers, [c.p_submit for c in candidates]) or plain
    if method == "completed":
        filled = [c.answer if c.answer is not None else c.judge_answer if c.p_submit >= threshold else None
                  for c in candidates]
        return vote(filled) or plain
    raise ValueError(f"unknown selection method {method!r}; known: {METHODS}")


def judge_answer(texts: Sequence[str], decisions: Sequence[str]) -> str | None:
    """The answer a verifier's K judgements of one transcript box when they submit: the most
    frequent (as `vote` counts; the first seen of tied ones) of the last boxed answer before any
    python block of each `submit` text; None when no judgement submits."""
    from tirgrpo.score.rewards import CODE_FENCE, last_boxed

    answers = []
    for text, decision in zip(texts, decisions):
        if decision == "submit":
            fence = text.find(CODE_FENCE)
            answers.append(last_boxed(text if fence < 0 else text[:fence]))
    winners = vote(answers)
    return winners[0] if winners else None


def expected_accuracy(winners: Sequence[str], correct_answer: str) -> float:
    """Share of the tied winners that are right (0 when nothing was selected)."""
    if not winners:
        return 0.0
    return sum(answers_match(correct_answer, w) for w in winners) / len(winners)


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement)."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo_i = int((1 - level) / 2 * n_boot)
    hi_i = min(n_boot - 1, int((1 + level) / 2 * n_boot))
    return (means[lo_i], means[hi_i])


def differences_to_majority(per_problem: Sequence[dict[str, Any]], n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0) -> dict[str, dict[str, float]]:
    """Each judge method's accuracy minus majority's, over the same problems, with a paired interval.

    per_problem: `compare_selection`'s rows (each with every method's score). The difference is
    averaged over problems; its percentile bootstrap interval resamples problems and takes both
    methods' scores of each drawn problem together (paired: far narrower than the two accuracies'
    own intervals, since most problems score the same under both). method -> {difference,
    ci_low, ci_high, better, worse} (better / worse: problems where the method scored higher / lower);
    {} without problems.
    """
    out: dict[str, dict[str, float]] = {}
    if not per_problem:
        return out
    for m in METHODS[1:]:
        if any(m not in row for row in per_problem):  # rows stored before method m existed
            continue
        diffs = [row[m] - row["majority"] for row in per_problem]
        lo, hi = bootstrap_ci(diffs, n_boot=n_boot, level=level, seed=seed)
        out[m] = {"difference": sum(diffs) / len(diffs), "ci_low": lo, "ci_high": hi,
                  "better": sum(d > 0 for d in diffs), "worse": sum(d < 0 for d in diffs)}
    return out


def answer_ranking(problems: dict[str, tuple[str, Sequence[Candidate]]]) -> dict[str, Any]:
    """How well P(submit) ranks right answers above wrong ones, where that can change the pick.

    Only judged transcripts with an answer count (the others cast no vote, or carry no
    judgement of the verifier). Returns
    {"auroc": AUROC of P(submit), right-answer vs wrong-answer transcripts pooled over problems;
    "vote_share_auroc": the same AUROC of the share of the problem's transcripts that give the
    transcript's answer: what majority vote already knows, the number a judge must add to;
    "contested_problems": problems whose majority vote is wrong although some transcript is
    right (or that ties a right answer with a wrong one: the only problems a judge can win),
    counted where the judge saw both a right and a wrong answer; "contested_auroc": the mean over
    those of the same AUROC within the problem (0.5: the judge cannot tell their right answers
    from the wrong)}. NaN where a set is empty.
    """
    from tirgrpo.eval.evaluate import auroc

    scores, shares, right, within = [], [], [], []
    for correct, cands in problems.values():
        answered = [c for c in cands if c.answer is not None and c.judged]
        ok = [answers_match(correct, c.answer) for c in answered]
        scores += [c.p_submit for c in answered]
        shares += [sum(o.answer is not None and answers_match(c.answer, o.answer) for o in cands) / len(cands)
                   for c in answered]
        right += ok
        if any(ok) and expected_accuracy(select(cands, "majority"), correct) < 1:
            within.append(auroc([c.p_submit for c in answered], ok))
    within = [x for x in within if x == x]  # NaN: the right answers' transcripts were all unjudged
    return {"auroc": auroc(scores, right), "vote_share_auroc": auroc(shares, right), "contested_problems": len(within),
            "contested_auroc": sum(within) / len(within) if within else float("nan")}


def compare_selection(problems: dict[str, tuple[str, Sequence[Candidate]]], threshold: float = 0.5,
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of each method over problems, with bootstrap intervals.

    problems: problem id -> (correct answer, its candidates). Also reports `any_correct`
    (some transcript has the right answer: the ceiling of any selection) and, per problem,
    each method's score, and `vs_majority`: the judge methods' paired differences to majority
    (`differences_to_majority`), `answer_ranking`, and `completed_votes`: the transcripts without
    an answer that vote in `completed` through the verifier's answer, and how many of those are right.
    """
    ids = list(problems)
    scores: dict[str, list[float]] = {m: [] for m in METHODS}
    scores["any_correct"] = []
    per_problem = []
    for pid in ids:
        correct, cands = problems[pid]
        row: dict[str, Any] = {"problem": pid, "correct_answer": correct, "transcripts": len(cands),
                               "submitted": sum(c.p_submit >= threshold for c in cands)}
        for m in METHODS:
            winners = select(cands, m, threshold)
            s = expected_accuracy(winners, correct)
            scores[m].append(s)
            row[m] = s
            row[f"{m}_answers"] = winners
        any_ok = float(any(c.answer is not None and answers_match(correct, c.answer) for c in cands))
        scores["any_correct"].append(any_ok)
        row["any_correct"] = any_ok
        per_problem.append(row)
    methods = {}
    for m, vals in scores.items():
        lo, hi = bootstrap_ci(vals, n_boot=n_boot, seed=seed)
        methods[m] = {"accuracy": sum(vals) / len(vals) if vals else float("nan"), "ci_low": lo, "ci_high": hi}
    # the votes `completed` adds: runs without an answer that the verifier ended with its own
    filled = [answers_match(correct, c.judge_answer) for correct, cands in problems.values() for c in cands
              if c.answer is None and c.judge_answer is not None and c.p_submit >= threshold]
    return {"problems": len(ids), "threshold": threshold, "methods": methods, "answer_ranking": answer_ranking(problems),
            "completed_votes": {"transcripts": len(filled), "right": sum(filled)},
            "vs_majority": differences_to_majority(per_problem, n_boot=n_boot, seed=seed), "per_problem": per_problem}


def judge_tokens(prompt_tokens: Sequence[int], generated_tokens: Sequence[Sequence[int]]) -> dict[str, float]:
    """What the K sampled judgements that give P(submit) cost, in tokens: `prompt_tokens` [n] the
    decision prompt of each judged transcript (counted once: its K judgements share it),
    `generated_tokens` [n][K] each judgement's length. Totals and means per judged transcript
    (nan without any). A greedy judgement beside them (`tirgrpo eval` without --no-greedy) is
    an extra view of the evaluation, not part of selecting, and is not counted."""
    n = len(prompt_tokens)
    if len(generated_tokens) != n:
        raise ValueError(f"judge_tokens: {n} prompts but {len(generated_tokens)} judged completions")
    prompt, generated = sum(prompt_tokens), sum(sum(g) for g in generated_tokens)
    return {"transcripts": n, "prompt": prompt, "generated": generated,
            "prompt_per_transcript": prompt / n if n else float("nan"),
            "generated_per_transcript": generated / n if n else float("nan")}


def judge_tokens_line(cost: dict[str, float] | None) -> str:
    """One sentence of `judge_tokens`' numbers ("" without them)."""
    if not cost or not cost["transcripts"]:
        return ""
    # a blank line first: a line right after a Markdown table would be read as one more row
    return (f"\nJudging cost: {cost['transcripts']} transcripts judged, {cost['prompt']:,} prompt tokens read "
            f"({cost['prompt_per_transcript']:.0f} a transcript) and {cost['generated']:,} tokens generated "
            f"({cost['generated_per_transcript']:.0f} a transcript, over its K sampled judgements).\n")


def selection_table(result: dict[str, Any]) -> str:
    """A Markdown table of `compare_selection`'s accuracies."""
    lines = [f"Answer selection over {result['problems']} problems (P(submit) threshold {result['threshold']}):", "",
             "| method | accuracy | 95% CI |", "|---|---:|---|"]
    for m, v in result["methods"].items():
        lines.append(f"| {m} | {v['accuracy']:.3f} | [{v['ci_low']:.3f}, {v['ci_high']:.3f}] |")
    return ("\n".join(lines) + "\n" + differences_table(result.get("vs_majority"))
            + judge_tokens_line(result.get("judge_tokens")))


def differences_table(vs_majority: dict[str, dict[str, float]] | None) -> str:
    """A Markdown table of `differences_to_majority` ("" when there is none)."""
    if not vs_majority:
        return ""
    lines = ["", "| method − majority | difference | 95% CI (paired) | problems better / worse |", "|---|---:|---|---:|"]
    for m, v in vs_majority.items():
        lines.append(f"| {m} | {v['difference']:+.3f} | [{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] | "
                     f"{v['better']} / {v['worse']} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- candidate sources


def group_candidates(problem_ids: Sequence[str], correct_answers: Sequence[str], eventual_answers: Sequence[str | None],
                     p_submit: Sequence[float], judged: Sequence[bool] | None = None,
                     judge_answers: Sequence[str | None] | None = None) -> dict[str, tuple[str, list[Candidate]]]:
    """Transcripts grouped by problem: problem id -> (correct answer, candidates), in order of first appearance.

    With `prepare`'s examples the problem id is the question and each example one
    transcript (several segments of one transcript share its eventual answer and would vote
    more than once; gsm8k-verify has one segment per transcript).
    """
    out: dict[str, tuple[str, list[Candidate]]] = {}
    judged = [True] * len(p_submit) if judged is None else judged
    judge_answers = [None] * len(p_submit) if judge_answers is None else judge_answers
    for pid, correct, answer, p, seen, theirs in zip(problem_ids, correct_answers, eventual_answers, p_submit, judged,
                                                     judge_answers):
        out.setdefault(pid, (correct, []))[1].append(Candidate(answer, p, seen, theirs))
    return out


def transcript_decision_prompt(t: Any) -> str | None:
    """The text the verifier judges for a transcript: everything up to the bridge after its
    last code output (where the run went on to its final answer), or None when no code output
    was ever shown (nothing to judge)."""
    from tirgrpo.data.templates import bridge

    context, last = t.prompt, None
    for turn in t.turns:
        context += turn.text
        if turn.output is None:
            break
        context += bridge(turn.output, t.bridge)
        last = context
    return last
