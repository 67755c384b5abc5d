"""One update: micro-batches -> log-probs -> loss -> backward -> clip -> optimizer step.

`grpo_update` is the only place in tirgrpo where gradients are computed and the optimizer
steps. The GRPO trainer, SFT, `tirgrpo memory --measure` and the train-phase benchmark all
call it; what differs between them is the *objective* (`GRPOObjective` here, `sft.SFTObjective`):
a callable that turns one micro-batch's log-probs into a loss and its statistics.

Two kinds of micro-batch, told apart by their type, never by a tensor's dtype or rank:

* `PaddedRows`: rows [prompt, completion], right-padded (the unshared layout);
* `prefix.PackedGroup`: prompts and some of their completions packed into one sequence
  (shared prefix), whose `form` field names the attention ("dense", "block" or "split").

Both expose `completion_mask`, the layout in which their log-probs come back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union

import torch

from tirgrpo.config import GRPOConfig
from tirgrpo.train.loss import grpo_loss
from tirgrpo.train.prefix import PackedGroup

PREFIX_FORMS = ("dense", "block", "split")


@dataclass
class PaddedRows:
    """Right-padded rows [prompt, completion]: input_ids, attention_mask (0/1) and
    completion_mask (True at completion tokens, the loss targets), each [B, T]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    @property
    def tokens(self) -> int:
        """Tokens the forward pass runs (padding included)."""
        return self.input_ids.numel()


Inputs = Union[PaddedRows, PackedGroup]


@dataclass
class MicroBatch:
    """Completions trained together. `rows` index the step's completions (the order of the
    rollout); `inputs` is the tensor form the model reads."""

    rows: list[int]
    inputs: Inputs

    @property
    def mask(self) -> torch.Tensor:
        """[rows, width] bool: where completion tokens are, in the layout of the log-probs."""
        return self.inputs.completion_mask

    @property
    def tokens(self) -> int:
        return self.inputs.tokens


def build_micro_batches(prompt_ids: list[list[int]], comp_ids: list[list[int]], group_size: int, budget: int,
                        prefix: str, pad_id: int, device) -> list[MicroBatch]:
    """Split a step's completions into micro-batches of at most `budget` tokens (0: no limit).

    prompt_ids[i], comp_ids[i]: the prompt and completion of completion i; groups of
    `group_size` consecutive completions share a prompt. prefix "off": padded rows packed by
    padded size (`batching.pack_by_tokens`). "dense", "block" or "split": each group's prompt
    once followed by its completions (a group over the budget split into parts that repeat
    the prompt), as many whole groups or parts per micro-batch as the budget holds, in order
    (`prefix.pack_groups`), with that attention form.
    """
    from tirgrpo.train.batching import pack_by_tokens, right_pad
    from tirgrpo.train.prefix import pack_groups, split_group

    if prefix == "off":
        lengths = [len(a) + len(b) for a, b in zip(prompt_ids, comp_ids)]
        return [MicroBatch(mb, PaddedRows(*right_pad([prompt_ids[i] for i in mb], [comp_ids[i] for i in mb],
                                                     pad_id, device)))
                for mb in pack_by_tokens(lengths, budget)]
    if prefix not in PREFIX_FORMS:
        raise ValueError(f"prefix must be 'off' or one of {PREFIX_FORMS}, got {prefix!r}")
    units = []  # (prompt index, completion indices): whole groups, or parts of one over the budget
    for start in range(0, len(comp_ids), group_size):
        group = list(range(start, start + group_size))
        for part in split_group(len(prompt_ids[start]), [len(comp_ids[i]) for i in group], budget):
            units.append((start, [group[i] for i in part]))
    passes, used = [], 0
    for start, rows in units:
        tokens = len(prompt_ids[start]) + sum(len(comp_ids[r]) for r in rows)
        if not passes or (budget > 0 and used + tokens > budget):
            passes.append([])
            used = 0
        passes[-1].append((start, rows))
        used += tokens
    out = []
    for units_of_pass in passes:
        rows = [r for _, part in units_of_pass for r in part]
        width = max(1, max(len(comp_ids[r]) for r in rows))
        groups = [(prompt_ids[start], [comp_ids[r] for r in part]) for start, part in units_of_pass]
        out.append(MicroBatch(rows, pack_groups(groups, width, device, prefix, pad_id)))
    return out


def micro_batch_logprobs(model, mb: MicroBatch, chunk_tokens: int, temperature: float, grad: bool):
    """(log-probs, entropies) of a micro-batch's completion tokens, each in `mb.mask`'s layout, float32."""
    from tirgrpo.train.logprobs import token_logprobs
    from tirgrpo.train.prefix import packed_logprobs

    with torch.set_grad_enabled(grad):
        x = mb.inputs
        if isinstance(x, PackedGroup):
            return packed_logprobs(model, x, chunk_tokens, temperature)
        return token_logprobs(model, x.input_ids, x.attention_mask, x.completion_mask, chunk_tokens=chunk_tokens,
                              temperature=temperature)


def reference_logprobs(model, ref_model, mb: MicroBatch, chunk_tokens: int, temperature: float) -> torch.Tensor:
    """Log-probs under the reference: the frozen copy, or (LoRA, `ref_model` None) the
    policy with its adapters disabled."""
    if ref_model is not None:
        return micro_batch_logprobs(ref_model, mb, chunk_tokens, temperature, grad=False)[0]
    with model.disable_adapter():
        return micro_batch_logprobs(model, mb, chunk_tokens, temperature, grad=False)[0]


# --------------------------------------------------------------------------- objectives


class Objective(Protocol):
    """Turns one micro-batch's log-probs into (loss, stats). `i` is the micro-batch's index
    in the update; stats are detached 0-dim tensors, averaged over the update weighted by
    the micro-batch's completion tokens (stats["num_tokens"] when given: the tokens in the
    loss). stats["entropy"], when not given, is the mean over all completion tokens."""

    def __call__(self, i: int, mb: MicroBatch, logp: torch.Tensor,
                 entropy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def credit_layout(mask: torch.Tensor, weights: list[list[float]]) -> torch.Tensor:
    """Per-token credit (`score.credit`) in a micro-batch's log-prob layout.

    mask: [rows, width] bool, True at each row's completion tokens in token order (both
    `PaddedRows` and `PackedGroup`); weights[r]: one value per completion token of row r.
    Returns [rows, width] float32, 0 off the mask.
    """
    flat = [w for row in weights for w in row]
    if len(flat) != int(mask.sum()):
        raise ValueError(f"{len(flat)} credit weights for {int(mask.sum())} completion tokens")
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[mask.bool()] = torch.tensor(flat, dtype=torch.float32, device=mask.device)
    return out


@dataclass
class GRPOObjective:
    """The clipped GRPO loss (`loss.grpo_loss`) of a rollout's micro-batches.

    advantages[i]: [rows of micro-batch i]; refs[i]: reference log-probs or None;
    credits: per micro-batch, `credit_layout` of its rows, or None (every token credited);
    keep: per micro-batch, [rows] bool of the rows in the loss, or None (all; `grpo.mask_truncated`
    leaves truncated completions out, and num_sequences / num_tokens then count only the kept);
    num_sequences / num_tokens: the whole rollout's counts (exact gradient accumulation).
    The first update of a rollout is on-policy (ratio 1); its log-probs are kept in `old`
    and serve as the sampling policy's log-probs for the rollout's later updates, so no
    separate forward pass is needed.
    """

    cfg: GRPOConfig
    advantages: list[torch.Tensor]
    refs: list[torch.Tensor | None]
    max_completion_tokens: int
    num_sequences: int
    num_tokens: int
    credits: list[torch.Tensor] | None = None
    keep: list[torch.Tensor] | None = None
    old: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, i, mb, logp, entropy):
        first = len(self.old) <= i
        if first:
            self.old.append(logp.detach())
        mask = mb.mask if self.keep is None else mb.mask & self.keep[i].to(mb.mask.device).unsqueeze(1)
        loss, stats = grpo_loss(logp, None if first else self.old[i], self.refs[i], self.advantages[i], mask, self.cfg,
                                self.max_completion_tokens, self.num_sequences, self.num_tokens,
                                None if self.credits is None else self.credits[i])
        # the entropy of the tokens in the loss (a left-out row's are not)
        stats["entropy"] = (entropy.detach() * mask).sum() / stats["num_tokens"].clamp(min=1.0)
        return loss, stats


def rollout_objective(cfg: GRPOConfig, batches: list[MicroBatch], refs: list, advantages: torch.Tensor,
                      completion_ids: list[list[int]], max_completion_tokens: int,
                      credits: list[list[float]] | None = None, include: torch.Tensor | None = None,
                      device=None) -> GRPOObjective:
    """The GRPO objective of one rollout's micro-batches.

    advantages [N] and include [N] bool (None: all) are per completion, in rollout order;
    credits[n]: one weight per token of completion n (`score.credit`), or None. The loss is
    normalised by the counts of all ranks' included completions (exact across ranks), so
    leaving completions out gives the loss of the rollout without them.
    """
    from tirgrpo.train import dist

    kept = range(len(completion_ids)) if include is None else [n for n in range(len(completion_ids)) if include[n]]
    num_sequences, num_tokens = dist.global_sum(len(kept), sum(len(completion_ids[n]) for n in kept))
    # nothing kept on any rank (every completion truncated): the loss is 0 (every token masked),
    # not 0/0 -- a step like one whose groups all have equal rewards
    return GRPOObjective(
        cfg, [advantages[b.rows].to(device) for b in batches], refs, max_completion_tokens, max(1, int(num_sequences)),
        max(1, int(num_tokens)),
        None if credits is None else [credit_layout(b.mask, [credits[r] for r in b.rows]) for b in batches],
        None if include is None else [include[b.rows] for b in batches])


# --------------------------------------------------------------------------- the update


def idle_pass(model, mb: MicroBatch, chunk_tokens: int, temperature: float) -> None:
    """A forward and backward that adds nothing to the gradients (loss x 0). Under FSDP every
    pass gathers weights and reduces gradients with all ranks, so a rank with fewer
    micro-batches than another runs these until the counts match."""
    logp, _ = micro_batch_logprobs(model, mb, chunk_tokens, temperature, grad=True)
    (logp.sum() * 0.0).backward()


@dataclass
class UpdateResult:
    """What one update did. `stats`: the objective's statistics and `entropy`, averaged
    over completion tokens; `applied`: False when the loss or gradient was not finite and
    the optimizer step was skipped."""

    loss: float
    grad_norm: float
    applied: bool
    stats: dict[str, float]
    num_tokens: int


def grpo_update(model, optimizer, batches: list[MicroBatch], objective: Objective, max_grad_norm: float,
                chunk_tokens: int, temperature: float = 1.0) -> UpdateResult:
    """One optimizer step over `batches`: forward, `objective`, backward for each micro-batch
    (gradients accumulate), then clip to `max_grad_norm` and step; gradients are zeroed after.

    A non-finite loss or gradient norm skips the step (`applied` False). One device sync per
    update: the loss and statistics stay tensors until the end.
    """
    from tirgrpo.train import dist

    params = [p for p in model.parameters() if p.requires_grad]
    total_loss = torch.zeros((), dtype=torch.float32)
    stat_sums: dict[str, torch.Tensor] = {}
    total_tokens = torch.zeros(())
    missing = dist.global_max(len(batches)) - len(batches)
    if missing:  # the smallest pass: an idle pass only keeps the ranks' collectives in step
        idle = min(batches, key=lambda mb: mb.tokens)
        for _ in range(missing):
            idle_pass(model, idle, chunk_tokens, temperature)
    for i, mb in enumerate(batches):
        logp, entropy = micro_batch_logprobs(model, mb, chunk_tokens, temperature, grad=True)
        loss, stats = objective(i, mb, logp, entropy)
        loss.backward()
        tokens = stats.pop("num_tokens", None)
        tokens = mb.mask.sum().float() if tokens is None else tokens
        if "entropy" not in stats:  # an objective that does not say: over every completion token
            stats["entropy"] = (entropy.detach() * mb.mask).sum() / tokens.clamp(min=1.0)
        total_loss = total_loss.to(loss.device) + loss.detach().float()
        total_tokens = total_tokens.to(tokens.device) + tokens
        for key, value in stats.items():
            stat_sums[key] = stat_sums.get(key, 0.0) + value.float() * tokens
        del logp, entropy, loss
    # several ranks: each loss is normalised by the global counts, so the sums over ranks are the
    # single-process loss and statistics (and FSDP sums the gradients); one rank: no-op
    total_loss, total_tokens, *sums = dist.sum_tensors([total_loss, total_tokens, *stat_sums.values()])
    stat_sums = dict(zip(stat_sums, sums))
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm) if params else torch.zeros(())
    grad_norm = dist.full_tensor(grad_norm)  # sharded gradients: the norm over all ranks' shards
    finite = bool(torch.isfinite(grad_norm) & torch.isfinite(total_loss))  # the one sync
    if finite:
        optimizer.step()
    optimizer.zero_grad()
    count = max(1.0, float(total_tokens))
    return UpdateResult(loss=float(total_loss), grad_norm=float(grad_norm), applied=finite,
                        stats={k: float(v) / count for k, v in stat_sums.items()}, num_tokens=int(total_tokens))
