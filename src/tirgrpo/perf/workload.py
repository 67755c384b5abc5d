"""What one GRPO step asks of memory (`Workload`), the tensors that live for the whole run
(weights, reference copy, gradients, optimizer states, the fast engine's cache), and how
the step is cut into micro-batches. Sizes in bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tirgrpo.errors import TirgrpoError
from tirgrpo.perf.shape import LINEARS, ModelShape

GiB = 2**30
CHUNK = 1 << 24  # tirgrpo.train.optim.CHUNK: elements per optimizer-update slice (kept in sync by a test)
# The fast engine's cache capacities and batch sizes (rollout/engine.py; kept in sync by a test).
LENGTH_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BLOCK = 128  # train/prefix.py: a block-mask group is padded to a multiple of it
PREFIX_FORMS = ("off", "dense", "block", "split")
ENGINES = ("fast", "simple")


@dataclass(frozen=True)
class Workload:
    """What one GRPO step asks of memory (token counts are per sequence)."""

    prompt_tokens: int = 3072
    completion_tokens: int = 1024
    group_size: int = 4
    prompts_per_step: int = 4
    rollout_batch_size: int = 64
    micro_batch_tokens: int = 16384
    logprob_chunk_tokens: int = 256
    dtype_bytes: int = 2
    """Compute dtype of weights and activations: 2 (bf16) or 4 (fp32)."""
    checkpointing: bool = True
    lora: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = LINEARS
    reference_model: bool = True
    """A second, frozen copy of the weights (beta > 0 without LoRA)."""
    master_fp32: bool = True
    bf16_update: str = "kahan"
    fused_optimizer: bool = True
    """CUDA: the compiled update (no fp32 temporaries); False: eager slices of CHUNK elements."""
    variable_lengths: bool = True
    """Sequences differ in length, so micro-batches and prefills of more than one row are
    padded and attention gets an explicit mask (the trainer's normal case)."""
    prefix: str = "off"
    """Training layout (train/prefix.py): "off" = one padded row [prompt, completion] per
    sample; "dense", "block", "split" = each group packed as [prompt, c_1, ..., c_G], several
    groups to a pass as the budget allows, with that attention form (dense: a [1, 1, T, T]
    bool mask through sdpa; block: a FlexAttention block mask, the pass padded to a multiple
    of 128; split: no mask)."""
    engine: str = "simple"
    """Rollout engine: "simple" (HF forward, dynamic cache repeated G times) or "fast" (a
    static prompt cache + completion cache that the engine keeps between steps)."""
    device: str = "cuda"
    """Where the step runs: "cuda" (the fast engine decodes with Triton kernels inside CUDA
    graphs) or "cpu" (its plain-torch kernels, no graphs)."""
    world_size: int = 1
    """Ranks (GPUs) the run is sharded over (train/dist.py): each rank holds 1/world_size of
    the weights, gradients and optimizer states (FSDP2), gathers layers as they run, and
    rolls out and trains prompts_per_step / world_size prompts. The estimate is per rank."""
    eval_samples: int = 0
    """Evaluations through the rollout engine (`eval.evaluate`): K sampled completions per
    example, then one greedy completion each; 0: the run evaluates nothing."""

    def __post_init__(self):
        if self.prefix not in PREFIX_FORMS:
            raise TirgrpoError(f"Workload.prefix must be one of {PREFIX_FORMS}, got {self.prefix!r}")
        if self.engine not in ENGINES:
            raise TirgrpoError(f"Workload.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.device not in ("cuda", "cpu"):
            raise TirgrpoError(f"Workload.device must be 'cuda' or 'cpu', got {self.device!r}")
        if self.world_size < 1:
            raise TirgrpoError(f"Workload.world_size must be >= 1, got {self.world_size}")

    @property
    def packed(self) -> bool:
        """Groups are packed (shared prefix) rather than padded rows."""
        return self.prefix != "off"

    @property
    def seq_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def rank_prompts(self) -> int:
        """Prompts of the step one rank rolls out and trains."""
        return max(1, self.prompts_per_step // self.world_size)

    @property
    def sequences(self) -> int:
        """Completions one rank trains per step."""
        return self.group_size * self.rank_prompts


# --------------------------------------------------------------------------- parameters and states


def lora_params(shape: ModelShape, wl: Workload) -> int:
    """Adapter parameters: r * (in + out) per adapted linear per layer."""
    dims = shape.linear_dims()
    return shape.layers * sum(wl.lora_r * (dims[m][0] + dims[m][1]) for m in wl.lora_targets if m in dims)


def optimizer_bytes_per_param(param_bytes: int, wl: Workload) -> dict[str, int]:
    """Bytes per trainable parameter (`optim.AdamW`): {'grad', 'states', 'master'}.

    fp32 params: fp32 grad + fp32 m, v. bf16 params: bf16 grad plus fp32 master + fp32 m, v
    (`master_fp32`), or bf16 m, v (+ a bf16 Kahan buffer with `bf16_update="kahan"`).
    """
    if param_bytes == 4:
        return {"grad": 4, "states": 8, "master": 0}
    if wl.master_fp32:
        return {"grad": 2, "states": 8, "master": 4}
    return {"grad": 2, "states": 6 if wl.bf16_update == "kahan" else 4, "master": 0}


def resident_parts(shape: ModelShape, wl: Workload) -> dict[str, int]:
    """Tensors that live for the whole run: weights, reference copy, gradients (full
    size; present in the train phase only), optimizer moments and master weights; with
    several ranks, this rank's shard of each (1/world_size)."""
    parts = unsharded_resident_parts(shape, wl)
    if wl.world_size == 1:
        return parts
    return {k: -(-v // wl.world_size) for k, v in parts.items()}


def gathered_parts(shape: ModelShape, wl: Workload, phase: str) -> dict[str, int]:
    """Full-size weights a rank holds beside its shards (none in one process). rollout: the
    whole model, gathered once for generation (train/dist.py `gathered`). train: FSDP's
    units as they run (the root unit: embeddings, final norm and LM head, kept from the
    forward to the end of the backward; the running decoder layer and the prefetched next),
    and their gradients before the reduce-scatter (the root's until the backward ends)."""
    if wl.world_size == 1:
        return {}
    b = wl.dtype_bytes
    if phase == "rollout":
        return {"gathered weights (generation, all layers)": shape.params() * b}
    root = shape.params() - shape.layers * shape.layer_params()
    grads = 0 if wl.lora else (root + shape.layer_params()) * optimizer_bytes_per_param(b, wl)["grad"]
    return {"gathered units (root + 2 layers)": (root + 2 * shape.layer_params()) * b,
            "unsharded gradients (root + 1 layer)": grads}


def unsharded_resident_parts(shape: ModelShape, wl: Workload) -> dict[str, int]:
    """`resident_parts` of one process."""
    b = wl.dtype_bytes
    base = shape.params() * b
    if wl.lora:
        n_train, pb = lora_params(shape, wl), 4  # peft keeps adapters in fp32
    else:
        n_train, pb = shape.params(), b
    per = optimizer_bytes_per_param(pb, wl)
    return {
        "weights": base + (n_train * pb if wl.lora else 0),
        "reference model": base if wl.reference_model else 0,
        "optimizer states (m, v, kahan)": n_train * per["states"],
        "master weights (fp32)": n_train * per["master"],
        "gradients": n_train * per["grad"],
    }


def optimizer_step_temporaries(shape: ModelShape, wl: Workload) -> int:
    """Scratch of one optimizer-update slice: none for the compiled CUDA kernel; for the
    eager update about seven fp32 [slice] temporaries (bf16 params), three (fp32 params)."""
    if wl.fused_optimizer and not wl.lora:
        return 0
    if wl.lora:
        dims = shape.linear_dims()
        largest = max((wl.lora_r * max(dims[m]) for m in wl.lora_targets if m in dims), default=0)
        return 3 * 4 * min(CHUNK, largest)
    largest = max(shape.vocab * shape.hidden, shape.intermediate * shape.hidden)
    return (7 if wl.dtype_bytes == 2 else 3) * 4 * min(CHUNK, largest)


# --------------------------------------------------------------------------- micro-batches and the engine's cache


def micro_batch_plan(wl: Workload) -> dict[str, int]:
    """How the trainer splits the step's completions, all at full length (the worst case).

    prefix "off" (`batching.pack_by_tokens`): right-padded rows, as many per micro-batch as
    the budget holds. Packed groups (`step.build_micro_batches`): as many whole groups
    [prompt, G completions] per micro-batch as the budget holds (budget 0: the rank's whole
    step), or, when one group exceeds the budget, parts of `rows` completions that each
    repeat the prompt. Shorter completions pack more groups into a pass, never more than the
    budget's tokens, so a pass of several groups counts the whole budget. Returns rows
    (completions) per micro-batch, micro-batches, the largest micro-batch's forward tokens
    (block form: padded to a multiple of 128) and its completion tokens; packed layouts add
    parts per group and groups per micro-batch.
    """
    P, C, G, budget = wl.prompt_tokens, wl.completion_tokens, wl.group_size, wl.micro_batch_tokens
    if not wl.packed:
        L, n_seq = wl.seq_tokens, wl.sequences
        rows = n_seq if budget <= 0 else max(1, min(n_seq, budget // L))
        return {"rows": rows, "micro_batches": math.ceil(n_seq / rows), "tokens": rows * L,
                "completion_tokens": rows * C}
    group = P + G * C
    if budget <= 0 or budget >= group:  # whole groups, several to a pass
        groups = wl.rank_prompts if budget <= 0 else max(1, min(wl.rank_prompts, budget // group))
        tokens = group * wl.rank_prompts if budget <= 0 else min(budget, group * wl.rank_prompts)
        # shorter prompts than the bound leave more room for completions: at least one prompt token a group
        plan = {"rows": groups * G, "micro_batches": math.ceil(wl.rank_prompts / groups), "tokens": tokens,
                "completion_tokens": tokens - groups, "parts per group": 1, "groups per micro-batch": groups}
    else:
        rows = max(1, min(G, (budget - P) // max(1, C)))
        parts = math.ceil(G / rows)
        plan = {"rows": rows, "micro_batches": wl.rank_prompts * parts, "tokens": P + rows * C,
                "completion_tokens": rows * C, "parts per group": parts, "groups per micro-batch": 1}
    if wl.prefix == "block":
        plan["tokens"] = -(-plan["tokens"] // BLOCK) * BLOCK
    return plan


def budget_for_rows(wl: Workload, rows: int) -> int:
    """The smallest `micro_batch_tokens` that puts `rows` full-length completions in one
    micro-batch: rows x (prompt + completion) padded rows; packed, prompt + rows x completion
    up to one group, then whole groups (rows // G of them)."""
    if not wl.packed:
        return rows * wl.seq_tokens
    if rows <= wl.group_size:
        return wl.prompt_tokens + rows * wl.completion_tokens
    return rows // wl.group_size * (wl.prompt_tokens + wl.group_size * wl.completion_tokens)


def max_rows(wl: Workload) -> int:
    """Most completions one micro-batch can hold: the rank's whole step."""
    return wl.sequences


def bucket(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds n (n itself past the largest), as the fast engine sizes its cache."""
    return next((x for x in buckets if x >= n), n)


def fast_engine_plan(wl: Workload) -> dict[str, int]:
    """The fast engine's static cache for the step (`rollout/engine.py`): prompt slots (one per
    prompt of an engine batch) x prompt capacity, and completion rows (the batch bucket) x
    completion capacity; capacities are the length buckets that hold the longest prompt and
    `max_new_tokens`. The cache only grows, so the largest batch of the step sizes it."""
    G = wl.group_size
    slots = max(1, min(wl.rank_prompts, wl.rollout_batch_size // G))
    return {"prompt slots": slots, "prompt capacity": bucket(wl.prompt_tokens, LENGTH_BUCKETS),
            "completion rows": bucket(slots * G, BATCH_BUCKETS),
            "completion capacity": bucket(wl.completion_tokens, LENGTH_BUCKETS)}


def fast_engine_kept(shape: ModelShape, wl: Workload) -> dict[str, int]:
    """Bytes the fast engine keeps from its first rollout to the end of the run: the static
    prompt and completion caches (K and V, every layer, compute dtype) and, on CUDA, the
    graph's fp32 [rows, V] logits buffer."""
    plan = fast_engine_plan(wl)
    kv = 2 * shape.layers * shape.kv_dim * wl.dtype_bytes  # K and V of one token, all layers
    rows = plan["completion rows"]
    return {"prompt cache": kv * plan["prompt slots"] * plan["prompt capacity"],
            "completion cache": kv * rows * plan["completion capacity"],
            "CUDA-graph logits": 4 * rows * shape.vocab if wl.device == "cuda" else 0}
