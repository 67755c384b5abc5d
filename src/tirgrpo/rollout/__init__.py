"""Rollout: sampling G completions per prompt from the policy.

The trainer talks to an engine through one method,
`engine.generate(prompt_ids, group_size, params, generator) -> list[list[Completion]]`.
`simple.SimpleEngine` is a plain, correct loop over a `transformers` model's KV cache;
`engine.FastEngine` (the default, `system.engine = "fast"`) stores each prompt's keys and
values once per group in a static cache and decodes in CUDA graphs. `continuous` runs the
fast engine's decode step with requests joining and leaving (`tirgrpo serve`).
"""

from tirgrpo.rollout.types import Completion, SamplingParams

__all__ = ["Completion", "SamplingParams"]
