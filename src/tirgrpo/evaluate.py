"""Decision quality of the policy on labelled examples (used before/after training).

An example is labelled `correct` when its transcript led to the right answer; the ideal
verifier submits on those and declines on the others. Scored with the `default` reward
set's correctness (submit right +1, submit wrong -1, decline 0, invalid -1), so a perfect
judge on balanced data scores 0.5 and always-decline or a coin flip score 0.
"""

from __future__ import annotations

import torch

from tirgrpo.config import RewardConfig
from tirgrpo.rollout import SamplingParams


def decision_metrics(decisions: list[str], labels: list[str], correctness: list[float]) -> dict[str, float]:
    """Summary of per-completion decisions ('submit'/'decline'/'invalid') against labels."""
    n = len(decisions)
    if n == 0:
        return {}
    right = [
        (d == "submit" and lab == "correct") or (d == "decline" and lab == "wrong")
        for d, lab in zip(decisions, labels)
    ]
    on_correct = [d for d, lab in zip(decisions, labels) if lab == "correct"]
    on_wrong = [d for d, lab in zip(decisions, labels) if lab == "wrong"]

    def rate(xs, what):
        return sum(x == what for x in xs) / len(xs) if xs else float("nan")

    return {
        "correctness": sum(correctness) / n,
        "submit": rate(decisions, "submit"),
        "decline": rate(decisions, "decline"),
        "invalid": rate(decisions, "invalid"),
        "decision_accuracy": sum(right) / n,
        "submit_rate_on_correct": rate(on_correct, "submit"),
        "submit_rate_on_wrong": rate(on_wrong, "submit"),
    }


def evaluate_policy(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int) -> dict:
    """Sample `samples` completions per example and score the decisions.

    examples: records with `.correct_answer`, `.label`; prompt_ids: their token ids.
    Returns the metrics of `decision_metrics` plus `completion_tokens` (mean) and `n`.
    """
    from tirgrpo.rewards import score_records

    device = next(engine.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    groups = engine.generate(prompt_ids, samples, params, gen)
    records, labels = [], []
    for ex, group in zip(examples, groups):
        for c in group:
            records.append(
                {"completion": c.text, "correct_answer": ex.correct_answer, "finish_reason": c.finish_reason, "stop": c.stop}
            )
            labels.append(ex.label)
    scores = score_records(records, RewardConfig(set="default"), tokenizer, step=0, total_steps=1)
    out = decision_metrics([s["decision"] for s in scores], labels, [s["correctness"] for s in scores])
    lengths = [len(c.token_ids) for g in groups for c in g]
    out["completion_tokens"] = sum(lengths) / max(1, len(lengths))
    out["n"] = len(records)
    return out
