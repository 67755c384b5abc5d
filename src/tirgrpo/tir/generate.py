"""`tirgrpo generate`: produce TIR transcripts with any OpenAI-compatible completions server.

For each problem and sample: send the code-writing prompt to `/v1/completions` (streaming), and
when the model's text holds a complete ```python block, run it in the sandbox, append the bridge
(templates.SEED_BRIDGE, with the output) and let the model continue. A transcript ends at a turn
without code (normally a \\boxed{} answer), at the turn limit, or at the token limit. Each finished
transcript is appended to the output JSONL at once (the format `tirgrpo prepare` reads, see
docs/data-format.md), so an interrupted run loses nothing and a re-run skips finished
problem/sample pairs. Samples that fail for reasons outside the model (the server errs or cuts
the stream after retries) are written, with their partial turns, to `OUT.errors.jsonl` and are
retried by the next run.

The templates are the seed's text in DeepSeek-R1's chat format. A solver with another chat
format (Qwen's <|im_start|>...) gets the same texts with its own turn markers
(`--chat-template TOKENIZER`, `chat_templates`): the user's instructions, the code output and
the assistant's pre-fills are unchanged, and the transcript records the rendered prompt and bridge.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tirgrpo.data.records import Transcript, Turn
from tirgrpo.errors import TirgrpoError
from tirgrpo.tir.sandbox import Sandbox
from tirgrpo.data.templates import CODE_BLOCK_START, CODE_PROMPT, SEED_BRIDGE, fields, fill

# The server stops at the end of a code block's closing fence ("```" + newline). "```python\n"
# does not contain it, so the opening fence never stops generation; a stop on some other fence
# (```text ... ```) is resumed by the harness.
CODE_FENCE_STOP = "```\n"
MAX_CONTINUATIONS = 8

_CURRENCY_OR_PERCENT = re.compile(r"^\\?\$\s*(?=\d)|\s*\\?%$")
_CODE_BLOCK = re.compile(r"```python[^\n]*\n(.*?)\n?```", re.DOTALL)


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str | None


_ID_COLUMNS = ("id", "problem_id")
_QUESTION_COLUMNS = ("problem", "question")
_ANSWER_COLUMNS = ("answer", "correct_answer")


# A degree mark after an angle answer ("336^\\circ", "336^{\\circ}", "336°"), as in the AIME file.
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)\s*$")


def problem_answer(raw: str) -> int | None:
    """The integer of a problem file's answer cell: "72", "72.0", "1,000", or an angle with a
    trailing degree mark ("336^\\circ" -> 336); None when it is no integer. Read as every answer
    is (`score.rewards.parse_integer_answer`)."""
    from tirgrpo.score.rewards import parse_integer_answer

    return parse_integer_answer(_DEGREES.sub("", str(raw)).strip())


def read_problems(path: str | os.PathLike) -> tuple[list[Problem], bool]:
    """Read a problems CSV (columns id, problem, optional answer) or GSM8K-style JSONL.
    Returns (problems, has_answers).

    Accepted column names: id or problem_id; problem or question; answer or correct_answer.
    Answers must be integers (`problem_answer`: a thousands comma or a trailing degree mark
    is allowed); an empty answer cell means unknown. A .jsonl file has one
    object per line with the same keys; without an id the problem is named FILESTEM-LINE;
    an answer in GSM8K's form (the working, then "#### 72") counts by its last "####" part.
    """
    from tirgrpo.data.limits import check_columns_once, check_file_size, check_row_count, strip_bom, text_problem

    path = Path(path)
    check_file_size(path)
    try:
        text = strip_bom(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise TirgrpoError(f"cannot read problems file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise TirgrpoError(f"problems file {path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if path.suffix == ".jsonl":
        return _problems_from_jsonl(path, text)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    if not header:
        raise TirgrpoError(f"problems file {path}: empty; expected a header with columns id, problem[, answer]")

    def column(names: tuple[str, ...], required: bool) -> str | None:
        found = next((n for n in names if n in header), None)
        if found is None and required:
            raise TirgrpoError(f"problems file {path}: no {' or '.join(names)} column; found {header}")
        return found

    id_col, q_col, a_col = column(_ID_COLUMNS, True), column(_QUESTION_COLUMNS, True), column(_ANSWER_COLUMNS, False)
    check_columns_once(f"problems file {path}", header, (id_col, q_col, a_col))
    problems, seen = [], set()
    try:
        for row_no, row in enumerate(reader, start=1):
            where = f"problems file {path}, row {row_no} (after the header)"
            check_row_count(row_no, path)
            pid, question = (row.get(id_col) or "").strip(), (row.get(q_col) or "").strip()
            problem = text_problem(question) or text_problem(pid)
            if problem:
                raise TirgrpoError(f"{where}: {q_col if text_problem(question) else id_col} {problem}")
            if not pid:
                raise TirgrpoError(f"{where}: empty {id_col}")
            if pid in seen:
                raise TirgrpoError(f"{where}: duplicate {id_col} {pid!r}")
            if not question:
                raise TirgrpoError(f"{where}: empty {q_col}")
            answer = None
            if a_col and (row.get(a_col) or "").strip():
                n = problem_answer(row[a_col])
                if n is None:
                    raise TirgrpoError(f"{where}: {a_col} must be an integer, got {row[a_col]!r}")
                answer = str(n)
            seen.add(pid)
            problems.append(Problem(pid, question, answer))
    except csv.Error as e:
        raise TirgrpoError(f"problems file {path}: malformed CSV ({e})") from None
    if not problems:
        raise TirgrpoError(f"problems file {path}: no problems after the header")
    return problems, a_col is not None


def _problems_from_jsonl(path: Path, text: str) -> tuple[list[Problem], bool]:
    from tirgrpo.data.limits import check_row_count, text_problem

    problems, seen, has_answers = [], set(), True
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"problems file {path}, line {line_no}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TirgrpoError(f"{where}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TirgrpoError(f"{where}: expected a JSON object")
        check_row_count(line_no, path)
        raw_id = next((row[k] for k in _ID_COLUMNS if row.get(k) is not None), f"{path.stem}-{line_no}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise TirgrpoError(f"{where}: the id must be a string or an integer, got {raw_id!r}")
        pid = str(raw_id).strip()
        question = next((row[k] for k in _QUESTION_COLUMNS if isinstance(row.get(k), str)), "").strip()
        if not question:
            raise TirgrpoError(f"{where}: no problem or question text")
        if not pid:
            raise TirgrpoError(f"{where}: empty id")
        # the same checks as a CSV row's: what the transcripts' reader would refuse after the run
        problem = text_problem(question) or text_problem(pid)
        if problem:
            raise TirgrpoError(f"{where}: {'question' if text_problem(question) else 'id'} {problem}")
        if pid in seen:
            raise TirgrpoError(f"{where}: duplicate id {pid!r}")
        raw = next((row[k] for k in _ANSWER_COLUMNS if row.get(k) is not None), None)
        answer = None
        if raw is not None:
            raw = str(raw).rsplit("####", 1)[-1].strip()
            n = problem_answer(raw)
            if n is None:
                raise TirgrpoError(f"{where}: the answer must be an integer, got {raw[:40]!r}")
            answer = str(n)
        has_answers = has_answers and answer is not None
        seen.add(pid)
        problems.append(Problem(pid, question, answer))
    if not problems:
        raise TirgrpoError(f"problems file {path}: no problems")
    return problems, has_answers


# ----------------------------------------------------------------------------- transcript pieces


def find_code(text: str) -> tuple[str, int] | None:
    """(code, end) of the first complete ```python block in `text`; end is just after its closing ```."""
    m = _CODE_BLOCK.search(text)
    if m is None:
        return None
    return m.group(1), m.end()


def boxed_answer(text: str) -> str | None:
    """The integer in the last \\boxed{...} of `text` (canonical text), or None.

    Read as the judge's answers are (`score.rewards.parse_integer_answer`: braces matched,
    thousands separators, `\\text{..}` wrappers), and also with a dollar sign before or a
    percent sign after the number, as GSM8K solutions write them (`\\$70,000` -> "70000")."""
    from tirgrpo.score.rewards import last_boxed, parse_integer_answer

    box = last_boxed(text)
    n = None if box is None else parse_integer_answer(_CURRENCY_OR_PERCENT.sub("", box))
    return None if n is None else str(n)


def load_templates(path: str | None) -> tuple[str, str]:
    """(code prompt, bridge) templates: templates.py's, or those of a TOML file's `code_prompt`/`bridge`."""
    prompt, bridge = CODE_PROMPT, SEED_BRIDGE
    if path:
        try:
            from tirgrpo.data.limits import strip_bom

            data = tomllib.loads(strip_bom(Path(path).read_text(encoding="utf-8")))  # tomllib refuses a BOM
        except UnicodeDecodeError as e:
            raise TirgrpoError(f"templates file {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise TirgrpoError(f"templates file {path}: {e}") from None
        unknown = set(data) - {"code_prompt", "bridge"}
        if unknown:
            raise TirgrpoError(f"templates file {path}: unknown keys {sorted(unknown)}; expected code_prompt, bridge")
        for key, value in data.items():  # TOML also has numbers, lists, tables: a template is text
            if not isinstance(value, str):
                raise TirgrpoError(f"templates file {path}: {key} must be a string, got {type(value).__name__}")
        prompt, bridge = data.get("code_prompt", prompt), data.get("bridge", bridge)
    if fields(prompt) != {"question"}:
        raise TirgrpoError(f"code_prompt template must have exactly the field {{question}}, has {sorted(fields(prompt))}")
    if fields(bridge) != {"output"} or bridge.count("{output}") != 1:
        raise TirgrpoError("bridge template must contain the field {output} exactly once and no other field")
    return prompt, bridge


USER, ASSISTANT, END = "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"
_MARK = "\u2063TIRGRPO-END-OF-ASSISTANT\u2063"  # invisible separators: no template or text has this


def r1_turns(template: str) -> tuple[str, str]:
    """(user text, assistant pre-fill) of a one-exchange template in DeepSeek-R1's format.

    "<｜end▁of▁sentence｜><｜User｜>U<｜Assistant｜>A" -> (U stripped, A verbatim); leading
    whitespace and the end-of-sentence token before the user turn are dropped.
    """
    body = template.lstrip().removeprefix(END)  # the space between turns is the chat template's to decide
    if not body.startswith(USER) or body.count(USER) != 1 or body.count(ASSISTANT) != 1:
        raise TirgrpoError(f"a template to render with --chat-template must be {USER}...{ASSISTANT}... "
                           f"(one user turn, then the assistant's pre-fill); got {template[:80]!r}")
    user, assistant = body[len(USER):].split(ASSISTANT)
    return user.strip(), assistant


def chat_templates(prompt_t: str, bridge_t: str, tokenizer) -> tuple[str, str]:
    """The code prompt and bridge re-written in a solver's own chat format.

    The seed's texts stay the same (the user's instructions, the assistant's pre-fills, the
    code output); only the turn markers become the solver's: the prompt is the template's
    rendering of the user turn with a generation prompt, then the assistant pre-fill; the
    bridge is what the template puts between the end of an assistant turn and the next
    assistant turn, then the bridge's pre-fill. The {question}/{output} fields pass through.
    """
    user1, prefill1 = r1_turns(prompt_t)
    user2, prefill2 = r1_turns(bridge_t)

    def render(messages):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # Jinja errors, a template's raise_exception()
            raise TirgrpoError(f"the solver's chat template failed: {type(e).__name__}: {e}") from None

    prompt = render([{"role": "user", "content": user1}]) + prefill1
    bos = tokenizer.bos_token
    if bos and prompt.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        prompt = prompt[len(bos):]  # the server's tokenizer puts it back: not twice
    full = render([{"role": "user", "content": user1}, {"role": "assistant", "content": _MARK},
                   {"role": "user", "content": user2}])
    if full.count(_MARK) != 1:
        raise TirgrpoError("the solver's chat template does not show an assistant turn's text as it is")
    bridge = full[full.index(_MARK) + len(_MARK):] + prefill2
    if fields(prompt) != {"question"} or fields(bridge) != {"output"} or bridge.count("{output}") != 1:
        raise TirgrpoError("the solver's chat template adds {fields} of its own; the rendered prompt must have "
                           "exactly {question} and the bridge {output} once")
    return prompt, bridge


def load_chat_tokenizer(spec: str):
    """The solver's tokenizer (folder, .gguf or name), which must have a chat template."""
    from tirgrpo.data.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(spec)
    except (OSError, ValueError) as e:
        raise TirgrpoError(f"--chat-template {spec}: cannot load a tokenizer: {e}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise TirgrpoError(f"--chat-template {spec}: this tokenizer has no chat template")
    return tokenizer


# ----------------------------------------------------------------------------- the server client


class ServerError(Exception):
    """A request failed. `retry`: whether trying again may help (connection, 5xx, cut stream)."""

    def __init__(self, message: str, retry: bool):
        super().__init__(message)
        self.retry = retry


def context_full(status: int, detail: str) -> bool:
    """Whether an error answer says the prompt and max_tokens do not fit the context (HTTP 400 with
    "maximum context length", as OpenAI, vLLM and tirgrpo serve word it)."""
    return status == 400 and "maximum context length" in detail


class ContextFull(ServerError):
    """The prompt and max_tokens do not fit the server's context: the transcript ends here ("length")."""

    def __init__(self, message: str):
        super().__init__(message, retry=False)


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" or "length", as the server says
    stop_reason: Any  # the stop string when the server reports it (vLLM, tirgrpo serve)
    tokens: int


class CompletionsClient:
    """Streaming `/v1/completions` over httpx, with retries for transient failures."""

    def __init__(self, base_url: str, model: str, temperature: float, top_p: float, request_timeout: float,
                 retries: int = 3, api_key: str | None = None):
        import httpx

        self.base = base_url.rstrip("/")
        if not self.base.endswith("/v1"):
            self.base += "/v1"
        self.model, self.temperature, self.top_p, self.retries = model, temperature, top_p, retries
        self.max_request_tokens: int | None = None  # the server's own cap, learnt by check()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # read= is the longest silence between two stream chunks: a stalled server fails, never hangs.
        self.http = httpx.Client(timeout=httpx.Timeout(request_timeout, connect=10.0), headers=headers)
        self._httpx = httpx

    def close(self) -> None:
        self.http.close()

    def check(self) -> list[str]:
        """Fail with a clear message unless the server answers and serves `model`."""
        try:
            r = self.http.get(self.base + "/models", timeout=10.0)
        except self._httpx.HTTPError as e:
            raise TirgrpoError(f"cannot reach the server at {self.base}: {type(e).__name__}: {e}") from None
        if r.status_code != 200:
            raise TirgrpoError(f"server at {self.base} answered GET /models with HTTP {r.status_code}: {r.text[:200]}")
        try:
            names = [m["id"] for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise TirgrpoError(f"server at {self.base}: GET /models did not return an OpenAI model list") from None
        if self.model not in names:
            raise TirgrpoError(f"server at {self.base} does not serve model {self.model!r}; it serves {names}")
        # tirgrpo serve says the largest max_tokens it takes; ask for no more than that per request.
        info = next(m for m in r.json()["data"] if m["id"] == self.model)
        cap = info.get("max_tokens") if isinstance(info, dict) else None
        self.max_request_tokens = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None
        return names

    def complete(self, prompt: str, max_tokens: int, stop: list[str], seed: int | None) -> Generation:
        """One streamed completion, retried with backoff on transient errors."""
        delay = 1.0
        for attempt in range(self.retries + 1):
            try:
                return self._stream(prompt, max_tokens, stop, seed)
            except ServerError as e:
                if not e.retry or attempt == self.retries:
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _stream(self, prompt: str, max_tokens: int, stop: list[str], seed: int | None) -> Generation:
        if self.max_request_tokens is not None:
            max_tokens = min(max_tokens, self.max_request_tokens)
        body = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": self.temperature,
            "top_p": self.top_p, "stop": stop, "stream": True, "stream_options": {"include_usage": True},
        }
        if seed is not None:
            body["seed"] = seed
        pieces, finish, stop_reason, usage, chunks, done = [], None, None, None, 0, False
        httpx = self._httpx
        try:
            with self.http.stream("POST", self.base + "/completions", json=body) as r:
                if r.status_code != 200:
                    detail = r.read().decode("utf-8", "replace")[:300]
                    if context_full(r.status_code, detail):
                        raise ContextFull(detail)
                    raise ServerError(f"HTTP {r.status_code} from /completions: {detail}", retry=r.status_code >= 500 or r.status_code == 429)
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(data)
                    except json.JSONDecodeError:
                        raise ServerError(f"malformed stream event: {data[:100]!r}", retry=True) from None
                    if "error" in event:
                        raise ServerError(f"server error in stream: {event['error']}", retry=True)
                    if event.get("usage"):
                        usage = event["usage"]
                    for choice in event.get("choices") or []:
                        pieces.append(choice.get("text") or "")
                        chunks += 1
                        if choice.get("finish_reason"):
                            finish, stop_reason = choice["finish_reason"], choice.get("stop_reason")
        except httpx.TimeoutException as e:
            raise ServerError(f"server timed out ({type(e).__name__})", retry=True) from None
        except httpx.HTTPError as e:
            raise ServerError(f"connection failed: {type(e).__name__}: {e}", retry=True) from None
        if finish is None or not done:
            raise ServerError("the stream ended before the completion finished (cut stream)", retry=True)
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        return Generation("".join(pieces), finish, stop_reason, int(tokens) if tokens is not None else chunks)


# ----------------------------------------------------------------------------- one sample


class SampleFailed(Exception):
    def __init__(self, message: str, turns: list[Turn]):
        super().__init__(message)
        self.turns = turns


@dataclass
class Settings:
    max_turns: int
    max_tokens: int
    prompt_template: str
    bridge_template: str
    seed: int | None


def _generate_turn(client: CompletionsClient, context: str, budget: int, seed: int | None) -> tuple[str, str, int]:
    """Generate one model turn: (text, finish, tokens). finish is "code", "eos" or "length".

    A stop on a closing fence that does not close a ```python block is resumed (the fence is
    put back), up to MAX_CONTINUATIONS times.
    """
    text, used = "", 0
    for _ in range(MAX_CONTINUATIONS + 1):
        try:
            g = client.complete(context + text, budget - used, [CODE_FENCE_STOP], seed)
        except ContextFull:
            return text, "length", used
        used += g.tokens
        text += g.text
        found = find_code(text)
        if found is not None:
            return text[: found[1]], "code", used
        # Servers that do not say which stop matched: an open ```python block means the fence.
        hit_fence = g.stop_reason == CODE_FENCE_STOP or (
            g.finish_reason == "stop" and g.stop_reason is None and text.rfind(CODE_BLOCK_START) > text.rfind("```\n")
        )
        if g.finish_reason == "stop" and hit_fence:
            text += CODE_FENCE_STOP
            found = find_code(text)
            if found is not None:
                return text[: found[1]], "code", used
            if used < budget:
                continue
            return text, "length", used
        return text, ("length" if g.finish_reason == "length" else "eos"), used
    return text, "length", used


def run_sample(client: CompletionsClient, sandbox: Sandbox, problem: Problem, sample: int, s: Settings) -> Transcript:
    """One TIR run of `problem`. Raises SampleFailed (with the turns so far) on server failure."""
    prompt = fill(s.prompt_template, question=problem.question)
    context, turns, used = prompt, [], 0
    seed = None if s.seed is None else s.seed * 1_000_003 + sample
    try:
        while True:
            start = time.monotonic()
            text, finish, n = _generate_turn(client, context, s.max_tokens - used, seed)
            used += n
            last = len(turns) + 1 >= s.max_turns or used >= s.max_tokens
            if finish == "code":
                code = find_code(text)[0]
                result = sandbox.run(code)
                output = result.output()
                turns.append(Turn(text, code, output, "code", round(time.monotonic() - start, 3)))
                if last:
                    break
                context += text + fill(s.bridge_template, output=output)
                continue
            turns.append(Turn(text, None, None, finish, round(time.monotonic() - start, 3)))
            break
    except ServerError as e:
        raise SampleFailed(str(e), turns) from None
    final = turns[-1]
    eventual = boxed_answer(final.text) if final.code is None else None
    return Transcript(problem.id, sample, problem.question, problem.answer, eventual, prompt, s.bridge_template, tuple(turns))


# ----------------------------------------------------------------------------- output files


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.jsonl")


def finished_pairs(out: Path) -> set[tuple[str, int]]:
    """(problem_id, sample) of the transcripts already in `out`.

    A last line cut short by a crash is removed (its sample runs again); a whole last line
    without its newline (a file written by other tools) gets one, so the next line appended
    starts a line of its own; any other bad line is an error, since the file is not ours to
    rewrite.
    """
    if not out.exists():
        return set()
    raw = out.read_bytes()
    lines = raw.split(b"\n")
    done = set()
    keep_bytes = len(raw)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            done.add((str(obj["problem_id"]), int(obj["sample"])))
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:  # an unterminated last line: a write cut short
                keep_bytes = len(raw) - len(line)
                print(f"tirgrpo generate: {out}: dropping a cut-off last line; that sample runs again", file=sys.stderr)
                continue
            raise TirgrpoError(f"{out}, line {i + 1}: not a transcript line; cannot resume into this file") from None
    if keep_bytes != len(raw):
        with open(out, "r+b") as f:
            f.truncate(keep_bytes)
    elif raw and not raw.endswith(b"\n"):
        with open(out, "ab") as f:
            f.write(b"\n")
    return done


class _Appender:
    """Appends JSON lines to a file, one whole line per write, flushed and synced."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()

    def write(self, obj: dict) -> None:
        line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
