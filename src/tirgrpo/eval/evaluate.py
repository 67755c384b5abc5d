"""Decision quality of the verifier on labelled examples, against baselines.

An example is labelled `correct` when its transcript led to the right answer; the ideal
verifier submits on those and declines on the others. Each example is answered with K
sampled completions, scored with the `default` reward set's correctness (submit right +1,
submit wrong -1, decline 0, invalid -1), so a perfect judge on balanced data scores 0.5 and
always-decline or a coin flip score 0.

The metrics are pure functions of per-example labels and per-sample decisions (tested on
hand-made predictions); `evaluate_examples` samples the completions and applies them, and
`tirgrpo eval` (commands/eval.py) is its command line. Definitions (n = completions):

- correctness: mean correctness reward per completion;
- submit / decline / invalid: the share of completions with that decision;
- decision_accuracy: share of completions that submit on a `correct` example or decline on
  a `wrong` one (an invalid completion is never right);
- balanced_accuracy: (submit rate on `correct` examples + decline rate on `wrong` ones) / 2:
  0.5 for every constant policy whatever the label mix, 1 for the oracle;
- submit_rate_on_correct / submit_rate_on_wrong: the submit rate on each label, and
  skill = their difference (0 for a policy that ignores the example, 1 for the oracle);
- precision (of submit): of the completions that submit, the share on `correct` examples;
  recall (of submit): of the completions on `correct` examples, the share that submit;
- auroc: P(submit) of an example = its submitting samples / K; the AUROC of that score for
  telling `correct` examples from `wrong` ones (ties count one half; NaN when all examples
  share one label);
- completion_tokens: mean generated tokens per completion.

`wrong` examples are of two kinds, told apart by `wrong_kind_split`: a transcript that boxed a
wrong answer (`wrong_answered`: what a judge must catch to improve answer selection) and one
that never boxed any (`wrong_unanswered`: it casts no vote anyway). On real transcripts most
`wrong` examples are of the second kind and far easier to decline, so the pooled AUROC can
hide a judge that barely tells a right answer from a wrong one.

The protocol (the trainer's before/after eval and `tirgrpo eval`): K sampled completions
per example at the training temperature (the headline numbers, with bootstrap 95% intervals
that resample questions, see bootstrap.py) plus one greedy completion per example,
reported separately.

Baselines on the same examples (no model; a submitted answer is the transcript's own
eventual answer, so it is right exactly on `correct` examples):
always-submit, always-decline, random (a fair coin per completion, expected values), and
oracle (submit exactly on `correct` examples).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from typing import Any, Sequence

import torch

from tirgrpo.config import RewardConfig
from tirgrpo.eval.bootstrap import HEADLINE, bootstrap_intervals
from tirgrpo.rollout import SamplingParams

NAN = float("nan")
BASELINES = ("always-submit", "always-decline", "random", "oracle")
# The metrics of one policy or baseline, in table order.
METRICS = ("correctness", "balanced_accuracy", "auroc", "submit_rate_on_correct", "submit_rate_on_wrong", "skill",
           "decision_accuracy", "submit", "decline", "invalid", "precision", "recall", "completion_tokens")


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

    on_c, on_w = rate(on_correct, "submit"), rate(on_wrong, "submit")
    return {
        "correctness": sum(correctness) / n,
        "submit": rate(decisions, "submit"),
        "decline": rate(decisions, "decline"),
        "invalid": rate(decisions, "invalid"),
        "decision_accuracy": sum(right) / n,
        "balanced_accuracy": (on_c + rate(on_wrong, "decline")) / 2,
        "precision": rate(submitted_labels, "correct"),
        "recall": on_c,
        "submit_rate_on_correct": on_c,
        "submit_rate_on_wrong": on_w,
        "skill": on_c - on_w,
    }


def p_submit(completion: dict[str, Any]) -> float:
    """P(submit) of one entry of `evaluate_examples`' "completions": its samples' share that submit."""
    samples = completion["samples"]
    return sum(s["decision"] == "submit" for s in samples) / len(samples)


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
    shares = [sum(d == "submit" for d in ds) / len(ds) for ds in decisions if ds]  # P(submit) per example
    positive = [lab == "correct" for lab, ds in zip(labels, decisions) if ds]
    out["auroc"] = auroc(shares, positive)
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
    """The rewards evaluation scores with: the `default` set's decisions and constants
    (submit right +1, wrong -1, decline 0, invalid -1), whatever a run trained with, so
    every run's correctness is on one scale; only a run's `judge_only` is kept."""
    return RewardConfig(set="default", judge_only=run_rewards is not None and run_rewards.judge_only)


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


def wrong_kind_split(questions: list[str], labels: list[str], answered: list[bool], decisions: list[list[str]],
                     correctness: list[list[float]], bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The policy's metrics against each kind of `wrong` example, the `correct` ones kept in both.

    answered[i]: example i's transcript boxed an answer (every `correct` one did). Returns
    {"wrong_answered" | "wrong_unanswered": {"wrong_examples": count, "overall":
    `policy_metrics` of the correct examples + that kind's wrong ones, "intervals": their
    bootstrap intervals over questions}}.
    """
    out = {}
    for kind, want in (("wrong_answered", True), ("wrong_unanswered", False)):
        idx = [i for i, lab in enumerate(labels) if lab == "correct" or answered[i] == want]
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        out[kind] = {"wrong_examples": sum(labels[i] == "wrong" for i in idx),
                     "overall": policy_metrics(pick(labels), pick(decisions), pick(correctness)),
                     "intervals": bootstrap_intervals(pick(questions), pick(labels), pick(decisions), pick(correctness),
                                                      bootstrap, seed)}
    return out


def summarize(questions: list[str], labels: list[str], decisions: list[list[str]],
              correctness: list[list[float]], tokens: list[list[int]],
              rewards: RewardConfig | None = None, bootstrap: int = 1000, seed: int = 0,
              answered: list[bool] | None = None) -> dict[str, Any]:
    """Overall and per-question metrics of the policy and the baselines, with intervals.

    Returns {"overall": metrics, "baselines": {name: metrics}, "intervals": {"policy" or a
    baseline name: {headline metric: [low, high]}}, "per_question": [{"question", "overall",
    "baselines"}, ...]} with questions in order of first appearance. The intervals are
    bootstrap 95% intervals over `bootstrap` resamples of the questions (seeded by `seed`;
    `bootstrap` = 0: none). With `answered` (per example: its transcript boxed an answer), also
    "by_wrong_kind": `wrong_kind_split`.
    """
    result: dict[str, Any] = {
        "overall": policy_metrics(labels, decisions, correctness, tokens),
        "baselines": baseline_metrics(labels, rewards),
        "intervals": {"policy": bootstrap_intervals(questions, labels, decisions, correctness, bootstrap, seed)},
        "per_question": [],
    }
    rewards = rewards or RewardConfig(set="default")
    for name in BASELINES:
        ds = baseline_decisions(labels, name)
        cs = [[decision_reward(d, lab, rewards) for d in row] for row, lab in zip(ds, labels)]
        result["intervals"][name] = bootstrap_intervals(questions, labels, ds, cs, bootstrap, seed)
    if answered is not None:
        result["by_wrong_kind"] = wrong_kind_split(questions, labels, answered, decisions, correctness, bootstrap, seed)
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


def format_cell(value: Any, interval: Sequence[float] | None = None) -> str:
    """A metric as table text: `0.447 [0.410, 0.480]` with its 95% interval, `0.447` without, `—` if undefined."""
    text = _fmt(value)
    if text == "—" or not interval or any(math.isnan(x) for x in interval):
        return text
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _intervals(result: dict, who: str) -> dict:
    return (result.get("intervals") or {}).get(who) or {}


def _table(columns: list[tuple[str, dict, dict]]) -> list[str]:
    """Markdown rows: one column per (name, metrics, intervals), one row per METRICS entry present."""
    lines = ["| metric | " + " | ".join(c[0] for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for m in METRICS:
        if all(m not in c[1] for c in columns):
            continue
        lines.append(f"| {m} | " + " | ".join(format_cell(c[1].get(m), c[2].get(m)) for c in columns) + " |")
    return lines


def markdown_table(result: dict[str, Any], max_questions: int = 50) -> str:
    """The overall table (sampled policy, greedy, baselines; one row per metric) and a per-question table."""
    k = result.get("samples")
    cols = [(f"policy (K={k})" if k else "policy", result["overall"], _intervals(result, "policy"))]
    greedy = result.get("greedy") or {}
    if greedy:
        cols.append(("greedy", greedy.get("overall", {}), _intervals(greedy, "policy")))
    cols += [(b, result["baselines"][b], _intervals(result, b)) for b in BASELINES]
    lines = _table(cols)
    o = result["overall"]
    lines.append(f"\n{o.get('examples', 0)} examples, {o.get('n', 0)} sampled completions"
                 + (f" at temperature {result['temperature']}" if "temperature" in result else "")
                 + (", plus one greedy completion each" if greedy else "")
                 + ". Brackets: bootstrap 95% interval, resampling questions.")
    lines += wrong_kind_table(result.get("by_wrong_kind"))
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


def wrong_kind_table(split: dict[str, Any] | None) -> list[str]:
    """Markdown lines of `wrong_kind_split` (none without it)."""
    if not split:
        return []
    lines = ["", "Against each kind of `wrong` example (all `correct` examples in both rows):", "",
             "| wrong examples | count | auroc | submit_rate_on_wrong | skill |", "|---|---:|---:|---:|---:|"]
    for kind, what in (("wrong_answered", "boxed a wrong answer"), ("wrong_unanswered", "boxed no answer")):
        part = split[kind]
        if not part["wrong_examples"]:
            continue
        m, ci = part["overall"], part["intervals"]
        lines.append(f"| {what} | {part['wrong_examples']} | " + " | ".join(
            format_cell(m.get(k), ci.get(k)) for k in ("auroc", "submit_rate_on_wrong", "skill")) + " |")
    return lines


def before_after_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A Markdown table of the policy before and after training next to the baselines, with intervals.

    `before`/`after` are eval results (`summarize`'s dict, or an older flat dict of
    metrics); either may be empty. When they hold greedy results, a second table shows those.
    """
    ref = after or before
    base = ref.get("baselines", {})
    cols = [("before", overall_of(before or {}), _intervals(before or {}, "policy")),
            ("after", overall_of(after or {}), _intervals(after or {}, "policy"))]
    cols += [(b, base[b], _intervals(ref, b)) for b in BASELINES if b in base]
    lines = _table(cols)
    o = overall_of(ref)
    k = ref.get("samples")
    lines.append(f"\n{o.get('examples', '?')} eval examples, {o.get('n', '?')} completions each time"
                 + (f" ({k} sampled per example)" if k else "") + "; brackets: bootstrap 95% interval by question.")
    gb, ga = (before or {}).get("greedy") or {}, (after or {}).get("greedy") or {}
    if gb or ga:
        lines += ["", "Greedy (one completion per example):", ""]
        lines += _table([("before", gb.get("overall", {}), _intervals(gb, "policy")),
                         ("after", ga.get("overall", {}), _intervals(ga, "policy"))])
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
                "stop": c.stop, "eventual_answer": ex.eventual_answer} for ex, group in zip(examples, groups) for c in group]
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


def _summarize_sampled(examples, sampled: list[list[dict]], rewards: RewardConfig, bootstrap: int,
                       seed: int) -> dict[str, Any]:
    return summarize([ex.question for ex in examples], [ex.label for ex in examples],
                     [[s["decision"] for s in g] for g in sampled], [[s["correctness"] for s in g] for g in sampled],
                     [[s["tokens"] for s in g] for g in sampled], rewards, bootstrap, seed,
                     answered=[ex.eventual_answer is not None for ex in examples])


def evaluate_examples(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int,
                      rewards: RewardConfig | None = None, greedy: bool = True,
                      bootstrap: int = 1000) -> dict[str, Any]:
    """Sample, score and summarize: `summarize`'s dict plus `samples`, `temperature`, `completions`
    (per example, per sample) and, with `greedy`, `greedy` = {"overall", "intervals"} of one
    greedy completion per example (each completion entry then has its `greedy` sample too).

    `params.temperature` should be the training temperature (the policy GRPO samples); at
    temperature 0 the samples are greedy already and no separate greedy pass runs.
    `bootstrap`: resamples for the 95% intervals (0 = none).
    """
    rewards = rewards or RewardConfig(set="default")
    sampled = sample_decisions(engine, tokenizer, examples, prompt_ids, params, samples, seed, rewards)
    result = _summarize_sampled(examples, sampled, rewards, bootstrap, seed)
    result["samples"] = samples
    result["temperature"] = params.temperature
    result["completions"] = [{"question": ex.question, "label": ex.label, "correct_answer": ex.correct_answer,
                              "eventual_answer": ex.eventual_answer, "samples": g} for ex, g in zip(examples, sampled)]
    if greedy and params.temperature > 0:
        greedy_params = dataclasses.replace(params, temperature=0.0)
        picked = sample_decisions(engine, tokenizer, examples, prompt_ids, greedy_params, 1, seed, rewards)
        g = _summarize_sampled(examples, picked, rewards, bootstrap, seed)
        result["greedy"] = {"overall": g["overall"], "intervals": {"policy": g["intervals"]["policy"]}}
        for entry, rows in zip(result["completions"], picked):
            entry["greedy"] = rows[0]
    return result


def evaluate_policy(engine, tokenizer, examples, prompt_ids, params: SamplingParams, samples: int, seed: int) -> dict:
    """The overall metrics only (a flat dict of numbers), as `evaluate_examples` computes them."""
    return evaluate_examples(engine, tokenizer, examples, prompt_ids, params, samples, seed, greedy=False,
                             bootstrap=0)["overall"]


def resolve_eval_temperature(eval_temperature: float, rollout_temperature: float) -> float:
    """The eval sampling temperature: `run.eval_temperature` when >= 0, else the rollout's (training) one."""
    return eval_temperature if eval_temperature >= 0 else rollout_temperature


# What a run's summary.json keeps of an eval result besides `overall` (the numbers, not the completions).
BRIEF_KEYS = ("baselines", "intervals", "greedy", "samples", "temperature")


def log_values(result: dict) -> dict[str, float]:
    """An eval result as flat metrics.jsonl values: `eval/METRIC` (K samples), `eval/greedy/METRIC`,
    and `eval/METRIC_lo` / `eval/METRIC_hi` (the 95% interval) for the headline metrics."""
    out = {f"eval/{k}": v for k, v in overall_of(result).items()}
    for k, (lo, hi) in _intervals(result, "policy").items():
        out[f"eval/{k}_lo"], out[f"eval/{k}_hi"] = lo, hi
    greedy = (result.get("greedy") or {}).get("overall", {}) if isinstance(result, dict) else {}
    out.update({f"eval/greedy/{k}": v for k, v in greedy.items()})
    return out


def overall_of(result: dict) -> dict:
    """The flat overall metrics of an eval result; an older flat eval_*.json is returned as is."""
    return result.get("overall", result) if isinstance(result, dict) else {}
