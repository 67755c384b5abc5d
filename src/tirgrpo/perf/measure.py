"""Measuring a step's peak memory: one rollout and one train phase as the trainer runs them."""

from __future__ import annotations

from tirgrpo.perf.shape import ModelShape, shape_from_spec
from tirgrpo.perf.workload import Workload


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
    buffers), `optim.AdamW` optimizers (states), the fast engine (its static cache) and
    lists of `train.step.MicroBatch` (their input tensors, built before the update): what the
    CPU meter counts as resident."""
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
        elif getattr(obj, "_cache", None) is not None:  # FastEngine's KVCache
            for t in vars(obj._cache).values():
                add(t)
        elif isinstance(obj, list):  # micro-batches: padded rows or packed groups (a dense mask is [1, 1, T, T])
            for mb in obj:
                for t in vars(mb.inputs).values():
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


def make_engine(model, tokenizer, wl: Workload, prompt_ids: list[list[int]]):
    """The workload's rollout engine over `model`. The fast engine's static cache is sized
    up front for `wl.completion_tokens` (as the trainer's engine is after its first rollout),
    so a measurement that decodes fewer tokens still holds the run's cache."""
    if wl.engine == "simple":
        from tirgrpo.rollout.simple import SimpleEngine

        return SimpleEngine(model, tokenizer, batch_size=wl.rollout_batch_size)
    from tirgrpo.rollout.engine import BATCH_BUCKETS, FastEngine, _bucket

    engine = FastEngine(model, tokenizer, max_batch=wl.rollout_batch_size)
    first = prompt_ids[: max(1, wl.rollout_batch_size // wl.group_size)]
    engine._ensure_cache(len(first), engine._capacity(max(len(p) for p in first)),
                         _bucket(len(first) * wl.group_size, BATCH_BUCKETS), engine._capacity(wl.completion_tokens))
    return engine


def training_completions(groups, wl: Workload, vocab: int, seed: int) -> list[list[int]]:
    """wl.completion_tokens token ids per completion: the decoded ones, extended with random
    ones when fewer were decoded; the last completion of each group one token shorter, so
    padded micro-batches of several rows carry a padding mask, as in real runs."""
    import torch

    G, C = wl.group_size, wl.completion_tokens
    rng = torch.Generator().manual_seed(seed)
    comps = []
    for j, c in enumerate(cc for g in groups for cc in g):
        ids = list(c.token_ids)[:C]
        ids += torch.randint(0, min(1000, vocab - 1), (C - len(ids),), generator=rng).tolist()
        comps.append(ids[: C - 1] if j % G == G - 1 and C > 1 else ids)
    return comps


def measure_step(model, ref_model, optimizer, prompt_ids: list[list[int]], wl: Workload, device,
                 decode_tokens: int | None = None, tokenizer=None, seed: int = 0) -> dict[str, int]:
    """Run one rollout and one train phase as the trainer does; measured peak bytes of each.

    Rollout: the workload's engine (`wl.engine`) decodes `decode_tokens` tokens (default
    wl.completion_tokens) with eos forbidden. Train phase: the workload's layout
    (`wl.prefix`: padded rows or packed groups) built by `build_micro_batches`, reference
    log-probs, then `grpo_update`; the rollout engine (and the fast engine's cache) stays
    alive, as in the trainer. Block and split forms switch the models to the prefix attention.
    """
    import torch

    from tirgrpo.config import GRPOConfig
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.train.model import eager_layers
    from tirgrpo.train.step import GRPOObjective, build_micro_batches, grpo_update, reference_logprobs

    G, C = wl.group_size, wl.completion_tokens
    dec = C if decode_tokens is None else decode_tokens
    if wl.prefix in ("block", "split"):
        from tirgrpo.train.prefix import use_prefix_attention

        for m in (model, ref_model):
            if m is not None:
                use_prefix_attention(m)
    eos = getattr(model.config, "eos_token_id", None)
    engine = make_engine(model, tokenizer or _StubTokenizer(eos if isinstance(eos, int) else 0), wl, prompt_ids)
    params = SamplingParams(dec, 1.0, 1.0, 0, [], min_new_tokens=dec)
    gen = torch.Generator(device=device).manual_seed(seed)
    resident = [x for x in (model, ref_model, optimizer) if x is not None]
    with PeakMeter(device, resident + [engine]) as m_roll, eager_layers():  # as the trainer generates
        groups = engine.generate(prompt_ids, G, params, gen)
    comps = training_completions(groups, wl, model.config.vocab_size, seed + 1)
    prompts = [p for p in prompt_ids for _ in range(G)]
    batches = build_micro_batches(prompts, comps, G, wl.micro_batch_tokens, wl.prefix, engine.pad_id, device)
    rng = torch.Generator().manual_seed(seed + 2)
    advs = [torch.randn(len(b.rows), generator=rng).to(device) for b in batches]
    cfg = GRPOConfig(beta=0.1 if (ref_model is not None or wl.lora) else 0.0)
    chunk = wl.logprob_chunk_tokens
    n_seq, n_tok = len(comps), sum(len(c) for c in comps)
    model.train()
    with PeakMeter(device, resident + [engine, batches]) as m_train:
        # as the trainer: the first update's own log-probs serve as the old ones (no extra pass)
        refs = [None] * len(batches)
        if cfg.beta > 0:
            refs = [reference_logprobs(model, ref_model, bt, chunk, 1.0) for bt in batches]
        grpo_update(model, optimizer, batches, GRPOObjective(cfg, advs, refs, C, n_seq, n_tok), 1.0, chunk)
    del engine
    return {"rollout": m_roll.peak, "train": m_train.peak, "micro_batches": len(batches)}


def measure_config(cfg, device) -> dict[str, int]:
    """Load the configured model (weights, LoRA, checkpointing), reference and optimizer as
    `tirgrpo train` does (train/loop.py), then `measure_step` on synthetic prompts of the
    configured length."""
    import torch

    from tirgrpo.train.model import load_base_model, load_policy, resolve_init
    from tirgrpo.train.plan import planned_workload

    from tirgrpo.train.optim import AdamW

    plan, wl = planned_workload(cfg, device)
    dtype = plan.torch_dtype
    shape = shape_from_spec(cfg.model.name_or_path)
    torch.manual_seed(cfg.run.seed)
    model = load_policy(cfg.model, device, dtype, cfg.run.seed, attention=plan.attention,
                        checkpointing=plan.gradient_checkpointing)
    ref = None
    if wl.reference_model:
        ref = load_base_model(resolve_init(cfg.model), device, dtype, cfg.run.seed,
                              attention=plan.attention).requires_grad_(False).eval()
    opt = AdamW(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, master_fp32=wl.master_fp32,
                bf16_update=wl.bf16_update, seed=cfg.run.seed)
    prompts = synthetic_batch(shape, wl.prompts_per_step, wl.prompt_tokens, cfg.run.seed)
    return measure_step(model, ref, opt, prompts, wl, device, seed=cfg.run.seed)
