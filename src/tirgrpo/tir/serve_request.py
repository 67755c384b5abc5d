"""The checks of a request to `tirgrpo serve` that need no model: the JSON body, one field's type
and range, options the server does not honour; a bad one is a `RequestError` (HTTP 4xx with an
OpenAI-style error body). tir/serve.py's `Service.parse` puts them together."""

from __future__ import annotations

import json
import math
from typing import Any

MAX_BODY_BYTES = 16 * 1024 * 1024


class RequestError(Exception):
    """A bad request: answered with HTTP `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error object for an answer with HTTP `status` ({"error": {message, type, param, code}})."""
    kind = {404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def number(body: dict, name: str, default, integer: bool, low=None, high=None, low_open: bool = False):
    """body[name] (or default) checked: the right type, finite, within [low, high] (or (low, high])."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {value!r}", param=name)
    if isinstance(value, float) and not math.isfinite(value):  # ints are finite, however long
        raise RequestError(f"'{name}' must be a finite number, got {value!r}", param=name)
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        lo = f"({low}" if low_open else f"[{low}"
        raise RequestError(f"'{name}' must be in {lo}, {high if high is not None else 'inf'}], got {value}", param=name)
    return value if integer else float(value)


def flag(body: dict, name: str, default: bool = False) -> bool:
    """body[name] (or default) checked to be true or false."""
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{name}' must be true or false, got {value!r}", param=name)
    return value


def parse_json(raw: bytes) -> Any:
    """The request body as JSON; NaN and Infinity (which Python's json accepts) are refused, and so is
    a string holding a lone surrogate (`\\ud800` without its pair: no character, which no tokenizer
    takes and no UTF-8 stop string matches), naming its top-level field."""

    def refuse(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        body = json.loads(raw, parse_constant=refuse)
    except (ValueError, RecursionError) as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None
    for key, value in body.items() if isinstance(body, dict) else ():
        for where, param, part in (("a key of the body", None, key), (f"'{key}'", key, value)):
            problem = _surrogate_in(part)
            if problem:
                raise RequestError(f"{where} {problem}", param=param)
    return body


def _surrogate_in(value: Any) -> str | None:
    """Why a JSON value is refused for a lone surrogate in one of its strings (keys too), or None."""
    from tirgrpo.data.limits import surrogate_problem

    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            problem = surrogate_problem(v)
            if problem:
                return problem
        elif isinstance(v, dict):
            stack += [*v.keys(), *v.values()]
        elif isinstance(v, list):
            stack += v
    return None


# Options of the OpenAI API this server does not honour, with the values that ask for nothing (some
# clients send them by default); any other value is refused rather than silently ignored.
NOT_HONOURED: dict[str, tuple] = {
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "suffix": (None, ""), "tools": (None, []),
    "tool_choice": (None, "none", "auto"), "functions": (None, []), "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
}


def check_unsupported(body: dict) -> None:
    """Refuse (400, naming the field) an option of `NOT_HONOURED` set to ask for something."""
    for name, nothing in NOT_HONOURED.items():
        value = body.get(name)
        if not any(type(value) is type(x) and value == x for x in nothing):
            shown = " or ".join(json.dumps(x) for x in nothing[1:])
            raise RequestError(f"'{name}' is not supported by this server (leave it out, or {shown}); "
                               f"got {json.dumps(value)[:80]}", param=name)
