"""Fast rollout engine: one prefill per prompt, a static KV cache, decode steps in CUDA graphs.

Why not `transformers.generate`: decoding a 1.5B model is bound by memory bandwidth (each
step reads ~3.1 GB of weights plus the KV cache, 1-3 ms on an H100), but the HF loop
spends ~100 ms per step in Python and kernel launches. Here:

* each prompt is prefilled once by the HF model itself, and its keys/values are stored once,
  in a *prompt cache* slot, not copied into the G rows that sample from it;
* each row's generated keys/values go to its own row of a *completion cache*:
  prompt cache   [layers, prompt slots, kv_heads, P_cap, head_dim]
  completion cache [layers, rows, kv_heads, N_cap, head_dim]
  Row b reads keys 0..prefix_len[b]-1 of slot prefix_slot[b], then its own completion keys
  0..comp_pos[b] (its token sits at absolute position prefix_len[b] + comp_pos[b]);
* a decode step is our own forward over the *model's own modules* (so LoRA adapters,
  biases and weight updates from the trainer are used as they are, without a copy) plus a
  few fused kernels (`kernels/decode.py`): residual add + RMSNorm -> q/k/v projections -> rotary and
  cache write -> split-K attention over each row's own length -> o_proj -> add + RMSNorm ->
  gate/up projections -> SiLU * up -> down projection. The kernels are Triton on CUDA and
  plain torch elsewhere (`kernels="torch"` forces the torch versions on CUDA too);
* the projections run as the modules themselves (cuBLAS for nn.Linear), except at batch
  sizes up to 16 under the Triton kernel set: there q/k/v go through one small-batch GEMV
  launch and gate/up through another with SiLU * up in its epilogue (`kernels/gemv.py`),
  reading the modules' own weight tensors, when those modules are plain nn.Linear (a group
  with a LoRA-wrapped module runs as modules). o_proj, down_proj and the LM head stay
  modules: for one matrix cuBLAS measured as fast (`kernels="triton-nogemv"`: the Triton
  kernels with every projection as a module and the torch sampler);
* on CUDA a step is captured once per batch bucket (and cache capacity) in a CUDA graph
  and replayed;
* sampling (temperature, top-k, top-p) runs on the device (under the Triton set, without
  top-k / top-p, as one pass over the logits: `kernels/sampling.py`); stop strings are matched on
  decoded text across token boundaries on the host, which needs the new token ids each
  step (a few bytes);
* when finished rows leave the batch small enough for a smaller bucket, the live rows'
  completion caches are compacted into it (the prompt cache stays where it is).

Supports decoder-only Llama/Qwen2-family models (`model.model.layers[i].self_attn.{q,k,v,o}_proj`,
`mlp.{gate,up,down}_proj`, RMSNorms, rotary embeddings). Tested against transformers'
own logits and greedy `generate` (tests/rollout/test_engine.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from tirgrpo.kernels import gemv
from tirgrpo.kernels.decode import select_kernels
from tirgrpo.rollout.sampling import HostCopy
from tirgrpo.rollout.simple import eos_ids
from tirgrpo.rollout.tracker import SequenceTracker
from tirgrpo.rollout.types import Completion, SamplingParams

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _bucket(n: int, buckets) -> int:
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"{n} is larger than the largest bucket {buckets[-1]}")


def _decoder(model):
    """The HF decoder (`.model` of a CausalLM), looking through a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.lm_head


def _cache_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, Hkv, T, D] of one layer of a transformers cache object."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


@dataclass
class KVCache:
    """The static cache: prompts once per slot, completions once per row.

    k_prompt, v_prompt: [L, slots, Hkv, P_cap, D]; k_comp, v_comp: [L, rows, Hkv, N_cap, D].
    """

    k_prompt: torch.Tensor
    v_prompt: torch.Tensor
    k_comp: torch.Tensor
    v_comp: torch.Tensor

    @property
    def capacity(self) -> tuple[int, int, int, int]:
        """(slots, P_cap, rows, N_cap)."""
        return (self.k_prompt.shape[1], self.k_prompt.shape[3], self.k_comp.shape[1], self.k_comp.shape[3])


class FastEngine:
    """Rollout engine with the same interface as `SimpleEngine`.

    max_batch: most rows decoded at once (prompts per batch = max_batch // G).
    length_buckets: capacities of the prompt cache (longest prompt of a batch) and of the
    completion cache (max_new_tokens), each rounded up to the smallest bucket that holds it.
    kernels: "auto" (Triton on CUDA when triton imports, else torch), "torch", "triton",
    "triton-nogemv" (Triton without the small-batch projection kernels and with the torch
    sampler) or "triton-perrow" (Triton without the rows-of-slot index; kernels/decode.py).
    """

    def __init__(self, model, tokenizer, max_batch: int = 64, length_buckets=(128, 256, 512, 1024, 2048, 4096, 8192, 16384),
                 use_cuda_graphs: bool | None = None, kernels: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.length_buckets = tuple(length_buckets)
        self.eos = eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (min(self.eos) if self.eos else 0)
        self.decoder, self.lm_head = _decoder(model)
        cfg = self.decoder.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.device = next(model.parameters()).device
        self.dtype = next(self.decoder.parameters()).dtype
        self.kernels = select_kernels(kernels, self.device)
        norms = [self.decoder.norm] + [n for layer in self.decoder.layers
                                       for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        if not all(hasattr(n, "variance_epsilon") and hasattr(n, "weight") for n in norms):
            raise ValueError(f"FastEngine needs HF RMSNorms (weight, variance_epsilon), got {type(norms[0]).__name__}")
        # SiLU(gate) * up is fused only where the MLP is known to be exactly that; other MLPs run as modules.
        mlps = {type(layer.mlp).__name__ for layer in self.decoder.layers}
        self.fused_mlp = getattr(cfg, "hidden_act", None) == "silu" and mlps <= {"Qwen2MLP", "LlamaMLP"}
        self.graphs_enabled = (self.device.type == "cuda") if use_cuda_graphs is None else use_cuda_graphs
        self._cache: KVCache | None = None
        self._graphs: dict[int, tuple] = {}  # batch bucket -> (graph, its input buffers, logits)
        self._graph_weights: tuple[int, ...] = ()  # the weights' addresses the graphs read
        self.graph_capture_s = 0.0

    # ------------------------------------------------------------------ the decode step

    def _qkv(self, x: torch.Tensor, attn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, N_i] of x [B, H]: one small-batch GEMV launch over the three modules'
        own weights where the kernel set allows it at this batch size and all three are plain
        nn.Linear (kernels/gemv.py); otherwise each module runs itself (cuBLAS, or LoRA)."""
        qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
        if x.shape[0] <= self.kernels.gemv_max_batch and gemv.supports(x, qkv):
            return self.kernels.linears(x, [m.weight for m in qkv], [m.bias for m in qkv])
        return tuple(m(x) for m in qkv)

    def _mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        if not self.fused_mlp:
            return mlp(x)
        gate_up = (mlp.gate_proj, mlp.up_proj)
        if x.shape[0] <= self.kernels.gemv_max_batch and gemv.supports(x, gate_up, glu=True):
            # gate and up (same shape) in one launch, SiLU(gate) * up in its epilogue
            act = self.kernels.gate_up_silu(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.gate_proj.bias,
                                            mlp.up_proj.bias)
        else:
            act = self.kernels.silu_mul(mlp.gate_proj(x), mlp.up_proj(x))
        # down_proj (and o_proj) stay modules: one matrix, where cuBLAS measured as fast
        return mlp.down_proj(act)

    def _decode_step(self, tokens: torch.Tensor, prefix_slot: torch.Tensor, prefix_len: torch.Tensor,
                     comp_pos: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row; all inputs [B] long. Returns logits [B, V] fp32.

        Row b's token is at absolute position prefix_len[b] + comp_pos[b]; its key/value are
        written at comp_pos[b] of completion row b, then it attends to prompt slot
        prefix_slot[b] (keys 0..prefix_len[b]-1) and its completion keys 0..comp_pos[b].
        """
        ops = self.kernels
        B = tokens.shape[0]
        pos, comp_len = prefix_len + comp_pos, comp_pos + 1
        rot = self.decoder.rotary_emb
        inv_freq, scaling = rot.inv_freq.float(), float(getattr(rot, "attention_scaling", 1.0))
        h, delta = self.decoder.embed_tokens(tokens), None  # residual stream [B, H], pending residual add
        # The rows of each prompt slot, once per step for all layers: the Triton attention then
        # reads a slot's prompt keys once for all its rows (None under the torch set).
        slot_rows = ops.prompt_rows(prefix_slot, prefix_len, cache.k_prompt.shape[1], self.n_heads // self.n_kv)
        for i, layer in enumerate(self.decoder.layers):
            attn, norm = layer.self_attn, layer.input_layernorm
            h, x = ops.add_rmsnorm(h, delta, norm.weight, norm.variance_epsilon)
            q, k, v = self._qkv(x, attn)
            q, k, v = (q.view(B, self.n_heads, self.head_dim), k.view(B, self.n_kv, self.head_dim),
                       v.view(B, self.n_kv, self.head_dim))
            ops.rotary_cache_write(q, k, v, cache.k_comp[i], cache.v_comp[i], pos, comp_pos, inv_freq, scaling)
            out = ops.decode_attention(q, cache.k_prompt[i], cache.v_prompt[i], cache.k_comp[i], cache.v_comp[i],
                                       prefix_slot, prefix_len, comp_len, slot_rows)
            delta = attn.o_proj(out.view(B, self.n_heads * self.head_dim))
            norm = layer.post_attention_layernorm
            h, x = ops.add_rmsnorm(h, delta, norm.weight, norm.variance_epsilon)
            delta = self._mlp(layer.mlp, x)
        norm = self.decoder.norm
        _, x = ops.add_rmsnorm(h, delta, norm.weight, norm.variance_epsilon)
        return self.lm_head(x).float()

    def _ensure_cache(self, slots: int, prompt_len: int, rows: int, new_len: int) -> None:
        """Allocate (or grow) the cache to hold `slots` prompts of `prompt_len` and `rows` rows of `new_len`."""
        want = (slots, prompt_len, rows, new_len)
        if self._cache is not None:
            have = self._cache.capacity
            if all(h >= w for h, w in zip(have, want)):
                return
            want = tuple(max(h, w) for h, w in zip(have, want))
        slots, prompt_len, rows, new_len = want
        self._cache = None
        self._graphs.clear()  # graphs hold pointers into the old cache

        def zeros(n, length):
            return torch.zeros((self.n_layers, n, self.n_kv, length, self.head_dim), dtype=self.dtype,
                               device=self.device)

        self._cache = KVCache(zeros(slots, prompt_len), zeros(slots, prompt_len), zeros(rows, new_len),
                              zeros(rows, new_len))

    def release_cache(self) -> None:
        """Free the static cache and the graphs captured over it. The next `generate` allocates
        a cache for its own batch. The cache only grows, so without this a large batch (an
        evaluation's greedy pass: one prompt slot per row, `max_batch` slots) would keep its
        size through training."""
        self._cache = None
        self._graphs.clear()

    def _step_fn(self, B: int):
        """A callable (tokens, prefix_slot, prefix_len, comp_pos: [B]) -> logits [B, V] over the current cache."""
        cache = self._cache
        if not self.graphs_enabled:
            return lambda *inputs: self._decode_step(*inputs, cache)
        if B not in self._graphs:
            t0 = time.perf_counter()
            # Warm-up runs really write k/v at comp_pos: use the completion cache's last
            # position, which no row reads before writing it (comp_pos < max_new_tokens - 1).
            # prefix_len 0 / slot 0 touch no prompt; the grid does not depend on these values.
            _, _, _, new_cap = cache.capacity
            inputs = tuple(torch.zeros(B, dtype=torch.long, device=self.device) for _ in range(3))
            inputs += (torch.full((B,), new_cap - 1, dtype=torch.long, device=self.device),)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            # Warm-up outside the graph: allocator, cuBLAS handles, and Triton's compilation,
            # which must not happen during capture.
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._decode_step(*inputs, cache)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._decode_step(*inputs, cache)
            torch.cuda.synchronize()
            self.graph_capture_s += time.perf_counter() - t0
            self._graphs[B] = (graph, inputs, logits)
        graph, buffers, logits_buf = self._graphs[B]

        def run(*inputs):
            for buf, x in zip(buffers, inputs):
                buf.copy_(x)
            graph.replay()
            return logits_buf

        return run

    def graph_ms(self, repeats: int = 50) -> dict[int, float]:
        """{batch width: median ms of one replay of its captured decode graph}, GPU time by CUDA
        events, replays back to back with no host work between them: the decode step's forward
        with the graph's own gaps between kernels, without sampling and without the host loop.
        Beside `bench rollout`'s wall ms per step it says whether the rest is the host's; {} when
        no graph was captured. The replays write keys/values at the positions of their last
        inputs, which no later generate() reads before writing them."""
        from tirgrpo.perf.timing import cuda_median_ms

        out = {}
        for width, (graph, _, _) in sorted(self._graphs.items()):
            graph.replay()  # warm
            out[width] = cuda_median_ms(graph.replay, repeats)
        return out

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], group_size: int, params: SamplingParams,
                 generator: torch.Generator | None = None, share_prefill: bool = True) -> list[list[Completion]]:
        """Sample `group_size` completions per prompt (token ids, bos included), in prompt order.

        share_prefill=False prefills every row on its own, into its own prompt slot (for
        tests: same tokens either way).
        """
        was_training = self.model.training
        self.model.eval()
        if self.graphs_enabled:
            # graphs read weights (and buffers: the rotary inv_freq) at the addresses of their
            # capture; weights gathered anew for each rollout (FSDP, train/dist.py) may live
            # elsewhere, and a dynamic rotary scaling re-registers its buffer, so the graphs are
            # captured again
            weights = tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))
            if weights != self._graph_weights:
                self._graphs.clear()
                self._graph_weights = weights
        out: list[Completion] = []
        per_batch = max(1, self.max_batch // group_size)
        try:
            for start in range(0, len(prompt_ids), per_batch):
                out.extend(self._generate_batch(prompt_ids[start : start + per_batch], group_size, params,
                                                generator, share_prefill))
        finally:
            self.model.train(was_training)
        return [out[i : i + group_size] for i in range(0, len(out), group_size)]

    def _prefill(self, prompts: list[list[int]], group_size: int, share: bool) -> tuple[torch.Tensor, list[int]]:
        """Run the HF model over each prompt once, store its keys/values in a prompt slot.

        Returns the next-token logits [len(prompts) * G, V] (fp32) and each row's slot: prompt
        i's slot (shared), or one slot per row (not shared).
        """
        cache = self._cache
        logits, row_slot = [], []
        for i, p in enumerate(prompts):
            copies = 1 if share else group_size
            rows_per_copy = group_size // copies
            for c in range(copies):
                slot = i * copies + c
                out = self.model(input_ids=torch.tensor([p], device=self.device), use_cache=True, logits_to_keep=1)
                for layer in range(self.n_layers):
                    k, v = _cache_kv(out.past_key_values, layer)  # [1, Hkv, T, D]
                    cache.k_prompt[layer, slot, :, : len(p)] = k[0]
                    cache.v_prompt[layer, slot, :, : len(p)] = v[0]
                logits.append(out.logits[:, -1].float().expand(rows_per_copy, -1))
                row_slot += [slot] * rows_per_copy
        return torch.cat(logits, dim=0), row_slot

    def _sample(self, track: SequenceTracker, logits: torch.Tensor, step: int, params: SamplingParams,
                generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Step `step`'s tokens [B] (long) and log-probs [B] (fp32, nats) from logits [B, V], on the device."""
        logits = track.forbid_eos(logits, step)
        return self.kernels.sample(logits, params.temperature, params.top_p, params.top_k, generator)

    def _capacity(self, n: int) -> int:
        return _bucket(n, self.length_buckets) if n <= self.length_buckets[-1] else n

    def _generate_batch(self, prompts, group_size: int, params: SamplingParams, generator,
                        share: bool) -> list[Completion]:
        n = len(prompts) * group_size
        B = _bucket(n, BATCH_BUCKETS)
        self._ensure_cache(len(prompts) if share else n, self._capacity(max(len(p) for p in prompts)), B,
                           self._capacity(params.max_new_tokens))
        cache = self._cache
        logits, row_slot = self._prefill(prompts, group_size, share)

        track = SequenceTracker(n, self.tokenizer, params, self.eos)
        width = B
        row_seq: list[int | None] = list(range(n)) + [None] * (B - n)  # which sequence each cache row holds

        def per_row(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=self.device)

        # Padding rows read slot 0 with no prompt keys and write their own completion row.
        prefix_slot = per_row(row_slot + [0] * (B - n))
        prefix_len = per_row([len(p) for p in prompts for _ in range(group_size)] + [0] * (B - n))
        comp_pos = per_row([0] * B)
        advance = per_row([seq is not None for seq in row_seq])
        logits = torch.cat([logits, logits.new_zeros((B - n, logits.shape[1]))])
        step_fn = self._step_fn(width)
        host = HostCopy()
        new, logp = self._sample(track, logits, 0, params, generator)
        for step in range(params.max_new_tokens):
            sampled = host.start(new, logp)
            if step + 1 < params.max_new_tokens:
                # The next forward and sample are queued before the host reads this step's
                # tokens, so the GPU works while the host records them. A row that has just
                # finished runs one step for nothing; record() drops its token.
                logits = step_fn(new, prefix_slot, prefix_len, comp_pos)
                comp_pos = comp_pos + advance
                new, logp = self._sample(track, logits, step + 1, params, generator)
            track.record(step, row_seq, *HostCopy.wait(sampled))
            alive = [r for r, seq in enumerate(row_seq) if track.live(seq)]
            if not alive:
                break
            smaller = _bucket(len(alive), BATCH_BUCKETS)
            if smaller < width:
                # Finished rows would keep costing attention: move the live rows to the front
                # and continue with the graph of the smaller bucket. Only completion rows
                # move (with the step just queued: its keys, positions, sampled tokens); the
                # rows keep pointing at their prompt slots.
                idx = per_row(alive)
                cache.k_comp[:, : len(alive)] = cache.k_comp[:, idx]
                cache.v_comp[:, : len(alive)] = cache.v_comp[:, idx]
                pad = smaller - len(alive)
                row_seq = [row_seq[r] for r in alive] + [None] * pad
                new = torch.cat([new[idx], new.new_full((pad,), self.pad_id)])
                logp = torch.cat([logp[idx], logp.new_zeros(pad)])
                prefix_slot, prefix_len, comp_pos = (torch.cat([t[idx], t.new_zeros(pad)])
                                                     for t in (prefix_slot, prefix_len, comp_pos))
                advance = per_row([seq is not None for seq in row_seq])
                width = smaller
                step_fn = self._step_fn(width)

        return track.completions()
