"""Prompts for training and evaluation: examples with their tokenized prompts, and the
order in which training takes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tirgrpo.errors import TirgrpoError


@dataclass
class Prompt:
    """An example (`tirgrpo.data.records.Example`) and its prompt's token ids."""

    example: object
    ids: list[int]


def load_prompts(spec: str, tokenizer, max_prompt_tokens: int) -> list[Prompt]:
    """Read examples (JSONL/Parquet or `bundled:NAME`), tokenize prompts, drop over-long ones
    (max_prompt_tokens <= 0: keep all)."""
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.records import read_examples

    examples = read_examples(bundled_path(spec))
    out = []
    for ex in examples:
        ids = tokenizer(ex.prompt)["input_ids"]
        if max_prompt_tokens <= 0 or len(ids) <= max_prompt_tokens:
            out.append(Prompt(ex, ids))
    if not out:
        raise TirgrpoError(f"{spec}: no example has a prompt within {max_prompt_tokens} tokens")
    return out


def prompts_for_rollout(n_data: int, position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the next `count` prompts of an endless stream of epochs.

    Each epoch is a permutation seeded by (seed, epoch), so the stream is a pure function
    of its position: resuming needs only the position.
    """
    out = []
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n_data)
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            out.append(int(torch.randperm(n_data, generator=g)[i]))
        else:
            out.append(i)
    return out
