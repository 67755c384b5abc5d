"""Which completion tokens carry a completion's advantage (`grpo.credit`).

With `credit = "all_tokens"` (plain GRPO) every token of a completion is pushed by its
advantage. A judge's completion is a free analysis followed by a decision of a few tokens
(`\\boxed{N}` or an opened code block); the reward depends on the decision alone, so most
of that push lands on analysis text the reward did not look at, and the few tokens that
made the decision get a small share of it (1 in 60 for a 60-token decline under a token
mean). `credit = "decision"` gives the advantage to the decision's tokens only: from where
the decision begins to the end of the completion. A completion without a decision
(invalid) keeps credit on every token, so the format is still learned.
"""

from __future__ import annotations

from typing import Callable

from tirgrpo.config import CREDITS
from tirgrpo.score.rewards import CODE_FENCE, boxed_spans


def decision_start(text: str, decision: str) -> int | None:
    """Character index in `text` where the decision begins, or None (invalid: no decision).

    submit: the last non-empty `\\boxed{` before any python block (the one `decide` read).
    decline: the python fence in the text, or len(text) when generation stopped on it (the
    stop string is stripped from the text but its tokens follow it).
    """
    fence = text.find(CODE_FENCE)
    if decision == "decline":
        return fence if fence >= 0 else len(text)
    if decision != "submit":
        return None
    before_code = text if fence < 0 else text[:fence]
    starts = [start for start, content in boxed_spans(before_code) if content.strip()]
    return starts[-1] if starts else None


def first_token_at(token_ids: list[int], char_index: int, decode: Callable[[list[int]], str]) -> int:
    """The first token whose text reaches past `char_index`: the smallest t with
    len(decode(token_ids[:t + 1])) > char_index (len(token_ids) if none).

    A binary search over prefixes (log2(T) decodes), since a token's own decoded text can
    differ from its share of the whole (byte-level tokens of one character).
    """
    lo, hi = 0, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(decode(token_ids[: mid + 1])) > char_index:
            hi = mid
        else:
            lo = mid + 1
    return lo


def credit_weights(text: str, token_ids: list[int], decision: str, credit: str,
                   decode: Callable[[list[int]], str]) -> list[float]:
    """[len(token_ids)] 0/1: the tokens that carry this completion's advantage.

    all_tokens: every token. decision: from the token where the decision begins to the end;
    every token when there is no decision (invalid) or it cannot be located.
    """
    if credit not in CREDITS:
        raise ValueError(f"credit must be one of {CREDITS}, got {credit!r}")
    n = len(token_ids)
    start = decision_start(text, decision) if credit == "decision" else None
    if start is None:
        return [1.0] * n
    first = first_token_at(token_ids, start, decode)
    if first >= n:
        return [1.0] * n
    return [0.0] * first + [1.0] * (n - first)


def completion_credits(completions: list, decisions: list[str], credit: str, tokenizer) -> list[list[float]] | None:
    """`credit_weights` of each completion (`rollout.types.Completion`: text, token_ids), or
    None for `all_tokens` (nothing to compute: the loss credits every token)."""
    if credit == "all_tokens":
        return None

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False)

    return [credit_weights(c.text, c.token_ids, d, credit, decode) for c, d in zip(completions, decisions)]
