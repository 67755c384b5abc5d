"""A synthetic verify task small enough for a tiny model on a CPU, for tests.

Each prompt shows an expected value and a code output (single digits); the right
decision is to submit `\\boxed{output}` when they agree and to decline (start a new
code block) when they differ. It has the shape of the real task (a judgement on a code
output, submit or decline) with the arithmetic removed, so a 2-layer model can learn it
in a minute: the learning test uses it to show that GRPO moves the decision.

The true answer (`correct_answer`) of a wrong example is a number shown nowhere in the
prompt (digits .. 2*digits-1), so the only way to earn reward is the decision: were it
`expected`, a policy could score +1 on every example by boxing `expected` instead of the
output (a reward hack seen in the learning test, which scored above the 0.5 a perfect
judge gets).
"""

from __future__ import annotations

import random

from tirgrpo.data.records import Example

PROMPT = (
    "<｜User｜>Is the output right?\nexpected {expected}\n```output\n{output}\n```"
    "<｜Assistant｜><think>\n"
)
SUBMIT = "yes</think>\\boxed{{{output}}}"
DECLINE = "no</think>\n```python"
ERROR = "Error"


def compare_examples(n: int, seed: int, tokenizer, target: str = "label", digits: int = 10,
                     wrong: str = "digit") -> list[Example]:
    """`n` examples, half correct (output == expected) and half wrong.

    tokenizer: counts `prompt_tokens` (with bos) and `completion_tokens`.
    digits: values are drawn from 0 .. digits-1 (fewer values: an easier task).
    target: what the `completion` field teaches an SFT warm start: `label` (the right
    decision) or `random` (a coin flip, so SFT teaches the format but not the decision).
    wrong: what a wrong output is: `digit` (another digit, so the decision needs a
    comparison of two tokens -- a 2-layer model groks it only after ~200 supervised
    steps, too slow for GRPO in a CI budget) or `error` (the code failed: the output block
    shows `Error`, so the decision can be read off one token, as a verifier should decline
    a crashed program; GRPO learns it in a minute).
    """
    if wrong not in ("digit", "error"):
        raise ValueError(f"wrong must be 'digit' or 'error', got {wrong!r}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        expected = rng.randrange(digits)
        if i % 2 == 0:
            output = expected
        elif wrong == "error":
            output = ERROR
        else:
            output = rng.choice([d for d in range(digits) if d != expected])
        label = "correct" if output == expected else "wrong"
        answer = expected if label == "correct" else digits + rng.randrange(digits)
        submit = (label == "correct") if target == "label" else rng.random() < 0.5
        completion = SUBMIT.format(output=output) if submit else DECLINE
        prompt = PROMPT.format(expected=expected, output=output)
        out.append(Example(
            question=f"compare {expected} {output}",
            prompt=prompt,
            completion=completion,
            correct_answer=str(answer),
            eventual_answer=None if output == ERROR else str(output),
            label=label,
            prompt_tokens=len(tokenizer(prompt)["input_ids"]),
            completion_tokens=len(tokenizer(completion, add_special_tokens=False)["input_ids"]),
            source="synthetic-compare",
        ))
    return out
