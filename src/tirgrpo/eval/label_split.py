"""Training metrics split by label: what each GRPO step does on `correct` and on `wrong` prompts.

A step's pooled decision mix cannot tell a policy that learns to judge from one that drifts
to a constant decision: both can show the same submit rate. Split by the prompt's label,
the gap between `label/correct/submit` and `label/wrong/submit` is the skill, and the
advantage mass on each decision shows where the gradient pushes.

`label_split_metrics` is a pure function of one step's completions (one entry per
completion; a prompt's label repeats for its G completions). Keys (NaN where the set is
empty, e.g. no `wrong` prompt this step):

- `label/{correct,wrong}/{submit,decline,invalid}`: decision rates on that label's completions;
- `label/{correct,wrong}/reward`: their mean total reward;
- `label/skill`: `label/correct/submit` - `label/wrong/submit`;
- `adv/{submit,decline,invalid}`: sum of the advantages of the completions with that
  decision (positive: the step makes the decision more likely), and
  `adv/{correct,wrong}/{submit,decline,invalid}` the same per label;
- `adv_tokens/{submit,decline,invalid}`: sum of advantage x completion tokens, the weight a
  token-level loss normalisation (`dapo`) gives each decision: a long decline outweighs a
  short submit with the same advantage;
- `length/{submit,decline,invalid}`: mean completion tokens of each decision.
"""

from __future__ import annotations

from typing import Sequence

DECISIONS = ("submit", "decline", "invalid")
LABELS = ("correct", "wrong")
NAN = float("nan")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else NAN


def label_split_metrics(labels: Sequence[str], decisions: Sequence[str], rewards: Sequence[float],
                        advantages: Sequence[float], lengths: Sequence[int]) -> dict[str, float]:
    """Per-step metrics by label and decision; all arguments one entry per completion.

    labels: the prompt's label ('correct'/'wrong'); decisions: 'submit'/'decline'/'invalid';
    rewards: total reward; advantages: the completion's advantage (a scalar per completion);
    lengths: completion tokens. Raises ValueError when the lengths of the inputs differ.
    """
    n = len(labels)
    if not (len(decisions) == len(rewards) == len(advantages) == len(lengths) == n):
        raise ValueError(f"label_split_metrics: inputs of different lengths {len(labels)}, {len(decisions)}, "
                         f"{len(rewards)}, {len(advantages)}, {len(lengths)}")
    rows = list(zip(labels, decisions, rewards, advantages, lengths))
    out: dict[str, float] = {}
    for lab in LABELS:
        mine = [r for r in rows if r[0] == lab]
        for d in DECISIONS:
            out[f"label/{lab}/{d}"] = _mean([float(r[1] == d) for r in mine])
        out[f"label/{lab}/reward"] = _mean([float(r[2]) for r in mine])
    out["label/skill"] = out["label/correct/submit"] - out["label/wrong/submit"]
    for d in DECISIONS:
        with_d = [r for r in rows if r[1] == d]
        out[f"adv/{d}"] = float(sum(r[3] for r in with_d))
        for lab in LABELS:
            out[f"adv/{lab}/{d}"] = float(sum(r[3] for r in with_d if r[0] == lab))
        out[f"adv_tokens/{d}"] = float(sum(r[3] * r[4] for r in with_d))
        out[f"length/{d}"] = _mean([float(r[4]) for r in with_d])
    return out
