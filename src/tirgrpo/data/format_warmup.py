"""A format-only warm start: the examples' completions replaced by decisions that ignore the label.

GRPO from a base model spends its first steps learning the answer format (a boxed answer, or a
new code block), and the shortest valid completion, a decline, wins before the decision is
learned (docs/learning.md). A supervised start on the real targets removes that problem but
also teaches the decision. These targets teach the format only: each example's completion
becomes a bare submission (boxing the code's own output) or a bare decline (opening a new
code block), chosen so that exactly half of each label's examples get each decision (up to
one for an odd count). A model fine-tuned on them writes valid answers but chooses at random;
what it then learns about *which* to choose, GRPO has to teach (as tests/train/test_learning.py
does with a tiny model).
"""

from __future__ import annotations

import dataclasses
import random

from tirgrpo.data.gsm8k import ANALYSIS_START
from tirgrpo.data.records import Example
from tirgrpo.errors import TirgrpoError

SUBMIT = ANALYSIS_START + " I accept its output.\n</think>\n\n\\boxed{{{answer}}}"
DECLINE = ANALYSIS_START + " I will check it with new code.\n</think>\n\n```python\n"


def format_completion(decision: str, answer: str, prefilled: bool) -> str:
    """The label-free target of `decision` ("submit" or "decline"); `answer` is the code's own
    output (what a submission boxes under `rewards.judge_only`); `prefilled`: the prompt
    already ends with ANALYSIS_START, so the completion starts after it."""
    if decision not in ("submit", "decline"):
        raise ValueError(f"decision must be 'submit' or 'decline', got {decision!r}")
    text = SUBMIT.format(answer=answer) if decision == "submit" else DECLINE
    return text[len(ANALYSIS_START):] if prefilled else text


def coin_flip_examples(examples: list[Example], seed: int, where: str = "examples") -> list[Example]:
    """The examples, in order, with format-only completions: within each label, a seeded
    shuffle gives half the examples a submission and the rest a decline. `where` names the
    source in errors. Raises TirgrpoError for an example without the code's output."""
    for row, ex in enumerate(examples, 1):
        if ex.eventual_answer is None or not str(ex.eventual_answer).strip():
            raise TirgrpoError(f"{where}, example {row}, field 'eventual_answer': a submission must box the "
                               "code's own output, and this example has none")
    rng = random.Random(seed)
    decisions: dict[int, str] = {}
    for label in sorted({ex.label for ex in examples}):
        rows = [i for i, ex in enumerate(examples) if ex.label == label]
        rng.shuffle(rows)
        for k, i in enumerate(rows):
            decisions[i] = "submit" if k % 2 == 0 else "decline"
    return [dataclasses.replace(ex, completion=format_completion(decisions[i], str(ex.eventual_answer),
                                                                 ex.prompt.rstrip().endswith(ANALYSIS_START)),
                                completion_tokens=0)
            for i, ex in enumerate(examples)]
