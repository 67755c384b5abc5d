"""`tirgrpo serve`: an OpenAI-compatible server over the fast engine, with continuous batching.

Endpoints: `GET /v1/models`, `GET /health`, `GET /debug/timings` (where each recent request's time
to first token went: tir/serve_timing.py), `POST /v1/completions` (prompt: a string, a list of
strings, or token ids) and `POST /v1/chat/completions` (messages rendered with the model's chat
template, or `--chat-template`; `continue_final_message` continues a pre-filled assistant
turn). Options: `max_tokens`, `temperature`, `top_p`, `top_k`, `n`, `stop`, `seed`, `logprobs`,
`min_tokens`, `ignore_eos`, `stream` with `stream_options.include_usage`. Options it does not honour
are refused unless at their do-nothing values (tir/serve_request.py `NOT_HONOURED`).

Every request becomes one `Group` per prompt (n rows sharing the prompt's keys) in a
`ContinuousBatcher` running in its own thread: groups join the running batch at the next step
and leave when done, so a long request never holds up a short one. Streams send each step's
new text as it is made (a stop string's possible beginning is held back until it is ruled
out); a step's updates reach the event loop with one wake-up (`Handoff`). When a client
disconnects, its rows are released at the next step.

Bad requests get 400 (413 for a body over 16 MiB, 404 for an unknown model or route, 429 when
the queue is full) with an OpenAI-style error body `{"error": {"message", "type", "param",
"code"}}`, never a 500. Binds to 127.0.0.1 unless told otherwise: there is no authentication.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tirgrpo.tir.serve_request import (MAX_BODY_BYTES, RequestError, check_unsupported, error_body, flag, number,
                                       parse_json)
from tirgrpo.tir.serve_timing import record_timing, timings_report


@dataclass
class Limits:
    """What one request may ask for; the cache sizes bound max_prompt_tokens and max_tokens."""

    max_model_len: int
    max_prompt_tokens: int
    max_tokens: int
    max_n: int
    max_prompts: int = 256
    max_request_tokens: int = 1 << 20  # prompts x n x max_tokens
    max_queue: int = 1024  # groups waiting for rows before new requests get 429


# ----------------------------------------------------------------------------- parsing


@dataclass
class ParsedRequest:
    prompts: list[list[int]]
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_tokens: int
    stop: list[str]
    logprobs: int | None
    stream: bool
    include_usage: bool
    seed: int | None
    chat: bool = False
    prompt_tokens: int = 0


class Service:
    """Checks requests and turns them into batcher groups. Lives on the server's event loop."""

    def __init__(self, batcher, tokenizer, model_name: str, limits: Limits):
        self.batcher, self.tokenizer, self.model_name, self.limits = batcher, tokenizer, model_name, limits
        self.created = int(time.time())
        self.vocab = len(tokenizer)
        self.timings: collections.deque[dict] = collections.deque(maxlen=8192)  # GET /debug/timings
        self.handoff: Handoff | None = None  # made on the event loop, by the first request

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "tirgrpo", "max_model_len": self.limits.max_model_len,
                                            "max_tokens": self.limits.max_tokens}]}

    def parse(self, body: Any, chat: bool) -> ParsedRequest:
        """A checked request (RequestError on anything wrong)."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError(f"'model' must be a string, got {json.dumps(model)[:80]}", param="model")
        if model is not None and model != self.model_name:
            raise RequestError(f"the model {model!r} does not exist; this server serves {self.model_name!r}", 404, "model")
        prompts = self._chat_prompt(body) if chat else self._prompts(body.get("prompt"))
        lim = self.limits
        longest = max(len(p) for p in prompts)
        default_max = min(lim.max_tokens, lim.max_model_len - longest) if chat else min(16, lim.max_tokens)
        n = number(body, "n", 1, True, 1, lim.max_n)
        max_tokens = number(body, "max_tokens", None, True, 1, lim.max_tokens)
        if chat and body.get("max_completion_tokens") is not None:
            max_tokens = number(body, "max_completion_tokens", None, True, 1, lim.max_tokens)
        max_tokens = default_max if max_tokens is None else max_tokens
        if longest > lim.max_prompt_tokens:
            # "maximum context length", as OpenAI and vLLM say it: clients (tirgrpo generate) end a
            # transcript on it instead of failing the sample
            raise RequestError(f"a prompt of {longest} tokens is over this server's maximum context length for "
                               f"prompts ({lim.max_prompt_tokens} tokens)", param="messages" if chat else "prompt")
        if longest + max_tokens > lim.max_model_len or max_tokens < 1:
            raise RequestError(
                f"This model's maximum context length is {lim.max_model_len} tokens. However, you requested "
                f"{longest + max_tokens} tokens ({longest} in the prompt, {max_tokens} for the completion). "
                "Please reduce the prompt or max_tokens.", param="max_tokens")
        if len(prompts) * n * max_tokens > lim.max_request_tokens:
            raise RequestError(f"prompts x n x max_tokens = {len(prompts)} x {n} x {max_tokens} is over this "
                               f"server's per-request cap of {lim.max_request_tokens} tokens", param="max_tokens")
        stop = body.get("stop")
        stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 8 or not all(isinstance(s, str) and len(s) <= 256 for s in stop):
            raise RequestError("'stop' must be a string or a list of up to 8 strings of up to 256 characters", param="stop")
        check_unsupported(body)
        for name in ("echo",):
            if flag(body, name):
                raise RequestError(f"'{name}' is not supported", param=name)
        if body.get("best_of") not in (None, 1, n):
            raise RequestError("'best_of' is not supported", param="best_of")
        for name in ("presence_penalty", "frequency_penalty"):
            if number(body, name, 0.0, False, -2.0, 2.0) != 0.0:
                raise RequestError(f"'{name}' is not supported (only 0)", param=name)
        if chat:
            logprobs = 0 if flag(body, "logprobs") else None
        else:
            logprobs = number(body, "logprobs", None, True, 0, 5)
        stream_options = body.get("stream_options")
        if stream_options is not None and not isinstance(stream_options, dict):
            raise RequestError("'stream_options' must be an object", param="stream_options")
        top_k = number(body, "top_k", 0, True, -1, self.vocab)
        ignore_eos = flag(body, "ignore_eos")
        min_tokens = max_tokens if ignore_eos else number(body, "min_tokens", 0, True, 0, max_tokens)
        return ParsedRequest(
            prompts=prompts, n=n, max_tokens=max_tokens,
            temperature=number(body, "temperature", 1.0, False, 0.0, 2.0),
            top_p=number(body, "top_p", 1.0, False, 0.0, 1.0, low_open=True), top_k=max(top_k, 0),
            min_tokens=min_tokens, stop=[s for s in stop if s], logprobs=logprobs, stream=flag(body, "stream"),
            include_usage=flag(stream_options or {}, "include_usage"),
            seed=number(body, "seed", None, True, 0, 2**63 - 1), chat=chat,
            prompt_tokens=sum(len(p) for p in prompts))

    def _prompts(self, prompt: Any) -> list[list[int]]:
        """Token ids of each prompt: a string, a list of strings, a list of ids, or a list of id lists."""
        if isinstance(prompt, str):
            prompt = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RequestError("'prompt' must be a string, a list of strings, or token ids", param="prompt")
        if len(prompt) > self.limits.max_prompts:
            raise RequestError(f"{len(prompt)} prompts in one request; at most {self.limits.max_prompts}", param="prompt")
        out = []
        for p in prompt:
            if isinstance(p, str):
                if not p:
                    raise RequestError("an empty prompt: give at least one character", param="prompt")
                out.append(self.tokenizer(p, add_special_tokens=True)["input_ids"])
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab
                                                   for t in p):
                out.append(list(p))
            else:
                raise RequestError("each prompt must be a non-empty string or a non-empty list of token ids "
                                   f"in [0, {self.vocab})", param="prompt")
            if not out[-1]:
                raise RequestError("a prompt that tokenizes to nothing", param="prompt")
        return out

    def _chat_prompt(self, body: dict) -> list[list[int]]:
        """The messages rendered with the chat template, as token ids (one prompt)."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list", param="messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
                raise RequestError(f"messages[{i}] must be an object with role system, user, assistant or tool",
                                   param="messages")
            content = m.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                           for c in content):
                    raise RequestError(f"messages[{i}].content: only text parts are supported", param="messages")
                content = "".join(c["text"] for c in content)
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content must be a string", param="messages")
            clean.append({"role": m["role"], "content": content})
        continue_final = flag(body, "continue_final_message")
        add_generation = flag(body, "add_generation_prompt", not continue_final)
        if continue_final and (add_generation or clean[-1]["role"] != "assistant"):
            raise RequestError("continue_final_message needs a last assistant message and no add_generation_prompt",
                               param="continue_final_message")
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template (start the server with --chat-template FILE)",
                               param="messages")
        try:
            text = self.tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation,
                                                      continue_final_message=continue_final)
        except Exception as e:  # a template's own raise_exception(), or a Jinja error on these messages
            raise RequestError(f"the chat template failed on these messages: {e}", param="messages") from None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RequestError("the rendered conversation is empty", param="messages")
        return [ids]


# ----------------------------------------------------------------------------- one request in flight


@dataclass
class Flight:
    """A request's groups in the batcher; their updates arrive on `queue` (from the batcher thread)."""

    req: ParsedRequest
    groups: list = field(default_factory=list)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    open_groups: int = 0
    id: str = ""  # the response's id
    received: float = 0.0  # time.perf_counter() when the request reached its endpoint
    submitted: float = 0.0  # time.perf_counter() when its groups were queued

    def cancel(self, batcher) -> None:
        for g in self.groups:
            batcher.cancel(g)


class Handoff:
    """Updates from the batcher's thread to the flights' queues on the event loop, one wake-up of the
    loop for all that arrives before it runs (a step's sinks: one per group), not one per group.

    Each wake-up writes to the loop's self-pipe, a system call that releases the GIL; the loop's
    every later send then waits for the batcher thread to hand the GIL back. One wake-up a step
    instead of one a group (up to 256 a step) saves those system calls; on the CPU machine it
    was measured on, the gain did not show beyond the measurement's noise.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: collections.deque = collections.deque()
        self.scheduled = False

    def put(self, queue: asyncio.Queue, item) -> None:
        """On the batcher's thread."""
        self.pending.append((queue, item))
        if not self.scheduled:  # else a drain is already on its way and will take this item too
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except BaseException:  # e.g. the loop is closed: no drain is on its way after all,
                self.scheduled = False  # so a later put must try again rather than wait for one
                raise

    def _drain(self) -> None:
        """On the loop. The flag goes down first: an item put after this point schedules another drain."""
        self.scheduled = False
        while self.pending:
            queue, item = self.pending.popleft()
            queue.put_nowait(item)


def submit(service: Service, req: ParsedRequest, received: float = 0.0) -> Flight:
    """Queue the request's groups (429 when the queue is full). Call on the event loop."""
    import torch

    from tirgrpo.rollout.continuous import Group
    from tirgrpo.rollout.types import SamplingParams

    batcher = service.batcher
    if batcher.queued() + len(req.prompts) > service.limits.max_queue:
        raise RequestError(f"the server is busy ({batcher.queued()} groups queued); try again shortly", 429)
    loop = asyncio.get_running_loop()
    if service.handoff is None or service.handoff.loop is not loop:
        service.handoff = Handoff(loop)
    handoff = service.handoff
    flight = Flight(req, received=received or time.perf_counter(),
                    id=f"{'chatcmpl' if req.chat else 'cmpl'}-{uuid.uuid4().hex}")
    params = SamplingParams(max_new_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                            top_k=req.top_k, stop=req.stop, min_new_tokens=req.min_tokens)
    for i, ids in enumerate(req.prompts):
        def sink(updates, i=i):
            handoff.put(flight.queue, (i, updates))

        generator = None if req.seed is None else torch.Generator().manual_seed((req.seed + i) % 2**63)
        flight.groups.append(Group(ids, req.n, params, sink, generator))
    for g in flight.groups:
        try:
            batcher.submit(g)
        except ValueError as e:  # parse() checks the same limits; this is the batcher's word on them
            flight.cancel(batcher)
            raise RequestError(str(e)) from None
    flight.open_groups = len(flight.groups)
    flight.submitted = time.perf_counter()
    return flight


async def updates(flight: Flight):
    """Lists of (choice index, RowUpdate): whatever arrived since the last wake-up, until every row
    has finished. Raises RuntimeError on a model error.

    Draining all that is queued (rather than one step at a time) lets a busy event loop send
    several tokens per event instead of falling behind the batcher.
    """
    n = flight.req.n
    remaining = [n] * len(flight.groups)
    while flight.open_groups:
        arrived = [await flight.queue.get()]
        while not flight.queue.empty():
            arrived.append(flight.queue.get_nowait())
        out = []
        for i, batch in arrived:
            group = flight.groups[i]
            if not batch:  # the group ended without (more) rows: cancelled or failed
                if group.error:
                    raise RuntimeError(group.error)
                remaining[i] = min(remaining[i], 0)  # -1 (already closed) stays closed
            for u in batch:
                if u.completion is not None:
                    remaining[i] -= 1
                out.append((i * n + u.index, u))
            if remaining[i] == 0:
                remaining[i] = -1
                flight.open_groups -= 1
        yield out


def merged(pairs) -> dict:
    """Per choice index, the RowUpdates of one wake-up joined: {index: (text, token_ids, logprobs, completion)}."""
    out: dict[int, tuple] = {}
    for index, u in pairs:
        text, ids, lps, _ = out.get(index, ("", [], [], None))
        out[index] = (text + u.text, ids + u.token_ids, lps + u.logprobs, u.completion)
    return out


def finish_reason(completion) -> str:
    # OpenAI has one "stop" for both eos and stop strings; vLLM's stop_reason tells them apart.
    return "length" if completion.finish_reason == "length" else "stop"


def token_logprobs(tokenizer, token_ids: list[int], logprobs: list[float], chat: bool) -> dict:
    """OpenAI's logprobs object for sampled tokens (no top-k alternatives)."""
    tokens = [tokenizer.decode([t], skip_special_tokens=False) for t in token_ids]
    values = [round(float(x), 6) for x in logprobs]
    if chat:
        return {"content": [{"token": t, "logprob": v, "top_logprobs": []} for t, v in zip(tokens, values)]}
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": None, "text_offset": offsets}


def response_head(service: Service, flight: Flight, chunk: bool) -> dict:
    """The fields every response (chunk: every streamed event) of `flight` starts with: id,
    object (chat.completion[.chunk] or text_completion), created, model."""
    chat = flight.req.chat
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": flight.id, "object": kind, "created": int(time.time()),
            "model": service.model_name}


def usage(req: ParsedRequest, completion_tokens: int) -> dict:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": req.prompt_tokens + completion_tokens}


async def complete(service: Service, flight: Flight) -> dict:
    """The whole response of a non-streamed request."""
    req = flight.req
    done = {}
    async for pairs in updates(flight):
        for index, u in pairs:
            if u.completion is not None:
                done[index] = u.completion
    record_timing(service, flight, None)
    choices = []
    for index in sorted(done):
        c = done[index]
        lp = token_logprobs(service.tokenizer, c.token_ids, c.logprobs, req.chat) if req.logprobs is not None else None
        choice = {"index": index, "logprobs": lp, "finish_reason": finish_reason(c), "stop_reason": c.stop}
        if req.chat:
            choice["message"] = {"role": "assistant", "content": c.text}
        else:
            choice["text"] = c.text
        choices.append(choice)
    return {**response_head(service, flight, False), "choices": choices,
            "usage": usage(req, sum(len(c.token_ids) for c in done.values()))}


async def stream(service: Service, flight: Flight):
    """Server-sent events: the new text of each step, each choice's finish, usage, [DONE]."""
    req = flight.req
    head = response_head(service, flight, True)
    tokens, timed = 0, set()  # timed: the groups whose first event went out (and was recorded)
    if req.chat:
        first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                 for i in range(len(req.prompts) * req.n)]
        yield _event({**head, "choices": first})
    try:
        async for pairs in updates(flight):
            choices = []
            for index, (text, ids, lps, done) in sorted(merged(pairs).items()):
                tokens += len(ids)
                if not text and done is None and req.logprobs is None:
                    continue
                lp = token_logprobs(service.tokenizer, ids, lps, req.chat) if req.logprobs is not None else None
                choice = {"index": index, "logprobs": lp, "finish_reason": finish_reason(done) if done else None,
                          "stop_reason": done.stop if done else None}
                choice["delta" if req.chat else "text"] = {"content": text} if req.chat else text
                choices.append(choice)
            if choices:
                event = _event({**head, "choices": choices})
                # a group's first event: the HTTP layer writes it to the socket as soon as it has it
                first = sorted({c["index"] // req.n for c in choices} - timed)
                if first:
                    timed.update(first)
                    record_timing(service, flight, time.perf_counter(), first)
                yield event
    except RuntimeError as e:  # the model failed mid-stream: say so in the stream, then end it
        yield _event(error_body(500, f"generation failed: {e}"))
        return
    if req.include_usage:
        yield _event({**head, "choices": [], "usage": usage(req, tokens)})
    yield b"data: [DONE]\n\n"


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


# ----------------------------------------------------------------------------- the ASGI app


async def read_body(request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES whether or not Content-Length says so."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or len(length) > 12):
        raise RequestError(f"bad Content-Length {length[:40]!r}")
    if length is not None and int(length) > MAX_BODY_BYTES:
        raise RequestError(f"request body of {length} bytes; at most {MAX_BODY_BYTES}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
    return bytes(body)


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def make_app(service: Service):
    """The Starlette application: routes, JSON errors, streaming, cancellation on disconnect."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        headers = {"Retry-After": "1"} if status == 429 else None
        return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)

    async def models(request):
        return JSONResponse(service.models())

    async def timings(request):
        return JSONResponse(timings_report(service, request.query_params.get("clear") in ("1", "true")))

    async def health(request):
        return JSONResponse({"status": "ok", "running_rows": len(service.batcher.rows),
                             "queued_groups": service.batcher.queued(),
                             "cancelled_rows": service.batcher.cancelled_rows})

    def generation(chat: bool):
        async def endpoint(request):
            received = time.perf_counter()
            try:
                req = service.parse(parse_json(await read_body(request)), chat)
                flight = submit(service, req, received)
            except RequestError as e:
                return error(e.status, str(e), e.param)
            if req.stream:
                return StreamingResponse(_cancel_on_exit(service, flight, stream(service, flight)),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            # Not streamed: the answer races the client's disconnect, which cancels the rows.
            answer = asyncio.ensure_future(complete(service, flight))
            gone = asyncio.ensure_future(_wait_disconnect(request.receive))
            try:
                await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not answer.done():
                    flight.cancel(service.batcher)
                    answer.cancel()
            if answer.cancelled():
                return error(499, "the client closed the connection")
            try:
                return JSONResponse(answer.result())
            except RuntimeError as e:
                return error(500, f"generation failed: {e}")

        return endpoint

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    routes = [Route(p, models, methods=["GET"]) for p in ("/v1/models", "/models")]
    routes += [Route("/health", health, methods=["GET"]), Route("/debug/timings", timings, methods=["GET"])]
    routes += [Route(p, generation(False), methods=["POST"]) for p in ("/v1/completions", "/completions")]
    routes += [Route(p, generation(True), methods=["POST"]) for p in ("/v1/chat/completions", "/chat/completions")]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


async def _cancel_on_exit(service: Service, flight: Flight, events):
    """Pass the stream on; when it stops early (the client left), release the rows."""
    finished = False
    try:
        async for chunk in events:
            yield chunk
        finished = True
    finally:
        if not finished:
            flight.cancel(service.batcher)


def json_error_protocol():
    """uvicorn's h11 protocol, answering unparseable HTTP (a negative Content-Length...) with a JSON 400."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JsonErrorH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            data = json.dumps(error_body(400, f"invalid HTTP request: {msg}")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=data),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorH11Protocol
