"""The gsm8k-verify task: an easy, short-context version of the TIR judging task, from GSM8K.

GSM8K solutions carry calculator annotations, `Natalia sold 48/2 = <<48/2=24>>24 clips`.
Each annotation becomes one line of a short Python program (`step1 = 48 / 2`); a number
equal to an earlier step's result is written as that step's variable, so the program is
one data flow ending in `answer = ...` and `print(answer)`. The program's output is shown
after the seed transcripts' bridge text (or a variant: `BRIDGES`), and the model must judge it:

- the correct example shows the program as derived from the solution (its output equals
  GSM8K's answer); its target completion is a short check and `\\boxed{answer}`;
- the wrong twin has one perturbed number or operator, so its output is a different
  integer; its target completion names the wrong line and starts a new ```python block.

Programs are made only of numbers, step names and + - * / ( ), and are evaluated with a
tiny arithmetic evaluator that follows Python's own semantics (same values, same printed
text as running the program; a test checks this against a real `python` subprocess), so
no text from the data set is ever executed.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tirgrpo.data.limits import text_problem
from tirgrpo.data.records import Example, iter_jsonl, parse_int_answer
from tirgrpo.errors import TirgrpoError
from tirgrpo.data.templates import BRIDGE, CHECK_BRIDGE, CODE_BLOCK_START, GSM8K_CODE_PROMPT, SEED_BRIDGE, fill

SOURCE = "gsm8k-verify"
MAX_PROMPT_TOKENS = 400
# The text after the code's output, by `--bridge` name: the seed's bridge without its
# pre-filled analysis (short prompts; the default), with it (as the seed transcripts have it),
# or one that names the check to make (templates.CHECK_BRIDGE).
BRIDGES = {"seed": BRIDGE, "seed-prefill": SEED_BRIDGE, "check": CHECK_BRIDGE}
# Every target completion starts with the last words of the seed's pre-fill, so after a bridge
# that ends with them the completion is the rest of the same sentence.
ANALYSIS_START = "Looking at my code,"

_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# An annotation with the result the solution text repeats after it: "= $<<48/2=24>>24".
_ANNOTATION_AND_RESULT = re.compile(r"\s*=?\s*\$?<<[^<>]*>>\$?(?:\d[\d,]*(?:\.\d+)?)?")
_REPEATED_WORD = re.compile(r"(?<!\S)([A-Za-z][\w/%-]*) \1\b")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|([A-Za-z_]\w*)|(\*\*|[-+*/()]))")

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class ProgramError(ValueError):
    """A program that cannot be built or evaluated (the question is skipped)."""


# ----------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class Program:
    """A straight-line program: `names[i] = exprs[i]` for each step, then `print(names[-1])`."""

    names: tuple[str, ...]
    exprs: tuple[str, ...]

    def lines(self) -> list[str]:
        return [f"{n} = {e}" for n, e in zip(self.names, self.exprs)]

    def source(self) -> str:
        """The Python source shown in the prompt (no trailing newline)."""
        return "\n".join(self.lines() + [f"print({self.names[-1]})"])

    def values(self) -> list[int | float]:
        """The value of every step, in order; ProgramError if a step cannot be evaluated."""
        env: dict[str, int | float] = {}
        for name, expr in zip(self.names, self.exprs):
            env[name] = evaluate(expr, env)
        return [env[n] for n in self.names]

    def run(self) -> str:
        """What running the program prints (without the trailing newline)."""
        return str(self.values()[-1])


def evaluate(expr: str, env: dict[str, int | float]) -> int | float:
    """Evaluate an arithmetic expression of numbers, names in `env` and + - * / ( ), as Python would.

    Raises ProgramError on anything else (calls, attributes, **, ...) and on division by zero.
    """
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ProgramError(f"not an expression: {expr!r}") from e

    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            try:
                return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
            except ZeroDivisionError as e:
                raise ProgramError("division by zero") from e
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        raise ProgramError(f"unsupported syntax in {expr!r}: {ast.dump(node)[:60]}")

    value = ev(tree)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProgramError(f"{expr!r} is not finite")
    return value


def _tokens(expr: str) -> list[tuple[str, str]]:
    """Split an expression into (kind, text) with kind in num/name/op; raise on anything else."""
    out, pos = [], 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise ProgramError(f"unsupported character at {expr[pos:pos + 10]!r}")
        kind = "num" if m.group(1) else "name" if m.group(2) else "op"
        if kind == "op" and m.group(3) == "**":
            raise ProgramError("** is not allowed")
        out.append((kind, m.group(m.lastindex)))
        pos = m.end()
    return out


def _is_binary(tokens: Sequence[tuple[str, str]], j: int) -> bool:
    """Whether tokens[j] is a binary operator (it follows a number, a name or a ")")."""
    kind, text = tokens[j]
    if kind != "op" or text not in "+-*/" or j == 0:
        return False
    prev_kind, prev_text = tokens[j - 1]
    return prev_kind in ("num", "name") or prev_text == ")"


def _join(tokens: Sequence[tuple[str, str]]) -> str:
    """Tokens back to source, with spaces around binary operators (`step1 * 24`)."""
    return "".join(f" {text} " if _is_binary(tokens, j) else text for j, (_, text) in enumerate(tokens))


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def build_program(solution: str, question: str = "") -> Program:
    """The program of a GSM8K solution: one step per `<<expr=value>>` annotation.

    A number equal to an earlier step's stated result becomes that step's name, unless the
    number also appears in `question` (then it is more likely a given than a coincidence).
    Every step must contain an operator: a bare constant computes nothing to check.
    """
    annotations = _ANNOTATION.findall(solution)
    if not annotations:
        raise ProgramError("no calculator annotations")
    givens = {float(n.replace(",", "")) for n in _NUMBER.findall(question)}
    names, exprs, results = [], [], []
    for i, (expr, stated) in enumerate(annotations):
        tokens = _tokens(expr.replace(",", ""))
        if any(kind == "name" for kind, _ in tokens):
            raise ProgramError(f"annotation {expr!r} uses names")
        if not any(_is_binary(tokens, j) for j in range(len(tokens))):
            raise ProgramError(f"annotation {expr!r} has no operator")
        stated_value = _stated(stated)
        linked = []
        for kind, text in tokens:
            if kind == "num" and _number(text) not in givens:
                for name, value in zip(reversed(names), reversed(results)):
                    if value is not None and _number(text) == value:
                        kind, text = "name", name
                        break
            linked.append((kind, text))
        names.append(f"step{i + 1}")
        exprs.append(_join(linked))
        results.append(stated_value)
    names[-1] = "answer"
    exprs = [re.sub(rf"\bstep{len(names)}\b", "answer", e) for e in exprs]
    return Program(tuple(names), tuple(exprs))


def _stated(text: str) -> float | None:
    """The result an annotation states ("24", "$1,200", "0.2"), or None if it is not a number."""
    text = text.strip().lstrip("$").replace(",", "")
    try:
        return float(text)
    except ValueError:
        return None


def perturbations(program: Program) -> list[tuple[int, str]]:
    """Every one-change variant of the program: (step index, new expression).

    A number literal n becomes n+1, n-1 (if > 0) or 2n (in its own precision); an operator
    + <-> -, * -> + or /, / -> * or -.
    """
    swaps = {"+": ("-",), "-": ("+",), "*": ("+", "/"), "/": ("*", "-")}
    out = []
    for i, expr in enumerate(program.exprs):
        tokens = _tokens(expr)
        for j, (kind, text) in enumerate(tokens):
            if kind == "num":
                decimals = len(text.split(".")[1]) if "." in text else 0
                unit = 10**-decimals
                value = _number(text)
                options = {value + unit, value * 2} | ({value - unit} if value - unit > 0 else set())
                news = [f"{v:.{decimals}f}" for v in sorted(options)]
            elif _is_binary(tokens, j):
                news = list(swaps[text])
            else:
                continue
            for new in news:
                if new != text:
                    changed = list(tokens)
                    changed[j] = (kind, new)
                    out.append((i, _join(changed)))
    return out


# ----------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class VerifyPair:
    """One question's correct example and wrong twin, before tokenization.

    kind: how the twin is wrong: `perturbed-code` (easy: one code line contradicts the plan)
    or a misreading of the question in plan and code alike (gsm8k_hard.KINDS), in which case
    `wrong_plan` is the twin's own plan (None: the twin shows `plan`).
    """

    question: str
    answer: int
    plan: str
    program: Program
    output: str
    wrong_program: Program
    wrong_output: str
    wrong_step: int
    wrong_plan: str | None = None
    kind: str = "perturbed-code"


def plan_text(solution: str) -> str:
    """The solution's sentences without calculator annotations and the results they repeat.

    The plan says what to compute (e.g. "Natalia sold 48/2 clips in May."), never the numbers
    the program computes, so that checking the code against it is real work.
    """
    lines = []
    for line in solution.split("\n"):
        if line.startswith("####"):
            continue
        line = _ANNOTATION_AND_RESULT.sub("", line).strip()
        # "6000 liters - 2000 liters = <<..>>4000 liters" leaves "... 2000 liters liters".
        line = _REPEATED_WORD.sub(r"\1", line)
        if line:
            lines.append(f"- {line}")
    return "\n".join(lines)


def checked_answer(solution: str) -> int:
    """GSM8K's final answer (after `####`) as an integer; ProgramError if missing or not an integer."""
    final = solution.rsplit("####", 1)
    if len(final) != 2:
        raise ProgramError("no '#### answer' line")
    answer = parse_int_answer(final[1].strip().replace(",", ""))
    if answer is None:
        raise ProgramError(f"answer {final[1].strip()!r} is not an integer")
    return answer


def make_pair(question: str, solution: str, rng: random.Random) -> VerifyPair:
    """Build the correct example and its wrong twin for one GSM8K item; ProgramError if unusable."""
    answer = checked_answer(solution)
    program = build_program(solution, question)
    output = program.run()
    if parse_int_answer(output) != answer:
        raise ProgramError(f"program prints {output}, GSM8K answer is {answer}")
    candidates = perturbations(program)
    rng.shuffle(candidates)
    for step, expr in candidates:
        wrong = Program(program.names, program.exprs[:step] + (expr,) + program.exprs[step + 1 :])
        try:
            wrong_output = wrong.run()
        except ProgramError:
            continue
        value = parse_int_answer(wrong_output)
        # An integer >= 0 that differs: the twin must not give itself away by its output's form.
        if value is not None and value >= 0 and value != answer:
            return VerifyPair(question.strip(), answer, plan_text(solution), program, output, wrong, wrong_output, step)
    raise ProgramError("no perturbation gives a different non-negative integer")


def _prompt(pair: VerifyPair, plan: str, program: Program, output: str, bridge: str) -> str:
    first = fill(GSM8K_CODE_PROMPT, question=pair.question, plan=plan, code=program.source())
    return first + fill(BRIDGES[bridge], output=output)


def correct_completion(pair: VerifyPair) -> str:
    """Target for the correct example: a short check, then the boxed answer."""
    return (
        f"{ANALYSIS_START} every step matches the plan and the problem, so the output "
        f"{pair.output} is right.\n</think>\n\n\\boxed{{{pair.answer}}}"
    )


def wrong_completion(pair: VerifyPair) -> str:
    """Target for the wrong twin: the faulty line, then the start of a corrected code block."""
    bad = pair.wrong_program.lines()[pair.wrong_step]
    good = pair.program.lines()[pair.wrong_step]
    if pair.kind == "perturbed-code":
        why = f"the line `{bad}` does not match the problem: it should be `{good}`."
    else:
        reason = {"wrong-number": "takes a number from the wrong part of the problem",
                  "wrong-operation": "uses the wrong operation",
                  "unit-mix-up": "mixes up a unit or a rate"}.get(pair.kind, "misreads the problem")
        why = f"the line `{bad}` follows my plan, but the plan {reason}: it should be `{good}`."
    return (
        f"{ANALYSIS_START} {why} "
        f"So the output {pair.wrong_output} is wrong, and I will fix the code.\n</think>\n\n{CODE_BLOCK_START}\n"
    )


def pair_examples(pair: VerifyPair, tokenizer, bridge: str = "seed") -> tuple[Example, Example]:
    """(correct example, wrong twin) with token counts from `tokenizer`.

    bridge: a BRIDGES name. After "seed-prefill", which ends with the seed's pre-filled start of
    the analysis ("... Let me go through my code step by step.\n\nLooking at my code,"), the
    target completion is the rest of that sentence.
    """
    prefilled = BRIDGES[bridge].endswith(ANALYSIS_START)

    def example(prompt: str, completion: str, eventual: str, label: str) -> Example:
        if prefilled:
            completion = completion[len(ANALYSIS_START):]
        return Example(
            question=pair.question,
            prompt=prompt,
            completion=completion,
            correct_answer=str(pair.answer),
            eventual_answer=eventual,
            label=label,
            prompt_tokens=len(tokenizer(prompt, add_special_tokens=True)["input_ids"]),
            completion_tokens=len(tokenizer(completion, add_special_tokens=False)["input_ids"]),
            source=SOURCE,
        )

    return (
        example(_prompt(pair, pair.plan, pair.program, pair.output, bridge), correct_completion(pair),
                str(pair.answer), "correct"),
        example(
            _prompt(pair, pair.wrong_plan or pair.plan, pair.wrong_program, pair.wrong_output, bridge),
            wrong_completion(pair),
            str(parse_int_answer(pair.wrong_output)),
            "wrong",
        ),
    )


def read_gsm8k(path: str | Path) -> list[tuple[str, str]]:
    """(question, solution) pairs of a GSM8K JSONL file (fields `question`, `answer`)."""
    items = []
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise TirgrpoError(f"{path}, line {lineno}: must be a JSON object")
        for field in ("question", "answer"):
            if not isinstance(obj.get(field), str) or not obj[field].strip():
                raise TirgrpoError(f"{path}, line {lineno}, field {field!r}: missing or not a non-empty string")
            problem = text_problem(obj[field])  # before any tokenizing: a 50 MB field fails at once
            if problem:
                raise TirgrpoError(f"{path}, line {lineno}, field {field!r}: {problem}")
        items.append((obj["question"], obj["answer"]))
    return items


def question_key(question: str) -> str:
    """A question compared across files: lower case, whitespace collapsed."""
    return " ".join(question.lower().split())


def build_examples(
    items: Sequence[tuple[str, str]],
    tokenizer,
    limit: int | None = None,
    seed: int = 0,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    make=None,
    exclude: frozenset[str] = frozenset(),
    bridge: str = "seed",
) -> tuple[list[Example], dict[str, int]]:
    """Examples for up to `limit` questions (2 each: correct, then wrong), in an order shuffled by seed.

    make: the pair builder, `make_pair` (a wrong twin's code line contradicts its plan; the
    default) or `gsm8k_hard.make_hard_pair` (plan and code alike misread the question). exclude: questions to leave out (compared
    by `question_key`), e.g. those of a training file when building a held-out eval file.
    bridge: the text after the code's output, a BRIDGES name (`pair_examples`).
    Returns (examples, counts of questions used and skipped by reason, and of the twins by kind).
    """
    make = make or make_pair
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    examples: list[Example] = []
    counts = {"questions_seen": 0, "used": 0, "skipped_excluded": 0, "skipped_program": 0, "skipped_too_long": 0}
    for index in order:
        if limit is not None and counts["used"] >= limit:
            break
        counts["questions_seen"] += 1
        question, solution = items[index]
        if exclude and question_key(question) in exclude:
            counts["skipped_excluded"] += 1
            continue
        try:
            pair = make(question, solution, random.Random(f"{seed}\0{index}"))
        except ProgramError:
            counts["skipped_program"] += 1
            continue
        good, bad = pair_examples(pair, tokenizer, bridge)
        if max(good.prompt_tokens, bad.prompt_tokens) > max_prompt_tokens:
            counts["skipped_too_long"] += 1
            continue
        examples += [good, bad]
        counts["used"] += 1
        counts[f"kind:{pair.kind}"] = counts.get(f"kind:{pair.kind}", 0) + 1
    return examples, counts
