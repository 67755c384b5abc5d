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
   `Completion` when a row ends);
5. releases finished and cancelled rows: the last live rows move into their places (their
   completion keys and next-token logits are copied), so live rows stay 0..n_live-1.

Rows keep pointing at their group's prompt slot: a prompt's keys are stored once however
many rows sample from it, as in FastEngine. FIFO admission means no request waits behind
later ones. Greedy rows give the same tokens as `FastEngine.generate` on the same prompt
(tests/rollout/test_continuous.py).

`step()` is called by one thread only (`start()` runs it in a background thread); `submit`
and `cancel` may be called from any thread.
"""

from __future__ import annotations

import collections
import codecs
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from tirgrpo.rollout.engine import BATCH_BUCKETS, FastEngine, _bucket, _cache_kv
from tirgrpo.rollout.types import Completion, SamplingParams


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
        self._pinned: torch.Tensor | None = None  # host buffer of each step's tokens (CUDA)
        self.logits: torch.Tensor | None = None  # next-token logits of the live rows
        self.lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.cancelled_rows = 0  # rows released because their request went away (for /health)

    # ------------------------------------------------------------------ the outside view

    def submit(self, group: Group) -> None:
        """Queue a group (any thread). Raises ValueError when it can never fit."""
        if not group.prompt_ids or len(group.prompt_ids) > self.max_prompt_len:
            raise ValueError(f"prompt of {len(group.prompt_ids)} tokens; this batcher takes 1..{self.max_prompt_len}")
        if not 1 <= group.n <= self.max_rows:
            raise ValueError(f"n={group.n}; this batcher runs at most {self.max_rows} rows")
        if not 1 <= group.params.max_new_tokens <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens={group.params.max_new_tokens}; at most {self.max_new_tokens}")
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

    def start(self) -> None:
        """Run `step()` in a daemon thread until `stop()`; it sleeps while there is nothing to do."""
        self._thread = threading.Thread(target=self._loop, name="tirgrpo-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        if self.engine.device.type == "cuda":  # a new thread starts on device 0
            torch.cuda.set_device(self.engine.device)
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
            new_logits = self._admit()
            logits = [t for t in (self.logits, new_logits) if t is not None]
            if not self.rows:
                self.logits = None
                return
            tokens, logp = self._sample(torch.cat(logits) if len(logits) > 1 else logits[0])
            host = self._to_host(tokens, logp)
            self.logits = self._decode(tokens)
            self._record_all(host)
            self._release()
        finally:
            if was_training:
                model.train()

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
        last = self._prefill(batch)  # [len(batch), V]
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

    def _to_host(self, tokens: torch.Tensor, logp: torch.Tensor):
        """Start copying the sampled tokens and log-probs to the host; `_record_all` waits for it.

        One copy: token ids are exact in fp32 (vocabularies are under 2**24). On CUDA it goes
        into pinned memory behind an event, so that the decode launched next is not waited for.
        """
        both = torch.stack([tokens.to(logp.dtype), logp])
        if both.device.type != "cuda":
            return both, None
        if self._pinned is None:
            self._pinned = torch.empty(2 * self.max_rows, dtype=both.dtype, pin_memory=True)
        dst = self._pinned[: both.numel()].view(both.shape)  # contiguous, or the copy would not be async
        dst.copy_(both, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return dst, done

    def _record_all(self, host) -> None:
        """Append each row's token, find finished rows, report to the sinks."""
        values, event = host
        if event is not None:
            event.synchronize()
        host_tokens, host_logp = values.tolist()
        updates: dict[int, tuple[Group, list[RowUpdate]]] = {}
        for s, tok, lp in zip(self.rows, host_tokens, host_logp):
            if s.group.cancelled:
                s.finish = "cancelled"
                self.cancelled_rows += 1
                continue
            u = self._record(s, int(tok), lp)
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
