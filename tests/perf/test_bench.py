"""`tirgrpo bench rollout`: the decode floor on hand-worked numbers, the bandwidth arithmetic,
the floor fractions of a result row and their printed table, the `--bandwidth-tbs` option,
and (slow) the whole command on the CPU with a tiny random model."""

from __future__ import annotations

import argparse
import json
from types import SimpleNamespace

import pytest
import torch

from tirgrpo.perf.bench import (copy_tbs, decode_floor_ms, measure_copy_bandwidth_tbs, result_row,
                                rollout_table)


class FakeModel(torch.nn.Module):
    """1,000 fp32 weights (4,000 bytes); 3 layers, 1 KV head of dim 8 / 2 = 4."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1000))
        self.config = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=1,
                                      num_hidden_layers=3)


def test_decode_floor_on_hand_numbers():
    # KV of 10 positions: 10 positions * 3 layers * (k, v) * 1 head * 4 dims * 4 bytes = 960 bytes.
    # (4,000 + 960) bytes at 1e-6 TB/s = 1e6 bytes/s: 4.96e-3 s = 4.96 ms.
    assert decode_floor_ms(FakeModel(), 10, 1e-6) == pytest.approx(4.96)
    assert decode_floor_ms(FakeModel(), 0, 2e-6) == pytest.approx(2.0)


def test_copy_bandwidth_counts_read_and_write():
    # 2 GiB copied in 1 ms: 2 * 2^31 bytes read + written / 1e-3 s = 4.295e12 bytes/s.
    assert copy_tbs(2 * 2**30, 1e-3) == pytest.approx(4.294967296)
    assert copy_tbs(10**12, 2.0) == pytest.approx(1.0)


def test_measure_copy_bandwidth_on_cpu_is_a_rate():
    tbs = measure_copy_bandwidth_tbs("cpu", bytes_=2**20, repeats=3)
    assert 1e-4 < tbs < 10  # a 1 MiB memcpy: far above 100 MB/s, far below 10 TB/s


def test_result_row_floor_fractions():
    args = SimpleNamespace(group=2, prompt_tokens=10, new_tokens=5)
    # (call of 5 tokens - call of 1 token) / 4 decode steps = (0.1 - 0.06) / 4 = 10 ms per step.
    row = result_row(args, FakeModel(), torch.device("cpu"), prompts=1, times={1: 0.06, 5: 0.1}, first=0.2,
                     engine="fast/torch", capture=0.0, bandwidth=(1e-6, "given"))
    assert row["ms_per_step"] == pytest.approx(10.0)
    # floor: 2 rows * (10 + 5 // 2) = 24 positions * 96 bytes + 4,000 = 6,304 bytes at 1e6 bytes/s.
    assert row["floor_ms"] == pytest.approx(6.304)
    assert row["floor_fraction"] == pytest.approx(0.6304)
    # shared: 1 prompt * 10 + 2 rows * 5 // 2 = 15 positions: 1,440 + 4,000 = 5,440 bytes.
    assert row["shared_floor_ms"] == pytest.approx(5.44)
    assert row["shared_floor_fraction"] == pytest.approx(0.544)
    assert (row["bandwidth_tbs"], row["bandwidth_source"]) == (1e-6, "given")
    assert row["tokens_per_s"] == pytest.approx(2 * 5 / 0.1)

    lines = rollout_table([row, {**row, "bandwidth_source": "measured"}]).splitlines()
    assert len(lines) == 4
    assert "63%" in lines[1] and "54%" in lines[1] and lines[1].endswith("g")
    assert lines[2].endswith("m")


def test_bandwidth_option():
    from tirgrpo.commands.bench import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["rollout"]).bandwidth_tbs == "measure"
    assert parser.parse_args(["rollout", "--bandwidth-tbs", "4.8"]).bandwidth_tbs == 4.8
    for bad in ("0", "-1", "fast", "inf", "nan"):
        with pytest.raises(SystemExit):
            parser.parse_args(["rollout", "--bandwidth-tbs", bad])


@pytest.mark.slow
def test_bench_rollout_on_cpu(tmp_path, capsys):
    from tirgrpo.cli import main

    out = tmp_path / "rows.json"
    # 8 tokens, median of 3 calls: ms per step is (t(8) - t(1)) / 7, which a shorter run can make
    # negative on a busy CPU
    assert main(["bench", "rollout", "--random-shape", "tiny-qwen2", "--batch", "2", "--group", "2",
                 "--prompt-tokens", "16", "--new-tokens", "8", "--repeats", "3", "--kernels", "torch",
                 "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["bandwidth_source"] == "measured" and row["bandwidth_tbs"] > 0
    assert row["floor_fraction"] == pytest.approx(row["floor_ms"] / row["ms_per_step"])
    text = capsys.readouterr().out
    assert "TB/s" in text and "floor/step" in text
