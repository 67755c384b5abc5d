"""Per-sequence bookkeeping shared by the rollout engines."""

from __future__ import annotations

import torch

from tirgrpo.rollout.stops import StopMatcher
from tirgrpo.rollout.types import Completion, SamplingParams


class SequenceTracker:
    """Sampled tokens, their log-probs, and why each of `n` sequences stopped.

    The engines differ in how they lay sequences out in cache rows; both hand each step's
    sampled tokens here, row by row, with the sequence each row holds.
    """

    def __init__(self, n: int, tokenizer, params: SamplingParams, eos: set[int]):
        self.tokenizer, self.params, self.eos = tokenizer, params, eos
        self.eos_list = sorted(eos)
        self.matcher = StopMatcher(tokenizer, params.stop)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.logps: list[list[float]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.stop_hit: list[str | None] = [None] * n

    def forbid_eos(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """Logits [B, V] with eos masked out while step < min_new_tokens (benchmarks force lengths)."""
        if step < self.params.min_new_tokens and self.eos_list:
            logits = logits.clone()
            logits[:, self.eos_list] = float("-inf")
        return logits

    def live(self, seq: int | None) -> bool:
        return seq is not None and self.finish[seq] is None

    def record(self, step: int, row_seq: list[int | None], new: list[int], logp: list[float]) -> None:
        """Append row r's token to sequence row_seq[r] (skipping padding and finished rows)."""
        for r, seq in enumerate(row_seq):
            if not self.live(seq):
                continue
            self.tokens[seq].append(new[r])
            self.logps[seq].append(logp[r])
            if new[r] in self.eos:
                self.finish[seq] = "eos"
            elif step + 1 >= self.params.min_new_tokens and (s := self.matcher.hit(self.tokens[seq])) is not None:
                self.finish[seq], self.stop_hit[seq] = "stop", s
            elif len(self.tokens[seq]) >= self.params.max_new_tokens:
                self.finish[seq] = "length"

    def all_done(self) -> bool:
        return all(f is not None for f in self.finish)

    def completions(self) -> list[Completion]:
        """One Completion per sequence: text without eos and cut before a stop string."""
        out = []
        for ids, logps, finish, stop in zip(self.tokens, self.logps, self.finish, self.stop_hit):
            body = ids[:-1] if finish == "eos" else ids
            text = self.tokenizer.decode(body, skip_special_tokens=False)
            if finish == "stop":
                text, _ = self.matcher.cut(text)
            out.append(Completion(text, ids, logps, finish or "length", stop))
        return out
