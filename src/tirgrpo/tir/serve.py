"""`tirgrpo serve`: an OpenAI-compatible completions server over the built-in rollout engine.

Endpoints: `GET /v1/models`, `POST /v1/completions` (prompt as a string or a list of strings;
`max_tokens`, `temperature`, `top_p`, `n`, `stop`, `logprobs`, `seed`, `stream` with
`stream_options.include_usage`), and `GET /health`. Enough for `tirgrpo generate`, the `openai`
client and tools written for vLLM to use a trained verifier or a small policy.

The standard library's ThreadingHTTPServer answers; generation itself runs one request at a
time under a lock (the engine and the model are not thread-safe). `SimpleEngine` returns whole
completions, so a streamed response sends each choice's text in one chunk, then its finish
reason, (optionally) the usage, and `[DONE]`: the wire format is OpenAI's, the delivery is not
token by token. Binds to 127.0.0.1 unless told otherwise: the server has no authentication.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tirgrpo.errors import TirgrpoError

MAX_BODY_BYTES = 16 * 1024 * 1024


class RequestError(Exception):
    """A bad request: answered with HTTP `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def _number(body: dict, name: str, default, kind, low=None, high=None):
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise RequestError(f"'{name}' must be {'a number' if kind is float else 'an integer'}, got {value!r}", param=name)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"'{name}' must be in [{low}, {high}], got {value}", param=name)
    return kind(value)


class CompletionService:
    """Turns OpenAI completion requests into `SimpleEngine.generate` calls."""

    def __init__(self, model, tokenizer, model_name: str, max_model_len: int, batch_size: int = 16, seed: int = 0):
        import torch

        from tirgrpo.rollout.simple import SimpleEngine

        self.engine = SimpleEngine(model, tokenizer, batch_size=batch_size)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.lock = threading.Lock()
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.created = int(time.time())

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                            "owned_by": "tirgrpo", "max_model_len": self.max_model_len}]}

    def parse(self, body: Any) -> dict:
        """Check a request body; returns the normalised request."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(f"the model {model!r} does not exist; this server serves {self.model_name!r}", 404, "model")
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings", param="prompt")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 8:
            raise RequestError("'stop' must be a string or a list of up to 8 strings", param="stop")
        if body.get("echo"):
            raise RequestError("'echo' is not supported", param="echo")
        if body.get("best_of") not in (None, 1) and body.get("best_of") != body.get("n"):
            raise RequestError("'best_of' is not supported", param="best_of")
        logprobs = body.get("logprobs")
        if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 5):
            raise RequestError("'logprobs' must be an integer in [0, 5] or null", param="logprobs")
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise RequestError("'stream_options' must be an object", param="stream_options")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise RequestError("'seed' must be an integer", param="seed")
        req = {
            "prompts": prompts,
            "max_tokens": _number(body, "max_tokens", 16, int, 1, None),
            "temperature": _number(body, "temperature", 1.0, float, 0.0, 2.0),
            "top_p": _number(body, "top_p", 1.0, float, 1e-6, 1.0),
            "n": _number(body, "n", 1, int, 1, 64),
            "stop": [s for s in stop if s],
            "logprobs": logprobs,
            "stream": bool(body.get("stream", False)),
            "include_usage": bool(stream_options.get("include_usage", False)),
            "seed": seed,
        }
        req["prompt_ids"] = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for ids in req["prompt_ids"]:
            if len(ids) + req["max_tokens"] > self.max_model_len:
                raise RequestError(
                    f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                    f"{len(ids) + req['max_tokens']} tokens ({len(ids)} in the prompt, {req['max_tokens']} for the "
                    "completion). Please reduce the prompt or max_tokens.", param="max_tokens")
        return req

    def generate(self, req: dict) -> dict:
        """Run the engine; returns an OpenAI completion object (choices in prompt-major order)."""
        import torch

        from tirgrpo.rollout.types import SamplingParams

        params = SamplingParams(max_new_tokens=req["max_tokens"], temperature=req["temperature"], top_p=req["top_p"],
                                stop=req["stop"])
        with self.lock:
            generator = self.generator
            if req["seed"] is not None:
                generator = torch.Generator(device=self.device).manual_seed(req["seed"])
            groups = self.engine.generate(req["prompt_ids"], req["n"], params, generator)
        choices, completion_tokens = [], 0
        for i, group in enumerate(groups):
            for c in group:
                completion_tokens += len(c.token_ids)
                choices.append({
                    "index": len(choices),
                    "text": c.text,
                    "logprobs": self._logprobs(c) if req["logprobs"] is not None else None,
                    # OpenAI has one "stop" for both eos and stop strings; vLLM's stop_reason tells them apart.
                    "finish_reason": "length" if c.finish_reason == "length" else "stop",
                    "stop_reason": c.stop,
                })
        prompt_tokens = sum(len(ids) for ids in req["prompt_ids"])
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _logprobs(self, c) -> dict:
        """OpenAI's legacy logprobs object: the sampled tokens and their log-probs (no top-k lists)."""
        tokens = [self.tokenizer.decode([t], skip_special_tokens=False) for t in c.token_ids]
        offsets, pos = [], 0
        for t in tokens:
            offsets.append(pos)
            pos += len(t)
        return {"tokens": tokens, "token_logprobs": [round(float(x), 6) for x in c.logprobs], "top_logprobs": None,
                "text_offset": offsets}


def stream_events(result: dict, include_usage: bool) -> list[dict]:
    """The chunks of a streamed response: each choice's text, then its finish reason, then usage."""
    base = {k: result[k] for k in ("id", "object", "created", "model")}
    events = []
    for ch in result["choices"]:
        events.append({**base, "choices": [{**ch, "finish_reason": None, "stop_reason": None}]})
        events.append({**base, "choices": [{"index": ch["index"], "text": "", "logprobs": None,
                                            "finish_reason": ch["finish_reason"], "stop_reason": ch["stop_reason"]}]})
    if include_usage:
        events.append({**base, "choices": [], "usage": result["usage"]})
    return events


def make_handler(service: CompletionService):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "tirgrpo-serve"

        def log_message(self, fmt, *args):  # one short line per request on stderr
            sys.stderr.write(f"tirgrpo serve: {self.address_string()} {fmt % args}\n")

        def _json(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, param: str | None = None) -> None:
            kind = "invalid_request_error" if status < 500 else "server_error"
            self._json(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

        def do_GET(self):
            path = self.path.split("?")[0].rstrip("/")
            if path in ("/v1/models", "/models"):
                self._json(200, service.models())
            elif path == "/health":
                self._json(200, {"status": "ok"})
            else:
                self._error(404, f"no route GET {self.path}")

        def do_POST(self):
            path = self.path.split("?")[0].rstrip("/")
            if path not in ("/v1/completions", "/completions"):
                self._error(404, f"no route POST {self.path} (this server has /v1/completions)")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY_BYTES:
                    raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(f"the body is not valid JSON: {e}") from None
                req = service.parse(body)
                result = service.generate(req)
            except RequestError as e:
                self._error(e.status, str(e), e.param)
                return
            except Exception as e:  # a failure in the model: answer, keep serving
                self._error(500, f"{type(e).__name__}: {e}")
                return
            if not req["stream"]:
                self._json(200, result)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for event in stream_events(result, req["include_usage"]):
                    self.wfile.write(b"data: " + json.dumps(event).encode("utf-8") + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (e.g. it had what it needed)

    return Handler


def make_server(service: CompletionService, host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(service))
    server.daemon_threads = True
    return server


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder, run folder, .gguf, or random:SHAPE")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="name in /v1/models (default: the folder's name)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's own)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="rows the engine decodes at once")
    parser.add_argument("--max-model-len", type=int, default=None, help="prompt + completion tokens (default: model's)")
    parser.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from tirgrpo.config import ModelConfig
    from tirgrpo.train.model import load_base_model, resolve_device, resolve_dtype, tokenizer_spec
    from tirgrpo.data.tokenizer import load_tokenizer

    if not _is_loopback(args.host):
        print(f"tirgrpo serve: warning: binding {args.host}: anyone who can reach it can use the model "
              "(there is no authentication)", file=sys.stderr)
    cfg = ModelConfig(name_or_path=args.model, tokenizer=args.tokenizer or "")
    device = resolve_device(args.device)
    model = load_base_model(cfg, device, resolve_dtype(args.dtype, device), seed=args.seed)
    tokenizer = load_tokenizer(tokenizer_spec(cfg))
    max_len = args.max_model_len or int(getattr(model.config, "max_position_embeddings", 4096))
    name = args.served_model_name or Path(args.model.rstrip("/")).name
    service = CompletionService(model, tokenizer, name, max_len, args.batch_size, args.seed)
    try:
        server = make_server(service, args.host, args.port)
    except OSError as e:
        raise TirgrpoError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = server.server_address[:2]
    # One parseable line: tests and scripts wait for it (with --port 0 it names the chosen port).
    print(f"tirgrpo serve: serving {name!r} on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
