"""`tirgrpo generate` against a scripted OpenAI-style server: the transcript loop, resuming, and bad input.

The scripted server stands in for a model so that each failure (errors, cut streams, code that
never ends) happens on cue; the real `tirgrpo serve` is exercised end to end in test_serve.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tirgrpo.tir import sandbox as sb
from tirgrpo.cli import main
from tirgrpo.data.records import read_transcripts
from tirgrpo.errors import TirgrpoError
from tirgrpo.tir.generate import boxed_answer, errors_path, find_code, read_problems

needs_sandbox = pytest.mark.skipif(not sb.available_modes(), reason="no isolating sandbox mode works here")

CODE_TURN = "Plan: add.\n```python\nprint(40 + 2)\n"  # the server stops at "```\n" and reports it
ANSWER_TURN = " it prints 42.\n</think>\n\n\\boxed{42}"
LOOP_TURN = "Loop.\n```python\nwhile True:\n    pass\n"


class Script:
    """What the fake server answers: `behaviour` is "ok", "error", "cut" or "loop"."""

    def __init__(self, behaviour="ok"):
        self.behaviour = behaviour
        self.requests = []


def start_server(script: Script):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            data = json.dumps({"object": "list", "data": [{"id": "fake", "object": "model", "max_tokens": 100}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(body)
            if script.behaviour == "full" and "```output" in body["prompt"]:
                data = b'{"error": {"message": "This model\'s maximum context length is 64 tokens."}}'
                self.send_response(400)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if script.behaviour == "error":
                data = b'{"error": {"message": "boom"}}'
                self.send_response(500)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            first = "```output" not in body["prompt"]
            if script.behaviour == "loop":
                text, stop = (LOOP_TURN, "```\n") if first else (ANSWER_TURN, None)
            else:
                text, stop = (CODE_TURN, "```\n") if first else (ANSWER_TURN, None)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                self.wfile.write(b"data: " + json.dumps({"choices": [{"index": 0, "text": piece, "finish_reason": None}]}).encode() + b"\n\n")
            if script.behaviour == "cut":
                self.close_connection = True
                return  # no finish reason, no [DONE]
            self.wfile.write(b"data: " + json.dumps({"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": stop}]}).encode() + b"\n\n")
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": len(text)}}).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def fake():
    script = Script()
    server, url = start_server(script)
    yield script, url
    server.shutdown()
    server.server_close()


def problems_csv(tmp_path, with_answers=True):
    p = tmp_path / "problems.csv"
    if with_answers:
        p.write_text("id,problem,answer\np1,What is 40+2?,42\np2,What is 6*7?,42\n")
    else:
        p.write_text("id,problem\np1,What is 40+2?\n")
    return p


def gen_args(problems, url, out, *extra):
    return ["generate", "--problems", str(problems), "--base-url", url, "--model", "fake", "--out", str(out),
            "--no-progress", "--timeout", "2", "--retries", "0", *extra]


def test_find_code_and_boxed():
    assert find_code("plan\n```python\nprint(1)\n```\nmore") == ("print(1)", len("plan\n```python\nprint(1)\n```"))
    assert find_code("```python\nprint(1)\n") is None
    assert find_code("```text\nx\n```") is None
    assert boxed_answer("so \\boxed{12} then \\boxed{1,000}") == "1000"
    assert boxed_answer("\\boxed{x+1}") is None and boxed_answer("none") is None
    # GSM8K's dollars and percents, nested braces, wrappers; words are not a number
    assert boxed_answer("\\boxed{\\$70,000}") == "70000" and boxed_answer("\\boxed{$18}") == "18"
    assert boxed_answer("\\boxed{25\\%}") == "25" and boxed_answer("\\boxed{\\text{42}}") == "42"
    assert boxed_answer("\\boxed{12 \\text{ dollars}}") is None and boxed_answer("\\boxed{$}") is None


def test_read_problems(tmp_path):
    problems, has = read_problems(problems_csv(tmp_path))
    assert has and [p.answer for p in problems] == ["42", "42"]
    problems, has = read_problems(problems_csv(tmp_path, with_answers=False))
    assert not has and problems[0].answer is None
    bad = tmp_path / "bad.csv"
    bad.write_text("id,problem,answer\np1,q,forty\n")
    with pytest.raises(TirgrpoError, match="row 1.*integer"):
        read_problems(bad)
    bad.write_text("name,text\na,b\n")
    with pytest.raises(TirgrpoError, match="no id or problem_id column"):
        read_problems(bad)
    bad.write_text("id,problem\np1,a\np1,b\n")
    with pytest.raises(TirgrpoError, match="duplicate"):
        read_problems(bad)


@needs_sandbox
def test_transcripts_resume_and_prepare_format(fake, tmp_path):
    script, url = fake
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path), url, out, "--samples-per-problem", "2", "--concurrency", "2")) == 0
    ts = read_transcripts(out)  # the reader `tirgrpo prepare` uses
    assert sorted((t.problem_id, t.sample) for t in ts) == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]
    t = ts[0]
    assert [turn.finish_reason for turn in t.turns] == ["code", "eos"]
    assert t.turns[0].text.endswith("```") and t.turns[0].code == "print(40 + 2)" and t.turns[0].output == "42"
    assert t.eventual_answer == "42" and t.correct_answer == "42"
    assert script.requests[0]["stop"] == ["```\n"] and script.requests[0]["stream"] is True
    assert "```output\n42\n```" in script.requests[-1]["prompt"]  # the bridge carried the output
    n = len(script.requests)
    assert main(gen_args(problems_csv(tmp_path), url, out, "--samples-per-problem", "2")) == 0
    assert len(script.requests) == n  # everything was done: nothing re-requested
    assert main(gen_args(problems_csv(tmp_path), url, out, "--samples-per-problem", "3")) == 0
    assert len(read_transcripts(out)) == 6


@needs_sandbox
def test_max_problems_takes_the_first_n(fake, tmp_path):
    _, url = fake
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path), url, out, "--max-problems", "1", "--samples-per-problem", "2")) == 0
    assert sorted((t.problem_id, t.sample) for t in read_transcripts(out)) == [("p1", 0), ("p1", 1)]
    assert main(gen_args(problems_csv(tmp_path), url, out, "--max-problems", "-1")) == 2


@needs_sandbox
def test_turn_and_token_limits(fake, tmp_path):
    _, url = fake
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path), url, out, "--max-turns", "1")) == 0
    t = read_transcripts(out)[0]
    assert len(t.turns) == 1 and t.turns[0].output == "42" and t.eventual_answer is None


def test_unreachable_server(tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path), f"http://127.0.0.1:{port}", out)) == 2
    assert "cannot reach the server" in capsys.readouterr().err
    assert not out.exists()


@needs_sandbox
@pytest.mark.parametrize("behaviour", ["error", "cut"])
def test_server_failures_are_recorded_and_retried(fake, tmp_path, capsys, behaviour):
    script, url = fake
    script.behaviour = behaviour
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path), url, out)) == 1
    err = capsys.readouterr().err
    assert "2 samples failed" in err and "run the same command again" in err
    failures = [json.loads(line) for line in errors_path(out).read_text().splitlines()]
    assert sorted(f["problem_id"] for f in failures) == ["p1", "p2"]
    assert ("HTTP 500" if behaviour == "error" else "cut stream") in failures[0]["error"]
    script.behaviour = "ok"  # the server recovers: the re-run completes the failed samples
    assert main(gen_args(problems_csv(tmp_path), url, out)) == 0
    assert len(read_transcripts(out)) == 2


@needs_sandbox
def test_never_terminating_code_is_recorded(fake, tmp_path):
    script, url = fake
    script.behaviour = "loop"
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path, with_answers=False), url, out, "--timeout", "1")) == 0
    t = read_transcripts(out)[0]
    assert "TimeoutError" in t.turns[0].output and t.turns[1].finish_reason == "eos"
    assert t.correct_answer is None and t.eventual_answer == "42"


def test_cut_off_last_line_is_dropped_on_resume(tmp_path):
    from tirgrpo.tir.generate import finished_pairs

    out = tmp_path / "t.jsonl"
    out.write_text('{"problem_id": "a", "sample": 0}\n{"problem_id": "b", "sa')
    assert finished_pairs(out) == {("a", 0)}
    assert out.read_text() == '{"problem_id": "a", "sample": 0}\n'
    out.write_text('garbage\n{"problem_id": "a", "sample": 0}\n')
    with pytest.raises(TirgrpoError, match="line 1"):
        finished_pairs(out)


def test_a_whole_last_line_without_its_newline_gets_one_so_appends_start_a_new_line(tmp_path):
    from tirgrpo.tir.generate import _Appender, finished_pairs

    out = tmp_path / "t.jsonl"
    out.write_text('{"problem_id": "a", "sample": 0}\n{"problem_id": "a", "sample": 1}')  # no final newline
    assert finished_pairs(out) == {("a", 0), ("a", 1)}
    _Appender(out).write({"problem_id": "b", "sample": 0})
    assert finished_pairs(out) == {("a", 0), ("a", 1), ("b", 0)}
    assert out.read_text().count("\n") == 3


@needs_sandbox
def test_a_full_context_ends_the_transcript_and_max_tokens_respects_the_server_cap(fake, tmp_path):
    script, url = fake
    script.behaviour = "full"  # the second turn's prompt no longer fits the server's context
    out = tmp_path / "t.jsonl"
    assert main(gen_args(problems_csv(tmp_path, with_answers=False), url, out, "--max-tokens", "1000")) == 0
    t = read_transcripts(out)[0]
    assert [turn.finish_reason for turn in t.turns] == ["code", "length"] and t.turns[1].text == ""
    assert script.requests[0]["max_tokens"] == 100  # the server's advertised cap, not the 1,000 budget


def test_read_problems_from_gsm8k_jsonl(tmp_path):
    p = tmp_path / "test.jsonl"
    p.write_text(json.dumps({"question": "What is 40+2?", "answer": "40 + 2 = <<40+2=42>>42\n#### 42"}) + "\n\n"
                 + json.dumps({"id": "x7", "problem": "What is 1,000+1?", "answer": "#### 1,001"}) + "\n")
    problems, has = read_problems(p)
    assert has and [(q.id, q.answer) for q in problems] == [("test-1", "42"), ("x7", "1001")]
    p.write_text(json.dumps({"question": "q", "answer": "#### many"}) + "\n")
    with pytest.raises(TirgrpoError, match="line 1.*integer"):
        read_problems(p)


@pytest.mark.parametrize("row,message", [
    ({"id": "", "question": "q"}, "line 1: empty id"),
    ({"id": "   ", "question": "q"}, "line 1: empty id"),
    ({"id": ["a"], "question": "q"}, "line 1: the id must be a string or an integer"),
    ({"id": True, "question": "q"}, "line 1: the id must be a string or an integer"),
    ({"id": "a", "question": "q3\x00x"}, "line 1: question"),
    ({"id": "a\x00b", "question": "q"}, "line 1: id"),
])
def test_jsonl_problems_get_the_checks_of_csv_rows(tmp_path, row, message):
    """What the transcripts' reader would refuse after a whole run is refused before it."""
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(TirgrpoError, match=message):
        read_problems(p)
    p.write_text(json.dumps({"id": 7, "question": "q"}) + "\n")
    assert read_problems(p)[0][0].id == "7"


def test_problem_answers_with_a_degree_mark(tmp_path):
    from tirgrpo.tir.generate import problem_answer

    assert problem_answer("336^\\circ") == 336 and problem_answer(" 336 ^{\\circ} ") == 336
    assert problem_answer("45°") == 45 and problem_answer("1,000") == 1000 and problem_answer("72.0") == 72
    assert problem_answer("\\circ") is None and problem_answer("3^2") is None and problem_answer("x^\\circ") is None
    p = tmp_path / "aime.csv"
    p.write_text('"id","problem","answer"\n1984_AIME_8,"Find $\\theta$ in degrees.",336^\\circ\n'
                 'x,"y",7\n', encoding="utf-8")
    problems, has = read_problems(p)
    assert has and [q.answer for q in problems] == ["336", "7"]
    p2 = tmp_path / "a.jsonl"
    p2.write_text(json.dumps({"question": "angle?", "answer": "#### 90^\\circ"}) + "\n")
    assert read_problems(p2)[0][0].answer == "90"


@needs_sandbox
def test_ctrl_c_writes_the_samples_that_finish_and_resume_runs_only_the_rest(fake, tmp_path, monkeypatch, capsys):
    import signal
    import time

    from tirgrpo.commands import generate as gen_cmd
    from tirgrpo.data.records import Transcript, Turn

    _, url = fake
    problems = tmp_path / "problems.csv"
    problems.write_text("id,problem,answer\np1,a,1\np2,b,2\np3,c,3\n")
    out = tmp_path / "t.jsonl"
    main_thread = threading.main_thread().ident
    ran = []

    def transcript(p, k):
        ran.append(p.id)
        return Transcript(p.id, k, p.question, p.answer, p.answer, "prompt", "{output}",
                          (Turn(f"\\boxed{{{p.answer}}}", None, None, "eos", 0.0),))

    p2_started = threading.Event()

    def interrupted(client, sandbox, p, k, settings):
        if p.id == "p1":  # the user presses Ctrl-C while p1 and p2 are in flight
            p2_started.wait(10)
            signal.pthread_kill(main_thread, signal.SIGINT)
        else:
            p2_started.set()
        time.sleep(0.5)  # both are still running when the interrupt lands; p3 waits in the queue
        return transcript(p, k)

    monkeypatch.setattr(gen_cmd, "run_sample", interrupted)
    assert main(gen_args(problems, url, out, "--concurrency", "2")) == 130
    assert "interrupted" in capsys.readouterr().err
    written = {t.problem_id for t in read_transcripts(out)}
    assert {"p1", "p2"} <= written  # finished after the Ctrl-C: written, not dropped
    ran.clear()
    monkeypatch.setattr(gen_cmd, "run_sample", lambda client, sandbox, p, k, settings: transcript(p, k))
    assert main(gen_args(problems, url, out)) == 0
    assert sorted(ran) == sorted({"p1", "p2", "p3"} - written)  # the resumed run redoes none of them
    assert sorted(t.problem_id for t in read_transcripts(out)) == ["p1", "p2", "p3"]


@pytest.mark.parametrize("content, message", [
    (b"code_prompt = 5\n", "code_prompt must be a string, got int"),
    (b"bridge = ['{output}']\n", "bridge must be a string, got list"),
    (b"bridge = '\xff{output}'\n", "not UTF-8"),
])
def test_a_templates_file_with_a_bad_value_is_named(tmp_path, capsys, content, message):
    # Before: a number in the file ended in an internal TypeError (the field check's regex), a
    # non-UTF-8 byte in an internal UnicodeDecodeError.
    from tirgrpo.tir.generate import load_templates

    path = tmp_path / "templates.toml"
    path.write_bytes(content)
    with pytest.raises(TirgrpoError, match=f"templates file {path}: .*{message}"):
        load_templates(str(path))


def test_read_problems_skips_a_byte_order_mark(tmp_path):
    # Before: "no id or problem_id column; found ['\ufeffid', ...]" for an Excel "CSV UTF-8" file.
    path = tmp_path / "p.csv"
    path.write_text("\ufeffid,problem,answer\n1,What is 2+2?,4\n", encoding="utf-8")
    problems, has_answers = read_problems(path)
    assert [p.id for p in problems] == ["1"] and has_answers


def test_read_problems_refuses_a_column_named_twice(tmp_path):
    # Before: the last 'problem' column silently won.
    path = tmp_path / "p.csv"
    path.write_text("id,problem,answer,problem\n1,What is 2+2?,4,Other\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=r"column\(s\) \['problem'\] appear more than once"):
        read_problems(path)


def test_a_templates_file_with_a_byte_order_mark_loads(tmp_path):
    from tirgrpo.tir.generate import load_templates

    path = tmp_path / "templates.toml"
    path.write_bytes(b"\xef\xbb\xbfbridge = 'out: {output}'\n")
    assert load_templates(str(path))[1] == "out: {output}"
