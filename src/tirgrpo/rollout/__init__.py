"""Rollout: sampling G completions per prompt from the policy.

The trainer talks to an engine through one method,
`engine.generate(prompt_ids, group_size, params, generator) -> list[list[Completion]]`.
`simple.SimpleEngine` is a plain, correct loop over a `transformers` model's KV cache.
"""

from tirgrpo.rollout.types import Completion, SamplingParams

__all__ = ["Completion", "SamplingParams"]
