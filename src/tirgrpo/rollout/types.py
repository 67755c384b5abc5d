"""What a rollout returns, and how it samples."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy."""

    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    min_new_tokens: int = 0
    """Forbid eos (and ignore stop strings) before this many tokens: for benchmarks."""


@dataclass
class Completion:
    """One sampled continuation of a prompt.

    `text` ends where the stop string began (the stop string is not in it, as in vLLM),
    but `finish_reason`/`stop` record why generation ended, so a decline is never judged
    from stripped text. `token_ids` are every sampled token, including the eos or the
    tokens that spelled the stop string: they are what the policy is trained on.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    """log p(token) under the temperature-scaled distribution the token was sampled from (nats)."""
    finish_reason: str
    """`eos`, `stop` or `length`."""
    stop: str | None = None
    """The stop string that ended generation (finish_reason == "stop")."""
