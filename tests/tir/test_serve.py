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


@pytest.fixture(scope="module")
def server(policy_dir):
    """`tirgrpo serve` on 127.0.0.1 (a free port) with the tiny trained policy; yields its /v1 URL."""
    import os

    model_dir = policy_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "tirgrpo", "serve", "--model", str(model_dir), "--port", "0", "--device", "cpu",
         "--served-model-name", "tiny"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"serving 'tiny' on (http://\S+/v1)", line)
            if m:
                url = m.group(1)
                break
        assert url, "tirgrpo serve did not start"
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
                                                      "top_p": 0.9, "seed": 1}, timeout=60).json()
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 3


def test_streaming(server):
    prompt = fill(PROMPT, question="What is 2+3?")
    events = []
    with httpx.stream("POST", server + "/completions", json={
        "prompt": prompt, "max_tokens": 60, "temperature": 0, "stop": "```\n", "stream": True,
        "stream_options": {"include_usage": True},
    }, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["text"] for ev in chunks for c in ev["choices"])
    assert text == CODE_TEXT[:-3]
    assert [c["finish_reason"] for ev in chunks for c in ev["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_bad_requests(server):
    r = httpx.post(server + "/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/completions", json={"prompt": "x", "max_tokens": 10_000}, timeout=30)
    assert r.status_code == 400 and "maximum context length is 512" in r.json()["error"]["message"]
    r = httpx.post(server + "/completions", json={"model": "other", "prompt": "x"}, timeout=30)
    assert r.status_code == 404
    r = httpx.post(server + "/completions", json={"prompt": "x", "temperature": "hot"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert httpx.get(server + "/nothing", timeout=30).status_code == 404


@pytest.mark.skipif(not sb.available_modes(), reason="no isolating sandbox mode works here")
def test_end_to_end_serve_generate_prepare(server, policy_dir, tmp_path):
    from tirgrpo.cli import main

    problems = tmp_path / "problems.csv"
    problems.write_text("id,problem,answer\n" + "".join(f"{i},{q},{a}\n" for i, q, a in QUESTIONS))
    templates = tmp_path / "templates.toml"
    templates.write_text(f"code_prompt = {json.dumps(PROMPT)}\nbridge = {json.dumps(BRIDGE)}\n")
    out = tmp_path / "transcripts.jsonl"
    args = ["generate", "--problems", str(problems), "--base-url", server, "--model", "tiny", "--out", str(out),
            "--templates", str(templates), "--temperature", "0", "--max-turns", "3", "--max-tokens", "200",
            "--concurrency", "2", "--no-progress", "--request-timeout", "120"]
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

