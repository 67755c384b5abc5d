"""A tiny FastEngine on a CPU for the profiling tools' tests: the engine, its prompts and sampling
settings, and the tokens one seeded generate call samples."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture
def tiny_engine(tiny_model_dir, byte_tokenizer):
    """.engine (FastEngine, batch 4), .ids (2 prompts), .params (6 tokens, eos masked), .tokens()
    (the token ids of one generate call with G = 2, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.engine import FastEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    engine = FastEngine(model, byte_tokenizer, max_batch=4, length_buckets=(64,))
    ids = [byte_tokenizer("12+3=")["input_ids"], byte_tokenizer("x")["input_ids"]]
    params = SamplingParams(6, 1.0, min_new_tokens=6)

    def tokens():
        out = engine.generate(ids, 2, params, torch.Generator().manual_seed(0))
        return [c.token_ids for group in out for c in group]

    return SimpleNamespace(engine=engine, ids=ids, params=params, tokens=tokens)
