"""`tirgrpo serve` (a real subprocess over a tiny model) and the end-to-end path serve -> generate -> prepare.

A random tiny model writes noise and never a code block, which would leave the TIR loop
untested. So the fixture trains one (a few dozen Adam steps on three short transcripts, a few
seconds on a CPU) to write a plan and a ```python block after the prompt and a boxed answer after
the bridge, and the server samples greedily: the run is deterministic. The short prompt and
bridge templates come in through generate's --templates override (the real templates are
~1,000 tokens, too long to train on in a test).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import pytest
import torch

from conftest import byte_level_tokenizer
from tirgrpo.tir import sandbox as sb
from tirgrpo.data.records import read_transcripts
from tirgrpo.data.templates import fill

PROMPT = "<｜User｜>{question}\nWrite a plan and Python code.\n<｜Assistant｜><think>\nPlan:\n"
# Starts with a newline so that the model's learnt "```\n" after its code is the server's stop string.
BRIDGE = "\n<｜User｜>```output\n{output}\n```\n<｜Assistant｜><think>\nLooking at my code,"
QUESTIONS = [("q1", "What is 6*7?", 42), ("q2", "What is 2+3?", 5), ("q3", "What is 10-4?", 6)]
CODE_TEXT = " multiply.\n```python\nprint(6*7)\n```"
ANSWER_TEXT = " it prints 42.\n</think>\n\n\\boxed{42}"
# A chat template that renders PROMPT and BRIDGE (minus bos) from their user texts and pre-fills.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}<｜User｜>{{ m.content }}\n"
    "{% else %}<｜Assistant｜>{{ m.content }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)


def train_tiny_policy(path):
    """Save a tiny Qwen2 that has memorised CODE_TEXT after PROMPT and ANSWER_TEXT after BRIDGE."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = byte_level_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    rows = []
    for _, question, _ in QUESTIONS:
        bridge = fill(BRIDGE, output="42")
        parts = [(fill(PROMPT, question=question), False), (CODE_TEXT + bridge[0], True), (bridge[1:], False),
                 (ANSWER_TEXT, True)]
        ids, labels = list(tok("")["input_ids"]), [-100]
        for text, learn in parts:
            t = tok(text, add_special_tokens=False)["input_ids"]
            ids += t
            labels += t if learn else [-100] * len(t)
        ids.append(tok.eos_token_id)
        labels.append(tok.eos_token_id)
        rows.append((ids, labels))
    # One right-padded batch: a single forward per step.
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [tok.eos_token_id] * (width - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])
    mask = labels[:, 1:] != -100
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # One thread: a model this small gains nothing from more, and loses a lot on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _fit(model, opt, ids, attention, labels, mask)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


def _fit(model, opt, ids, attention, labels, mask):
    targets = labels[:, 1:][mask]
    for _ in range(400):
        out = model(input_ids=ids, attention_mask=attention, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        # Every target token at p > 0.9, a margin that greedy decoding (with a KV cache, in
        # another process) cannot lose to float noise.
        logp = torch.log_softmax(out.logits[:, :-1].detach(), -1)[mask]
        if bool((logp.gather(-1, targets[:, None]) > torch.log(torch.tensor(0.9))).all()):
            break
    else:
        raise AssertionError("the tiny policy did not learn its transcripts")


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return train_tiny_policy(tmp_path_factory.mktemp("tiny-policy"))




def start_server(model_dir, tmp_dir, *extra):
    """`tirgrpo serve` on 127.0.0.1 (a free port) in a subprocess; returns (process, its /v1 URL)."""
    import os

    template = tmp_dir / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tirgrpo", "serve", "--model", str(model_dir), "--port", "0", "--device", "cpu",
         "--served-model-name", "tiny", "--chat-template", str(template), *extra],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"serving 'tiny' on (http://\S+/v1)", line)
        if m:
            return proc, m.group(1)
    proc.terminate()
    raise AssertionError("tirgrpo serve did not start")


@pytest.fixture(scope="module")
def server(policy_dir, tmp_path_factory):
    """The server over the tiny trained policy, 8 rows at most (so requests queue); yields its /v1 URL."""
    proc, url = start_server(policy_dir, tmp_path_factory.mktemp("serve"), "--max-batch", "8",
                              "--max-request-tokens", "10000")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_models_and_plain_completion(server):
    models = httpx.get(server + "/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    prompt = fill(PROMPT, question="What is 6*7?")
    r = httpx.post(server + "/completions", json={
        "model": "tiny", "prompt": prompt, "max_tokens": 60, "temperature": 0, "n": 2, "stop": ["```\n"], "logprobs": 1,
    }, timeout=60).json()
    assert len(r["choices"]) == 2
    for choice in r["choices"]:
        assert choice["text"] == CODE_TEXT[:-3]  # cut before the stop string, as vLLM does
        assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "```\n"
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) and all(x <= 0 for x in lp["token_logprobs"])
    assert r["usage"]["completion_tokens"] == 2 * len(lp["tokens"])
    short = httpx.post(server + "/completions", json={"prompt": prompt, "max_tokens": 3, "temperature": 0.8,
                                                      "top_p": 0.9, "top_k": 20, "seed": 1}, timeout=60).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3


def stream_chunks(url, body):
    events = []
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streaming_token_by_token(server):
    prompt = fill(PROMPT, question="What is 2+3?")
    chunks = stream_chunks(server + "/completions", {
        "prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": "```\n", "stream_options": {"include_usage": True}})
    texts = [c["text"] for ev in chunks for c in ev["choices"]]
    assert "".join(texts) == CODE_TEXT[:-3]
    assert [c["finish_reason"] for ev in chunks for c in ev["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(CODE_TEXT) + 1  # with the stop string "```\n"
    # Text comes as it is made: a long completion arrives in many events, the first one small.
    # (A client that reads slowly gets several tokens per event, so the count is not exact.)
    chunks = stream_chunks(server + "/completions", {"prompt": "x", "max_tokens": 300, "ignore_eos": True})
    texts = [c["text"] for ev in chunks for c in ev["choices"] if c["text"]]
    assert len(texts) >= 5 and len(texts[0]) < 30 and len("".join(texts)) >= 100


def test_chat_completions_with_the_chat_template(server):
    messages = [{"role": "user", "content": "What is 6*7?\nWrite a plan and Python code."},
                {"role": "assistant", "content": "<think>\nPlan:\n"}]
    body = {"messages": messages, "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 60,
            "temperature": 0, "stop": ["```\n"]}
    r = httpx.post(server + "/chat/completions", json=body, timeout=60).json()
    assert r["object"] == "chat.completion"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": CODE_TEXT[:-3]}
    chunks = stream_chunks(server + "/chat/completions", body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["delta"].get("content", "") for ev in chunks for c in ev["choices"]) == CODE_TEXT[:-3]


def raw_http(url: str, request: bytes) -> tuple[int, dict]:
    """Send bytes as they are (no client-side checks); returns (status, JSON body)."""
    import socket

    host, port = url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


BAD_REQUESTS = [
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "x" * 400, "max_tokens": 200}, "max_tokens"),  # over the 512-token context
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "temperature": 10**400}, "temperature"),  # no float holds it
    ({"prompt": "x", "n": 10**400}, "n"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "n": 1.5}, "n"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": [1, 2, 10**9]}, "prompt"),
    ({"prompt": ["a"] * 300}, "prompt"),
    ({"prompt": ["a"] * 20, "n": 8, "max_tokens": 100}, "max_tokens"),  # over the per-request cap of 10,000
    ({"prompt": "x", "stop": 5}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "stream_options": 3}, "stream_options"),
    ([1, 2], None),
]


def test_bad_requests_get_4xx_with_an_error_body(server):
    for body, param in BAD_REQUESTS:
        r = httpx.post(server + "/completions", json=body, timeout=30)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        error = r.json()["error"]
        assert error["message"] and error["code"] == r.status_code
        if param is not None:
            assert error["param"] == param, (body, error)
    for raw in (b"{not json", b'{"prompt": "x", "temperature": NaN}', b'{"prompt": "x", "top_p": Infinity}',
                b'{"prompt": "x", "temperature": 1e999}', b"\xff\xfe", b"[" * 100_000 + b"]" * 100_000, b"",
                b'{"prompt": "a\\ud800"}', b'{"prompt": "x", "logit_bias": {"5": 100}}'):
        r = httpx.post(server + "/completions", content=raw, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["message"], raw[:40]
    chat = [{"messages": []}, {"messages": [{"role": "wizard", "content": "x"}]},
            {"messages": [{"role": "user", "content": 3}]},
            {"messages": [{"role": "user", "content": "x"}], "continue_final_message": True}]
    for raw in (b'{"messages": [{"role": "user", "content": "\\udfff"}]}',):  # was a plain-text 500
        r = httpx.post(server + "/chat/completions", content=raw, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages", raw
    for body in chat:
        r = httpx.post(server + "/chat/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] in ("messages", "continue_final_message"), body
    r = httpx.post(server + "/completions", json={"model": "other", "prompt": "x"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    assert httpx.get(server + "/nothing", timeout=30).json()["error"]["code"] == 404
    assert httpx.get(server + "/completions", timeout=30).json()["error"]["code"] == 405
    status, body = raw_http(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            b"Content-Length: " + str(17 * 1024 * 1024).encode() + b"\r\n\r\n{}")
    assert status == 413 and body["error"]["code"] == 413
    for length in (b"-5", b"abc", b"1, 2"):
        status, body = raw_http(server, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + length
                                + b"\r\n\r\n{}")
        assert status == 400 and body["error"]["message"], length
    assert httpx.get(server.rsplit("/v1", 1)[0] + "/health", timeout=30).json()["status"] == "ok"  # still serving


def health(server):
    return httpx.get(server.rsplit("/v1", 1)[0] + "/health", timeout=30).json()


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_client_that_leaves_frees_its_rows(server):
    before = health(server)["cancelled_rows"]
    body = {"prompt": "x", "max_tokens": 400, "n": 4, "ignore_eos": True, "temperature": 1.0}
    with httpx.stream("POST", server + "/completions", json={**body, "stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["text"]:
                break  # one token seen: leave
    assert wait_for(lambda: health(server)["running_rows"] == 0)
    assert health(server)["cancelled_rows"] - before >= 4  # released by the disconnect, not run to the end
    import socket

    host, port = server.split("//")[1].split("/")[0].split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:  # not streamed: leave without reading
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        assert wait_for(lambda: health(server)["running_rows"] == 4)
    assert wait_for(lambda: health(server)["running_rows"] == 0)
    assert health(server)["cancelled_rows"] - before >= 8


def test_concurrent_requests_all_complete_and_none_starves(server):
    from concurrent.futures import ThreadPoolExecutor

    long_body = {"prompt": "x", "max_tokens": 300, "n": 4, "ignore_eos": True}
    finished = {}

    def one(i):
        if i == 0:
            r = httpx.post(server + "/completions", json=long_body, timeout=120).json()
            finished[i] = time.monotonic()
            return r["usage"]["completion_tokens"] == 1200
        question = QUESTIONS[i % 3][1]
        body = {"prompt": fill(PROMPT, question=question), "max_tokens": 60, "temperature": 0, "stop": ["```\n"],
                "n": 1 + i % 2}
        if i % 3 == 0:
            texts = {}
            for ev in stream_chunks(server + "/completions", body):
                for c in ev["choices"]:
                    texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            ok = texts == {k: CODE_TEXT[:-3] for k in range(1 + i % 2)}
        else:
            r = httpx.post(server + "/completions", json=body, timeout=120).json()
            ok = [c["text"] for c in r["choices"]] == [CODE_TEXT[:-3]] * (1 + i % 2)
        finished[i] = time.monotonic()
        return ok

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    assert all(results)
    # 8 rows: the long request holds 4, the 11 short ones (17 rows) pass through the other 4.
    assert max(t for i, t in finished.items() if i) < finished[0]


def test_queue_limit_answers_429(policy_dir):
    import asyncio

    from transformers import AutoModelForCausalLM

    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.rollout.continuous import ContinuousBatcher
    from tirgrpo.rollout.engine import FastEngine
    from tirgrpo.tir.serve import Limits, RequestError, Service, submit

    tok = load_tokenizer(str(policy_dir))
    model = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    batcher = ContinuousBatcher(FastEngine(model, tok, max_batch=4), max_rows=4, max_prompt_len=64, max_new_tokens=8)
    service = Service(batcher, tok, "tiny", Limits(512, 64, 8, 4, max_queue=2))  # the batcher is not started

    async def go():
        submit(service, service.parse({"prompt": ["a", "b"]}, chat=False))
        with pytest.raises(RequestError) as e:
            submit(service, service.parse({"prompt": "c"}, chat=False))
        return e.value.status

    assert asyncio.run(go()) == 429 and batcher.queued() == 2


def test_chat_templates_render_the_seed_texts_in_the_solver_format(policy_dir):
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.tir.generate import chat_templates

    tok = load_tokenizer(str(policy_dir))
    assert chat_templates(PROMPT, BRIDGE, tok) == (PROMPT, BRIDGE)  # bos left to the server
    tok = byte_level_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    prompt, bridge = chat_templates(PROMPT, BRIDGE, tok)
    assert prompt == "<|im_start|>user\n{question}\nWrite a plan and Python code.<|im_end|>\n<|im_start|>assistant\n<think>\nPlan:\n"
    assert bridge == ("<|im_end|>\n<|im_start|>user\n```output\n{output}\n```<|im_end|>\n<|im_start|>assistant\n"
                      "<think>\nLooking at my code,")


@pytest.mark.skipif(not sb.available_modes(), reason="no isolating sandbox mode works here")
@pytest.mark.parametrize("chat", [False, True], ids=["seed-text", "chat-template"])
def test_end_to_end_serve_generate_prepare(server, policy_dir, tmp_path, chat):
    from tirgrpo.cli import main

    problems = tmp_path / "problems.csv"
    problems.write_text("id,problem,answer\n" + "".join(f"{i},{q},{a}\n" for i, q, a in QUESTIONS))
    templates = tmp_path / "templates.toml"
    templates.write_text(f"code_prompt = {json.dumps(PROMPT)}\nbridge = {json.dumps(BRIDGE)}\n")
    out = tmp_path / "transcripts.jsonl"
    args = ["generate", "--problems", str(problems), "--base-url", server, "--model", "tiny", "--out", str(out),
            "--templates", str(templates), "--temperature", "0", "--max-turns", "3", "--max-tokens", "200",
            "--concurrency", "3", "--no-progress", "--request-timeout", "120"]
    if chat:  # the prompt and bridge rendered with the solver's chat template: here the same text
        args += ["--chat-template", str(policy_dir)]
    assert main(args) == 0
    transcripts = sorted(read_transcripts(out), key=lambda t: t.problem_id)
    assert [t.problem_id for t in transcripts] == ["q1", "q2", "q3"]
    for t in transcripts:
        assert t.prompt.startswith("<｜User｜>What is") and t.bridge == BRIDGE
        assert len(t.turns) == 2
        code_turn, answer_turn = t.turns
        assert code_turn.text == CODE_TEXT and code_turn.code == "print(6*7)" and code_turn.output == "42"
        assert code_turn.finish_reason == "code" and answer_turn.finish_reason == "eos"
        assert answer_turn.text == ANSWER_TEXT and t.eventual_answer == "42"
        assert sum(len(turn.text) for turn in t.turns) < 200
    assert [t.correct_answer for t in transcripts] == ["42", "5", "6"]

    prepared = tmp_path / "prepared"
    assert main(["prepare", "--input", str(out), "--out", str(prepared), "--tokenizer", str(policy_dir),
                 "--no-pairing", "--max-prompt-tokens", "0", "--max-completion-tokens", "0"]) == 0
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["input_counts"]["transcripts"] == 3 and stats["input_counts"]["transcript_segments"] == 3
    examples = [json.loads(line) for name in ("train.jsonl", "eval.jsonl")
                for line in (prepared / name).read_text().splitlines()]
    assert len(examples) == 3
    assert sorted(e["label"] for e in examples) == ["correct", "wrong", "wrong"]
    for e in examples:
        assert e["prompt"].endswith("Looking at my code,") and e["completion"] == ANSWER_TEXT

    # Re-running finds every problem done and asks the server for nothing.
    assert main(args) == 0 and len(read_transcripts(out)) == 3



def test_random_bodies_are_answered_or_refused_never_crash(policy_dir):
    """Every field given a random value of a random type: parse() returns or raises RequestError."""
    import random

    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.tir.serve import Limits, RequestError, Service

    service = Service(None, load_tokenizer(str(policy_dir)), "tiny", Limits(512, 256, 256, 8, max_request_tokens=10_000))
    values = [None, True, False, 0, 1, -1, 7, 2**70, -(2**70), 0.5, -0.0, 1e308, 3.7, "", "x", "5", [], [1], [[]],
              ["a", "b"], [1, "a"], {}, {"include_usage": "yes"}, [{"role": "user", "content": "hi"}],
              [{"role": "user"}], [{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]]
    fields = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
              "n", "stop", "seed", "logprobs", "min_tokens", "ignore_eos", "stream", "stream_options", "echo",
              "best_of", "presence_penalty", "frequency_penalty", "continue_final_message", "add_generation_prompt"]
    rng = random.Random(0)
    accepted = 0
    for i in range(600):
        body = {"prompt": "hello", "messages": [{"role": "user", "content": "hi"}]}
        for name in rng.sample(fields, rng.randint(1, 6)):
            body[name] = rng.choice(values)
        try:
            service.parse(body, chat=bool(i % 2))
            accepted += 1
        except RequestError as e:
            assert 400 <= e.status < 500 and str(e)
    assert 0 < accepted < 600


def test_debug_timings_take_a_streamed_request_s_time_to_first_token_apart(server):
    base = server.rsplit("/v1", 1)[0]
    httpx.get(base + "/debug/timings", params={"clear": "1"}, timeout=30)
    chunks = stream_chunks(server + "/completions", {"prompt": "x", "max_tokens": 5, "n": 2, "ignore_eos": True})
    report = httpx.get(base + "/debug/timings", timeout=30).json()
    [record] = [t for t in report["timings"] if t["id"] == chunks[0]["id"]]  # one record per group
    parts = ("parse_ms", "queue_ms", "first_token_ms", "send_ms")
    assert record["n"] == 2 and all(record[p] is not None and record[p] >= 0 for p in parts + ("ttft_ms",))
    assert 0 < record["prefill_ms"] and record["prefill_groups"] >= 1 and record["prefill_tokens"] >= 2
    # The moments the parts lie between come one after the other, and the whole spans them.
    moments = [record[k] for k in ("received", "submitted", "admitted", "first_token", "sent")]
    assert all(moments) and moments == sorted(moments)
    assert record["ttft_ms"] == pytest.approx(1000 * (record["sent"] - record["received"]), abs=0.01)
    assert report["batcher"]["steps"] >= 5 and report["batcher"]["rows"] >= 10
    httpx.get(base + "/debug/timings", params={"clear": "1"}, timeout=30)
    cleared = httpx.get(base + "/debug/timings", timeout=30).json()
    assert cleared == {"timings": [], "batcher": {}}


def test_each_group_of_a_streamed_request_is_timed_at_its_own_first_event(server):
    """Two prompts of one streamed request, n = 8 on a server of 8 rows: the second group is
    admitted only when the first has finished. Each group's record has the `sent` of the event
    that first carried one of its choices (not the request's first event)."""
    base = server.rsplit("/v1", 1)[0]
    httpx.get(base + "/debug/timings", params={"clear": "1"}, timeout=30)
    n, seen = 8, {}  # group -> when the client first saw one of its choices
    with httpx.stream("POST", server + "/completions", timeout=60, json={
            "prompt": ["x", "a longer prompt"], "n": n, "max_tokens": 5, "ignore_eos": True, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                rid = event["id"]
                for c in event["choices"]:
                    seen.setdefault(c["index"] // n, time.perf_counter())
    assert sorted(seen) == [0, 1]
    records = [t for t in httpx.get(base + "/debug/timings", timeout=30).json()["timings"] if t["id"] == rid]
    first, second = sorted(records, key=lambda t: t["prompt_tokens"])  # "x" is the shorter prompt
    for g, t in enumerate((first, second)):
        assert t["received"] <= t["submitted"] <= t["admitted"] <= t["first_token"] <= t["sent"] <= seen[g]
        assert t["ttft_ms"] == pytest.approx(1000 * (t["sent"] - t["received"]), abs=0.01)
    assert second["admitted"] > first["sent"]  # it waited for the first group's rows


def test_handoff_call_soon_failure_does_not_block_later_puts():
    """When scheduling the drain raises (the loop is closed), the put raises and the next put
    schedules again instead of waiting for a drain that will never come."""
    import asyncio

    from tirgrpo.tir.serve import Handoff

    loop = asyncio.new_event_loop()
    loop.close()
    handoff = Handoff(loop)
    queue = asyncio.Queue()
    with pytest.raises(RuntimeError):
        handoff.put(queue, 1)
    assert not handoff.scheduled
    loop = asyncio.new_event_loop()
    try:
        handoff.loop = loop
        handoff.put(queue, 2)  # schedules a drain on the open loop
        loop.run_until_complete(asyncio.sleep(0))
        assert [queue.get_nowait() for _ in range(queue.qsize())] == [1, 2]
    finally:
        loop.close()


def test_handoff_wakes_the_loop_once_for_a_burst_and_loses_nothing():
    import asyncio
    import threading

    from tirgrpo.tir.serve import Handoff

    steps, groups = 300, 8

    async def run():
        loop = asyncio.get_running_loop()
        wakes = []

        class CountingLoop:
            def call_soon_threadsafe(self, *args):
                wakes.append(1)
                return loop.call_soon_threadsafe(*args)

        handoff = Handoff(loop)
        handoff.loop = CountingLoop()
        queues = [asyncio.Queue() for _ in range(groups)]

        def batcher():  # a step's sinks, one per group, back to back; now and then a pause
            for step in range(steps):
                for q in queues:
                    handoff.put(q, step)
                if step % 7 == 0:
                    time.sleep(0.001)

        async def reader(q):
            return [await q.get() for _ in range(steps)]

        thread = threading.Thread(target=batcher)
        thread.start()
        got = await asyncio.wait_for(asyncio.gather(*(reader(q) for q in queues)), 60)
        thread.join()
        return got, len(wakes)

    got, wakes = asyncio.run(run())
    assert all(g == list(range(steps)) for g in got)  # every update, in order
    assert wakes < steps * groups / 4  # one per put would be 2,400


def test_context_errors_end_a_transcript_in_generate(server):
    """A prompt over the server's prompt limit, and a prompt whose max_tokens would run past the
    model's length: both 400s say "maximum context length", which `tirgrpo generate` reads as the
    end of a transcript ("length"), not as a failed sample."""
    from tirgrpo.tir.generate import context_full

    max_len = httpx.get(server + "/models", timeout=30).json()["data"][0]["max_model_len"]
    for prompt, max_tokens in (("x" * (max_len + 10), 1), ("x" * (max_len - 4), 8)):
        r = httpx.post(server + "/completions", json={"prompt": prompt, "max_tokens": max_tokens}, timeout=30)
        assert r.status_code == 400 and context_full(r.status_code, r.text), r.text
    r = httpx.post(server + "/completions", json={"prompt": "x", "temperature": -1}, timeout=30)
    assert r.status_code == 400 and not context_full(r.status_code, r.text)


# --------------------------------------------------------------------------- requests checked without a server


@pytest.fixture(scope="module")
def service():
    """A Service over the byte-level tokenizer with a chat template; parse() only (no batcher)."""
    from tirgrpo.tir.serve import Limits, Service

    tok = byte_level_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return Service(None, tok, "tiny", Limits(512, 256, 256, 8, max_request_tokens=10_000))


@pytest.mark.parametrize("raw, param", [
    (b'{"prompt": "a\\ud800b"}', "prompt"),
    (b'{"prompt": ["ok", "\\udfff"]}', "prompt"),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}]}', "messages"),
    (b'{"prompt": "x", "stop": ["\\ud800"]}', "stop"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(raw, param):
    # Before: the tokenizer raised TypeError on it: "500 Internal Server Error" as plain text
    # (a stop string's surrogate was taken, and no UTF-8 could ever match it).
    from tirgrpo.tir.serve import RequestError, parse_json

    with pytest.raises(RequestError) as e:
        parse_json(raw)
    assert e.value.status == 400 and e.value.param == param and "lone surrogate" in str(e.value)
    assert parse_json(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001F600"}  # a pair is a character


@pytest.mark.parametrize("model", [5, ["tiny"], {"id": "tiny"}, True])
def test_a_model_of_the_wrong_type_is_a_400_not_a_404(service, model):
    from tirgrpo.tir.serve import RequestError

    with pytest.raises(RequestError) as e:
        service.parse({"prompt": "x", "model": model}, chat=False)
    assert (e.value.status, e.value.param) == (400, "model") and "string" in str(e.value)


UNSUPPORTED = [  # (field, a value asking for what this server does not do, chat?)
    ("top_logprobs", 5, True), ("top_logprobs", "x", True), ("logit_bias", {"5": 100}, False),
    ("logit_bias", [1], True), ("suffix", "y", False), ("tools", [{"type": "function"}], True),
    ("tool_choice", "required", True), ("functions", [{"name": "f"}], True),
    ("response_format", {"type": "json_object"}, True), ("response_format", "json", True),
]


@pytest.mark.parametrize("name, value, chat", UNSUPPORTED)
def test_an_option_this_server_does_not_honour_is_refused_not_ignored(service, name, value, chat):
    # Before: 200, the option silently ignored (no alternatives, no bias, no tool calls, no JSON mode).
    from tirgrpo.tir.serve import RequestError

    body = {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "x"}
    with pytest.raises(RequestError) as e:
        service.parse({**body, name: value}, chat=chat)
    assert (e.value.status, e.value.param) == (400, name) and name in str(e.value)


@pytest.mark.parametrize("name, value", [("top_logprobs", 0), ("top_logprobs", None), ("logit_bias", {}),
                                         ("suffix", ""), ("tools", []), ("tool_choice", "none"),
                                         ("response_format", {"type": "text"}), ("functions", None)])
def test_the_same_options_at_their_defaults_pass(service, name, value):
    service.parse({"messages": [{"role": "user", "content": "hi"}], name: value}, chat=True)
    service.parse({"prompt": "x", name: value}, chat=False)
