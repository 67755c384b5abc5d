"""Prompt templates, in one place so that the data tools and the TIR harness write the same text.

All templates are plain strings in DeepSeek-R1's chat format (`<｜User｜>`, `<｜Assistant｜>`,
`<think>`...`</think>`), copied from the seed transcripts (`r1_distill_7b_tir_sample.csv`).
Fields are written `{name}` and filled with `fill()`, not `str.format`, because the texts
themselves contain braces (`\\boxed{}`).

A TIR transcript is: CODE_PROMPT, the model's plan and ```python block, then for each executed
block the BRIDGE (with the execution output) plus BRIDGE_PREFILL, and the model's next text.
"""

from __future__ import annotations

import re

# Start of a code block; a completion that contains it has declined to answer and writes code.
CODE_BLOCK_START = "```python"

# The seed's first prompt: the user asks for a plan and code (not a solution), and the
# assistant turn is pre-filled with a short, closed <think> so the model goes straight to the
# plan. The model continues after "Plan:\n".
CODE_PROMPT = (
    "<｜User｜>\n"
    "Write a plan on how to solve this problem, and then write Python code that solves the problem.\n\n"
    "The answer of the problem is expected to be an integer. We only need the answer modulo 1000.\n\n"
    "You have access to a Python interpreter, with SymPy installed.\n\n"
    "Do not solve this problem directly, only write the plan and then the Python code that solves the problem.\n\n"
    "<problem>\n{question}\n</problem>\n\n"
    "Write a plan to solve the above problem, and then the Python code that solves the problem.\n\n"
    "Reminder - do not solve the problem directly, only write the plan, and then the Python code.\n"
    "<｜Assistant｜><think>\n"
    "I do not need to solve the problem, I will only need to write the plan, and then the Python code.\n\n"
    "I should not be doing any calculations in my plan.\n\n"
    "I will produce the plan.\n"
    "</think>\n\n"
    "Here is my plan, followed by the Python code. Please note that while I will provide the code "
    "that solves the problem as requested, I will not solve the problem.\n\n"
    "Plan:\n"
)

# Inserted after the model's code block: ends the assistant turn, shows the execution output
# (`{output}`, the program's stdout/stderr without its trailing newline) as a user turn, and
# opens a new assistant turn inside <think>. This is the point where the judged decision starts:
# submit \boxed{answer} or decline and write new code.
BRIDGE = (
    "<｜end▁of▁sentence｜><｜User｜>Your code was executed.\n\n"
    "```output\n{output}\n```\n\n"
    "Analyze issues with your code and output. If there are issues, fix the code so that the code "
    "solves the problem.\n\n"
    "Reminder - do not solve the problem manually, the Python code should be the one doing "
    "calculations and solving the problem.\n\n"
    "If you are confident of the answer, you will write your answer in \\boxed{}.\n"
    "<｜Assistant｜><think>\n"
)

# The seed pre-fills the start of the model's analysis after every bridge.
BRIDGE_PREFILL = (
    "Alright, I shall analyze issues with my code and output.\n\n"
    "If the output is correct, I will print my answer in \\boxed{}.\n\n"
    "If the output is wrong, I will fix the code.\n\n"
    "Let me go through my code step by step.\n\n"
    "Looking at my code,"
)

# The full bridge text of the seed transcripts (what the transcript JSONL's `bridge` holds by default).
SEED_BRIDGE = BRIDGE + BRIDGE_PREFILL

# A bridge that names the check the judge has to make (`tirgrpo data gsm8k-verify --bridge
# check`): the seed's bridge asks to "analyze issues", which a model new to the format reads as
# "explain the code"; this one asks to compare each line with its plan step and the problem,
# and says what each verdict looks like. Same format: \boxed{} to submit, a code block to decline.
CHECK_BRIDGE = (
    "<｜end▁of▁sentence｜><｜User｜>Your code was executed.\n\n"
    "```output\n{output}\n```\n\n"
    "Check the code line by line: does each line compute what its step of the plan says, with the "
    "numbers and operations the problem gives? Name the first line that does not, if any.\n\n"
    "If every line is right, the output is the answer: write it in \\boxed{}. If a line is wrong, "
    "write the corrected code in a new ```python block.\n"
    "<｜Assistant｜><think>\n"
)

# The short first turn of the gsm8k-verify task: the question and a one-line instruction, then
# the assistant's plan inside <think> and its code block. BRIDGE follows (without the pre-fill,
# so that the model's whole analysis is the completion and prompts stay short).
GSM8K_CODE_PROMPT = (
    "<｜User｜>{question}\n\n"
    "Write a short plan, then Python code that computes the answer. The answer is an integer.\n"
    "<｜Assistant｜><think>\n"
    "Plan:\n{plan}\n"
    "</think>\n\n"
    "```python\n{code}\n```"
)

_FIELD = re.compile(r"\{([a-z_]+)\}")


def fields(template: str) -> set[str]:
    """Names of the `{name}` fields in `template` (`\\boxed{}` is not a field: it is empty)."""
    return set(_FIELD.findall(template))


def fill(template: str, **values: str) -> str:
    """Replace each `{name}` in `template` by `values[name]`; every field must be given.

    Values are inserted verbatim (a value containing `{x}` is not filled again).
    """
    missing = fields(template) - values.keys()
    if missing:
        raise KeyError(f"template fields not given: {sorted(missing)}")
    return _FIELD.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def bridge(output: str, template: str = SEED_BRIDGE) -> str:
    """The bridge text shown after a code block whose execution printed `output`."""
    return fill(template, output=output)


def code_prompt(question: str) -> str:
    """The seed's first prompt for `question` (the model continues with its plan and code)."""
    return fill(CODE_PROMPT, question=question)
