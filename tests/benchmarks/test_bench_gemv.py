"""benchmarks/bench_gemv.py without a GPU: its cuBLAS and GEMV variants of every group compute
the same outputs (eagerly, in Triton's interpreter, on a shape shrunk to run in seconds), and
the table prints. The timing itself (CUDA graphs and events) needs a GPU."""

from __future__ import annotations

import pytest
import torch

from tirgrpo.kernels import decode as K


@pytest.mark.skipif(not K.triton_interpreting(), reason="needs triton with TRITON_INTERPRET=1 (tests/conftest.py)")
def test_groups_agree_and_the_table_prints(load_benchmark):
    bench = load_benchmark("bench_gemv")
    shape = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 200}
    torch.manual_seed(0)
    weights = bench.make_weights(shape, torch.device("cpu"))
    rows = []
    for name in bench.GROUPS:
        cublas, fast, nbytes, calls = bench.group_fns(name, weights, 3)
        diff = bench.max_diff(cublas(), fast())
        assert diff < 0.1, name  # bf16, the interpreter truncating where torch rounds
        rows.append({"group": name, "batch": 3, "weight_bytes": nbytes, "cublas_us": 2.0, "gemv_us": 1.0,
                     "speedup": 2.0, "cublas_bw_fraction": 0.4, "gemv_bw_fraction": 0.8, "max_abs_diff": diff,
                     "config": bench.config_of(name, weights, 3, 132)})
    assert rows[0]["weight_bytes"] == 2 * (64 * 64 + 2 * 32 * 64 + 64 + 2 * 32)  # q, k, v and their biases
    assert rows[-1]["weight_bytes"] == 2 * 200 * 64 and rows[-1]["config"].startswith("n")
    text = bench.table(rows, 4.2)
    assert len(text.splitlines()) == len(rows) + 2 and "4.20 TB/s" in text
