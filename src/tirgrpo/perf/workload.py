"""What one GRPO step asks of memory (`Workload`) and the tensors that live for the whole
run (weights, reference copy, gradients, optimizer states). Sizes in bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tirgrpo.errors import TirgrpoError
from tirgrpo.perf.shape import LINEARS, ModelShape

GiB = 2**30
CHUNK = 1 << 24  # tirgrpo.train.optim.CHUNK: elements per optimizer-update slice (kept in sync by a test)


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

    @property
    def seq_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def sequences(self) -> int:
        return self.group_size * self.prompts_per_step


def workload_from_config(cfg, device_type: str = "cuda") -> Workload:
    """The workload of a `TrainConfig` on a device type (`cuda` or `cpu`; `auto` dtype is
    bf16 on CUDA, fp32 on CPU). Prompts are taken at their limit, `data.max_prompt_tokens`
    (4096 when unlimited), and every completion at `rollout.max_new_tokens`: the worst case."""
    dtype = cfg.model.dtype
    if dtype == "auto":
        dtype = "bf16" if device_type == "cuda" else "fp32"
    b = {"bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}.get(dtype)
    if b is None:
        raise TirgrpoError(f"model.dtype must be one of auto, bf16, fp32; got {cfg.model.dtype!r}")
    mode_fused = cfg.optim.master_weights_fp32 or cfg.optim.bf16_update == "stochastic"
    return Workload(
        prompt_tokens=cfg.data.max_prompt_tokens or 4096, completion_tokens=cfg.rollout.max_new_tokens,
        group_size=cfg.rollout.group_size, prompts_per_step=cfg.rollout.prompts_per_step,
        rollout_batch_size=cfg.rollout.batch_size, micro_batch_tokens=cfg.optim.micro_batch_tokens,
        logprob_chunk_tokens=cfg.optim.logprob_chunk_tokens, dtype_bytes=b,
        checkpointing=cfg.model.gradient_checkpointing, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
        lora_targets=tuple(cfg.model.lora_target_modules),
        reference_model=cfg.grpo.beta > 0 and not cfg.model.lora,
        master_fp32=cfg.optim.master_weights_fp32, bf16_update=cfg.optim.bf16_update,
        fused_optimizer=device_type == "cuda" and b == 2 and mode_fused)


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
    size; present in the train phase only), optimizer moments and master weights."""
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


# --------------------------------------------------------------------------- activations


def micro_batch_plan(wl: Workload) -> dict[str, int]:
    """How `pack_by_tokens` splits the step's sequences, all at full length (the worst case):
    rows per micro-batch, micro-batches, and the largest micro-batch's padded tokens."""
    L, n_seq = wl.seq_tokens, wl.sequences
    budget = wl.micro_batch_tokens
    rows = n_seq if budget <= 0 else max(1, min(n_seq, budget // L))
    return {"rows": rows, "micro_batches": math.ceil(n_seq / rows), "tokens": rows * L,
            "completion_tokens": rows * wl.completion_tokens}
