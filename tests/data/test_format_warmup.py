"""data/format_warmup.py: format-only targets whose decisions ignore the label, checked against
the reward's own reading of a decision; and `tirgrpo data format-warmup` end to end."""

from __future__ import annotations

import json

import pytest

from tirgrpo.data.format_warmup import coin_flip_examples, format_completion
from tirgrpo.data.gsm8k import ANALYSIS_START
from tirgrpo.data.records import Example, write_examples
from tirgrpo.errors import TirgrpoError
from tirgrpo.score.rewards import CODE_FENCE, RewardConfig, RewardInput, decide, judged_decision


def example(i: int, label: str, prompt_end: str = "Output: 7.0\n", eventual: str | None = "7") -> Example:
    return Example(question=f"q{i}", prompt=f"problem {i}\n{prompt_end}", completion="the real target",
                   correct_answer="7" if label == "correct" else "9", eventual_answer=eventual, label=label,
                   prompt_tokens=12, completion_tokens=3, source="test")


def as_generated(completion: str) -> RewardInput:
    """What the rollout would record for this completion: a decline stops on the code fence."""
    fence = completion.find(CODE_FENCE)
    if fence >= 0:
        return RewardInput(text=completion[:fence], finish_reason="stop", stop=CODE_FENCE, eventual_answer="7")
    return RewardInput(text=completion, finish_reason="eos", eventual_answer="7")


def test_completions_are_valid_decisions_under_judge_only():
    cfg = RewardConfig(judge_only=True)
    submit, decline = format_completion("submit", "7", False), format_completion("decline", "7", False)
    assert submit == ANALYSIS_START + " I accept its output.\n</think>\n\n\\boxed{7}"
    assert judged_decision(as_generated(submit), cfg) == "submit"  # boxes the code's own output
    assert judged_decision(as_generated(decline), cfg) == "decline"
    assert decide(as_generated(format_completion("submit", "8", False)).text) == "submit"
    assert judged_decision(as_generated(format_completion("submit", "8", False)), cfg) == "invalid"  # not the output
    # after the seed's pre-fill the completion starts where the prompt stops
    assert format_completion("decline", "7", True) == decline[len(ANALYSIS_START):]
    with pytest.raises(ValueError):
        format_completion("maybe", "7", False)


def test_half_of_each_label_gets_each_decision():
    examples = [example(i, "correct") for i in range(6)] + [example(i, "wrong") for i in range(6, 11)]
    warm = coin_flip_examples(examples, seed=3)
    assert [(e.question, e.prompt, e.label) for e in warm] == [(e.question, e.prompt, e.label) for e in examples]
    decisions = [decide(as_generated(e.completion).text, *(("stop", CODE_FENCE) if CODE_FENCE in e.completion
                                                            else ("eos", None))) for e in warm]
    correct, wrong = decisions[:6], decisions[6:]
    assert correct.count("submit") == 3 and correct.count("decline") == 3
    assert wrong.count("submit") == 3 and wrong.count("decline") == 2  # 5 examples: the odd one to submit
    assert all(e.completion_tokens == 0 for e in warm)  # the old count no longer applies
    assert coin_flip_examples(examples, seed=3) == warm  # seeded
    assert [e.completion for e in coin_flip_examples(examples, seed=4)] != [e.completion for e in warm]


def test_prefilled_prompts_and_missing_outputs():
    warm = coin_flip_examples([example(0, "correct", prompt_end=f"step by step.\n\n{ANALYSIS_START}")], seed=0)
    assert warm[0].completion.startswith(" I ")
    with pytest.raises(TirgrpoError, match=r"train.jsonl, example 2, field 'eventual_answer'"):
        coin_flip_examples([example(0, "correct"), example(1, "wrong", eventual=None)], 0, where="train.jsonl")


def test_cli_writes_the_warmup_file(tmp_path, capsys):
    from tirgrpo.cli import main

    src, out = tmp_path / "train.jsonl", tmp_path / "warm.jsonl"
    write_examples(src, [example(i, "correct" if i % 2 else "wrong") for i in range(8)])
    assert main(["data", "format-warmup", "--input", str(src), "--out", str(out), "--seed", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and sum("\\boxed{7}" in r["completion"] for r in rows) == 4
    assert "correct -> decline 2, correct -> submit 2, wrong -> decline 2, wrong -> submit 2" in capsys.readouterr().out
    assert main(["data", "format-warmup", "--input", str(src), "--out", str(tmp_path / "warm.txt")]) == 2
    assert "use a .jsonl or .parquet" in capsys.readouterr().err


def test_cli_refuses_to_write_over_its_input(tmp_path, capsys):
    # Before: --out naming --input replaced the examples with their format-only versions, exit 0.
    from tirgrpo.cli import main

    src = tmp_path / "train.jsonl"
    write_examples(src, [example(i, "correct" if i % 2 else "wrong") for i in range(4)])
    before = src.read_bytes()
    assert main(["data", "format-warmup", "--input", str(src), "--out", str(src)]) == 2
    assert "--input and --out are the same file" in capsys.readouterr().err
    assert src.read_bytes() == before
