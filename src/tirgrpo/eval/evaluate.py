"""Decision quality of the verifier on labelled examples, against baselines.

An example is labelled `correct` when its transcript led to the right answer; the ideal
verifier submits on those and declines on the others. Each example is answered with K
sampled completions, scored with the `default` reward set's correctness (submit right +1,
submit wrong -1, decline 0, invalid -1), so a perfect judge on balanced data scores 0.5 and
always-decline or a coin flip score 0.

The metrics are pure functions of per-example labels and per-sample decisions (tested on
hand-made predictions); `evaluate_examples` samples the completions and applies them, and
`tirgrpo eval` (eval_cli.py) is its command line. Definitions (n = completions):

- correctness: mean correctness reward per completion;
- submit / decline / invalid: the share of completions with that decision;
- decision_accuracy: share of completions that submit on a `correct` example or decline on
  a `wrong` one (an invalid completion is never right);
- precision (of submit): of the completions that submit, the share on `correct` examples;
  recall (of submit): of the completions on `correct` examples, the share that submit;
- auroc: P(submit) of an example = its submitting samples / K; the AUROC of that score for
  telling `correct` examples from `wrong` ones (ties count one half; NaN when all examples
  share one label);
- completion_tokens: mean generated tokens per completion.

Baselines on the same examples (no model; a submitted answer is the transcript's own
eventual answer, so it is right exactly on `correct` examples):
always-submit, always-decline, random (a fair coin per completion, expected values), and
oracle (submit exactly on `correct` examples).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Sequence

import torch

from tirgrpo.config import RewardConfig
from tirgrpo.rollout import SamplingParams

NAN = float("nan")
BASELINES = ("always-submit", "always-decline", "random", "oracle")
# The metrics of one policy or baseline, in table order.
METRICS = ("correctness", "decision_accuracy", "submit", "decline", "invalid", "precision", "recall", "auroc",
           "completion_tokens")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else NAN


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    """Area under the ROC curve of `scores` for telling positives from negatives.

    The Mann-Whitney form: the share of (positive, negative) pairs in which the positive
    scores higher, a tie counting 1/2. NaN when either class is empty.
    """
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return NAN
    # Sort once, then count for each positive the negatives below it and tied with it.
    neg_sorted = sorted(neg)
    wins = 0.0
    for s in pos:
        below = bisect.bisect_left(neg_sorted, s)
        tied = bisect.bisect_right(neg_sorted, s) - below
        wins += below + 0.5 * tied
    return wins / (len(pos) * len(neg))


def decision_metrics(decisions: list[str], labels: list[str], correctness: list[float]) -> dict[str, float]:
    """Per-completion summary of decisions ('submit'/'decline'/'invalid') against labels.

    One entry per completion (an example with K samples appears K times). Returns
    correctness, submit, decline, invalid, decision_accuracy, precision, recall and
    submit_rate_on_correct / submit_rate_on_wrong; {} when there are no completions.
    """
    n = len(decisions)
    if n == 0:
        return {}
    right = [(d == "submit" and lab == "correct") or (d == "decline" and lab == "wrong")
             for d, lab in zip(decisions, labels)]
    on_correct = [d for d, lab in zip(decisions, labels) if lab == "correct"]
    on_wrong = [d for d, lab in zip(decisions, labels) if lab == "wrong"]
    submitted_labels = [lab for d, lab in zip(decisions, labels) if d == "submit"]

    def rate(xs, what):
        return sum(x == what for x in xs) / len(xs) if xs else NAN

    return {
        "correctness": sum(correctness) / n,
        "submit": rate(decisions, "submit"),
        "decline": rate(decisions, "decline"),
        "invalid": rate(decisions, "invalid"),
        "decision_accuracy": sum(right) / n,
        "precision": rate(submitted_labels, "correct"),
        "recall": rate(on_correct, "submit"),
        "submit_rate_on_correct": rate(on_correct, "submit"),
        "submit_rate_on_wrong": rate(on_wrong, "submit"),
    }


def policy_metrics(labels: list[str], decisions: list[list[str]], correctness: list[list[float]],
                   tokens: list[list[int]] | None = None) -> dict[str, float]:
    """All metrics of one policy: `labels` per example, `decisions`/`correctness`/`tokens` per sample.

    decisions[i] holds the K decisions on example i (K may differ between examples).
    Adds to `decision_metrics` the AUROC of P(submit), the mean completion length (when
    `tokens` is given), `n` (completions) and `examples`.
    """
    flat_labels = [lab for lab, ds in zip(labels, decisions) for _ in ds]
    out = decision_metrics([d for ds in decisions for d in ds], flat_labels, [c for cs in correctness for c in cs])
    if not out:
        return {}
    p_submit = [sum(d == "submit" for d in ds) / len(ds) for ds in decisions if ds]
    positive = [lab == "correct" for lab, ds in zip(labels, decisions) if ds]
    out["auroc"] = auroc(p_submit, positive)
    if tokens is not None:
        out["completion_tokens"] = _mean([t for ts in tokens for t in ts])
    out["n"] = len(flat_labels)
    out["examples"] = sum(1 for ds in decisions if ds)
    return out


def baseline_decisions(labels: list[str], name: str) -> list[list[str]]:
    """The decisions a baseline makes on each example.

    `random` submits on one of two samples and declines on the other: every metric here
    is a ratio of counts, so this gives exactly the expected value of a fair coin.
    """
    if name == "always-submit":
        return [["submit"] for _ in labels]
    if name == "always-decline":
        return [["decline"] for _ in labels]
    if name == "random":
        return [["submit", "decline"] for _ in labels]
    if name == "oracle":
        return [["submit" if lab == "correct" else "decline"] for lab in labels]
    raise ValueError(f"unknown baseline {name!r}; known: {BASELINES}")


def eval_rewards(run_rewards: RewardConfig | None = None) -> RewardConfig:
    """The rewards evaluation scores with: the `default` set's decisions, with a run's reward constants."""
    if run_rewards is None:
        return RewardConfig(set="default")
    return RewardConfig(set="default", submit_correct=run_rewards.submit_correct, submit_wrong=run_rewards.submit_wrong,
                        decline=run_rewards.decline, invalid=run_rewards.invalid)


def decision_reward(decision: str, label: str, rewards: RewardConfig) -> float:
    """Correctness reward of a decision when a submission boxes the transcript's eventual answer."""
    if decision == "submit":
        return rewards.submit_correct if label == "correct" else rewards.submit_wrong
    return rewards.decline if decision == "decline" else rewards.invalid


def baseline_metrics(labels: list[str], rewards: RewardConfig | None = None) -> dict[str, dict[str, float]]:
    """The metrics of each of `BASELINES` on examples with these labels (no completion lengths)."""
    rewards = rewards or RewardConfig(set="default")
    out = {}
    for name in BASELINES:
        decisions = baseline_decisions(labels, name)
        correctness = [[decision_reward(d, lab, rewards) for d in ds] for ds, lab in zip(decisions, labels)]
        out[name] = policy_metrics(labels, decisions, correctness)
    return out


def summarize(questions: list[str], labels: list[str], decisions: list[list[str]],
              correctness: list[list[float]], tokens: list[list[int]],
              rewards: RewardConfig | None = None) -> dict[str, Any]:
    """Overall and per-question metrics of the policy and the baselines.

    Returns {"overall": metrics, "baselines": {name: metrics}, "per_question": [{"question",
    "overall", "baselines"}, ...]} with questions in order of first appearance.
    """
    result: dict[str, Any] = {
        "overall": policy_metrics(labels, decisions, correctness, tokens),
        "baselines": baseline_metrics(labels, rewards),
        "per_question": [],
    }
    order: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        order.setdefault(q, []).append(i)
    for q, idx in order.items():
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        result["per_question"].append({
            "question": q,
            "overall": policy_metrics(pick(labels), pick(decisions), pick(correctness), pick(tokens)),
            "baselines": baseline_metrics(pick(labels), rewards),
        })
    return result


# --------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def markdown_table(result: dict[str, Any], max_questions: int = 50) -> str:
    """The overall table (policy and baselines, one row per metric) and a per-question table."""
    cols = ["policy", *BASELINES]
    rows = [result["overall"], *(result["baselines"][b] for b in BASELINES)]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in METRICS:
        lines.append(f"| {m} | " + " | ".join(_fmt(r.get(m)) for r in rows) + " |")
    o = result["overall"]
    lines.append(f"\n{o.get('examples', 0)} examples, {o.get('n', 0)} completions.")
    per_q = result.get("per_question") or []
    if per_q:
        lines += ["", "| question | examples | correctness | oracle | decision_accuracy | submit | auroc |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in per_q[:max_questions]:
            q = " ".join(row["question"].split())
            q = (q[:60] + "…") if len(q) > 61 else q
            q = q.replace("|", "\\|")
            m = row["overall"]
            lines.append(f"| {q} | {m.get('examples', 0)} | {_fmt(m.get('correctness'))} | "
                         f"{_fmt(row['baselines']['oracle'].get('correctness'))} | {_fmt(m.get('decision_accuracy'))} | "
                         f"{_fmt(m.get('submit'))} | {_fmt(m.get('auroc'))} |")
        if len(per_q) > max_questions:
            lines.append(f"\n({len(per_q) - max_questions} more questions in eval.json)")
    return "\n".join(lines) + "\n"


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A Markdown table of the policy before and after training next to the baselines.

    `before`/`after` are eval results (`summarize`'s dict); either may be empty.
    """
    ref = after or before
    base = ref.get("baselines", {})
    cols = ["before", "after", *[b for b in BASELINES if b in base]]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for m in METRICS:
        vals = [overall_of(before or {}).get(m), overall_of(after or {}).get(m)]
        vals += [base[b].get(m) for b in BASELINES if b in base]
        lines.append(f"| {m} | " + " | ".join(_fmt(v) for v in vals) + " |")
    o = overall_of(ref)
    lines.append(f"\n{o.get('examples', '?')} eval examples, {o.get('n', '?')} completions each time.")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- sampling


def sample_decisions(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int,
                     rewards: RewardConfig | None = None) -> list[list[dict]]:
    """Sample `samples` completions per example and score each: one list of dicts per example.

    Each dict: text, finish_reason, stop, tokens (generated), decision, correctness.
    """
    from tirgrpo.score.rewards import score_records

    rewards = rewards or RewardConfig(set="default")
    device = next(engine.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    groups = engine.generate(prompt_ids, samples, params, gen)
    records = [{"completion": c.text, "correct_answer": ex.correct_answer, "finish_reason": c.finish_reason,
                "stop": c.stop} for ex, group in zip(examples, groups) for c in group]
    scores = iter(score_records(records, rewards, tokenizer, step=0, total_steps=1))
    out = []
    for group in groups:
        rows = []
        for c in group:
            s = next(scores)
            rows.append({"text": c.text, "finish_reason": c.finish_reason, "stop": c.stop,
                         "tokens": len(c.token_ids), "decision": s["decision"], "correctness": s["correctness"]})
        out.append(rows)
    return out


def evaluate_examples(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int,
                      rewards: RewardConfig | None = None) -> dict[str, Any]:
    """Sample, score and summarize: `summarize`'s dict plus `completions` (per example, per sample)."""
    rewards = rewards or RewardConfig(set="default")
    sampled = sample_decisions(engine, tokenizer, examples, prompt_ids, params, samples, seed, rewards)
    result = summarize([ex.question for ex in examples], [ex.label for ex in examples],
                       [[s["decision"] for s in g] for g in sampled], [[s["correctness"] for s in g] for g in sampled],
                       [[s["tokens"] for s in g] for g in sampled], rewards)
    result["samples"] = samples
    result["completions"] = [{"question": ex.question, "label": ex.label, "correct_answer": ex.correct_answer,
                              "eventual_answer": ex.eventual_answer, "samples": g} for ex, g in zip(examples, sampled)]
    return result


def evaluate_policy(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int) -> dict:
    """The overall metrics only (a flat dict of numbers), as `evaluate_examples` computes them."""
    return evaluate_examples(engine, tokenizer, examples, prompt_ids, params, samples, seed)["overall"]


def overall_of(result: dict) -> dict:
    """The flat overall metrics of an eval result; an older flat eval_*.json is returned as is."""
    return result.get("overall", result) if isinstance(result, dict) else {}
