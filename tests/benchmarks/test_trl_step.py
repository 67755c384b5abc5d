"""benchmarks/trl_step.py: TRL's GRPO step beside `tirgrpo bench step --model`. The parts that
need no TRL (finish reasons as tirgrpo's tracker reports them, the prompt order of tirgrpo's
stream) always run; the run itself (a tiny Qwen2 on a CPU, 2 steps) only where trl and
datasets import (CI has neither)."""

from __future__ import annotations

import json

import pytest


def test_finish_reasons_as_the_tracker_reports_them(byte_tokenizer, load_benchmark):
    bench = load_benchmark("trl_step")
    tok = byte_tokenizer
    eos = {tok.eos_token_id}
    ids = tok("fine. ```python\nprint(1)", add_special_tokens=False)["input_ids"]
    assert bench.finish_of(ids, tok, eos, ["```python"], 100) == ("fine. ", "stop", "```python")
    ids = tok("ok \\boxed{4}", add_special_tokens=False)["input_ids"]
    assert bench.finish_of(ids + [tok.eos_token_id], tok, eos, ["```python"], 100) == ("ok \\boxed{4}", "eos", None)
    assert bench.finish_of(ids, tok, eos, ["```python"], len(ids)) == ("ok \\boxed{4}", "length", None)
    # A stop string and then the EOS TRL pads a stopped row with: a stop.
    ids = tok("so ```python", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert bench.finish_of(ids, tok, eos, ["```python"], 100)[1:] == ("stop", "```python")


def test_dataset_rows_follow_the_trainers_prompt_stream(tmp_path, load_benchmark):
    from types import SimpleNamespace

    from tirgrpo.data.prompts import Prompt, prompts_for_rollout
    from tirgrpo.data.records import Example

    bench = load_benchmark("trl_step")
    prompts = [Prompt(Example(question=f"q{i}", prompt=f"p{i}", completion="", correct_answer="1", eventual_answer="1",
                              label="correct", prompt_tokens=1, completion_tokens=0, source="t"), [i]) for i in range(5)]
    cfg = SimpleNamespace(rollout=SimpleNamespace(prompts_per_step=4), run=SimpleNamespace(seed=3),
                          data=SimpleNamespace(shuffle=True))
    rows = bench.stream_rows(cfg, prompts, 3)
    # Step k of TRL (no shuffling: rows k*P .. k*P+P-1) takes the prompts of tirgrpo's rollout k.
    for k in range(3):
        expected = [f"p{i}" for i in prompts_for_rollout(5, 4 * k, 4, 3, True)]
        assert [r["prompt"] for r in rows[4 * k:4 * k + 4]] == expected


def test_grpo_config_mirrors_the_seed_config(tmp_path, load_benchmark):
    pytest.importorskip("trl")
    import torch

    from tirgrpo.perf.step_bench import bench_config

    bench = load_benchmark("trl_step")
    args = bench.parse_args(["--model", "m", "--group-size", "4", "--prompts", "4"])
    args.shape = None
    cfg = bench_config(args, tmp_path / "d.jsonl", tmp_path / "run")
    c = bench.grpo_config(cfg, args, 2, torch.device("cpu"), tmp_path / "out", 7)
    assert (c.num_generations, c.per_device_train_batch_size, c.gradient_accumulation_steps) == (4, 4, 4)
    assert (c.max_completion_length, c.temperature, c.beta, c.epsilon, c.epsilon_high) == (1024, 1.0, 0.1, 0.2, 0.28)
    assert (c.num_iterations, c.loss_type, c.scale_rewards, c.max_steps) == (2, "dapo", "none", 4)
    assert c.generation_kwargs == {"pad_token_id": 7, "stop_strings": ["```python"]}
    assert c.use_vllm is False and c.shuffle_dataset is False and c.gradient_checkpointing is True


def test_trl_step_runs_two_steps_and_writes_a_row(tmp_path, tiny_model_dir, capsys, load_benchmark):
    pytest.importorskip("trl")
    pytest.importorskip("datasets")
    from tirgrpo.data.records import Example, write_examples

    data, results = tmp_path / "train.jsonl", tmp_path / "r.jsonl"
    write_examples(data, [Example(question=f"q{i}", prompt=f"What is {i} + {i}?", completion="x",
                                  correct_answer=str(2 * i), eventual_answer=str(2 * i), label="correct",
                                  prompt_tokens=0, completion_tokens=0, source="test") for i in range(4)])
    bench = load_benchmark("trl_step")
    assert bench.main(["--model", str(tiny_model_dir), "--data", str(data), "--group-size", "2", "--prompts", "2",
                       "--new-tokens", "4", "--steps", "2", "--warmup", "1", "--work", str(tmp_path / "w"),
                       "--results", str(results)]) == 0
    row = json.loads(results.read_text())
    assert row["trainer"].startswith("trl ") and (row["G"], row["prompts"], row["steps"], row["warmup"]) == (2, 2, 1, 1)
    assert len(row["per_step"]) == 2 and row["step_s"] == row["per_step"][1]["step_s"] > 0
    step = row["per_step"][1]
    assert step["rollout_s"] > 0 and step["reference_s"] > 0 and step["tokens"] > 0
    assert row["completion_tokens"]["max"] <= 5  # 4 new tokens, and the EOS TRL keeps after a stop
    assert row["settings"]["gradient_accumulation_steps"] == 2
    assert row["settings"]["reference"] == "a copy of the policy"  # TRL did not load it again
    assert "[trl " in capsys.readouterr().out
