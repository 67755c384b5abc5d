"""Hard wrong twins for gsm8k-verify: the code agrees with its own plan, the plan misreads the question.

In the easy task (data/gsm8k.py) the wrong twin's code contradicts the plan written just above
it, so comparing the two lines is enough. Here one step of the solution is misread in the
plan *and* the code alike, and every later plan line is rewritten with the values the
misread program computes, so plan and code always agree; only reading the question shows
the mistake. Three kinds of misreading, all built from GSM8K's `<<expr=value>>` annotations:

- `wrong-number`: a number of the question replaced by a number from another sentence of
  the question (Janet's "four" muffin eggs become the "$2" of the next sentence);
- `wrong-operation`: one operator swapped in plan and code (+ <-> -, * -> + or /, / -> * or -);
- `unit-mix-up`: a conversion constant the solver brought in (60, 24, 7, 12, 100, ...)
  replaced by another one (minutes per hour <-> hours per day) or applied the wrong way
  (* 60 <-> / 60), or a percentage used as a plain number (0.15 -> 15 for "15%").

The plan of both twins is rendered the same way (each annotated expression written from
the program, earlier results as their values), so its form tells nothing. Labels are by
construction and checked: the wrong twin's program prints a non-negative integer that
differs from GSM8K's answer. A misreading is rejected when a number the plan states
outside its expressions is a result the misreading changed (that plan line would
contradict the code), when a number the misreading drops is stated elsewhere in the plan,
or when the misread step's expression is not written in the plan.
"""

from __future__ import annotations

import random
import re

from tirgrpo.data.gsm8k import (
    _ANNOTATION,
    _NUMBER,
    _REPEATED_WORD,
    Program,
    ProgramError,
    VerifyPair,
    _is_binary,
    _join,
    _number,
    _tokens,
    checked_answer,
    build_program,
)
from tirgrpo.data.records import parse_int_answer

KINDS = ("wrong-number", "wrong-operation", "unit-mix-up")

_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_WORDS.update({"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "hundred": 100, "dozen": 12})
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)
# Conversion constants and the ones a solver could confuse them with.
UNIT_SIBLINGS = {60: (24, 100), 24: (60, 12), 7: (30, 5), 30: (7, 31), 12: (52, 10), 52: (12, 365), 365: (52, 12),
                 100: (1000, 10), 1000: (100, 60)}
_SWAPS = {"+": ("-",), "-": ("+",), "*": ("+", "/"), "/": ("*", "-")}
# An annotation with the result the solution repeats after it: "<<48/2=24>>24".
_ANNOTATION_TAIL = re.compile(r"<<[^<>]*>>\$?(?:\d[\d,]*(?:\.\d+)?)?")
_MARK = re.compile(r"\{E(\d+)\}")


# ----------------------------------------------------------------------------- the question's numbers


def question_numbers(question: str) -> list[tuple[float, int]]:
    """(value, sentence index) of every number in the question, digits and number words ("four", "dozen")."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", question.strip()) if s]
    out = []
    for i, s in enumerate(sentences):
        out += [(float(n.replace(",", "")), i) for n in _NUMBER.findall(s)]
        out += [(float(_WORDS[w.lower()]), i) for w in _WORD.findall(s)]
    return out


def _fmt_value(v: float) -> str:
    """A number as a plan or program writes it: 24 for 24.0, 0.2 for 0.2."""
    if float(v).is_integer():
        return str(int(v))
    return f"{v:.6f}".rstrip("0").rstrip(".")


# ----------------------------------------------------------------------------- the plan


_TEXT_TOKEN = re.compile(r"\s*(?:(\d[\d,]*(?:\.\d+)?|\.\d+)|([A-Za-z]+(?:/[A-Za-z]+)*)|([-+*/×÷()])|(\S))")
_SAME_OP = {"*": ("*", "×", "x", "X"), "/": ("/", "÷")}
MAX_UNIT_WORDS = 3


def _text_tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, start) of `text`: num, word (units like `miles/train` are one word), op or other."""
    out = []
    for m in _TEXT_TOKEN.finditer(text):
        kind = ("num", "word", "op", "other")[m.lastindex - 1]
        out.append((kind, m.group(m.lastindex), m.start(m.lastindex)))
    return out


def _expression_start(before: str, expr: str) -> int | None:
    """Where the text `before` (ending just before an annotation) writes `expr`, or None.

    Matches the annotation's numbers (by value: `80,000` is 80000) and operators backwards
    from the end of `before`; `x` and `×` match `*`, `÷` matches `/`, `$` is skipped, and up
    to MAX_UNIT_WORDS words after a number are its units (`2 trains * 80 miles/train`).
    """
    text = before.rstrip(" =$")
    toks = _text_tokens(text)
    want = _tokens(expr.replace(",", ""))
    i, k, words, start = len(toks) - 1, len(want) - 1, 0, None
    while k >= 0:
        if i < 0:
            return None
        kind, t, pos = toks[i]
        wkind, wt = want[k]
        if kind == "num" and wkind == "num" and float(t.replace(",", "")) == float(wt):
            matched = True
        elif wkind == "op" and kind in ("op", "word") and t in _SAME_OP.get(wt, (wt,)):
            matched = True
        elif t == "$" or (kind == "word" and wkind == "num" and words < MAX_UNIT_WORDS):
            words += kind == "word"
            i -= 1
            continue
        else:
            return None
        if matched:
            start, words, i, k = pos, 0, i - 1, k - 1
    return start


def plan_template(solution: str) -> tuple[list[str], set[int]]:
    """The plan's lines with `{E<k>}` where step k's expression is written, and those steps' indices.

    Steps whose expression the text does not write (e.g. "<<3*4=12>>12 apples") lose the
    annotation and its repeated result, as in the easy plan.
    """
    lines, written, k = [], set(), 0
    for line in solution.split("\n"):
        if line.startswith("####"):
            continue
        out, cursor = "", 0
        for m in _ANNOTATION.finditer(line):
            tail = _ANNOTATION_TAIL.match(line, m.start())
            start = _expression_start(line[cursor:m.start()], m.group(1))
            if start is None:
                out += line[cursor:m.start()].rstrip(" =$")
            else:
                out += line[cursor:cursor + start] + f"{{E{k}}}"
                written.add(k)
            cursor, k = tail.end(), k + 1
        out = _REPEATED_WORD.sub(r"\1", (out + line[cursor:]).strip())
        if out:
            lines.append(f"- {out}")
    return lines, written


def render_plan(template: list[str], program: Program) -> str:
    """The plan with each `{E<k>}` replaced by step k's expression, earlier steps written as their values."""
    values = dict(zip(program.names, program.values()))

    def expr(m: re.Match) -> str:
        tokens = [("num", _fmt_value(values[t])) if kind == "name" else (kind, t)
                  for kind, t in _tokens(program.exprs[int(m.group(1))])]
        return _join(tokens)

    return "\n".join(_MARK.sub(expr, line) for line in template)


# ----------------------------------------------------------------------------- misreadings


def misreadings(program: Program, question: str) -> list[tuple[str, int, str]]:
    """Every candidate misreading of the program: (kind, step index, new expression)."""
    numbers = question_numbers(question)
    given = {v for v, _ in numbers}
    percents = {float(p) / 100 for p in re.findall(r"(\d+(?:\.\d+)?)\s*%", question)}
    out = []
    for i, expr in enumerate(program.exprs):
        tokens = _tokens(expr)

        def variant(kind: str, j: int, text: str, *more: tuple[int, str]) -> None:
            changed = list(tokens)
            changed[j] = (changed[j][0], text)
            for jj, tt in more:
                changed[jj] = (changed[jj][0], tt)
            out.append((kind, i, _join(changed)))

        for j, (kind, text) in enumerate(tokens):
            if _is_binary(tokens, j):
                for new in _SWAPS[text]:
                    variant("wrong-operation", j, new)
                continue
            if kind != "num":
                continue
            value = float(_number(text))
            if value in given:
                home = {s for v, s in numbers if v == value}
                others = sorted({v for v, s in numbers if s not in home and v != value and v > 0})
                for new in others:
                    variant("wrong-number", j, _fmt_value(new))
            elif value in UNIT_SIBLINGS:
                for new in UNIT_SIBLINGS[value]:
                    variant("unit-mix-up", j, str(new))
                if j > 0 and tokens[j - 1][1] in ("*", "/") and _is_binary(tokens, j - 1):
                    flipped = "/" if tokens[j - 1][1] == "*" else "*"
                    variant("unit-mix-up", j - 1, flipped)
            elif value in percents:
                variant("unit-mix-up", j, _fmt_value(value * 100))
    return out


def _numbers(expr: str) -> set[float]:
    return {float(t) for kind, t in _tokens(expr) if kind == "num"}


def make_hard_pair(question: str, solution: str, rng: random.Random) -> VerifyPair:
    """The correct example and a hard wrong twin for one GSM8K item; ProgramError if none works.

    The kind of misreading is drawn first (so the kinds mix over a data set), then a
    candidate of that kind; other kinds are tried when none of the drawn kind works.
    """
    answer = checked_answer(solution)
    program = build_program(solution, question)
    output = program.run()
    if parse_int_answer(output) != answer:
        raise ProgramError(f"program prints {output}, GSM8K answer is {answer}")
    template, written = plan_template(solution)
    # Numbers the plan states outside its rendered expressions must not be results a misreading changes.
    # (A number of the question is a given, not a result.)
    given = {v for v, _ in question_numbers(question)}
    free = {float(n.replace(",", "")) for line in template for n in _NUMBER.findall(_MARK.sub("", line))}
    stated = free - given
    old_values = program.values()
    candidates = misreadings(program, question)
    rng.shuffle(candidates)
    kinds = list(KINDS)
    rng.shuffle(kinds)
    candidates.sort(key=lambda c: kinds.index(c[0]))
    for kind, step, expr in candidates:
        # The misread step must be written in the plan, and a number it drops must not be
        # stated elsewhere in the plan ("for all 7 days" above `2 * 30`).
        if step not in written or _numbers(program.exprs[step]) - _numbers(expr) & free:
            continue
        wrong = Program(program.names, program.exprs[:step] + (expr,) + program.exprs[step + 1:])
        try:
            wrong_output = wrong.run()
            new_values = wrong.values()
        except ProgramError:
            continue
        value = parse_int_answer(wrong_output)
        if value is None or value < 0 or value == answer:
            continue
        changed = [(o, n) for o, n in zip(old_values, new_values) if o != n]
        if any(o in stated for o, _ in changed):
            continue
        # A result that turns zero or negative, or an output printed in another form (42 vs
        # 42.0) than the right one, would give the twin away without reading the question.
        if any(n <= 0 for _, n in changed) or ("." in wrong_output) != ("." in output):
            continue
        return VerifyPair(question.strip(), answer, render_plan(template, program), program, output, wrong,
                          wrong_output, step, wrong_plan=render_plan(template, wrong), kind=kind)
    raise ProgramError("no misreading gives a different non-negative integer")
