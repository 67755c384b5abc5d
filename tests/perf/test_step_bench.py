"""`tirgrpo bench step --model`: a real model's step on real prompts (here a tiny Qwen2 on a
CPU), the medians over the rollouts after the warm-up, and the table beside TRL's rows."""

from __future__ import annotations

import json
import math

import pytest

from tirgrpo.cli import main
from tirgrpo.perf.step_bench import comparisons, model_label, summarize, table


def write_data(path, n: int = 4) -> None:
    from tirgrpo.data.records import Example, write_examples

    write_examples(path, [Example(question=f"q{i}", prompt=f"What is {i} + {i}? Looking at my code,", completion="x",
                                  correct_answer=str(2 * i), eventual_answer=str(2 * i), label="correct",
                                  prompt_tokens=0, completion_tokens=0, source="test") for i in range(n)])


def test_bench_step_with_a_model_reports_the_measured_rollouts(tmp_path, tiny_model_dir, capsys):
    data, results = tmp_path / "train.jsonl", tmp_path / "r.jsonl"
    write_data(data)
    assert main(["bench", "step", "--model", str(tiny_model_dir), "--data", str(data), "--group-size", "2",
                 "--prompts", "2", "--new-tokens", "3", "--rollouts", "2", "--warmup", "1", "--work",
                 str(tmp_path / "w"), "--results", str(results)]) == 0
    row = json.loads(results.read_text())
    assert (row["trainer"], row["model"], row["data"], row["G"], row["prompts"]) == (
        "tirgrpo", str(tiny_model_dir), str(data), 2, 2)
    assert row["context"] == "real+3" and (row["steps"], row["warmup"]) == (1, 1) and len(row["per_step"]) == 2
    last = row["per_step"][1]
    assert row["step_s"] == last["step_s"] and row["reference_s"] == last["reference_s"] > 0
    # update_s as TRL's row defines it: the step less its timed parts
    assert math.isclose(last["update_s"] + last["rollout_s"] + last["score_s"] + last["reference_s"], last["step_s"])
    # the measured rollout takes the stream's first prompts again, as TRL's first step does
    assert [p["data_pos"] for p in row["per_step"]] == [0, 0]
    assert 1 <= row["completion_tokens"]["min"] <= row["completion_tokens"]["max"] <= 3
    assert math.isclose(sum(row["finish"].values()), 1.0)
    metrics = [json.loads(line) for line in (tmp_path / "w" / "run-" f"{tiny_model_dir.name}-1" / "metrics.jsonl")
               .read_text().splitlines()]
    assert all(0 < m["time/reference_s"] <= m["time/train_s"] for m in metrics)
    assert tiny_model_dir.name in capsys.readouterr().out.splitlines()[-1]


def test_bench_step_without_the_data_names_the_prepare_command(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import tirgrpo.perf.step_bench as step_bench

    common = ["--model", str(tiny_model_dir), "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r.jsonl")]
    assert main(["bench", "step", *common, "--data", str(tmp_path / "none.jsonl")]) != 0
    assert f"--data {tmp_path / 'none.jsonl'}: no such file" in capsys.readouterr().err
    # the seed config's own data file missing: the command that makes it, every transcript to train
    monkeypatch.setattr(step_bench, "seed_data_path", lambda: str(tmp_path / "prepared" / "train.jsonl"))
    assert main(["bench", "step", *common]) != 0
    err = capsys.readouterr().err
    assert "tirgrpo prepare --input tests/fixtures/r1_distill_7b_tir_sample.csv" in err and "--eval-fraction 0" in err
    assert not (tmp_path / "r.jsonl").exists()


def test_bench_step_refuses_a_warmup_that_leaves_nothing(tmp_path, capsys):
    assert main(["bench", "step", "--shape", "tiny-qwen2", "--rollouts", "2", "--warmup", "2",
                 "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r.jsonl")]) != 0
    assert "--warmup 2" in capsys.readouterr().err


def test_summarize_takes_medians_after_the_warmup():
    steps = [{"step_s": s, "rollout_s": s / 2, "reference_s": 0.1, "update_s": s / 2 - 0.1, "score_s": 0.0,
              "train_s": s / 2, "tokens": 100.0, "peak_gib": p} for s, p in ((50.0, 9.0), (4.0, 1.0), (6.0, 2.0),
                                                                               (5.0, 1.5))]
    out = summarize(steps, [[1000], [10, 20], [30, 40], [50, 60]], [["length"], ["eos", "stop"], ["eos", "eos"],
                                                                    ["length", "eos"]], warmup=1)
    assert (out["step_s"], out["rollout_s"], out["tokens_per_s"]) == (5.0, 2.5, 20.0)
    assert out["peak_gib"] == 2.0 and (out["steps"], out["warmup"]) == (3, 1)  # the warm-up's 9 GiB left out
    assert out["completion_tokens"] == {"mean": 35.0, "min": 10, "max": 60}
    assert out["finish"] == {"eos": 4 / 6, "stop": 1 / 6, "length": 1 / 6}


def test_table_shows_trl_rows_beside_ours_and_compares_them():
    ours = {"trainer": "tirgrpo", "shape": "qwen2.5-coder-1.5b-instruct", "data": "d.jsonl", "gpus": 1, "prompts": 4,
            "G": 4, "context": "real+1024", "step_s": 4.0, "rollout_s": 3.0, "reference_s": 0.2, "update_s": 0.8,
            "train_s": 1.0, "tokens_per_s": 2000.0, "peak_gib": 20.0, "estimate_gib": 21.0}
    trl = {**ours, "trainer": "trl 1.16.0", "step_s": 100.0, "rollout_s": 90.0, "reference_s": 1.0, "update_s": 9.0,
           "train_s": 10.0, "tokens_per_s": 80.0, "estimate_gib": None}
    old = {"shape": "r1-distill-qwen-1.5b", "gpus": 1, "prompts": 4, "G": 16, "context": "3072+1024", "step_s": 10.6,
           "rollout_s": 5.3, "train_s": 5.0, "tokens_per_s": 6183.0, "peak_gib": 35.4, "estimate_gib": 36.3}
    lines = table([old, ours, trl]).splitlines()
    assert lines[1].split()[-6:-4] == ["-", "5.0"]  # a row from before the reference was timed: no ref s
    assert lines[2].split()[-3] == "1.00x"  # ours: its own 1-GPU baseline
    # TRL's row has no speed-up over itself; it is compared with ours below the table
    assert "qwen2.5-coder-1.5b-instruct [trl 1.16.0]" in lines[3] and lines[3].split()[-3] == "-"
    (line,) = comparisons([old, ours, trl])
    assert "step 100.00 s / 4.00 s = 25.0x" in line and "rollout 90.00 s / 3.00 s = 30.0x" in line
    assert comparisons([ours, {**trl, "data": "other.jsonl"}]) == []  # other prompts: not the same work


def test_model_label():
    assert model_label("qwen2.5-coder-1.5b-instruct") == "qwen2.5-coder-1.5b-instruct"
    assert model_label("/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert model_label("/runs/sft/") == "sft"


@pytest.mark.parametrize("argv", [["--shape", "tiny-qwen2", "--model", "x"]])
def test_shape_and_model_are_exclusive(argv, capsys):
    with pytest.raises(SystemExit):
        main(["bench", "step", *argv])
