"""Continuous batching on FastEngine's decode step: requests join and leave at step boundaries.

`FastEngine.generate` runs one fixed batch to its end. A server cannot: requests arrive while
others are half done. `ContinuousBatcher` keeps one static cache (allocated once, its size
fixed by `max_rows`, `max_prompt_len` and `max_new_tokens`) and runs a loop of steps; each
`step()`:

1. admits waiting groups (one prompt x n rows) in arrival order while rows and prompt slots
   are free: their prompts are prefilled together (right-padded, one HF forward, at most
   `max_prefill_tokens` padded tokens per step) into free prompt slots, and their rows are
   appended after the live rows;
2. samples one token for every live row (per-row temperature, top-p, top-k);
3. launches the next decode step over the live rows with those tokens, padded to a batch
   bucket (a CUDA graph per bucket on GPU, captured by `warmup()`);
4. while the GPU decodes, records the tokens on the host and reports them to each group's
   `sink` (token ids, log-probs, the text that is safe to stream, and the finished
   `Completion` when a row ends); on a CPU, where nothing runs behind the host's back, it
   reports them before the decode step instead;
5. releases finished and cancelled rows: the last live rows move into their places (their
   completion keys and next-token logits are copied), so live rows stay 0..n_live-1.

Rows keep pointing at their group's prompt slot: a prompt's keys are stored once however
many rows sample from it, as in FastEngine. FIFO admission means no request waits behind
later ones. Greedy rows give the same tokens as `FastEngine.generate` on the same prompt
(tests/rollout/test_continuous.py).

`step()` is called by one thread only (`start()` runs it in a background thread, on CUDA
after `warm_prefill()` there); `submit` and `cancel` may be called from any thread. Each group's
`timing` records when it was queued, admitted (with whom, beside how many running rows) and
when its first token reached the host; `stats` sums the steps' phases (tir/serve_timing.py
reports both).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tirgrpo.rollout.engine import BATCH_BUCKETS, FastEngine, _bucket, _cache_kv
from tirgrpo.rollout.per_row import TokenText, _TextState, sample_rows
from tirgrpo.rollout.sampling import HostCopy
from tirgrpo.rollout.types import Completion, SamplingParams


# ----------------------------------------------------------------------------- requests


@dataclass
class RowUpdate:
    """What one row produced in one step, handed to its group's sink."""

    index: int  # row within the group, 0..n-1
    token_ids: list[int]
    logprobs: list[float]
    text: str  # new text safe to stream (held back while it may still become a stop string)
    completion: Completion | None = None  # set when the row has finished


@dataclass
class Timing:
    """Where a group's time to first token went: `time.perf_counter()` seconds (0: not yet), the
    same clock in every thread (and, on Linux, every process: CLOCK_MONOTONIC)."""

    submitted: float = 0.0  # `submit()` queued it
    admitted: float = 0.0  # the step that admits it began its prefill
    first_token: float = 0.0  # its first token reached the host, before its sink heard of it
    prefill_s: float = 0.0  # the prefill's own time (on a GPU by CUDA events: gaps between its launches included)
    prefill_groups: int = 0  # groups prefilled together with it (itself included)
    prefill_tokens: int = 0  # padded prompt tokens of that prefill
    running_rows: int = 0  # rows that were decoding and waited for that prefill
    steps_waited: int = 0  # steps begun after its submission and before the one that admitted it
    submitted_step: int = 0
    events: tuple | None = field(default=None, repr=False)  # CUDA (start, end) of the prefill, read later


@dataclass
class Group:
    """One prompt sampled n times: the unit of admission. `sink(updates)` runs on the batcher's thread."""

    prompt_ids: list[int]
    n: int
    params: SamplingParams
    sink: Callable[[list[RowUpdate]], None]
    generator: torch.Generator | None = None  # CPU generator for this group's random numbers
    cancelled: bool = False
    error: str | None = None
    seqs: list["_Seq"] = field(default_factory=list)
    slot: int = -1
    timing: Timing = field(default_factory=Timing)

    def __post_init__(self):
        self.stops = [x for x in self.params.stop if x]
        self.hold = max((len(x) for x in self.stops), default=1) - 1  # text that may still become a stop string


@dataclass
class _Seq:
    group: Group
    index: int
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    text: str = ""
    streamed: int = 0  # characters of `text` already handed out
    state: _TextState | None = None
    finish: str | None = None
    stop: str | None = None


class ContinuousBatcher:
    """Step-level generation over a FastEngine's model: submit groups any time, `step()` them along.

    max_rows: most rows decoded at once; prompt slots: max_rows too (a slot per group).
    max_prompt_len / max_new_tokens: the cache capacities (a longer prompt or a larger
    max_new_tokens is refused by `submit`). max_prefill_tokens: padded prompt tokens
    prefilled in one step (bounds how long a step of admissions delays the running rows).
    """

    def __init__(self, engine: FastEngine, max_rows: int = 64, max_prompt_len: int = 2048,
                 max_new_tokens: int = 2048, max_prefill_tokens: int = 8192, seed: int = 0):
        if max_rows > BATCH_BUCKETS[-1]:
            raise ValueError(f"max_rows {max_rows} is over the largest batch bucket {BATCH_BUCKETS[-1]}")
        self.engine, self.max_rows = engine, max_rows
        self.max_prompt_len, self.max_new_tokens = max_prompt_len, max_new_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.text = TokenText(engine.tokenizer)
        self.generator = torch.Generator().manual_seed(seed)  # rows of groups without their own
        engine._ensure_cache(max_rows, engine._capacity(max_prompt_len), _bucket(max_rows, BATCH_BUCKETS),
                             engine._capacity(max_new_tokens))
        self.cache = engine._cache
        self.waiting: collections.deque[Group] = collections.deque()
        self.free_slots = list(range(max_rows - 1, -1, -1))
        self.rows: list[_Seq] = []  # live rows, in cache-row order
        self.slot, self.prefix_len, self.comp_pos = [], [], []
        self._host = HostCopy()  # each step's tokens to the host, behind the next decode
        self.logits: torch.Tensor | None = None  # next-token logits of the live rows
        self.lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.cancelled_rows = 0  # rows released because their request went away (for /health)
        self.steps = 0  # steps run (Timing.steps_waited)
        # Record a step's tokens before launching its decode: where the decode runs on the host
        # (a CPU), there is nothing to overlap with, and the tokens go out one decode sooner.
        self.record_first = engine.device.type == "cpu"
        self.stats: collections.Counter = collections.Counter()  # seconds per phase of step(), for /debug/timings

    # ------------------------------------------------------------------ the outside view

    def submit(self, group: Group) -> None:
        """Queue a group (any thread). Raises ValueError when it can never fit."""
        if not group.prompt_ids or len(group.prompt_ids) > self.max_prompt_len:
            raise ValueError(f"prompt of {len(group.prompt_ids)} tokens; this batcher takes 1..{self.max_prompt_len}")
        if not 1 <= group.n <= self.max_rows:
            raise ValueError(f"n={group.n}; this batcher runs at most {self.max_rows} rows")
        if not 1 <= group.params.max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens={group.params.max_new_tokens}; at most {self.max_new_tokens}")
        group.timing.submitted, group.timing.submitted_step = time.perf_counter(), self.steps
        with self.lock:
            self.waiting.append(group)
            self.lock.notify()

    def cancel(self, group: Group) -> None:
        """Stop a group (any thread): its rows are released at the next step boundary."""
        group.cancelled = True
        with self.lock:
            self.lock.notify()

    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def queued(self) -> int:
        """Groups waiting for rows."""
        return len(self.waiting)

    def start(self, warm: bool | None = None) -> None:
        """Run `step()` in a daemon thread until `stop()`; it sleeps while there is nothing to do.

        warm (default: on CUDA): the thread first runs `warm_prefill()`, and `start` returns once
        it is done (raising what it raised), so that no request pays for first uses.
        """
        warm = self.engine.device.type == "cuda" if warm is None else warm
        ready, failed = threading.Event(), []

        def run():
            try:  # everything before `ready` is set: a failure must reach start(), not hang it
                if self.engine.device.type == "cuda":  # a new thread starts on device 0
                    torch.cuda.set_device(self.engine.device)
                if warm:
                    self.warm_prefill()
            except BaseException as e:
                failed.append(e)
                return
            finally:
                ready.set()
            self._loop()

        self._thread = threading.Thread(target=run, name="tirgrpo-batcher", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self._stopping and not self.busy():
                    self.lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # a model failure ends the running groups, not the server
                self._fail_all(f"{type(e).__name__}: {e}")

    def generate(self, prompt_ids: list[int], n: int, params: SamplingParams,
                 generator: torch.Generator | None = None) -> list[Completion]:
        """Submit one group and step until it is done (no background thread): for tests and scripts."""
        done: list[Completion | None] = [None] * n

        def sink(updates):
            for u in updates:
                if u.completion is not None:
                    done[u.index] = u.completion

        self.submit(Group(prompt_ids, n, params, sink, generator))
        while any(c is None for c in done):
            self.step()
        return done  # type: ignore[return-value]

    # ------------------------------------------------------------------ one step

    @torch.no_grad()
    def step(self) -> None:
        """Admit, sample, decode, record, release: one token for every live row.

        The next decode step is launched before the host looks at this step's tokens, so on a
        GPU the host's bookkeeping (stop strings, text, the sinks) runs while the GPU decodes.
        Rows that finish in this step ride along in that decode once (their output is dropped).
        """
        model = self.engine.model
        was_training = model.training  # a model shared with a trainer; .eval() walks every module: only if needed
        if was_training:
            model.eval()
        try:
            self.steps += 1
            clock = [time.perf_counter()]
            new_logits = self._admit()
            logits = [t for t in (self.logits, new_logits) if t is not None]
            if not self.rows:
                self.logits = None
                return
            clock.append(time.perf_counter())
            rows = len(self.rows)
            tokens, logp = self._sample(torch.cat(logits) if len(logits) > 1 else logits[0])
            host = self._host.start(tokens, logp)
            clock.append(time.perf_counter())
            if self.record_first:
                # Nothing runs behind the host's back: hand the tokens out (a new group's first
                # token among them) before the decode, not one decode step later, and skip the
                # decode when no row is left to use it.
                self._record_all(host)
                if any(s.finish is None for s in self.rows):
                    self.logits = self._decode(tokens)
            else:
                self.logits = self._decode(tokens)
                self._record_all(host)
            clock.append(time.perf_counter())
            self._release()
            clock.append(time.perf_counter())
            self._count(clock, rows)
        finally:
            if was_training:
                model.train()

    def _count(self, clock: list[float], rows: int) -> None:
        """Add one step's phases to `stats` (seconds): admit (prefill included), sample (on a GPU
        this waits for the previous decode step), decode and record (launch, tokens to the host,
        sinks), release."""
        st = self.stats
        for name, a, b in zip(("admit_s", "sample_s", "decode_record_s", "release_s"), clock, clock[1:]):
            st[name] += b - a
        st["steps"] += 1
        st["rows"] += rows

    def _admit(self) -> torch.Tensor | None:
        """Prefill the waiting groups that fit; returns their rows' next-token logits [rows, V]."""
        batch: list[Group] = []
        rows, width = len(self.rows), 0
        with self.lock:
            while self.waiting and self.free_slots:
                g = self.waiting[0]
                if g.cancelled:
                    self.waiting.popleft()
                    g.sink([])  # nothing ran: the sink learns the group is over through `cancelled`
                    continue
                longest = max([width] + [len(g.prompt_ids)])
                if rows + g.n > self.max_rows or (batch and longest * (len(batch) + 1) > self.max_prefill_tokens):
                    break
                self.waiting.popleft()
                g.slot = self.free_slots.pop()
                batch.append(g)
                rows, width = rows + g.n, longest
        if not batch:
            return None
        last = self._timed_prefill(batch, len(self.rows))  # [len(batch), V]
        out = []
        for i, g in enumerate(batch):
            g.seqs = [_Seq(g, j, state=self.text.start()) for j in range(g.n)]
            for s in g.seqs:
                self.rows.append(s)
                self.slot.append(g.slot)
                self.prefix_len.append(len(g.prompt_ids))
                self.comp_pos.append(0)
            out.append(last[i : i + 1].expand(g.n, -1))
        return torch.cat(out)

    def _timed_prefill(self, batch: list[Group], running: int) -> torch.Tensor:
        """`_prefill`, with when, how long and with whom written into each group's `timing`."""
        now = time.perf_counter()
        events = None
        if self.engine.device.type == "cuda":  # timed on the GPU; read once the first token is on the host
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        last = self._prefill(batch)
        if events is not None:
            events[1].record()
        took = time.perf_counter() - now
        tokens = len(batch) * max(len(g.prompt_ids) for g in batch)
        for g in batch:
            t = g.timing
            t.admitted, t.prefill_s, t.events = now, took if events is None else 0.0, events
            t.prefill_groups, t.prefill_tokens, t.running_rows = len(batch), tokens, running
            t.steps_waited = self.steps - 1 - t.submitted_step
        return last

    def _prefill(self, batch: list[Group]) -> torch.Tensor:
        """One right-padded forward over the groups' prompts; keys/values into their slots."""
        eng, cache = self.engine, self.cache
        lengths = [len(g.prompt_ids) for g in batch]
        width = max(lengths)
        ids = torch.tensor([g.prompt_ids + [eng.pad_id] * (width - len(g.prompt_ids)) for g in batch],
                           device=eng.device)
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long().to(eng.device)
        out = eng.decoder(input_ids=ids, attention_mask=mask if len(batch) > 1 else None, use_cache=True)
        slots = torch.tensor([g.slot for g in batch], device=eng.device)
        for layer in range(eng.n_layers):
            # One copy per layer; the padding's keys land past each prompt's length, never read.
            k, v = _cache_kv(out.past_key_values, layer)  # [G, Hkv, width, D]
            cache.k_prompt[layer, :, :, :width].index_copy_(0, slots, k)
            cache.v_prompt[layer, :, :, :width].index_copy_(0, slots, v)
        last = out.last_hidden_state[torch.arange(len(batch), device=eng.device),
                                     torch.tensor(lengths, device=eng.device) - 1]
        return eng.lm_head(last).float()

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per live row (device tensors [rows]: ids, log-probs), each row with its group's settings."""
        eng = self.engine
        n = len(self.rows)
        params = [s.group.params for s in self.rows]
        if eng.eos and any(len(s.tokens) < p.min_new_tokens for s, p in zip(self.rows, params)):
            rows = torch.tensor([len(s.tokens) < p.min_new_tokens for s, p in zip(self.rows, params)],
                                device=logits.device)
            eos = sorted(eng.eos)
            logits = logits.clone()
            logits[rows.nonzero()[:, 0][:, None], torch.tensor(eos, device=logits.device)[None, :]] = float("-inf")
        uniform = torch.empty(n)
        by_generator: dict[int, tuple[torch.Generator, list[int]]] = {}
        for r, s in enumerate(self.rows):
            gen = s.group.generator or self.generator
            by_generator.setdefault(id(gen), (gen, []))[1].append(r)
        for gen, rows_of in by_generator.values():  # a seeded group draws from its own generator
            uniform[rows_of] = 1.0 - torch.rand(len(rows_of), generator=gen)  # (0, 1]
        settings = torch.tensor([[p.temperature, p.top_p, p.top_k] for p in params], dtype=torch.float32)
        temperature, top_p, top_k, uniform = torch.cat([settings, uniform[:, None]], 1).to(logits.device).unbind(1)
        return sample_rows(logits, temperature, top_p, top_k.long(), uniform)  # top_k is exact in fp32

    def _record_all(self, host) -> None:
        """Append each row's token, find finished rows, report to the sinks."""
        host_tokens, host_logp = HostCopy.wait(host)
        updates: dict[int, tuple[Group, list[RowUpdate]]] = {}
        now = time.perf_counter()
        for s, tok, lp in zip(self.rows, host_tokens, host_logp):
            if not s.tokens and not s.group.timing.first_token:
                t = s.group.timing
                t.first_token = now
                if t.events is not None:  # both have run: this step's tokens came after them
                    t.prefill_s, t.events = t.events[0].elapsed_time(t.events[1]) / 1000, None
            if s.group.cancelled:
                s.finish = "cancelled"
                self.cancelled_rows += 1
                continue
            u = self._record(s, tok, lp)
            updates.setdefault(id(s.group), (s.group, []))[1].append(u)
        for g, us in updates.values():
            g.sink(us)

    def _record(self, s: _Seq, tok: int, lp: float) -> RowUpdate:
        """Append one token to a row; decide whether it has finished (same rules as SequenceTracker)."""
        p, stops = s.group.params, s.group.stops
        s.tokens.append(tok)
        s.logps.append(lp)
        before = len(s.text)
        s.text += self.text.push(s.state, s.tokens)
        if tok in self.engine.eos:
            s.finish = "eos"
        elif len(s.tokens) >= p.min_new_tokens and stops:
            for x in stops:
                if x in s.text[max(0, before - len(x) + 1) :]:
                    s.finish, s.stop = "stop", x
                    break
        if s.finish is None and len(s.tokens) >= p.max_new_tokens:
            s.finish = "length"
        completion, text = None, ""
        if s.finish is not None:
            completion = self._completion(s)
            text = completion.text[s.streamed :]
        else:
            safe = len(s.text) - s.group.hold
            if safe > s.streamed:
                text = s.text[s.streamed : safe]
        s.streamed += len(text)
        return RowUpdate(s.index, [tok], [lp], text, completion)

    def _completion(self, s: _Seq) -> Completion:
        body = s.tokens[:-1] if s.finish == "eos" else s.tokens
        text = self.engine.tokenizer.decode(body, skip_special_tokens=False)
        if s.finish == "stop":
            text = text[: text.find(s.stop)] if s.stop in text else text
        return Completion(text, list(s.tokens), list(s.logps), s.finish, s.stop)

    def _release(self) -> None:
        """Drop finished rows; the last live rows move into the holes (their completion keys and
        next-token logits with them)."""
        done = [r for r, s in enumerate(self.rows) if s.finish is not None]
        if not done:
            return
        order = list(range(len(self.rows)))
        finished_groups = {id(self.rows[r].group): self.rows[r].group for r in done}
        keep = len(self.rows) - len(done)
        holes = [r for r in done if r < keep]
        movers = [r for r in range(keep, len(self.rows)) if self.rows[r].finish is None]
        cache = self.cache
        for dst, src in zip(holes, movers):
            n = self.comp_pos[src]  # the keys it has written (the step launched last included)
            cache.k_comp[:, dst, :, :n] = cache.k_comp[:, src, :, :n]
            cache.v_comp[:, dst, :, :n] = cache.v_comp[:, src, :, :n]
            order[dst] = src
            for lst in (self.rows, self.slot, self.prefix_len, self.comp_pos):
                lst[dst] = lst[src]
        for lst in (self.rows, self.slot, self.prefix_len, self.comp_pos):
            del lst[keep:]
        if keep:
            self.logits = self.logits[torch.tensor(order[:keep], device=self.logits.device)]
        else:
            self.logits = None
        live_groups = {id(s.group) for s in self.rows}
        with self.lock:
            for key, g in finished_groups.items():
                if key not in live_groups:
                    self.free_slots.append(g.slot)
                    if g.cancelled:
                        g.sink([])

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step of `tokens` [rows] (on the device) for the live rows, padded to a
        bucket; returns their next-token logits [rows, V]."""
        eng = self.engine
        n = len(self.rows)
        width = _bucket(n, BATCH_BUCKETS)
        pad = width - n
        rows = torch.tensor([self.slot + [0] * pad, self.prefix_len + [0] * pad, self.comp_pos + [0] * pad],
                            dtype=torch.long).to(eng.device, non_blocking=True)
        tokens = torch.cat([tokens, tokens.new_full((pad,), eng.pad_id)]) if pad else tokens
        logits = eng._step_fn(width)(tokens, *rows)
        for r in range(n):
            self.comp_pos[r] += 1
        return logits[:n]

    def warmup(self) -> None:
        """Capture the CUDA graphs of every batch bucket up to max_rows now, not mid-request."""
        if self.engine.graphs_enabled:
            for b in BATCH_BUCKETS:
                self.engine._step_fn(b)
                if b >= self.max_rows:
                    break

    def warm_prefill(self, width: int = 256) -> None:
        """Run dummy groups through admission, sampling and release at the prefill sizes a burst
        brings: 1, 2, 4, ... prompts of `width` tokens up to `max_prefill_tokens`, and one longest
        prompt, under each sampling path (plain, eos held back, top-k/top-p). What a prefill of a new
        size may pay the first time on a GPU (CUDA's lazily loaded kernels, this thread's cuBLAS
        handle and workspace, the allocator's new blocks) is paid here, not by the first requests;
        sizes in between (e.g. 6 prompts) may still pay part of it. Call on the thread that will
        step, before any request. Leaves no trace: not in `stats`, `steps` or the random numbers
        of later groups.
        """
        width = min(width, self.max_prompt_len)
        sizes, k = [], 1
        while k <= self.max_rows and (k == 1 or k * width <= self.max_prefill_tokens):
            sizes.append((k, width))
            k *= 2
        if self.max_prompt_len > width:
            sizes.append((1, self.max_prompt_len))
        new = min(2, self.max_new_tokens)
        kinds = [SamplingParams(max_new_tokens=new, temperature=1.0),
                 SamplingParams(max_new_tokens=new, temperature=1.0, min_new_tokens=new),
                 SamplingParams(max_new_tokens=new, temperature=0.7, top_p=0.9, top_k=20)]
        generator = torch.Generator().manual_seed(0)
        steps = self.steps
        for i, (k, length) in enumerate(sizes):
            left = [k]

            def sink(updates):
                left[0] -= sum(u.completion is not None for u in updates)

            for _ in range(k):
                self.submit(Group([self.engine.pad_id] * length, 1, kinds[i % len(kinds)], sink, generator))
            while left[0] > 0:
                self.step()
        self.stats.clear()
        self.steps = steps

    def _fail_all(self, message: str) -> None:
        """A step raised: end every live and waiting group with `message` and reset."""
        with self.lock:
            groups = {id(s.group): s.group for s in self.rows}
            groups.update({id(g): g for g in self.waiting})
            self.waiting.clear()
            self.rows.clear()
            for lst in (self.slot, self.prefix_len, self.comp_pos):
                lst.clear()
            self.logits = None
            self.free_slots = list(range(self.max_rows - 1, -1, -1))
        for g in groups.values():
            g.error = message
            g.sink([])
