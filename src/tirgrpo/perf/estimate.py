"""Where every byte of a GRPO step's peak goes, estimated before anything is loaded.

The estimate models what *this* trainer allocates (`train/loop.py`, `train/step.py`), part
by part, as pure functions of a model shape (`ModelShape`, read from a config, never from
weights) and a workload (`Workload`: sizes, the training layout and the rollout engine).
Every size is in bytes.

Rollout phase: the policy weights, the reference copy and the optimizer states stay
resident (gradients are freed by `zero_grad`). The fast engine (`rollout/engine.py`, the
default) allocates a static prompt cache (one slot per prompt) and completion cache (one
row per sample) once and keeps them for the whole run; it prefills each prompt alone and
decodes over the static cache. The simple engine (`rollout/simple.py`) prefills the
prompts of a batch (left-padded), repeats the KV cache G times, then grows it by one token
per step with `torch.cat` (one layer's K or V exists twice for a moment).

Train phase: the same residents plus gradients (and the fast engine's caches), then for
the largest micro-batch the tensors autograd saves. The micro-batch is either padded rows
[prompt, completion] (`batching.pack_by_tokens`) or packed groups [prompt, c_1, ..., c_k]
(shared prefix: as many groups as the token budget holds, `workload.micro_batch_plan`; a
group over the budget is split into parts that each repeat the prompt, `prefix.split_group`):
  * per decoder layer and token (bf16 b = 2 bytes; H hidden, I MLP, q/kv widths): the two
    RMSNorms' fp32 inputs (4H each) + normalised copies and outputs, q (after rotary), k
    and v (repeated to all heads when a mask makes sdpa skip its GQA path: padded rows of
    different lengths, the dense form of a packed group), the attention output and its
    fp32 log-sum-exp, and four [tokens, I] MLP tensors (gate, silu, up, product); LoRA
    instead saves fp32 casts of each adapted linear's input (peft upcasts to the adapters'
    fp32) and no inputs of frozen linears. The block and split forms save what sdpa's
    maskless GQA path saves;
  * with a mask, sdpa's additive copy [rows, 1, T, T] in the compute dtype, per layer, and
    the bool mask itself (a dense packed group's for every micro-batch: all are built
    before the update);
  * with gradient checkpointing only each layer's input (bH per token) is kept, and one
    layer's activations are recomputed at a time in the backward pass;
  * the LM head (`logprobs.py`) keeps only the completion positions' hidden states; one
    chunk of fp32 logits [chunk, V] (two buffers forward, fp32 + bf16 backward) and, for a
    trained head, an fp32 [V, H] weight-gradient accumulator exist at a time.
A phase's peak is the largest of a few moments (LM-head forward/backward, each layer's
backward, the optimizer step, the embedding backward, the no-grad reference pass; prefill
or decode); the table shows the parts of the largest one. `torch.cuda.max_memory_allocated`
is what the estimate predicts; the caching allocator's slack and the CUDA context come on
top (rules of thumb, shown separately).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from tirgrpo.perf.shape import LINEARS, ModelShape
from tirgrpo.perf.workload import (BATCH_BUCKETS, GiB, Workload, budget_for_rows, fast_engine_kept, fast_engine_plan,
                                   lora_params, max_rows, micro_batch_plan, optimizer_bytes_per_param,
                                   gathered_parts, optimizer_step_temporaries, resident_parts)
from tirgrpo.train.logprobs import WEIGHT_GRAD_TOKENS


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
    """A masked batch's masks: the bool [rows, 1, T, T] (transformers' padding mask, or a
    packed group's dense mask; shared by all layers) and sdpa's additive copy in the compute
    dtype (last dim padded to 16), one per layer call."""
    return {"bool": rows * seq * seq, "additive": rows * seq * (-(-seq // 16) * 16) * b}


def forward_saved(shape: ModelShape, wl: Workload, rows: int, seq: int, completion: int,
                  masked: bool | None = None) -> dict:
    """What a training forward of `rows` sequences of `seq` tokens, `completion` of each
    scored, keeps for the backward pass, in bytes: "layer" (one decoder layer without
    checkpointing, additive mask included), "layer_checkpoint" (its input only), "shared"
    (rotary cos/sin, the bool mask, ids), "head" (final norm, the selected hidden states,
    targets, log-sum-exps), and "per_token_layer" by part.

    masked: attention gets an explicit mask (default: padded rows of different lengths); a
    packed group is one row whose completion tokens are all its scored tokens.
    """
    b, H = wl.dtype_bytes, shape.hidden
    n, N = rows * seq, rows * completion
    masked = wl.variable_lengths and rows > 1 if masked is None else masked
    per_tok = layer_saved_bytes_per_token(shape, wl, masked)
    mask = attention_mask_bytes(rows, seq, b) if masked else {"bool": 0, "additive": 0}
    final_norm = (4 * H + 4 + (0 if wl.lora else b * H)) * n
    return {"layer": sum(per_tok.values()) * n + mask["additive"], "layer_checkpoint": b * H * n,
            "shared": 2 * shape.d * b * n + mask["bool"] + 16 * n,
            "head": final_norm + b * H * N + 20 * N, "per_token_layer": per_tok, "mask": mask}


def train_forward(shape: ModelShape, wl: Workload, plan: dict) -> dict:
    """`forward_saved` of the largest micro-batch of `plan` in the workload's layout.

    Padded rows: `rows` x (prompt + completion), masked when lengths differ. Packed group:
    one row of `plan["tokens"]`; the dense form masks it ([1, 1, T, T] bool, and sdpa's
    repeated k, v), block and split need no mask tensor per layer. Dense masks are built for
    every micro-batch before the update (`build_micro_batches`), so all of them count.
    """
    if not wl.packed:
        return forward_saved(shape, wl, plan["rows"], wl.seq_tokens, wl.completion_tokens)
    dense = wl.prefix == "dense"
    fw = forward_saved(shape, wl, 1, plan["tokens"], plan["completion_tokens"], masked=dense)
    if dense:
        fw["shared"] += (plan["micro_batches"] - 1) * fw["mask"]["bool"]
    fw["shared"] += 32 * plan["completion_tokens"] * plan["micro_batches"]  # source, targets, row, col (long)
    return fw


def lm_head_bytes(shape: ModelShape, wl: Workload, N: int) -> dict[str, int]:
    """The LM head's working set (`logprobs.py`) over N scored tokens in chunks of C:
    "forward", "backward", "chunk" (C).

    CUDA: forward, the fp32 [C, V] logits and one more buffer; backward, the grad of the
    selected hidden states, fp32 dz and its compute-dtype copy, and for a trained head the
    fp32 [V, H] weight-gradient accumulator, its cast, and the logit gradients of
    WEIGHT_GRAD_TOKENS tokens gathered for one addmm. CPU (eager softmax, no gathering): four
    fp32 [C, V] buffers in the forward (logits, shifted, exp, product), and in the backward
    four fp32 [C, V] and a bool one-hot, besides the same accumulator and one chunk's dz."""
    b, H, V = wl.dtype_bytes, shape.hidden, shape.vocab
    trained = not wl.lora
    C = min(wl.logprob_chunk_tokens, N) if wl.logprob_chunk_tokens > 0 else N
    cast = b if b != 4 else 0
    if wl.device == "cpu":
        bwd = b * H * N + (4 * V * H + b * C * V if trained else 0) + max(17 * C * V, cast * V * H if trained else 0)
        return {"forward": 4 * 4 * C * V, "backward": bwd, "chunk": C}
    group = min(N, max(C, WEIGHT_GRAD_TOKENS // C * C)) if trained else 0
    bwd = b * H * N + (4 * V * H + b * group * V if trained else 0) + max(
        4 * C * V + cast * C * V, cast * V * H if trained else 0)
    return {"forward": 2 * 4 * C * V, "backward": bwd, "chunk": C}


def train_phase(shape: ModelShape, wl: Workload) -> dict:
    """Peak of one train phase (log-probs of the reference, then forward and backward of
    every micro-batch, clipping and the optimizer step), in the workload's layout.

    Returns {"total": bytes, "moment": the moment of the peak, "parts": {name: bytes} that
    sum to total, "sizes": reference sizes in bytes, "plan": micro-batching}.
    """
    b, H, V, Lyr = wl.dtype_bytes, shape.hidden, shape.vocab, shape.layers
    plan = micro_batch_plan(wl)
    n, N = plan["tokens"], plan["completion_tokens"]
    res = resident_parts(shape, wl)
    resident = {k: v for k, v in res.items() if k != "gradients"}
    if wl.engine == "fast":  # the engine keeps its cache between rollouts
        resident["rollout caches (fast engine)"] = sum(fast_engine_kept(shape, wl).values())
    resident.update(gathered_parts(shape, wl, "train"))
    grads = res["gradients"]
    fw = train_forward(shape, wl, plan)
    mask = fw["mask"]
    layer_full, layer_ckpt, shared, head_saved = fw["layer"], fw["layer_checkpoint"], fw["shared"], fw["head"]
    head = lm_head_bytes(shape, wl, N)
    layer_bwd = (2 * b * shape.intermediate + 3 * b * H) * n  # gradients in flight in one layer's backward
    repeated_kv = 2 * b * shape.q_dim * n if mask["bool"] else 0
    nograd = (2 * b * H + 8 * H + 3 * b * shape.intermediate) * n + repeated_kv
    kept = Lyr * (layer_ckpt if wl.checkpointing else layer_full)
    per_layer_grad = (shape.layer_params() if not wl.lora else lora_params(shape, wl) // Lyr) * (
        optimizer_bytes_per_param(4 if wl.lora else b, wl)["grad"])
    g_head = 0 if wl.lora else (V * H * b if not shape.tied else 0) + H * b
    many = plan["micro_batches"] > 1

    def g_after(i: int) -> int:
        """Gradients present while layer i runs its backward (full after the first micro-batch;
        with several ranks, the shards: at most all of them)."""
        return grads if many or wl.world_size > 1 else g_head + (Lyr - 1 - i) * per_layer_grad

    moments: dict[str, dict[str, int]] = {}
    acts = "layer inputs (checkpoints)" if wl.checkpointing else "saved activations, all layers"
    saved = {acts: kept, "rotary, masks, ids": shared, "final norm + selected hidden": head_saved}
    moments["LM-head forward"] = {**saved, "LM-head chunks": head["forward"], "gradients": g_after(Lyr - 1) * many}
    moments["LM-head backward"] = {**saved, "LM-head chunks": head["backward"], "gradients": grads * many}
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
    moments["no-grad log-probs"] = {"rotary, masks, ids": shared, "layer working set": nograd + mask["additive"],
                                    "LM-head chunks": head["forward"] + b * H * N}
    if wl.world_size > 1 and (wl.reference_model or wl.lora):  # the reference's weights gathered whole
        moments["no-grad log-probs"]["gathered reference weights"] = shape.params() * b
    name, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    parts = {**resident, **parts}
    sizes = {"one layer, saved (no checkpointing)": layer_full, "one layer, checkpoint": layer_ckpt,
             "attention mask (additive, per layer)": mask["additive"],
             "LM-head chunk (fp32 logits)": 4 * head["chunk"] * V}
    return {"total": sum(parts.values()), "moment": name, "parts": parts, "sizes": sizes, "plan": plan,
            "per_token_layer": fw["per_token_layer"]}


def rollout_phase(shape: ModelShape, wl: Workload, decode_tokens: int | None = None) -> dict:
    """Peak of the rollout with the workload's engine (`fast_rollout` or `simple_rollout`).
    Same return layout as `train_phase`."""
    if wl.engine == "fast":
        return fast_rollout(shape, wl)
    return simple_rollout(shape, wl, decode_tokens)


def eval_phase(shape: ModelShape, wl: Workload) -> dict | None:
    """Peak of an evaluation (`eval.evaluate`, on rank 0 with the weights gathered), through
    the rollout engine: K = `eval_samples` completions per example in engine batches of
    rollout_batch_size // K examples, then one greedy completion each in batches of
    rollout_batch_size examples, a prompt slot per row. The plan does not know how many
    examples there are, so full engine batches are assumed (an upper bound). The engine's
    cache only grows, so the greedy pass's cache holds every earlier one; the trainer frees it
    after the evaluation. Same return layout as `rollout_phase`; None without an evaluation."""
    if wl.eval_samples <= 0:
        return None
    full = wl.rollout_batch_size * wl.world_size  # rank_prompts = one whole engine batch
    passes = [replace(wl, group_size=wl.eval_samples, prompts_per_step=full),
              replace(wl, group_size=1, prompts_per_step=full)]
    return max((rollout_phase(shape, w) for w in passes), key=lambda r: r["total"])


def lora_forward_transient(shape: ModelShape, wl: Workload, tokens: int) -> int:
    """Bytes a peft LoRA linear adds, in a no-grad forward of `tokens` tokens, on top of the
    base layer's output, for the largest adapted linear: the input cast to the adapters' fp32
    [tokens, in], and lora_B's fp32 output [tokens, out] beside its scaled copy (or the fp32
    sum with the base output, the same size) before the cast back. 0 without LoRA or in fp32."""
    if not wl.lora or wl.dtype_bytes == 4:
        return 0
    dims = shape.linear_dims()
    return max((4 * tokens * (dims[m][0] + 2 * dims[m][1]) for m in wl.lora_targets if m in dims), default=0)


def prefill_working_set(shape: ModelShape, wl: Workload, rows: int, seq: int, masked: bool) -> int:
    """One decoder layer's transients in a no-grad forward of rows x seq tokens (the MLP's
    [tokens, I] tensors dominate), with sdpa's repeated k, v and masks when masked, and a
    LoRA linear's fp32 temporaries (`lora_forward_transient`)."""
    b, H, n = wl.dtype_bytes, shape.hidden, rows * seq
    mask = attention_mask_bytes(rows, seq, b) if masked else {"bool": 0, "additive": 0}
    return ((2 * b * H + 8 * H + 3 * b * shape.intermediate) * n + (2 * b * shape.q_dim * n if masked else 0)
            + mask["bool"] + mask["additive"] + lora_forward_transient(shape, wl, n))


def simple_rollout(shape: ModelShape, wl: Workload, decode_tokens: int | None = None) -> dict:
    """Peak of the rollout with `SimpleEngine` (HF DynamicCache): prefill of one engine
    batch's prompts (left-padded), the cache repeated G times, then `decode_tokens` (default:
    all completion tokens) decode steps, each `torch.cat`-ing one token onto every layer."""
    b, V, Lyr = wl.dtype_bytes, shape.vocab, shape.layers
    C = wl.completion_tokens if decode_tokens is None else decode_tokens
    G, Tp = wl.group_size, wl.prompt_tokens
    per_batch = max(1, min(wl.rank_prompts, wl.rollout_batch_size // G))
    rows = per_batch * G
    resident = {k: v for k, v in resident_parts(shape, wl).items() if k != "gradients"}
    resident.update(gathered_parts(shape, wl, "rollout"))
    kv_tok = 2 * Lyr * shape.kv_dim * b  # K and V of one token, all layers
    n_p = per_batch * Tp
    masked = wl.variable_lengths and per_batch > 1
    moments = {
        "prefill": {"KV cache": kv_tok * n_p,
                    "prefill working set": prefill_working_set(shape, wl, per_batch, Tp, masked)},
        "cache repeated G times": {"KV cache": kv_tok * n_p * G + kv_tok * n_p // Lyr},
        "last decode step": {
            "KV cache": kv_tok * rows * (Tp + C),
            "KV copy in torch.cat (one layer's K)": kv_tok // (2 * Lyr) * rows * (Tp + C),
            "logits + sampling": rows * V * (b + 3 * 4) + 8 * rows * (Tp + C),
        },
    }
    name, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    return {"total": sum(resident.values()) + sum(parts.values()), "moment": name, "parts": {**resident, **parts},
            "sizes": {"KV cache per token (all layers)": kv_tok},
            "plan": {"rows": rows, "prompts_per_batch": per_batch}}


def fast_rollout(shape: ModelShape, wl: Workload) -> dict:
    """Peak of the rollout with `FastEngine` (`rollout/engine.py`).

    The static cache (`fast_engine_kept`) is allocated first and kept. Prefill: each prompt
    of a batch through the HF model alone (no padding, no mask), its DynamicCache copied into
    a prompt slot; the previous prompt's output is still referenced while the next runs, so
    two DynamicCaches exist at once. Decode: one token per row over the static cache; the
    Triton kernels (CUDA) need no per-layer copies, the torch kernels (CPU) gather each
    row's prompt keys and values and score [rows, heads, P_cap + N_cap] in fp32. Logits
    [rows, V] in the compute dtype and fp32, and sampling's fp32 temporaries, come on top.
    The peak does not depend on how many tokens were decoded (the cache is static)."""
    b, V, Lyr = wl.dtype_bytes, shape.vocab, shape.layers
    plan = fast_engine_plan(wl)
    kept = fast_engine_kept(shape, wl)
    resident = {k: v for k, v in resident_parts(shape, wl).items() if k != "gradients"}
    resident["rollout caches (fast engine)"] = sum(kept.values())
    resident.update(gathered_parts(shape, wl, "rollout"))
    kv_tok = 2 * Lyr * shape.kv_dim * b
    P, rows = wl.prompt_tokens, plan["completion rows"]
    caps = plan["prompt capacity"] + plan["completion capacity"]
    attention = 0
    if wl.device == "cpu":  # decode_attention_torch: gathered prompt K and V, fp32 scores (masked, cat, softmax)
        attention = 2 * rows * shape.kv_dim * plan["prompt capacity"] * b + 4 * 4 * rows * shape.heads * caps
    logits = rows * V * (b + 4 if b != 4 else 4)
    moments = {
        "prefill": {"DynamicCache of two prompts": kv_tok * P * min(2, plan["prompt slots"]),
                    "prefill working set": prefill_working_set(shape, wl, 1, P, False)},
        "decode step": {"attention working set": attention, "logits + sampling": logits + 4 * 4 * rows * V},
    }
    name, parts = max(moments.items(), key=lambda kv: sum(kv[1].values()))
    return {"total": sum(resident.values()) + sum(parts.values()), "moment": name, "parts": {**resident, **parts},
            "sizes": {"KV cache per token (all layers)": kv_tok, **kept}, "plan": plan}


def allocator_slack(peak_bytes: int) -> int:
    """Rule of thumb for what the device needs beyond `max_memory_allocated`: the caching
    allocator's fragmentation (~5% of the peak) plus the CUDA context and kernels (~0.6 GiB)."""
    return int(0.05 * peak_bytes) + int(0.6 * GiB)


def estimate(shape: ModelShape, wl: Workload) -> dict:
    """Every phase (rollout, train, and eval when the run evaluates), the peak (max over
    phases) and the device need (peak + slack), in bytes."""
    phases = {"rollout": rollout_phase(shape, wl), "train": train_phase(shape, wl), "eval": eval_phase(shape, wl)}
    phases = {k: v for k, v in phases.items() if v is not None}
    peak = max(v["total"] for v in phases.values())
    return {"shape": asdict(shape), "workload": asdict(wl), "params": shape.params(), **phases,
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
    most = BATCH_BUCKETS[-1] if wl.engine == "fast" else 1 << 14  # the fast engine decodes at most 256 rows
    g = _largest(lambda x: fits(shape, replace(wl, group_size=x), gpu_bytes), 2, most)
    c = _largest(lambda x: fits(shape, replace(wl, completion_tokens=x), gpu_bytes), 1, 1 << 20)
    return {"group_size": g if g >= 2 else 0, "completion_tokens": max(c, 0),
            "context_tokens": wl.prompt_tokens + c if c > 0 else 0}


def pick_micro_batch_tokens(shape: ModelShape, wl: Workload, gpu_bytes: int) -> int:
    """The configured budget if it fits, else the largest budget of whole completions
    (`budget_for_rows`: padded rows; packed, prompt + k completions of a group, or whole
    groups) that does;
    0 when not even one completion per micro-batch fits. A budget of 0 (the whole batch or
    group) is kept only if it fits."""
    if fits(shape, wl, gpu_bytes):
        return wl.micro_batch_tokens
    ok = lambda r: fits(shape, replace(wl, micro_batch_tokens=budget_for_rows(wl, r)), gpu_bytes)  # noqa: E731
    rows = _largest(ok, 1, max_rows(wl))
    return budget_for_rows(wl, rows) if rows >= 1 else 0
