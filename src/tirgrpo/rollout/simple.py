"""A plain, correct generation loop over a `transformers` model's KV cache.

The distinct prompts of a batch are left-padded and prefilled once; the cache is then
repeated G times (one copy per sample of the group), so a 3k-token prompt costs one
prefill, not G. Decoding goes one token per step with sampling on the device. A finished
row keeps being fed padding until the whole batch is done (the fast engine stops paying
for finished rows).
"""

from __future__ import annotations

import torch

from tirgrpo.rollout.sampling import sample_next
from tirgrpo.rollout.tracker import SequenceTracker
from tirgrpo.rollout.types import Completion, SamplingParams


def eos_ids(model, tokenizer) -> set[int]:
    """Token ids that end a completion: the tokenizer's eos and the model's generation eos."""
    ids: set[int] = set()
    for source in (tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.eos_token_id is not None:
        e = gen.eos_token_id
        ids.update([e] if isinstance(e, int) else e)
    return ids


class SimpleEngine:
    """Rollout engine: `generate(prompt_ids, group_size, params, generator)`.

    It holds a reference to the policy itself, so weight updates reach it without a copy.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eos = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos) if self.eos else 0

    def release_cache(self) -> None:
        """Nothing to free: each `generate` builds its cache and drops it."""

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator | None = None,
    ) -> list[list[Completion]]:
        """Sample `group_size` completions for each prompt (token ids, bos included).

        Returns one list of `group_size` completions per prompt, in prompt order.
        """
        out: list[Completion] = []
        # Whole groups per batch, so a group's samples share one batch and one prefill.
        prompts_per_batch = max(1, self.batch_size // group_size)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompt_ids), prompts_per_batch):
                chunk = prompt_ids[start : start + prompts_per_batch]
                out.extend(self._generate_batch(chunk, group_size, params, generator))
        finally:
            self.model.train(was_training)
        return [out[i : i + group_size] for i in range(0, len(out), group_size)]

    def _generate_batch(self, prompts, group_size: int, params: SamplingParams, generator) -> list[Completion]:
        device = next(self.model.parameters()).device
        T = max(len(r) for r in prompts)
        input_ids = torch.full((len(prompts), T), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, r in enumerate(prompts):  # left padding: every row's last prompt token is at T-1
            input_ids[i, T - len(r) :] = torch.tensor(r)
            attention[i, T - len(r) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        B = len(prompts) * group_size

        track = SequenceTracker(B, self.tokenizer, params, self.eos)

        out = self.model(
            input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=True, logits_to_keep=1
        )
        # One prefill per prompt, then G rows that share it (prompt i -> rows i*G .. i*G+G-1).
        cache = out.past_key_values
        cache.batch_repeat_interleave(group_size)
        logits = out.logits[:, -1].repeat_interleave(group_size, dim=0)
        attention = attention.repeat_interleave(group_size, dim=0)
        next_pos = position_ids[:, -1:].repeat_interleave(group_size, dim=0) + 1
        for step in range(params.max_new_tokens):
            logits = track.forbid_eos(logits, step)
            new, logp = sample_next(logits, params.temperature, params.top_p, params.top_k, generator)
            track.record(step, list(range(B)), new.tolist(), logp.tolist())
            if track.all_done():
                break
            feed = torch.tensor(
                [t[-1] if f is None else self.pad_id for t, f in zip(track.tokens, track.finish)], device=device
            )[:, None]
            attention = torch.cat([attention, torch.ones((B, 1), dtype=attention.dtype, device=device)], dim=1)
            out = self.model(
                input_ids=feed, attention_mask=attention, position_ids=next_pos, past_key_values=cache, use_cache=True
            )
            cache = out.past_key_values
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

        return track.completions()
