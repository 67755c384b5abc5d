"""Evaluating a verifier: its decisions on labelled examples (or on transcripts judged at
their last code output) against the baselines, and what it does to answer selection.

The library half of `tirgrpo eval`; metric definitions in evaluate.py and selection.py.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tirgrpo.errors import TirgrpoError


def transcript_examples(path: str):
    """Pseudo-examples (one per transcript that has a correct answer) and their decision prompts,
    from a file of runs that vote (`read_transcripts_for_votes`: no run twice, one correct answer
    a problem). Returns (examples, problem ids, prompts or None where no code output was shown).
    """
    from tirgrpo.data.records import Example, label_for, read_transcripts_for_votes
    from tirgrpo.eval.selection import transcript_decision_prompt

    examples, problem_ids, prompts = [], [], []
    for t in read_transcripts_for_votes(path):
        if t.correct_answer is None:
            continue
        prompt = transcript_decision_prompt(t)
        examples.append(Example(question=t.question, prompt=prompt or "", completion="", correct_answer=t.correct_answer,
                                eventual_answer=t.eventual_answer, label=label_for(t.correct_answer, t.eventual_answer),
                                prompt_tokens=0, completion_tokens=0, source=Path(path).name))
        problem_ids.append(t.problem_id)
        prompts.append(prompt)
    if not examples:
        raise TirgrpoError(f"{path}: no transcript has a correct_answer; nothing to evaluate")
    return examples, problem_ids, prompts


def examples_to_judge(data: str | None, transcripts: str | None, tokenizer, max_prompt_tokens: int,
                      max_examples: int):
    """(examples, problem ids, decision prompts or None) from labelled examples (`data`) or a
    transcript file. Labelled examples: those with prompts over `max_prompt_tokens` dropped (0:
    no limit), at most `max_examples` (0: all). Transcripts: every problem keeps all its
    transcripts, so that answer selection votes over all of them: an over-long prompt becomes
    None (unjudged, as a transcript without a code output), and `max_examples` takes whole
    problems in file order up to that many transcripts (at least one problem)."""
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.records import read_examples

    if data:
        examples = read_examples(bundled_path(data))
        problem_ids = [ex.question for ex in examples]
        prompts: list[str | None] = [ex.prompt for ex in examples]
    else:
        examples, problem_ids, prompts = transcript_examples(transcripts)
    fits = [p is None or max_prompt_tokens <= 0 or len(tokenizer(p)["input_ids"]) <= max_prompt_tokens
            for p in prompts]
    if data:
        keep = [i for i, ok in enumerate(fits) if ok]
        if max_examples > 0:
            keep = keep[:max_examples]
    else:
        prompts = [p if ok else None for p, ok in zip(prompts, fits)]
        keep = list(range(len(examples)))
        if max_examples > 0:
            count = Counter(problem_ids)  # keys in first-seen order
            taken, total = set(), 0
            for pid in count:
                if taken and total + count[pid] > max_examples:
                    break
                taken.add(pid)
                total += count[pid]
            keep = [i for i in keep if problem_ids[i] in taken]
    if not keep:
        raise TirgrpoError("no example left to evaluate (check --max-prompt-tokens / --max-examples)")
    return [examples[i] for i in keep], [problem_ids[i] for i in keep], [prompts[i] for i in keep]


def judge(model, tokenizer, examples: list, prompts: list, params, samples: int, seed: int, rewards,
          batch_size: int, greedy: bool = True, bootstrap: int = 1000, kernels: str = "auto") -> dict:
    """Sample `samples` decisions of `model` (and one greedy decision) for every example that
    has a prompt, through the fast engine, with the metrics, baselines and bootstrap intervals
    of `evaluate.evaluate_examples` ("unjudged": examples without a prompt; "judged": the
    indices of those with one, and "prompt_lengths": their prompts' tokens, for `selection`)."""
    import torch

    from tirgrpo.eval.evaluate import evaluate_examples, summarize
    from tirgrpo.rollout.engine import FastEngine

    judged = [i for i, p in enumerate(prompts) if p is not None]
    prompt_ids = [tokenizer(prompts[i])["input_ids"] for i in judged]
    engine = FastEngine(model, tokenizer, max_batch=batch_size, kernels=kernels)
    with torch.no_grad():
        result = evaluate_examples(engine, tokenizer, [examples[i] for i in judged], prompt_ids,
                                   params, samples, seed, rewards, greedy=greedy,
                                   bootstrap=bootstrap) if judged else summarize([], [], [], [], [])
    result["unjudged"] = len(prompts) - len(judged)
    result["judged"] = judged
    result["prompt_lengths"] = [len(ids) for ids in prompt_ids]
    return result


def selection(result: dict, judged: list[int], prompt_lengths: list[int], examples: list, problem_ids: list,
              threshold: float, seed: int) -> dict:
    """Majority, verifier-gated, P(submit)-weighted and verifier-completed votes per question, from `judge`'s
    result (`judged`: the examples it judged, `prompt_lengths`: their prompts' tokens), with
    what judging cost in tokens (`judge_tokens`). Transcripts that never showed a code output
    have nothing to judge: they count as submitted."""
    from tirgrpo.eval.evaluate import p_submit as submit_share
    from tirgrpo.eval.selection import compare_selection, group_candidates, judge_answer, judge_tokens

    p_submit = [1.0] * len(examples)
    theirs: list[str | None] = [None] * len(examples)  # the verifier's own boxed answer, where it submits
    for i, comp in zip(judged, result.get("completions", [])):
        p_submit[i] = submit_share(comp)
        theirs[i] = judge_answer([s["text"] for s in comp["samples"]], [s["decision"] for s in comp["samples"]])
    seen = set(judged)
    grouped = group_candidates(problem_ids, [ex.correct_answer for ex in examples],
                               [ex.eventual_answer for ex in examples], p_submit,
                               [i in seen for i in range(len(examples))], theirs)
    generated = [[sample["tokens"] for sample in comp["samples"]] for comp in result.get("completions", [])]
    return {**compare_selection(grouped, threshold=threshold, seed=seed),
            "judge_tokens": judge_tokens(prompt_lengths, generated)}
