"""Bootstrap intervals by question, on a case small enough to enumerate by hand."""

import math

import pytest
import torch

from tirgrpo.eval.bootstrap import (HEADLINE, bootstrap_intervals, example_counts, question_weights,
                                    weighted_auroc, weighted_headline)
from tirgrpo.eval.evaluate import auroc, policy_metrics

# Two questions, each with a correct example and its wrong twin, K = 2 samples each.
# Question A is judged perfectly; question B submits once on its correct example and always on its wrong one.
QUESTIONS = ["A", "A", "B", "B"]
LABELS = ["correct", "wrong", "correct", "wrong"]
DECISIONS = [["submit", "submit"], ["decline", "decline"], ["submit", "decline"], ["submit", "submit"]]
CORRECTNESS = [[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]

# A resample draws 2 questions with replacement: {A, A} (prob 1/4), {A, B} (1/2), {B, B} (1/4).
# Metric values of each (worked out by hand; a question drawn twice counts twice, which
# leaves every ratio as for the question alone):
#   correctness: AA 2/4 = 0.5; AB (2 - 1)/8 = 0.125; BB -1/4 = -0.25
#   submit on correct: AA 1; AB 3/4; BB 1/2.  submit on wrong: AA 0; AB 2/4; BB 1
#   skill: AA 1; AB 0.25; BB -0.5
#   balanced accuracy (submit on correct + decline on wrong) / 2: AA 1; AB (0.75 + 0.5)/2 = 0.625; BB 0.25
#   auroc of P(submit): AA 1 (1 vs 0); BB 0 (0.5 vs 1);
#     AB: positives {1, 0.5}, negatives {0, 1}: win, tie, win, loss -> 2.5/4 = 0.625
AA = dict(correctness=0.5, submit_rate_on_correct=1.0, submit_rate_on_wrong=0.0, skill=1.0, balanced_accuracy=1.0,
          auroc=1.0)
AB = dict(correctness=0.125, submit_rate_on_correct=0.75, submit_rate_on_wrong=0.5, skill=0.25,
          balanced_accuracy=0.625, auroc=0.625)
BB = dict(correctness=-0.25, submit_rate_on_correct=0.5, submit_rate_on_wrong=1.0, skill=-0.5, balanced_accuracy=0.25,
          auroc=0.0)


def test_weighted_headline_of_each_resample_by_hand():
    counts = example_counts(LABELS, DECISIONS, CORRECTNESS)
    w = torch.tensor([[2.0, 2, 0, 0], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=torch.float64)  # AA, AB, BB
    got = weighted_headline(counts, w)
    for row, want in enumerate([AA, AB, BB]):
        assert {k: got[k][row].item() for k in HEADLINE} == pytest.approx(want), row


def test_interval_ends_are_the_extreme_resamples():
    # Each extreme resample has probability 1/4 > 2.5%, so the 95% interval runs from the
    # BB value to the AA value (ordered); 1000 draws miss one of them with probability ~1e-125.
    ci = bootstrap_intervals(QUESTIONS, LABELS, DECISIONS, CORRECTNESS, resamples=1000, seed=3)
    for k in HEADLINE:
        assert ci[k] == pytest.approx(sorted([AA[k], BB[k]])), k


def test_a_narrow_level_lands_on_the_middle_resample():
    # The 40% and 60% quantiles both fall inside AB's mass (cumulative 0.25 .. 0.75).
    ci = bootstrap_intervals(QUESTIONS, LABELS, DECISIONS, CORRECTNESS, resamples=1000, seed=0, level=0.2)
    for k in HEADLINE:
        assert ci[k] == pytest.approx([AB[k], AB[k]]), k


def test_bootstrap_is_seeded_and_one_question_gives_a_point():
    a = bootstrap_intervals(QUESTIONS, LABELS, DECISIONS, CORRECTNESS, resamples=50, seed=7)
    assert a == bootstrap_intervals(QUESTIONS, LABELS, DECISIONS, CORRECTNESS, resamples=50, seed=7)
    one = bootstrap_intervals(QUESTIONS[:2], LABELS[:2], DECISIONS[:2], CORRECTNESS[:2], resamples=20)
    assert one["skill"] == [1.0, 1.0] and one["correctness"] == [0.5, 0.5]
    assert bootstrap_intervals([], [], [], [], resamples=20) == {}
    assert bootstrap_intervals(QUESTIONS, LABELS, DECISIONS, CORRECTNESS, resamples=0) == {}


def test_one_label_resamples_are_left_out_of_the_auroc_interval():
    # Separate questions for the two labels: a resample may draw only `correct` examples (AUROC NaN).
    ci = bootstrap_intervals(["q1", "q2"], ["correct", "wrong"], [["submit"], ["decline"]], [[1.0], [0.0]],
                             resamples=200)
    assert ci["auroc"] == [1.0, 1.0]


def test_question_weights_move_twins_together():
    w = question_weights(["x", "y", "x", "z", "y"], 100, torch.Generator().manual_seed(0))
    assert w.shape == (100, 5)
    assert torch.equal(w[:, 0], w[:, 2]) and torch.equal(w[:, 1], w[:, 4])
    # each resample draws 3 questions: weights of one example per question sum to 3
    assert torch.equal(w[:, 0] + w[:, 1] + w[:, 3], torch.full((100,), 3.0, dtype=torch.float64))


def test_unit_weights_give_the_policy_metrics():
    g = torch.Generator().manual_seed(1)
    labels = ["correct" if x else "wrong" for x in (torch.rand(30, generator=g) < 0.5).tolist()]
    choices = ["submit", "decline", "invalid"]
    decisions = [[choices[i] for i in torch.randint(3, (int(k),), generator=g).tolist()]
                 for k in torch.randint(1, 6, (30,), generator=g)]
    correctness = [[{"submit": 1.0 if lab == "correct" else -1.0, "decline": 0.0, "invalid": -1.0}[d] for d in ds]
                   for ds, lab in zip(decisions, labels)]
    want = policy_metrics(labels, decisions, correctness)
    got = weighted_headline(example_counts(labels, decisions, correctness), torch.ones(1, 30, dtype=torch.float64))
    assert {k: got[k].item() for k in HEADLINE} == pytest.approx({k: want[k] for k in HEADLINE})


def test_weighted_auroc_counts_pairs_by_weight():
    scores = torch.tensor([0.5, 1.0, 0.5, 0.0], dtype=torch.float64)
    pos = torch.tensor([1.0, 1, 0, 0], dtype=torch.float64)
    assert weighted_auroc(scores, pos, torch.ones(1, 4, dtype=torch.float64)).item() == auroc(
        scores.tolist(), [True, True, False, False]) == 0.875
    # weight 2 on the tied negative: pairs (0.5,0.5) x2 tie = 1, (0.5,0) win 1, (1,0.5) x2 = 2, (1,0) = 1 -> 5/6
    w = torch.tensor([[1.0, 1, 2, 1]], dtype=torch.float64)
    assert weighted_auroc(scores, pos, w).item() == pytest.approx(5 / 6)
    assert math.isnan(weighted_auroc(scores, torch.ones(4, dtype=torch.float64),
                                     torch.ones(1, 4, dtype=torch.float64)).item())
