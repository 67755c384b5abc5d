"""Shared fixtures: tiny models saved to temporary HF folders and loaded back through
the same code path as real ones (`tirgrpo.train.model.load_base_model`)."""

from __future__ import annotations

import os

import pytest
import torch

# Triton decides when a kernel is defined (at import of tirgrpo.kernels.adamw and
# tirgrpo.kernels.decode) whether it runs in its CPU interpreter: set it before any test
# module imports tirgrpo, so the kernels are tested on machines without CUDA too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def byte_level_tokenizer():
    """A 262-token byte-level tokenizer (256 bytes + bos/eos + chat/think markers).

    Exact round trips like the real BPE tokenizers, but with a vocabulary small enough
    that a tiny model trains in seconds on a CPU.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>", "<bos>"])
    tok.add_tokens(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"])
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")


def save_tiny_qwen2(path, tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised Qwen2 causal LM sized for `tokenizer`, saved with it to `path`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def r1_tokenizer():
    from tirgrpo.data.tokenizer import load_tokenizer

    return load_tokenizer("r1-distill-qwen")


@pytest.fixture(scope="session")
def byte_tokenizer():
    return byte_level_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, byte_tokenizer):
    """A tiny Qwen2 (hidden 64, 2 layers) with the byte-level tokenizer, as an HF folder."""
    return save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"), byte_tokenizer)


@pytest.fixture
def load_benchmark(monkeypatch):
    """A factory: load_benchmark("bench_gemv") imports benchmarks/bench_gemv.py as a module,
    registered in sys.modules for the test's duration (a script's dataclasses look it up there)."""
    import importlib.util
    import sys
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def tiny_engine(tiny_model_dir, byte_tokenizer):
    """A tiny FastEngine on a CPU, for the profiling tools' tests: .engine (batch 4), .ids (2
    prompts), .params (6 tokens, eos masked), .tokens() (the token ids of one seeded generate
    call with G = 2)."""
    from types import SimpleNamespace

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
