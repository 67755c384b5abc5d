"""`tirgrpo memory`: where every byte of a GRPO step's peak goes, before anything is loaded.

The estimate models what *this* trainer allocates (`train.py`), part by part, as pure
functions of a model shape (`ModelShape`, read from a config, never from weights) and a
workload (`Workload`, from a `TrainConfig`). Every size is in bytes.

Rollout phase (`rollout/simple.py`): the policy weights, the reference copy and the
optimizer states stay resident (gradients are freed by `zero_grad`); the prompts of one
engine batch are prefilled once, the KV cache is repeated G times, then decoding grows it
by one token per step with `torch.cat` (one layer's K or V exists twice for a moment).

Train phase: the same residents plus gradients, then for the largest micro-batch
(`batching.pack_by_tokens`, right-padded) the tensors autograd saves:
  * per decoder layer and token (bf16 b = 2 bytes; H hidden, I MLP, q/kv widths): the two
    RMSNorms' fp32 inputs (4H each) + normalised copies and outputs, q (after rotary), k
    and v (repeated to all heads when a padding mask makes sdpa skip its GQA path), the
    attention output, and four [tokens, I] MLP tensors (gate, silu, up, product);
    LoRA instead saves fp32 casts of each adapted linear's input (peft upcasts to the
    adapters' fp32) and no inputs of frozen linears;
  * with a padding mask, sdpa's additive mask [rows, 1, T, T] in the compute dtype, per layer;
  * with gradient checkpointing only each layer's input (bH per token) is kept, and one
    layer's activations are recomputed at a time in the backward pass;
  * the LM head (`logprobs.py`) keeps only the completion positions' hidden states; one
    chunk of fp32 logits [chunk, V] (two buffers forward, fp32 + bf16 backward) and, for a
    trained head, an fp32 [V, H] weight-gradient accumulator exist at a time.
The phase's peak is the largest of a few moments (LM-head forward/backward, each layer's
backward, the optimizer step, the embedding backward); the table shows the parts of the
largest one. `torch.cuda.max_memory_allocated` is what the estimate predicts; the caching
allocator's slack and the CUDA context come on top (rules of thumb, shown separately).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tirgrpo.errors import TirgrpoError
from tirgrpo.train.logprobs import WEIGHT_GRAD_TOKENS

GiB = 2**30
CHUNK = 1 << 24  # tirgrpo.train.optim.CHUNK: elements per optimizer-update slice (kept in sync by a test)
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2/Llama-style decoder that decide its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0
    """0: hidden // heads."""
    tied: bool = False
    """LM head shares the embedding matrix."""
    qkv_bias: bool = True
    """q/k/v projections have biases (Qwen2: yes; Llama: no)."""
    name: str = ""

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.d

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.d

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of one decoder layer."""
        H, I = self.hidden, self.intermediate
        return {"q_proj": (H, self.q_dim), "k_proj": (H, self.kv_dim), "v_proj": (H, self.kv_dim),
                "o_proj": (self.q_dim, H), "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}

    def layer_params(self) -> int:
        """Parameters of one decoder layer (linears, q/k/v biases, two RMSNorm weights)."""
        w = sum(i * o for i, o in self.linear_dims().values())
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return w + bias + 2 * self.hidden

    def params(self) -> int:
        """All parameters: embedding, layers, final norm, LM head (unless tied)."""
        emb = self.vocab * self.hidden
        return emb + self.layers * self.layer_params() + self.hidden + (0 if self.tied else emb)


def shape_from_hf_config(cfg: dict, name: str = "") -> ModelShape:
    """A shape from a Hugging Face `config.json` dict (Qwen2, Llama, Mistral-style keys)."""
    try:
        return ModelShape(
            hidden=int(cfg["hidden_size"]), layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            intermediate=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or 0), tied=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")), name=name)
    except KeyError as e:
        raise TirgrpoError(f"{name or 'config'}: config.json lacks {e}; cannot read the model's shape") from e


def shape_from_gguf(path: str | Path) -> ModelShape:
    """A shape from a GGUF file's metadata (the tensors' data are not read)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    arch = value("general.architecture")
    if arch is None:
        raise TirgrpoError(f"{path}: no general.architecture in the GGUF metadata")
    tokens = value("tokenizer.ggml.tokens")
    vocab = value(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    heads = int(value(f"{arch}.attention.head_count"))
    hidden = int(value(f"{arch}.embedding_length"))
    names = {t.name for t in reader.tensors}
    return ModelShape(
        hidden=hidden, layers=int(value(f"{arch}.block_count")), heads=heads,
        kv_heads=int(value(f"{arch}.attention.head_count_kv", heads)),
        intermediate=int(value(f"{arch}.feed_forward_length")), vocab=int(vocab),
        head_dim=int(value(f"{arch}.attention.key_length", 0) or 0), tied="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names, name=Path(path).name)


def shape_from_spec(name_or_path: str) -> ModelShape:
    """The shape of the model `model.name_or_path` names: `random:SHAPE`, a Hugging Face
    folder (or a run folder's `final/`), a `.gguf` file, `smollm2-135m-instruct`, or a hub id
    in the local cache. Reads configs and metadata only."""
    from tirgrpo.train.model import RANDOM_SHAPES

    if name_or_path.startswith("random:"):
        key = name_or_path.split(":", 1)[1]
        if key not in RANDOM_SHAPES:
            raise TirgrpoError(f"unknown random shape {key!r}; known: {sorted(RANDOM_SHAPES)}")
        return shape_from_hf_config(RANDOM_SHAPES[key], name=name_or_path)
    from tirgrpo.data.bundled import named_model_file

    named = named_model_file(name_or_path)
    if named is not None:
        return replace(shape_from_gguf(named), name=name_or_path)
    p = Path(name_or_path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise TirgrpoError(f"GGUF file not found: {p}")
        return shape_from_gguf(p)
    for folder in (p / "final", p):
        if (folder / "config.json").is_file():
            return shape_from_hf_config(json.loads((folder / "config.json").read_text()), name=name_or_path)
    try:  # a hub id in the local cache
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(hit, str):
            return shape_from_hf_config(json.loads(Path(hit).read_text()), name=name_or_path)
    except ImportError:
        pass
    raise TirgrpoError(f"cannot read the shape of {name_or_path!r}: not random:SHAPE, a folder with "
                       f"config.json, a .gguf file, or a hub id in the local cache")


# --------------------------------------------------------------------------- workload


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
    (4096 when unlimited), and every completion at `rollout.max_new_tokens`: the worst case.
    system.micro_batch_tokens = auto is taken as one group's rows."""
    system = cfg.system
    dtype = system.dtype
    if dtype == "auto":
        dtype = "bf16" if device_type == "cuda" else "fp32"
    b = {"bf16": 2, "bfloat16": 2, "fp32": 4, "float32": 4}.get(dtype)
    if b is None:
        raise TirgrpoError(f"system.dtype must be one of auto, bf16, fp32; got {system.dtype!r}")
    optimizer = "fp32-master" if system.optimizer == "auto" else system.optimizer
    prompt = cfg.data.max_prompt_tokens or 4096
    budget = system.micro_batch_tokens
    if budget == "auto":
        budget = cfg.rollout.group_size * (prompt + cfg.rollout.max_new_tokens)
    return Workload(
        prompt_tokens=prompt, completion_tokens=cfg.rollout.max_new_tokens,
        group_size=cfg.rollout.group_size, prompts_per_step=cfg.rollout.prompts_per_step,
        rollout_batch_size=system.rollout_batch_size, micro_batch_tokens=budget,
        logprob_chunk_tokens=system.logprob_chunk_tokens, dtype_bytes=b,
        checkpointing=system.gradient_checkpointing, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
        lora_targets=tuple(cfg.model.lora_target_modules),
        reference_model=cfg.grpo.beta > 0 and not cfg.model.lora,
        master_fp32=optimizer == "fp32-master", bf16_update="stochastic" if optimizer == "bf16-stochastic" else "kahan",
        fused_optimizer=device_type == "cuda" and b == 2 and optimizer != "bf16-kahan")


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


def layer_saved_bytes_per_token(shape: ModelShape, wl: Workload, masked: bool) -> dict[str, int]:
    """Bytes autograd saves per token in one decoder layer (no checkpointing), by part.

    masked: a padding mask is present, so sdpa gets k and v repeated to all q heads (a
    copy each) instead of using its GQA path.
    """
    H, I, b = shape.hidden, shape.intermediate, wl.dtype_bytes
    qd, kvd = shape.q_dim, shape.kv_dim
    a = 4  # adapter dtype (fp32)
    cast = wl.lora and b != a  # peft casts each adapted linear's input to fp32: a copy per linear
    targets = set(wl.lora_targets) if wl.lora else set(LINEARS)

    def inputs(mods: tuple[str, ...], width: int) -> int:
        """Saved inputs of the linears `mods`, which all read the same tensor of `width`."""
        hit = [m for m in mods if m in targets]
        if not hit:
            return 0
        return a * width * len(hit) if cast else b * width  # fp32 casts are per linear; else one shared tensor

    norm = 2 * (4 * H + 4 + (0 if wl.lora else b * H))  # fp32 input + rsqrt (+ normalised copy for the weight grad)
    attn = b * qd + 2 * b * (qd if masked else kvd) + 4 * shape.heads + b * qd  # q, k, v, logsumexp, output
    mlp = 3 * b * I  # gate output (silu input), silu output, up output
    lin = inputs(("q_proj", "k_proj", "v_proj"), H) + inputs(("gate_proj", "up_proj"), H)
    if "down_proj" in targets:
        lin += a * I if cast else b * I  # the product, down_proj's input
    if cast and "o_proj" in targets:
        lin += a * qd  # else o_proj reads the attention output, saved already
    lora_mid = 4 * wl.lora_r * len(targets & set(LINEARS)) if wl.lora else 0  # lora_A outputs
    return {"norms": norm, "attention": attn, "mlp": mlp, "linear inputs": lin, "lora": lora_mid}


def attention_mask_bytes(rows: int, seq: int, b: int) -> dict[str, int]:
    """A padded batch's masks: transformers' bool [rows, 1, T, T] (shared by all layers) and
    sdpa's additive copy in the compute dtype (last dim padded to 16), one per layer call."""
    return {"bool": rows * seq * seq, "additive": rows * seq * (-(-seq // 16) * 16) * b}


def forward_saved(shape: ModelShape, wl: Workload, rows: int, seq: int, completion: int) -> dict:
    """What a training forward of `rows` right-padded sequences of `seq` tokens, the last
    `completion` of each scored, keeps for the backward pass, in bytes: "layer" (one
    decoder layer without checkpointing, additive mask included), "layer_checkpoint" (its
    input only), "shared" (rotary cos/sin, the bool mask, ids), "head" (final norm, the
    selected hidden states, targets, log-sum-exps), and "per_token_layer" by part."""
    b, H = wl.dtype_bytes, shape.hidden
    n, N = rows * seq, rows * completion
    masked = wl.variable_lengths and rows > 1
    per_tok = layer_saved_bytes_per_token(shape, wl, masked)
    mask = attention_mask_bytes(rows, seq, b) if masked else {"bool": 0, "additive": 0}
    final_norm = (4 * H + 4 + (0 if wl.lora else b * H)) * n
    return {"layer": sum(per_tok.values()) * n + mask["additive"], "layer_checkpoint": b * H * n,
            "shared": 2 * shape.d * b * n + mask["bool"] + 16 * n,
            "head": final_norm + b * H * N + 20 * N, "per_token_layer": per_tok, "mask": mask}


def train_phase(shape: ModelShape, wl: Workload) -> dict:
    """Peak of one train phase (log-probs of the old policy and the reference, then forward
    and backward of every micro-batch, clipping and the optimizer step).

    Returns {"total": bytes, "moment": the moment of the peak, "parts": {name: bytes} that
    sum to total, "sizes": reference sizes in bytes, "plan": micro-batching}.
    """
    b, H, V, Lyr = wl.dtype_bytes, shape.hidden, shape.vocab, shape.layers
    plan = micro_batch_plan(wl)
    rows, n, N = plan["rows"], plan["tokens"], plan["completion_tokens"]
    T = wl.seq_tokens
    masked = wl.variable_lengths and rows > 1
    res = resident_parts(shape, wl)
    resident = {k: v for k, v in res.items() if k != "gradients"}
    grads = res["gradients"]

    fw = forward_saved(shape, wl, rows, T, wl.completion_tokens)
    per_tok, mask = fw["per_token_layer"], fw["mask"]
    layer_full, layer_ckpt, shared, head_saved = fw["layer"], fw["layer_checkpoint"], fw["shared"], fw["head"]
    head_trained = not wl.lora
    C = min(wl.logprob_chunk_tokens, N) if wl.logprob_chunk_tokens > 0 else N
    head_fwd = 2 * 4 * C * V  # fp32 logits and exp(logits) of one chunk
    # backward: grad of the selected hidden states, fp32 dz and its compute-dtype copy, and for a
    # trained head the fp32 [V, H] weight-gradient accumulator (with its cast at the end)
    # (and, for a trained head on CUDA, the logit gradients of WEIGHT_GRAD_TOKENS tokens gathered for one addmm)
    cast = b if b != 4 else 0
    group = min(N, max(C, WEIGHT_GRAD_TOKENS // C * C)) if head_trained else 0
    head_bwd = b * H * N + (4 * V * H + b * group * V if head_trained else 0) + max(
        4 * C * V + cast * C * V, cast * V * H if head_trained else 0)
    layer_bwd = (2 * b * shape.intermediate + 3 * b * H) * n  # gradients in flight in one layer's backward
    nograd = (2 * b * H + 8 * H + 3 * b * shape.intermediate) * n + (2 * b * shape.q_dim * n if masked else 0)
    kept = Lyr * (layer_ckpt if wl.checkpointing else layer_full)
    per_layer_grad = (shape.layer_params() if not wl.lora else lora_params(shape, wl) // Lyr) * (
        optimizer_bytes_per_param(4 if wl.lora else b, wl)["grad"])
    g_head = 0 if wl.lora else (V * H * b if not shape.tied else 0) + H * b
    many = plan["micro_batches"] > 1

    def g_after(i: int) -> int:
        """Gradients present while layer i runs its backward (full after the first micro-batch)."""
        return grads if many else g_head + (Lyr - 1 - i) * per_layer_grad

    moments: dict[str, dict[str, int]] = {}
    acts = "layer inputs (checkpoints)" if wl.checkpointing else "saved activations, all layers"
    moments["LM-head forward"] = {acts: kept, "rotary, masks, ids": shared, "final norm + selected hidden": head_saved,
                                  "LM-head chunks": head_fwd, "gradients": g_after(Lyr - 1) if many else 0}
    moments["LM-head backward"] = {acts: kept, "rotary, masks, ids": shared, "final norm + selected hidden": head_saved,
                                   "LM-head chunks": head_bwd, "gradients": grads if many else 0}
    best_layer: dict[str, int] = {}
    for i in range(Lyr):
        if wl.checkpointing:
            m = {acts: (i + 1) * layer_ckpt, "one layer recomputed": layer_full}
        else:
            m = {acts: (i + 1) * layer_full}
        m.update({"rotary, masks, ids": shared, "backward transients": layer_bwd, "gradients": g_after(i)})
        if sum(m.values()) > sum(best_layer.values()):
            best_layer = m
    moments["decoder-layer backward"] = best_layer
    if not wl.lora:
        moments["embedding backward"] = {"gradients": grads, "backward transients": b * V * H * many + 4 * H * n}
    moments["optimizer step"] = {"gradients": grads, "optimizer temporaries": optimizer_step_temporaries(shape, wl)}
    moments["no-grad log-probs"] = {"layer working set": nograd + mask["bool"] + mask["additive"],
                                    "LM-head chunks": head_fwd + b * H * N}
    name, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    parts = {**resident, **{k: v for k, v in parts.items()}}
    sizes = {"one layer, saved (no checkpointing)": layer_full, "one layer, checkpoint": layer_ckpt,
             "attention mask (additive, per layer)": mask["additive"], "LM-head chunk (fp32 logits)": 4 * C * V}
    return {"total": sum(parts.values()), "moment": name, "parts": parts, "sizes": sizes, "plan": plan,
            "per_token_layer": per_tok}


def rollout_phase(shape: ModelShape, wl: Workload, decode_tokens: int | None = None) -> dict:
    """Peak of the rollout with `SimpleEngine` (HF DynamicCache): prefill of one engine
    batch's prompts, the cache repeated G times, then `decode_tokens` (default: all
    completion tokens) decode steps. Same return layout as `train_phase`."""
    b, H, V, Lyr = wl.dtype_bytes, shape.hidden, shape.vocab, shape.layers
    C = wl.completion_tokens if decode_tokens is None else decode_tokens
    G, Tp = wl.group_size, wl.prompt_tokens
    per_batch = max(1, min(wl.prompts_per_step, wl.rollout_batch_size // G))
    rows = per_batch * G
    res = resident_parts(shape, wl)
    resident = {k: v for k, v in res.items() if k != "gradients"}
    kv_tok = 2 * Lyr * shape.kv_dim * b  # K and V of one token, all layers
    n_p = per_batch * Tp
    masked = wl.variable_lengths and per_batch > 1
    mask = attention_mask_bytes(per_batch, Tp, b) if masked else {"bool": 0, "additive": 0}
    prefill_work = ((2 * b * H + 8 * H + 3 * b * shape.intermediate) * n_p
                    + (2 * b * shape.q_dim * n_p if masked else 0) + mask["bool"] + mask["additive"])
    moments = {
        "prefill": {"KV cache": kv_tok * n_p, "prefill working set": prefill_work},
        "cache repeated G times": {"KV cache": kv_tok * n_p * G + kv_tok * n_p // Lyr},
        "last decode step": {
            "KV cache": kv_tok * rows * (Tp + C),
            "KV copy in torch.cat (one layer's K)": kv_tok // (2 * Lyr) * rows * (Tp + C),
            "logits + sampling": rows * V * (b + 3 * 4) + 8 * rows * (Tp + C),
        },
    }
    name, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    parts = {**resident, **parts}
    return {"total": sum(parts.values()), "moment": name, "parts": parts,
            "sizes": {"KV cache per token (all layers)": kv_tok},
            "plan": {"rows": rows, "prompts_per_batch": per_batch}}


def allocator_slack(peak_bytes: int) -> int:
    """Rule of thumb for what the device needs beyond `max_memory_allocated`: the caching
    allocator's fragmentation (~5% of the peak) plus the CUDA context and kernels (~0.6 GiB)."""
    return int(0.05 * peak_bytes) + int(0.6 * GiB)


def estimate(shape: ModelShape, wl: Workload) -> dict:
    """Both phases, the peak (max over phases) and the device need (peak + slack), in bytes."""
    r, t = rollout_phase(shape, wl), train_phase(shape, wl)
    peak = max(r["total"], t["total"])
    return {"shape": asdict(shape), "workload": asdict(wl), "params": shape.params(), "rollout": r, "train": t,
            "peak": peak, "slack": allocator_slack(peak), "need": peak + allocator_slack(peak)}


def fits(shape: ModelShape, wl: Workload, gpu_bytes: int) -> bool:
    return estimate(shape, wl)["need"] <= gpu_bytes


def _largest(ok, lo: int, hi: int) -> int:
    """Largest x in [lo, hi] with ok(x), assuming ok is monotone (True then False); lo - 1 if none."""
    if not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def largest_fitting(shape: ModelShape, wl: Workload, gpu_bytes: int) -> dict[str, int]:
    """The largest group size (others fixed) and completion length (context = prompt +
    completion) whose device need fits `gpu_bytes`; 0 when not even the smallest fits."""
    g = _largest(lambda x: fits(shape, replace(wl, group_size=x), gpu_bytes), 2, 1 << 14)
    c = _largest(lambda x: fits(shape, replace(wl, completion_tokens=x), gpu_bytes), 1, 1 << 20)
    return {"group_size": g if g >= 2 else 0, "completion_tokens": max(c, 0),
            "context_tokens": wl.prompt_tokens + c if c > 0 else 0}


def pick_micro_batch_tokens(shape: ModelShape, wl: Workload, gpu_bytes: int) -> int:
    """The configured budget if it fits, else the largest budget (whole sequences) that does;
    0 when not even one sequence per micro-batch fits. A budget of 0 (the whole batch) is
    kept only if it fits."""
    if fits(shape, wl, gpu_bytes):
        return wl.micro_batch_tokens
    L = wl.seq_tokens
    rows = _largest(lambda r: fits(shape, replace(wl, micro_batch_tokens=r * L), gpu_bytes), 1, wl.sequences)
    return rows * L if rows >= 1 else 0


# --------------------------------------------------------------------------- the trainer's check


CHANGES = [  # (the --set arguments, the same change to a Workload)
    (("system.gradient_checkpointing=true",), dict(checkpointing=True)),
    (("system.optimizer=bf16-stochastic",), dict(master_fp32=False, bf16_update="stochastic")),
    (("model.lora=true",), dict(lora=True, reference_model=False)),
    (("system.rollout_batch_size=16",), dict(rollout_batch_size=16)),
    (("system.logprob_chunk_tokens=256",), dict(logprob_chunk_tokens=256)),
]


def suggest_changes(shape: ModelShape, wl: Workload, gpu_bytes: int) -> list[str]:
    """Config changes (one at a time) that make `wl` fit, each with the micro-batch budget
    re-picked, and the largest group size / completion length that fit unchanged."""
    out = []
    mb = pick_micro_batch_tokens(shape, wl, gpu_bytes)
    if mb and mb != wl.micro_batch_tokens:
        need = estimate(shape, replace(wl, micro_batch_tokens=mb))["need"]
        out.append(f"--set system.micro_batch_tokens={mb} (needs {need / GiB:.1f} GiB)")
    for sets, change in CHANGES:
        w = replace(wl, **change)
        if w == wl:
            continue
        mb = pick_micro_batch_tokens(shape, w, gpu_bytes)
        if mb or fits(shape, w, gpu_bytes):
            args = [f"--set {x}" for x in sets] + ([] if mb == w.micro_batch_tokens else
                                                   [f"--set system.micro_batch_tokens={mb}"])
            need = estimate(shape, replace(w, micro_batch_tokens=mb))["need"]
            out.append(f"{' '.join(args)} (needs {need / GiB:.1f} GiB)")
    big = largest_fitting(shape, wl, gpu_bytes)
    if big["group_size"] >= 2:
        out.append(f"--set rollout.group_size={big['group_size']} or less")
    if big["completion_tokens"] >= 1:
        out.append(f"--set rollout.max_new_tokens={big['completion_tokens']} or less")
    return out


def describe(result: dict) -> str:
    """'total X GiB: part a GiB, part b GiB, ...' of a phase, largest parts first."""
    parts = sorted(((k, v) for k, v in result["parts"].items() if v), key=lambda kv: -kv[1])
    return f"{result['total'] / GiB:.1f} GiB at {result['moment']} (" + ", ".join(
        f"{k} {v / GiB:.2f}" for k, v in parts) + ")"


# --------------------------------------------------------------------------- measurement


class PeakMeter:
    """Peak bytes allocated inside a `with` block, tensors alive before it included.

    CUDA: `torch.cuda.max_memory_allocated`. CPU: torch's profiler memory timeline (every
    tensor allocation and free of the block, summed in time order) plus the bytes of the
    tensors alive at entry that the profiler reports as pre-existing; an approximation of
    the same quantity (no caching allocator on the CPU, so nothing like 'reserved')."""

    def __init__(self, device, resident=()):
        self.device = device
        self.resident = resident
        self.peak = 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            self._baseline = live_bytes(*self.resident)
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                                 with_stack=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return False
        self._prof.__exit__(*exc)
        if exc[0] is None:
            self.peak = profiler_peak_bytes(self._prof, self._baseline)
        return False


def live_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages held by modules (parameters, their grads,
    buffers) and `optim.AdamW` optimizers (states): what the CPU meter counts as resident."""
    import torch

    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                add(p)
                add(p.grad)
            for buf in obj.buffers():
                add(buf)
        elif hasattr(obj, "state") and isinstance(obj.state, list):
            for st in obj.state:
                for t in st.values():
                    add(t)
    return sum(seen.values())


def profiler_peak_bytes(prof, baseline: int = 0) -> int:
    """Peak of live CPU tensor bytes in a torch.profiler run (profile_memory=True,
    record_shapes=True, with_stack=True): `baseline` (the resident tensors, which the
    profiler only reports when they are used) plus the running sum of the allocations and
    frees it records. Uses torch's (private) memory-timeline analysis."""
    from torch.profiler._memory_profiler import Action, MemoryProfileTimeline

    timeline = MemoryProfileTimeline(prof._memory_profile())
    cur = peak = baseline
    for _t, action, (key, _version), size in timeline.timeline:
        if key.device.type != "cpu":
            continue
        if action == Action.CREATE:
            cur += size
        elif action == Action.DESTROY:
            cur -= size
        peak = max(peak, cur)
    return peak


class _StubTokenizer:
    """Just what SimpleEngine needs when no real tokenizer is at hand."""

    pad_token_id = None

    def __init__(self, eos: int):
        self.eos_token_id = eos

    def decode(self, ids, skip_special_tokens=False):
        return ""


def synthetic_batch(shape: ModelShape, prompts: int, prompt_tokens: int, seed: int = 0) -> list[list[int]]:
    """`prompts` random prompts of prompt_tokens, prompt_tokens - 1, ... tokens (lengths
    differ, so prefill and training batches are padded, as in real runs)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, shape.vocab - 1, (max(1, prompt_tokens - i),), generator=g).tolist()
            for i in range(prompts)]


def measure_step(model, ref_model, optimizer, prompt_ids: list[list[int]], wl: Workload, device,
                 decode_tokens: int | None = None, tokenizer=None, seed: int = 0) -> dict[str, int]:
    """Run one rollout and one train phase as `train.py` does; measured peak bytes of each.

    The rollout decodes `decode_tokens` tokens (default wl.completion_tokens) with eos
    forbidden; the train phase uses wl.completion_tokens tokens per completion (the decoded
    tokens, extended with random ones when fewer were decoded), the last completion of each
    group one token shorter so that micro-batches are padded.
    """
    import torch

    from tirgrpo.config import GRPOConfig
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.simple import SimpleEngine
    from tirgrpo.train.step import GRPOObjective, build_micro_batches, grpo_update, reference_logprobs

    G, C = wl.group_size, wl.completion_tokens
    dec = C if decode_tokens is None else decode_tokens
    eos = getattr(model.config, "eos_token_id", None)
    tok = tokenizer or _StubTokenizer(eos if isinstance(eos, int) else 0)
    engine = SimpleEngine(model, tok, batch_size=wl.rollout_batch_size)
    params = SamplingParams(dec, 1.0, 1.0, 0, [], min_new_tokens=dec)
    gen = torch.Generator(device=device).manual_seed(seed)
    resident = [x for x in (model, ref_model, optimizer) if x is not None]
    with PeakMeter(device, resident) as m_roll:
        groups = engine.generate(prompt_ids, G, params, gen)
    rng = torch.Generator().manual_seed(seed + 1)
    prompts = [p for p in prompt_ids for _ in range(G)]
    comps = []
    for j, c in enumerate(cc for g in groups for cc in g):
        ids = list(c.token_ids)[:C]
        ids += torch.randint(0, min(1000, model.config.vocab_size - 1), (C - len(ids),), generator=rng).tolist()
        comps.append(ids[: C - 1] if j % G == G - 1 and C > 1 else ids)
    # The estimate models the unshared layout (padded rows), so that is what is measured.
    batches = build_micro_batches(prompts, comps, G, wl.micro_batch_tokens, "off", engine.pad_id, device)
    advs = [torch.randn(len(b.rows), generator=rng).to(device) for b in batches]
    cfg = GRPOConfig(beta=0.1 if (ref_model is not None or wl.lora) else 0.0)
    chunk = wl.logprob_chunk_tokens
    n_seq, n_tok = len(comps), sum(len(c) for c in comps)
    model.train()
    with PeakMeter(device, resident) as m_train:
        # as the trainer: the first update's own log-probs serve as the old ones (no extra pass)
        refs = [None] * len(batches)
        if cfg.beta > 0:
            refs = [reference_logprobs(model, ref_model, bt, chunk, 1.0) for bt in batches]
        grpo_update(model, optimizer, batches, GRPOObjective(cfg, advs, refs, C, n_seq, n_tok), 1.0, chunk)
    return {"rollout": m_roll.peak, "train": m_train.peak, "micro_batches": len(batches)}


def measure_config(cfg, device) -> dict[str, int]:
    """Load the configured model (weights, LoRA, checkpointing), reference and optimizer as
    `train.py` does, then `measure_step` on synthetic prompts of the configured length."""
    import torch

    from tirgrpo.train.model import load_base_model, load_policy, resolve_dtype, resolve_init
    from tirgrpo.train.optim import AdamW

    dtype = resolve_dtype(cfg.system.dtype, device)
    wl = workload_from_config(cfg, device.type)
    shape = shape_from_spec(cfg.model.name_or_path)
    torch.manual_seed(cfg.run.seed)
    attention = cfg.system.attention
    model = load_policy(cfg.model, device, dtype, cfg.run.seed, attention=attention,
                        checkpointing=cfg.system.gradient_checkpointing)
    ref = None
    if wl.reference_model:
        ref = load_base_model(resolve_init(cfg.model), device, dtype, cfg.run.seed,
                              attention=attention).requires_grad_(False).eval()
    opt = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, master_fp32=wl.master_fp32,
                bf16_update=wl.bf16_update, seed=cfg.run.seed)
    prompts = synthetic_batch(shape, wl.prompts_per_step, wl.prompt_tokens, cfg.run.seed)
    return measure_step(model, ref, opt, prompts, wl, device, seed=cfg.run.seed)


# --------------------------------------------------------------------------- the command


def parse_bytes(text: str) -> int:
    """'80GB' -> 80e9, '80GiB' -> 80 * 2^30, '79.6' (GiB) -> bytes."""
    t = text.strip().upper().replace(" ", "")
    units = {"GIB": GiB, "GB": 10**9, "MIB": 2**20, "MB": 10**6, "TIB": 2**40, "TB": 10**12, "G": GiB}
    for u, mult in units.items():
        if t.endswith(u):
            return int(float(t[: -len(u)]) * mult)
    try:
        return int(float(t) * GiB)
    except ValueError:
        raise TirgrpoError(f"--gpu-memory {text!r}: expected e.g. 80GB, 79.6GiB") from None


def format_table(est: dict, measured: dict | None = None, gpu_bytes: int | None = None) -> str:
    """The human-readable report of `estimate` (GiB = 2^30 bytes)."""
    shape, wl = est["shape"], est["workload"]
    lines = [f"model {shape['name'] or '?'}: {est['params'] / 1e9:.3f}B params, hidden {shape['hidden']}, "
             f"{shape['layers']} layers, {shape['heads']}/{shape['kv_heads']} heads, MLP {shape['intermediate']}, "
             f"vocab {shape['vocab']}{', tied' if shape['tied'] else ''}",
             f"step: {wl['prompts_per_step']} prompts x G={wl['group_size']}, {wl['prompt_tokens']} + "
             f"{wl['completion_tokens']} tokens, {'bf16' if wl['dtype_bytes'] == 2 else 'fp32'}, "
             f"checkpointing {'on' if wl['checkpointing'] else 'off'}, {'LoRA r=%d' % wl['lora_r'] if wl['lora'] else 'full'}, "
             f"reference copy {'yes' if wl['reference_model'] else 'no'}, optimizer "
             f"{'fp32 master' if wl['master_fp32'] else 'bf16 ' + wl['bf16_update']}",
             ""]
    for phase in ("rollout", "train"):
        r = est[phase]
        plan = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in r["plan"].items())
        lines.append(f"{phase} phase: peak at {r['moment']} ({plan})")
        for k, v in r["parts"].items():
            if v:
                lines.append(f"  {k:<44}{v / GiB:>9.2f} GiB")
        lines.append(f"  {'total (max_memory_allocated)':<44}{r['total'] / GiB:>9.2f} GiB")
        if measured and phase in measured:
            m = measured[phase]
            lines.append(f"  {'measured (' + measured.get('how', '') + ')':<44}{m / GiB:>9.2f} GiB  "
                         f"({100 * (r['total'] - m) / m:+.1f}% estimate vs measured)")
        lines.append("")
    t = est["train"]
    lines.append("sizes for reference:")
    for k, v in {**t["sizes"], **est["rollout"]["sizes"]}.items():
        lines.append(f"  {k:<44}{v / GiB:>9.3f} GiB" if v >= 2**20 else f"  {k:<44}{v / 1024:>9.1f} KiB")
    per_tok = sum(t["per_token_layer"].values())
    lines.append(f"  {'saved per token per layer':<44}{per_tok:>9d} B  (" + ", ".join(
        f"{k} {v}" for k, v in t["per_token_layer"].items() if v) + ")")
    lines.append("")
    lines.append(f"peak {est['peak'] / GiB:.2f} GiB + allocator slack and CUDA context ~{est['slack'] / GiB:.2f} GiB"
                 f" = device need {est['need'] / GiB:.2f} GiB")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from tirgrpo.config import add_config_arguments

    add_config_arguments(p, example="rollout.group_size=16")
    p.add_argument("--gpu-memory", default="80GB", help="GPU memory to fit (e.g. 80GB, 79.6GiB); default 80GB")
    p.add_argument("--device", default="cuda", help="device the estimate is for (cuda: bf16 under dtype=auto; cpu: fp32)")
    p.add_argument("--measure", action="store_true",
                   help="also run one real step (rollout + train phase) and print the measured peaks")
    p.add_argument("--json", metavar="FILE", help="write the estimate (and measurement) as JSON")


def run(args) -> int:
    from tirgrpo.config import TrainConfig, load_config

    cfg = load_config(TrainConfig, args.config, args.set)
    shape = shape_from_spec(cfg.model.name_or_path)
    gpu = parse_bytes(args.gpu_memory)
    device_type = "cpu" if args.device == "cpu" else "cuda"
    wl = workload_from_config(cfg, device_type)
    measured = None
    if args.measure:
        import torch

        from tirgrpo.train.model import resolve_device

        dev = resolve_device("auto" if args.device == "cuda" else args.device)
        if dev.type != device_type:
            print(f"note: no CUDA device here; measuring on {dev} instead (fp32 under dtype=auto, eager optimizer)")
            wl = workload_from_config(cfg, dev.type)
        measured = measure_config(cfg, dev)
        measured["how"] = ("torch.cuda.max_memory_allocated" if dev.type == "cuda"
                           else "CPU: torch.profiler allocation timeline, not a GPU number")
        del torch
    est = estimate(shape, wl)
    print(format_table(est, measured, gpu))
    big = largest_fitting(shape, wl, gpu)
    print(f"fits {args.gpu_memory} ({gpu / GiB:.1f} GiB): {'yes' if est['need'] <= gpu else 'NO'}; largest group size that fits "
          f"{big['group_size'] or 'none'}; largest completion length {big['completion_tokens'] or 'none'} "
          f"(context {big['context_tokens'] or '-'} tokens)")
    if est["need"] > gpu:
        for tip in suggest_changes(shape, wl, gpu):
            print(f"  would fit: {tip}")
    if args.json:
        Path(args.json).write_text(json.dumps({"estimate": est, "measured": measured, "largest": big}, indent=1))
    return 0
