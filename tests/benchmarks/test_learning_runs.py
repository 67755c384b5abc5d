"""benchmarks/learning_runs.sh without a GPU: every wave's command lines, recorded instead of
run, load as configs (a mistyped `--set` key or value would otherwise surface only on the
GPU machine, after the model has been shipped there), and no two runs share a folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tirgrpo.config import TrainConfig, from_dict, load_config, read_config_dict

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "learning_runs.sh"

# Stands in for `python3 -m tirgrpo`: appends its arguments to $RECORD as one JSON line.
RECORDER = "import json, os, sys\nopen(os.environ['RECORD'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"


def waves(tmp_path: Path) -> list[str]:
    """The script's waves, as its own message for an unknown wave lists them."""
    out = subprocess.run(["bash", str(SCRIPT), "no-such-wave"], capture_output=True, text=True,
                         env={**os.environ, "RUNS": str(tmp_path / "unused")}, cwd=REPO)
    assert out.returncode == 2
    names = re.search(r"unknown wave no-such-wave \((.*)\)", " ".join(out.stdout.split())).group(1)
    return [w.strip() for w in names.split(",")]


def recorded_calls(tmp_path: Path, wave_names: list[str]) -> list[list[str]]:
    record, recorder = tmp_path / "calls.jsonl", tmp_path / "record.py"
    recorder.write_text(RECORDER)
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "DATA": "data", "RECORD": str(record),
           "TIRGRPO": f"{sys.executable} {recorder}", "TIRGRPO_2GPU": f"{sys.executable} {recorder}"}
    # (the script splits them into words)
    out = subprocess.run(["bash", str(SCRIPT), *wave_names], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def split_call(argv: list[str]) -> tuple[str, str, list[str]]:
    """(command, config path, --set values) of one recorded `tirgrpo` call."""
    command, rest = argv[0], argv[1:]
    config = rest[rest.index("--config") + 1]
    sets = [rest[i + 1] for i, a in enumerate(rest) if a == "--set"]
    return command, config, sets


def test_every_wave_makes_loadable_configs_in_separate_folders(tmp_path):
    from tirgrpo.train.sft import SFTConfig

    names = waves(tmp_path)
    assert {"from-base", "long-budget", "long-384", "long-384-wide", "wider-2gpu", "wide-long", "format-warm", "check",
            "prefill", "prefill-fast", "small"} <= set(names)
    calls = recorded_calls(tmp_path, names)
    out_dirs = []
    # A wave may call another wave's run again, word for word (hard-sft-gentle's SFT is
    # hard-wide-sft's): the same run, which the script skips once it has finished.
    for argv in dict.fromkeys(map(tuple, calls)):
        argv = list(argv)
        command, config, sets = split_call(argv)
        assert command in ("train", "sft"), argv
        if command == "train":
            cfg = load_config(TrainConfig, REPO / config, sets)  # types, ranges and choices checked
        else:
            cfg = from_dict(SFTConfig, read_config_dict(REPO / config, sets))
        out_dirs.append(cfg.run.out_dir)
        assert cfg.run.out_dir.startswith(str(tmp_path / "runs")), argv
    assert len(out_dirs) == len(set(out_dirs)), "two runs write the same folder"
    assert len(calls) >= 20


def test_the_prefill_wave_trains_on_the_prefill_data(tmp_path):
    calls = [split_call(argv) for argv in recorded_calls(tmp_path, ["prefill"])]
    assert len(calls) == 4
    for _, _, sets in calls:
        assert "data.train=data/gsm8k-verify-prefill/train.jsonl" in sets
        assert "rollout.max_new_tokens=256" in sets and "grpo.mask_truncated=true" in sets
    small = [sets for _, _, sets in calls if "model.name_or_path=qwen2.5-coder-0.5b-instruct" in sets]
    assert len(small) == 1


def test_the_two_gpu_wave_is_launched_by_torchrun(tmp_path):
    """wider-2gpu goes through $TIRGRPO_2GPU (torchrun by default), every other wave through $TIRGRPO."""
    script = SCRIPT.read_text()
    assert "TIRGRPO_2GPU=${TIRGRPO_2GPU:-torchrun --standalone --nproc-per-node 2 -m tirgrpo}" in script
    record, recorder = tmp_path / "calls.jsonl", tmp_path / "record.py"
    recorder.write_text(RECORDER)
    env = {**os.environ, "RUNS": str(tmp_path / "runs"), "DATA": "data", "RECORD": str(record),
           "TIRGRPO": "false", "TIRGRPO_2GPU": f"{sys.executable} {recorder}"}
    out = subprocess.run(["bash", str(SCRIPT), "wider-2gpu"], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=60)
    assert "grpo-from-base-384-wider: exit 0" in out.stdout, out.stdout + out.stderr
    (argv,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert "rollout.prompts_per_step=64" in split_call(argv)[2]


def test_the_format_warm_wave_learns_the_format_then_grpo_starts_from_it(tmp_path):
    calls = [split_call(argv) for argv in recorded_calls(tmp_path, ["format-warm"])]
    (sft_cmd, _, sft_sets), (grpo_cmd, _, grpo_sets) = calls
    assert sft_cmd == "sft" and "data.train=data/gsm8k-verify-format/train.jsonl" in sft_sets
    assert "optim.total_steps=30" in sft_sets
    sft_dir = next(v.split("=", 1)[1] for v in sft_sets if v.startswith("run.out_dir="))
    assert grpo_cmd == "train" and f"model.init_from={sft_dir}" in grpo_sets
    assert "data.train=data/gsm8k-verify/train.jsonl" in grpo_sets  # the real labels, not the coin flips
