"""Sampling one token per row from next-token logits: temperature, top-k, top-p."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) to -inf. logits: [B, V] float."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token is always kept.
        above = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = above >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample tokens [B] from logits [B, V]; also return their log-probs [B] (nats).

    The log-prob is taken under the temperature-scaled distribution *before* top-k/top-p
    filtering, which is the distribution the trainer recomputes (TRL does the same).
    temperature == 0 picks the argmax, with the log-prob of the unscaled softmax.
    """
    logits = logits.float()
    if temperature <= 0:
        tokens = logits.argmax(dim=-1)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
        return tokens, logp
    scaled = logits / temperature
    filtered = filter_logits(scaled, top_k, top_p)
    probs = torch.softmax(filtered, dim=-1)
    if probs.is_cuda:
        # The exponential race: argmax(p / E), E ~ Exponential(1), is a sample from p. One
        # elementwise pass; a cumsum over 151,936 entries takes ~0.2 ms on an H100.
        race = torch.empty_like(probs).exponential_(1.0, generator=generator)
        tokens = (probs / race).argmax(dim=-1)
    else:
        # Inverse-CDF sampling: one uniform per row and a binary search. On a CPU this is
        # ~20x faster than torch.multinomial or drawing V random numbers per row.
        cdf = probs.cumsum(dim=-1)
        u = 1.0 - torch.rand((probs.shape[0], 1), generator=generator, device=probs.device)  # (0, 1]
        tokens = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=probs.shape[-1] - 1)[:, 0]
    logp = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None])[:, 0]
    return tokens, logp


class HostCopy:
    """A decode step's sampled tokens [B] and log-probs [B], copied to the host behind the work
    queued so far, without waiting for what is queued after it (the next decode step).

    One copy: token ids are exact in fp32 (vocabularies are under 2**24). On CUDA it goes into
    a pinned buffer, reused from step to step (each step's copy is read before the next
    starts), behind an event; elsewhere the tensors themselves are read.
    """

    def __init__(self):
        self._pinned: torch.Tensor | None = None

    def start(self, tokens: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue the copy; `wait` on what this returns gives the values."""
        both = torch.stack([tokens.float(), logp.float()])  # ids exact in fp32, not in a 16-bit logp's dtype
        if both.device.type != "cuda":
            return both, None
        if self._pinned is None or self._pinned.numel() < both.numel():
            self._pinned = torch.empty(both.numel(), dtype=both.dtype, pin_memory=True)
        dst = self._pinned[: both.numel()].view(both.shape)  # contiguous, or the copy would not be async
        dst.copy_(both, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return dst, done

    @staticmethod
    def wait(copy: tuple[torch.Tensor, torch.cuda.Event | None]) -> tuple[list[int], list[float]]:
        """(token ids, log-probs) of a `start`ed copy, once it has arrived."""
        values, done = copy
        if done is not None:
            done.synchronize()
        tokens, logp = values.tolist()
        return [int(t) for t in tokens], logp
