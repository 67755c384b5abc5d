"""Bootstrap 95% intervals of the headline eval metrics, resampling questions.

An eval set holds, per question, a `correct` example and its `wrong` twin (same question,
different code output). The twins are not independent draws, so the bootstrap resamples
*questions* with replacement and keeps every example of a drawn question (a cluster
bootstrap); a question drawn twice counts twice.

Every headline metric is a ratio of weighted sums of per-example counts (submits,
declines, rewards, completions), so one resample is one weight vector over examples and
all resamples are one [B, E] matrix: 1000 resamples of 800 examples take milliseconds.
With all weights 1 the formulas give exactly `evaluate.policy_metrics`' numbers (a test
checks it).

Headline metrics (completions pooled over examples; an invalid completion is never right):

- correctness: mean correctness reward per completion;
- balanced_accuracy: (submit rate on `correct` examples + decline rate on `wrong` ones) / 2,
  so every constant policy (always submit, always decline, a coin) scores 0.5;
- auroc: AUROC of P(submit) = submitting samples / K per example, `correct` vs `wrong`;
- submit_rate_on_correct, submit_rate_on_wrong, and skill = their difference (0 for any
  policy that ignores the example, 1 for the oracle).

The interval is the percentile interval: the 2.5% and 97.5% quantiles (linear
interpolation) of the metric over the resamples, NaN resamples (e.g. no `wrong` example
drawn) left out.
"""

from __future__ import annotations

from typing import Sequence

import torch

HEADLINE = ("correctness", "balanced_accuracy", "auroc", "submit_rate_on_correct", "submit_rate_on_wrong", "skill")


def example_counts(labels: Sequence[str], decisions: Sequence[Sequence[str]],
                   correctness: Sequence[Sequence[float]]) -> dict[str, torch.Tensor]:
    """Per-example sufficient statistics, each a float64 tensor [E].

    n (completions), submit, decline (counts), reward (sum of correctness rewards),
    positive (1.0 for a `correct` label, else 0.0).
    """
    f64 = torch.float64
    return {
        "n": torch.tensor([len(ds) for ds in decisions], dtype=f64),
        "submit": torch.tensor([sum(d == "submit" for d in ds) for ds in decisions], dtype=f64),
        "decline": torch.tensor([sum(d == "decline" for d in ds) for ds in decisions], dtype=f64),
        "reward": torch.tensor([float(sum(cs)) for cs in correctness], dtype=f64),
        "positive": torch.tensor([lab == "correct" for lab in labels], dtype=f64),
    }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, NaN where den == 0."""
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def weighted_auroc(scores: torch.Tensor, positive: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """AUROC of `scores` [E] for positives vs negatives, with example weights w [B, E] -> [B].

    The weighted Mann-Whitney statistic: sum over (positive i, negative j) pairs of
    w_i * w_j * (1 if s_i > s_j, 1/2 if tied), over (sum of positive weights) * (sum of
    negative weights). With w = 1 it is `evaluate.auroc`. Computed on the distinct score
    values (at most K + 1 of them), so it costs O(B * E * distinct).
    """
    values, index = torch.unique(scores, return_inverse=True)  # values ascending
    onehot = torch.nn.functional.one_hot(index, len(values)).to(w.dtype)  # [E, m]
    pos_hist = (w * positive) @ onehot  # [B, m] weight of positives at each score
    neg_hist = (w * (1 - positive)) @ onehot
    below = torch.cumsum(neg_hist, dim=1) - neg_hist  # negative weight strictly below each score
    wins = (pos_hist * (below + 0.5 * neg_hist)).sum(dim=1)
    return _ratio(wins, pos_hist.sum(dim=1) * neg_hist.sum(dim=1))


def weighted_headline(counts: dict[str, torch.Tensor], w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The HEADLINE metrics [B] of each row of example weights w [B, E] (see the module docstring)."""
    n, pos = counts["n"], counts["positive"]
    neg = 1 - pos
    on_correct = w @ (n * pos)
    on_wrong = w @ (n * neg)
    submit_correct = _ratio(w @ (counts["submit"] * pos), on_correct)
    submit_wrong = _ratio(w @ (counts["submit"] * neg), on_wrong)
    decline_wrong = _ratio(w @ (counts["decline"] * neg), on_wrong)
    # Examples without completions have no P(submit): weight 0 in the AUROC.
    has = (n > 0).to(w.dtype)
    p_submit = torch.where(n > 0, counts["submit"] / n.clamp_min(1), torch.zeros_like(n))
    return {
        "correctness": _ratio(w @ counts["reward"], w @ n),
        "balanced_accuracy": (submit_correct + decline_wrong) / 2,
        "auroc": weighted_auroc(p_submit, pos, w * has),
        "submit_rate_on_correct": submit_correct,
        "submit_rate_on_wrong": submit_wrong,
        "skill": submit_correct - submit_wrong,
    }


def question_weights(questions: Sequence[str], resamples: int, generator: torch.Generator) -> torch.Tensor:
    """Example weights [resamples, E]: how often each example's question was drawn.

    Each resample draws Q questions with replacement from the Q distinct questions; an
    example's weight is its question's count, so twins always move together.
    """
    ids: dict[str, int] = {}
    group = torch.tensor([ids.setdefault(q, len(ids)) for q in questions], dtype=torch.long)
    q = len(ids)
    draws = torch.randint(q, (resamples, q), generator=generator)
    counts = torch.zeros(resamples, q, dtype=torch.float64).scatter_add_(1, draws, torch.ones(resamples, q,
                                                                                              dtype=torch.float64))
    return counts[:, group]


def bootstrap_intervals(questions: Sequence[str], labels: Sequence[str], decisions: Sequence[Sequence[str]],
                        correctness: Sequence[Sequence[float]], resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, list[float]]:
    """{metric: [low, high]} for each HEADLINE metric; {} when there is nothing to resample.

    questions/labels: one per example; decisions/correctness: the K samples of each example.
    Pure and seeded: the same inputs and seed give the same intervals.
    """
    if resamples < 1 or not questions:
        return {}
    counts = example_counts(labels, decisions, correctness)
    w = question_weights(questions, resamples, torch.Generator().manual_seed(seed))
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)
    out = {}
    for name, values in weighted_headline(counts, w).items():
        lo, hi = torch.nanquantile(values, q).tolist()
        out[name] = [lo, hi]
    return out
