"""Kill -9 the trainer at random moments (rollout, update, checkpoint write, any time), 24 times,
resuming after each kill: every run that reaches its end has the final metrics and weights of
an uninterrupted run of the same seed. (A run that ends before the next planned kill is checked,
and the next kills go to a new run; tests/train/crash_driver.py does the killing.)

Precision: on CPU in fp32 with a fixed seed the resumed run repeats the same operations in the
same order, so every logged number agrees to 1e-6 (relative and absolute) and the final
weights to rtol 1e-6 / atol 1e-7; in practice they are bit-identical.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tirgrpo.data.records import write_examples
from tirgrpo.data.synthetic import compare_examples
from tirgrpo.train.metrics import read_jsonl

VOLATILE = ("time/", "throughput/", "memory/")
PHASES = ("rollout", "update", "checkpoint", "time")
KILLS = 24


def write_config(tmp_path, model_dir, name):
    text = f"""
[model]
name_or_path = "{model_dir}"
gradient_checkpointing = false

[data]
train = "{tmp_path / 'train.jsonl'}"
eval = "{tmp_path / 'eval.jsonl'}"

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 8
engine = "simple"

[grpo]
beta = 0.1
num_iterations = 2

[optim]
lr = 1e-3
warmup_steps = 1
total_steps = 6
micro_batch_tokens = 64
compile_layers = "off"

[run]
out_dir = "{tmp_path / name}"
device = "cpu"
seed = 5
save_every = 1
eval_max_examples = 2
tensorboard = false
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def stable_rows(run_dir):
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE) and not k.endswith("seconds")} for r in rows]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir, byte_tokenizer):
    write_examples(tmp_path / "train.jsonl", compare_examples(16, 0, byte_tokenizer))
    write_examples(tmp_path / "eval.jsonl", compare_examples(4, 1, byte_tokenizer))
    rng = random.Random(2024)
    kills = [{"phase": PHASES[i % len(PHASES)], "occurrence": rng.randint(1, 2),
              "delay": round(rng.uniform(0.0, 0.05) if i % len(PHASES) != 3 else rng.uniform(0.2, 3.0), 3)}
             for i in range(KILLS)]
    plan = {"reference_config": str(write_config(tmp_path, tiny_model_dir, "ref")),
            "config": str(write_config(tmp_path, tiny_model_dir, "crash")),
            "run_dir": str(tmp_path / "crash"), "kills": kills}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("crash_driver.py")), str(tmp_path / "plan.json")],
                          capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    reference, attempts = results[0], results[1:]
    assert reference["exit"] == 0, proc.stderr[-3000:]
    killed = [a for a in attempts if a["killed"]]
    assert len(killed) >= 20, [(a["kill"], a["exit"]) for a in attempts]
    assert {a["kill"]["phase"] for a in killed} == set(PHASES)
    assert all(a["killed"] or a["exit"] == 0 for a in attempts), proc.stderr[-3000:]  # else it ran to the end
    finished = [Path(a["run_dir"]) for a in attempts if not a["killed"]]
    assert finished[-1] == Path(attempts[-1]["run_dir"])
    for run in finished:
        assert_same_run(tmp_path / "ref", run)


def assert_same_run(ref, crash):
    """Same metrics rows (steps, values to 1e-6), same eval results, same final weights."""
    rows_ref, rows_crash = stable_rows(ref), stable_rows(crash)
    assert [r["step"] for r in rows_crash] == [r["step"] for r in rows_ref]  # no step lost or repeated
    for a, b in zip(rows_ref, rows_crash):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == (pytest.approx(a[k], rel=1e-6, abs=1e-6) if isinstance(a[k], float) else a[k]), (a["step"], k)
    for name in ("eval_before.json", "eval_after.json"):
        assert json.loads((crash / name).read_text())["overall"] == json.loads((ref / name).read_text())["overall"]
    from safetensors.torch import load_file

    wa, wb = load_file(str(ref / "final" / "model.safetensors")), load_file(str(crash / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7)
