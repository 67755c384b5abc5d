"""Stop strings matched on decoded text, across token boundaries."""

from __future__ import annotations


class StopMatcher:
    """Finds the first stop string in a growing sequence of tokens.

    Only the last few tokens are decoded at each step (enough to hold the longest stop
    string even when every token is one byte, as byte-level tokens of a multi-byte
    character are, plus a margin), so the cost per step does not grow with the length.
    """

    def __init__(self, tokenizer, stops: list[str], margin_tokens: int = 4):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.window = max((len(s.encode("utf-8")) for s in self.stops), default=0) + margin_tokens

    def hit(self, token_ids: list[int]) -> str | None:
        """The stop string that the tail of `token_ids` contains, if any."""
        if not self.stops:
            return None
        tail = self.tokenizer.decode(token_ids[-self.window :], skip_special_tokens=False)
        for s in self.stops:
            if s in tail:
                return s
        return None

    def cut(self, text: str) -> tuple[str, str | None]:
        """Text before the earliest stop string, and that string (or the text and None)."""
        best = None
        for s in self.stops:
            i = text.find(s)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return text, None
        return text[: best[0]], best[1]
