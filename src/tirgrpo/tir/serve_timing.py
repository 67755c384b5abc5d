"""Where a served request's time to first token went: one record per group, for `GET /debug/timings`.

The parts of a streamed request's time to first token, in ms, one after the other:

* `parse_ms`: the request reached its endpoint -> its groups were queued (reading the body,
  JSON, checks, tokenizing a text prompt, rendering a chat template);
* `queue_ms`: queued -> the batcher step that admits it began its prefill (the step under way
  ran to its end; or no rows were free; or earlier arrivals filled the step's prefill budget);
* `first_token_ms`: admission -> its first token was on the host (its prefill, shared with the
  groups admitted with it; the sampling of every row; on a GPU also the end of the decode step
  launched before);
* `send_ms`: first token on the host -> its event was handed to the HTTP layer, which writes it
  to the socket at once (the event loop's delay: the hand-off from the batcher's thread, JSON).

`ttft_ms` is their sum (arrival -> handed over; None when not streamed). `prefill_ms` is the prefill
alone (CUDA events on a GPU), a part of `first_token_ms`. What the group met: `prefill_groups`
and `prefill_tokens` (the prefill it was in, padded), `running_rows` (rows whose decoding waited
for that prefill), `steps_waited`. `received`, `submitted` (the group queued), `admitted`,
`first_token` and `sent` are `time.perf_counter()` seconds in the server, the clock a client on
the same Linux machine can subtract its own times from
(CLOCK_MONOTONIC): `benchmarks/serve_load.py` does, for the request's way in and the event's way out.

`batcher` in the answer: seconds summed per phase of the batcher's steps (`ContinuousBatcher.stats`),
with `steps` and `rows` (rows decoded, summed over steps) to divide them by.
"""

from __future__ import annotations

import collections


def record_timing(service, flight, sent: float | None, groups: list[int] | None = None) -> None:
    """Append one record per group of `flight` (or per index in `groups`) to `service.timings`.

    sent: when the group's first event was handed to the HTTP layer, time.perf_counter(); None
    for a request not streamed. A streamed request with several prompts records each group at
    its own first event (its groups may be admitted at different steps), so `sent` is its own.
    """

    def ms(a: float, b: float | None):
        return round(1000 * (b - a), 3) if a and b else None

    for i in range(len(flight.groups)) if groups is None else groups:
        g = flight.groups[i]
        t = g.timing
        service.timings.append({
            "id": flight.id, "received": flight.received, "submitted": t.submitted, "admitted": t.admitted,
            "first_token": t.first_token, "sent": sent, "prompt_tokens": len(g.prompt_ids),
            "n": g.n, "parse_ms": ms(flight.received, flight.submitted), "queue_ms": ms(t.submitted, t.admitted),
            "prefill_ms": round(1000 * t.prefill_s, 3) if t.prefill_s else None,
            "first_token_ms": ms(t.admitted, t.first_token), "send_ms": ms(t.first_token, sent),
            "ttft_ms": ms(flight.received, sent), "prefill_groups": t.prefill_groups,
            "prefill_tokens": t.prefill_tokens, "running_rows": t.running_rows, "steps_waited": t.steps_waited})


def timings_report(service, clear: bool) -> dict:
    """The answer of GET /debug/timings: the records so far and the batcher's step phases;
    `clear` starts both afresh (a load test clears before each level)."""
    out = {"timings": list(service.timings), "batcher": dict(service.batcher.stats)}
    if clear:
        service.timings.clear()
        service.batcher.stats = collections.Counter()  # a new object: the batcher thread never sees it half cleared
    return out
