"""benchmarks/serve_load.py on a CPU: both clients, the real server and the emulated one, the
server's breakdown of the time to first token joined to the client's times."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_load(tmp_path, *args) -> tuple[dict, str]:
    out = tmp_path / "load.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--model", "random:tiny-qwen2",
                           "--prompt-tokens", "24", "--max-tokens", "6", "--requests-per-stream", "2",
                           "--min-requests", "2", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.slow  # ~15 s: two servers start
@pytest.mark.parametrize("client", ["raw", "httpx"])
def test_serve_load_measures_and_takes_the_time_to_first_token_apart(tmp_path, client):
    emulate = ["--emulate-gpu"] if client == "httpx" else []
    report, table = run_load(tmp_path, "--streams", "1,3", "--client", client, *emulate)
    assert report["client"] == client and report["emulated_gpu"] == ("" if emulate else None)
    rows = report["rows"]
    assert [r["streams"] for r in rows] == [1, 3] and [r["requests"] for r in rows] == [2, 6]
    for r in rows:
        assert r["tokens"] == 6 * r["requests"] and r["tok_s"] > 0
        assert r["server_records"] == r["requests"]  # one group per request, every one matched by its id
        for part in ("client_send", "parse", "queue", "first_token", "prefill", "send", "client_receive",
                     "server_ttft"):
            assert f"{part}_p50_ms" in r, part
        # the client's time to first token holds the server's, which holds admission -> first token
        assert r["ttft_p50_ms"] >= r["server_ttft_p50_ms"] >= r["first_token_p50_ms"] > 0
        assert r["steps"] >= 6 and 1 <= r["rows_per_step"] <= r["streams"]
    assert "Where the time to first token went" in table and "| 3 | " in table
