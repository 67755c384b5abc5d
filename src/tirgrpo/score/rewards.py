"""Reward functions over completions: the `seed` set (the original formulas) and the `default` set.

Every reward has the same signature, `fn(c: RewardInput, ctx: RewardContext) -> float`: `c`
holds the completion text and the facts of how generation ended, `ctx` the tokenizer, the
`RewardConfig` and the optimizer step. The trainer calls `score_records`, which mixes the
rewards with the curriculum (or fixed) weights. Formulas and decision rules: docs/rewards.md.

Why two sets. The original rollout stopped generation at "```python" and the engine stripped
that string from the text; its validity check then searched the text for "```python", so
every decline scored as invalid (-1.5) while a wrong submission scored -1, and "always
submit" was optimal. `seed` reproduces that exactly (for comparison); `default` decides from
`finish_reason`/`stop`, which the rollout records, and compares answers as integers.
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from tirgrpo.config import BUILTIN_REWARDS, RewardConfig
from tirgrpo.errors import TirgrpoError

THINK_END = "</think>"
CODE_FENCE = "```python"
"""Opening a python block is how the model declines to answer; it is also the stop string."""
FINISH_REASONS = ("eos", "stop", "length")
DECISIONS = ("submit", "decline", "invalid")

# The seed's length targets, in tokens (bos included), and its formatting target, in characters.
PREFERRED_THINK_TOKENS = 246
PREFERRED_ALL_TOKENS = 256
PREFERRED_PARAGRAPH_CHARS = 100
INVALID_PENALTY = 1.0
"""Subtracted from length and formatting (and, in `seed`, correctness) when not valid."""


@dataclass(frozen=True)
class RewardInput:
    """One completion to score, with the facts of how its generation ended."""

    text: str
    """The generated text; when generation hit a stop string, it ends where that string began."""
    correct_answer: Any = None
    """The problem's answer (an integer, or its text)."""
    finish_reason: str | None = None
    """`eos`, `stop` (a stop string matched), `length` (truncated), or None for old data
    that did not record it (then the decision is judged from the text alone)."""
    stop: str | None = None
    """The stop string that matched when finish_reason is `stop`."""
    eventual_answer: Any = None
    """The transcript's own answer (what its code printed), when known: with
    `rewards.judge_only`, a submission must box this one."""
    label: str | None = None
    """The example's label, `correct` or `wrong` (`data.records.label_for`), when known: a
    decline of a `wrong` example is paid `rewards.decline_wrong`."""


@dataclass(frozen=True)
class RewardContext:
    """What a reward may need beyond the completion."""

    tokenizer: Any
    """Anything with `encode(text) -> list[int]` (prepending bos as the model's tokenizer does)."""
    config: RewardConfig
    step: int = 0
    """Optimizer step k."""
    total_steps: int = 1
    """K, the optimizer steps in the run."""


RewardFn = Callable[[RewardInput, RewardContext], float]


# --------------------------------------------------------------------------- shared formulas


def length_preference(L: float, preferred: float, ceiling: float = 1.0, scaling: float = 1.0) -> float:
    """min(e*x*exp(-x), ceiling) ** scaling / ceiling with x = L / preferred; 1 at L == preferred.

    Unitless; L and preferred in the same unit (tokens or characters). 0 at L = 0.
    """
    x = L / preferred
    return min(math.e * x * math.exp(-x), ceiling) ** scaling / ceiling


def _encode(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.encode(text)
    # A bare `tokenizers.Tokenizer` returns an Encoding object, a transformers tokenizer a list.
    return list(getattr(ids, "ids", ids))


def token_counts(text: str, tokenizer: Any) -> tuple[int, int]:
    """(T_think, T_all) in tokens, the text encoded as the original did (bos included).

    T_all is the length of `encode(text)`. T_think is the token count of `encode(text
    before the first "</think>")`, 0 if there is no "</think>". With the R1-Distill tokenizer,
    where "</think>" is one added token (151649) that splits the text before BPE runs, this
    equals the original definition (the position of that token in `encode(text)`); the text
    form also works for tokenizers that spell "</think>" with several tokens (SmolLM2).
    """
    t_all = len(_encode(tokenizer, text))
    i = text.find(THINK_END)
    t_think = len(_encode(tokenizer, text[:i])) if i >= 0 else 0
    return t_think, t_all


def length_value(t_think: int, t_all: int, valid: bool) -> float:
    """0.5*lp(T_think, 246) + 0.5*lp(T_all, 256) (scaling 0.95), minus 1 if not valid. Range [-1, 1]."""
    score = 0.5 * length_preference(t_think, PREFERRED_THINK_TOKENS, scaling=0.95)
    score += 0.5 * length_preference(t_all, PREFERRED_ALL_TOKENS, scaling=0.95)
    return score - (0.0 if valid else INVALID_PENALTY)


def formatting_value(text: str, valid: bool) -> float:
    """Paragraph-length score of the thinking part, minus 1 if not valid. Range [-1, 1].

    The text before the first "</think>" (stripped), or the whole text as is when there is
    none, split on blank lines; each paragraph of len_i characters (Unicode code points)
    scores s_i = lp(len_i, 100, scaling=0.9) and the result is the weighted mean
    (1 + sum(s_i*len_i + 100*s_i)) / (1 + sum(len_i + 100)): long paragraphs weigh more, and
    the +100 keeps many short ones from being free.
    """
    i = text.find(THINK_END)
    body = text[:i].strip() if i >= 0 else text
    num = den = 1.0
    for paragraph in body.split("\n\n"):
        n = len(paragraph)
        s = length_preference(n, PREFERRED_PARAGRAPH_CHARS, scaling=0.90)
        num += s * n + PREFERRED_PARAGRAPH_CHARS * s
        den += n + PREFERRED_PARAGRAPH_CHARS
    return num / den - (0.0 if valid else INVALID_PENALTY)


# --------------------------------------------------------------------------- the seed set

SEED_BOXED = re.compile(r"\\boxed\{(.*?)\}")


def seed_valid(text: str) -> bool:
    """The original check: "</think>" present and exactly one of "oxed{" / "```python" in the text."""
    return THINK_END in text and (("oxed{" in text) != (CODE_FENCE in text))


def seed_decision(text: str) -> str:
    """What the seed rewards treat the completion as: invalid unless `seed_valid`, else submit/decline."""
    if not seed_valid(text):
        return "invalid"
    return "submit" if "oxed{" in text else "decline"


def seed_length(c: RewardInput, ctx: RewardContext) -> float:
    """The original length reward (tokens, bos included)."""
    return length_value(*token_counts(c.text, ctx.tokenizer), seed_valid(c.text))


def seed_formatting(c: RewardInput, ctx: RewardContext) -> float:
    """The original formatting reward."""
    return formatting_value(c.text, seed_valid(c.text))


def seed_correctness(c: RewardInput, ctx: RewardContext) -> float:
    """The original correctness reward, in [-2, 1].

    -1 if not `seed_valid`, plus: first lazy-regex boxed == str(correct_answer) -> +1, != -> -1;
    no boxed and no "```python" -> -0.5; no boxed but "```python" (a decline) -> 0.
    A stop-stripped decline has neither, so it scores -1 - 0.5 = -1.5.
    """
    score = 0.0 if seed_valid(c.text) else -INVALID_PENALTY
    m = SEED_BOXED.search(c.text)
    if m is None:
        return score + (0.0 if CODE_FENCE in c.text else -0.5)
    return score + (1.0 if m.group(1) == str(c.correct_answer) else -1.0)


# --------------------------------------------------------------------------- the default set


def boxed_spans(text: str) -> list[tuple[int, str]]:
    r"""(start, content) of every complete `\boxed{...}` in `text`, in order, braces matched:
    `start` is the index of its backslash.

    A brace-matching scan, so `\boxed{\frac{1}{2}}` gives `\frac{1}{2}` (a lazy regex would
    stop at the first "}"). A box whose braces never close (truncated text) is skipped.
    """
    out: list[tuple[int, str]] = []
    opener = "\\boxed{"
    start = text.find(opener)
    while start >= 0:
        i = start + len(opener)
        depth = 1
        j = i
        while j < len(text) and depth:
            ch = text[j]
            if ch == "\\" and j + 1 < len(text):
                j += 2  # an escaped character (`\{`, `\}`) is not a brace
                continue
            depth += ch == "{"
            depth -= ch == "}"
            j += 1
        if depth == 0:
            out.append((start, text[i : j - 1]))
        start = text.find(opener, start + len(opener))
    return out


def boxed_contents(text: str) -> list[str]:
    r"""Contents of every complete `\boxed{...}` in `text`, in order (`boxed_spans`)."""
    return [content for _, content in boxed_spans(text)]


def last_boxed(text: str) -> str | None:
    """The last non-empty boxed answer in `text` (stripped), as the evaluation harness takes it."""
    for content in reversed(boxed_contents(text)):
        if content.strip():
            return content.strip()
    return None


# Whole-string wrappers that do not change an integer: \textbf{250}, $250$, {250}...
_WRAPPERS = re.compile(r"^\\(?:textbf|mathbf|text|mathrm|boxed|bf)\s*\{(.*)\}$|^\{(.*)\}$", re.S)
_MATH_DELIMS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_INTEGER = re.compile(r"^[+-]?[0-9]+(?:\.0*)?$")
_THOUSANDS = re.compile(r"^[+-]?[0-9]{1,3}(?:,[0-9]{3})+(?:\.0*)?$")


def _unwrap(s: str) -> str:
    """Peel math delimiters and formatting wrappers until none is left."""
    while True:
        s = s.strip()
        for left, right in _MATH_DELIMS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)]
                break
        else:
            m = _WRAPPERS.match(s)
            if m is None:
                return s
            inner = m.group(1) if m.group(1) is not None else m.group(2)
            # Only when the wrapper spans the whole string: "{1}{2}" matches `{(.*)}` but
            # its inside "1}{2" is not balanced, so it stays as is.
            if not _balanced(inner):
                return s
            s = inner


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def parse_integer_answer(text: Any) -> int | None:
    r"""The integer an answer states, or None when it states no plain integer.

    Accepted: "250", " 250 ", "250.0", "+250", "-5" (negatives parse; AIMO answers are 0-999, so
    they simply compare unequal), wrapped in `$..$`, `\(..\)`, `{..}`, `\textbf{..}`,
    `\text{..}`, `\mathbf{..}`, `\mathrm{..}`, and thousands separators in the standard
    grouping: "1,000", "1{,}000", "1\,000" -> 1000 ("1,00" is None). The Unicode minus "−"
    is a minus. Digits are ASCII 0-9 (a full-width "７" is not read). Python ints and integral
    floats pass through.
    Not accepted (None; a submitted None is a wrong answer): expressions such as "10^3",
    "2\cdot 5", fractions "1/2", "\frac{4}{2}" (even when integral), "2.5", "1e3", and
    anything with words or units ("250 ways"): the judge must state the number.
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        return int(text) if text.is_integer() else None
    if not isinstance(text, str):
        return None
    s = _unwrap(text).replace("−", "-")
    s = s.replace("{,}", ",").replace("\\,", ",")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if not _INTEGER.match(s) or len(s) > 40:  # no answer has 40 digits; int() refuses > 4,300
        return None
    return int(s.split(".")[0])


def decide(text: str, finish_reason: str | None = None, stop: str | None = None) -> str:
    """`submit`, `decline` or `invalid`, from how generation ended and what came first.

    - `length` (truncated) -> invalid, whatever the text holds.
    - A non-empty boxed answer before any python block (text before the first "```python")
      -> submit.
    - Otherwise, generation stopped on the "```python" stop string (finish_reason `stop`,
      stop "```python"; the string itself was stripped from the text), or the text opens a
      python block -> decline.
    - Otherwise (eos or another stop string with neither) -> invalid.
    finish_reason None (old data): judged from the text alone, so a decline whose stop string
    was stripped cannot be told from a non-answer and is invalid; record finish_reason.
    finish_reason `stop` with stop None (vLLM's report of an eos) reads as eos.
    """
    if finish_reason == "length":
        return "invalid"
    fence = text.find(CODE_FENCE)
    before_code = text if fence < 0 else text[:fence]
    if last_boxed(before_code) is not None:
        return "submit"
    if (finish_reason == "stop" and stop == CODE_FENCE) or fence >= 0:
        return "decline"
    return "invalid"


def submitted_answer(c: RewardInput) -> int | None:
    """The integer of the last non-empty boxed answer before any python block, or None."""
    fence = c.text.find(CODE_FENCE)
    boxed = last_boxed(c.text if fence < 0 else c.text[:fence])
    return None if boxed is None else parse_integer_answer(boxed)


def _decision(c: RewardInput) -> str:
    return decide(c.text, c.finish_reason, c.stop)


def judged_decision(c: RewardInput, cfg: RewardConfig) -> str:
    """`decide`, except that with `cfg.judge_only` a submission whose boxed answer is not the
    transcript's own (`c.eventual_answer`) is `invalid`: the judge may accept or decline the
    code's output, not replace it with an answer of its own."""
    decision = _decision(c)
    if decision == "submit" and cfg.judge_only and c.eventual_answer is not None:
        if submitted_answer(c) != parse_integer_answer(c.eventual_answer):
            return "invalid"
    return decision


def default_length(c: RewardInput, ctx: RewardContext) -> float:
    """The seed's length shape; the -1 applies when the decision is invalid (`judged_decision`:
    with judge_only, boxing an answer other than the code's output is invalid too)."""
    return length_value(*token_counts(c.text, ctx.tokenizer), judged_decision(c, ctx.config) != "invalid")


def default_formatting(c: RewardInput, ctx: RewardContext) -> float:
    """The seed's formatting shape; the -1 applies when the decision is invalid (`judged_decision`)."""
    return formatting_value(c.text, judged_decision(c, ctx.config) != "invalid")


def default_correctness(c: RewardInput, ctx: RewardContext) -> float:
    """Submit right / wrong, decline, invalid: the RewardConfig constants (+1, -1, 0, -1).

    With these, a perfect judge on balanced right/wrong pairs earns 0.5 per completion, and
    always-decline or a coin flip earn 0, so submitting is worth it only when right.
    """
    cfg = ctx.config
    decision = judged_decision(c, cfg)
    if decision == "invalid":
        return cfg.invalid
    if decision == "decline":
        return cfg.decline_wrong if c.label == "wrong" else cfg.decline
    answer = submitted_answer(c)
    right = answer is not None and answer == parse_integer_answer(c.correct_answer)
    return cfg.submit_correct if right else cfg.submit_wrong


# --------------------------------------------------------------------------- registry

REWARD_SETS: dict[str, dict[str, RewardFn]] = {
    "seed": {"length": seed_length, "formatting": seed_formatting, "correctness": seed_correctness},
    "default": {"length": default_length, "formatting": default_formatting, "correctness": default_correctness},
}


def register_reward(name: str, fn: RewardFn, reward_set: str = "default") -> None:
    """Add (or replace) a reward in a set of this process; a user module can call this."""
    REWARD_SETS.setdefault(reward_set, {})[name] = fn


def get_reward(name: str, reward_set: str = "default") -> RewardFn:
    """The reward `name` of `reward_set`, or `module:function` imported from the user's code."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise TirgrpoError(f"reward {name!r}: cannot import module {module_name!r} ({e})") from None
        fn = module
        for part in attr.split("."):
            fn = getattr(fn, part, None)
        if not callable(fn):
            raise TirgrpoError(f"reward {name!r}: module {module_name!r} has no function {attr!r}")
        return fn
    if reward_set not in REWARD_SETS:
        raise TirgrpoError(f"unknown reward set {reward_set!r}; known: {sorted(REWARD_SETS)}")
    rewards = REWARD_SETS[reward_set]
    if name not in rewards:
        raise TirgrpoError(
            f"unknown reward {name!r} in set {reward_set!r}; known: {sorted(rewards)} or module:function"
        )
    return rewards[name]


def reward_weights(cfg: RewardConfig, step: int, total_steps: int) -> dict[str, float]:
    """The weight of each reward at optimizer step `step` of `total_steps`.

    Curriculum on: length/formatting/correctness follow the schedule, and any other name in
    `cfg.weights` (a user's reward) is added with its fixed weight. Curriculum off: `cfg.weights`.
    """
    from tirgrpo.score.schedule import curriculum_weights

    cfg.check()  # loaded configs passed it already; one built in code gets the same errors here
    if not cfg.curriculum:
        return dict(cfg.weights)
    return {**curriculum_weights(step, total_steps), **cfg.weights}


def record_problem(record: Any, reward_set: str = "default") -> str | None:
    """What is wrong with an input record (naming the field), or None if it can be scored."""
    if not isinstance(record, dict):
        return f"expected an object with 'completion' and 'correct_answer', got {type(record).__name__}"
    text = record.get("completion")
    if not isinstance(text, str):
        return f"field 'completion' must be a string, got {text!r:.80}"
    if "correct_answer" not in record:
        return "field 'correct_answer' is missing"
    answer = record["correct_answer"]
    if reward_set == "default" and parse_integer_answer(answer) is None:
        return f"field 'correct_answer' must be an integer (the default set compares integers), got {answer!r:.80}"
    finish_reason = record.get("finish_reason")
    if finish_reason is not None and finish_reason not in FINISH_REASONS:
        return f"field 'finish_reason' must be one of {', '.join(FINISH_REASONS)} or null, got {finish_reason!r:.80}"
    stop = record.get("stop")
    if stop is not None and not isinstance(stop, str):
        return f"field 'stop' must be a string or null, got {stop!r:.80}"
    label = record.get("label")
    if label is not None and label not in ("correct", "wrong"):
        return f"field 'label' must be 'correct', 'wrong' or null, got {label!r:.80}"
    return None


def score_records(
    records: list[dict], cfg: RewardConfig, tokenizer: Any, step: int, total_steps: int
) -> list[dict]:
    """Score each record (`completion`, `correct_answer`, optional `finish_reason`, `stop`).

    Returns one dict per record: `valid`, `decision`, `length`, `formatting`, `correctness`,
    `w_length`, `w_formatting`, `w_correctness`, `total` (= sum of weight * value), plus the
    value and `w_`-weight of every other reward that the weights name.
    """
    weights = reward_weights(cfg, step, total_steps)
    names = list(BUILTIN_REWARDS) + [n for n in weights if n not in BUILTIN_REWARDS]
    fns = {n: get_reward(n, cfg.set) for n in names}
    ctx = RewardContext(tokenizer=tokenizer, config=cfg, step=step, total_steps=total_steps)
    out = []
    for i, record in enumerate(records):
        problem = record_problem(record, cfg.set)
        if problem:
            raise TirgrpoError(f"record {i}: {problem}")
        c = RewardInput(record["completion"], record["correct_answer"], record.get("finish_reason"), record.get("stop"),
                        record.get("eventual_answer"), record.get("label"))
        decision = seed_decision(c.text) if cfg.set == "seed" else judged_decision(c, cfg)
        row: dict[str, Any] = {"valid": decision != "invalid", "decision": decision}
        for n in names:
            value = float(fns[n](c, ctx))
            if not math.isfinite(value):
                raise TirgrpoError(f"record {i}: reward {n!r} returned {value}")
            row[n] = value
        total = 0.0
        for n in names:
            w = float(weights.get(n, 0.0))
            row[f"w_{n}"] = w
            total += w * row[n]
        row["total"] = total
        out.append(row)
    return out
