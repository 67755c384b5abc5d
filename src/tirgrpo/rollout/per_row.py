"""Per-row pieces of continuous batching (`rollout/continuous.py`): sampling with each row's own
settings, and each row's text, token by token, for streaming."""

from __future__ import annotations

import codecs
from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------- per-row sampling


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor,
                uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row, each row with its own sampling settings. Returns (tokens [B], logp [B]).

    logits: [B, V]; temperature, top_p: [B] float (temperature 0 = greedy); top_k: [B] long
    (0 = off); uniform: [B] in (0, 1], the row's random number. Inverse-CDF sampling of the
    temperature-scaled, top-k/top-p filtered distribution; log-probs under the scaled,
    unfiltered one (as `sampling.sample_next`, which has the same greedy rule and filters).
    """
    logits = logits.float()
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, torch.ones_like(temperature), temperature)[:, None]
    logp_all = torch.log_softmax(scaled, dim=-1)
    order = None
    if bool(((top_k > 0) | (top_p < 1.0)).any()):
        # Filter in sorted order, all rows at once: top-k by rank, then drop a token when the
        # tokens ranked above it already hold top_p of the (top-k filtered) mass.
        scaled, order = torch.sort(scaled, dim=-1, descending=True)
        ranks = torch.arange(scaled.shape[-1], device=scaled.device)[None, :]
        scaled = scaled.masked_fill((top_k[:, None] > 0) & (ranks >= top_k[:, None]), float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        above = torch.cumsum(probs, dim=-1) - probs
        scaled = scaled.masked_fill((above >= top_p[:, None]) & (ranks > 0), float("-inf"))
    cdf = torch.softmax(scaled, dim=-1).cumsum(dim=-1)
    sampled = torch.searchsorted(cdf, (uniform[:, None] * cdf[:, -1:]).contiguous())
    sampled = sampled.clamp_(max=logits.shape[-1] - 1)
    sampled = (order.gather(-1, sampled) if order is not None else sampled)[:, 0]
    tokens = torch.where(greedy, logits.argmax(dim=-1), sampled)
    return tokens, logp_all.gather(-1, tokens[:, None])[:, 0]


# ----------------------------------------------------------------------------- text, token by token


class TokenText:
    """Incremental detokenizer: the text of a growing token list without decoding it all again.

    Byte-level BPE tokenizers (GPT-2, Qwen, Llama-3, SmolLM) get a table id -> bytes and an
    incremental UTF-8 decoder (microseconds per token); others decode a short window of
    recent tokens. A token that ends inside a multi-byte character adds its text later.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.table = _byte_table(tokenizer)

    def start(self) -> "_TextState":
        """A fresh state for one row's text, to pass to each `push` of that row."""
        return _TextState(codecs.getincrementaldecoder("utf-8")("replace") if self.table is not None else None)

    def push(self, state: "_TextState", ids: list[int]) -> str:
        """Text added by the last token of `ids` (all of a row's tokens so far)."""
        if self.table is not None:
            piece = self.table[ids[-1]] if 0 <= ids[-1] < len(self.table) else b""
            return state.decoder.decode(piece)
        start = max(0, state.done - 4)  # a few tokens of context: tokenizers that merge spaces
        before = self.tokenizer.decode(ids[start : state.done], skip_special_tokens=False)
        after = self.tokenizer.decode(ids[start:], skip_special_tokens=False)
        if after.endswith("\ufffd") or not after.startswith(before):
            return ""
        state.done = len(ids)
        return after[len(before) :]


@dataclass
class _TextState:
    decoder: object
    done: int = 0


def _byte_table(tokenizer) -> list[bytes] | None:
    """id -> the bytes it decodes to, for byte-level BPE tokenizers; None for others."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.decoder).__name__ != "ByteLevel":
        return None
    from tirgrpo.data.tokenizer import _bytes_to_unicode

    char_byte = {c: b for b, c in _bytes_to_unicode().items()}
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    table = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in added:
            table.append(added[i].encode("utf-8"))
        elif piece is None or any(ch not in char_byte for ch in piece):
            return None  # not the byte-level alphabet after all: decode windows instead
        else:
            table.append(bytes(char_byte[ch] for ch in piece))
    return table
