"""gsm8k-verify: programs from calculator annotations, wrong twins, the command, the bundled files."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tirgrpo.cli import main
from tirgrpo.data.gsm8k import (
    Program,
    ProgramError,
    build_examples,
    build_program,
    evaluate,
    make_pair,
    perturbations,
    plan_text,
    read_gsm8k,
)
from tirgrpo.data.records import parse_int_answer, read_examples
from tirgrpo.data.templates import BRIDGE_PREFILL, CODE_BLOCK_START, SEED_BRIDGE

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
BUNDLED = REPO / "src" / "tirgrpo" / "bundled"

NATALIA_Q = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
NATALIA_A = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
WENG_Q = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
WENG_A = (
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
)


@pytest.fixture(scope="session")
def r1():
    from tirgrpo.data.tokenizer import load_tokenizer

    return load_tokenizer("r1-distill-qwen")


def test_program_from_annotations_links_earlier_results():
    p = build_program(NATALIA_A, NATALIA_Q)
    # 24 is step1's result (not in the question); 48 is a given, so it stays a number.
    assert p.source() == "step1 = 48 / 2\nanswer = 48 + step1\nprint(answer)"
    assert p.run() == "72.0"
    w = build_program(WENG_A, WENG_Q)
    assert w.source() == "step1 = 12 / 60\nanswer = step1 * 50\nprint(answer)" and w.run() == "10.0"


def test_plan_hides_computed_results():
    assert plan_text(NATALIA_A) == "- Natalia sold 48/2 clips in May.\n- Natalia sold 48+24 clips altogether in April and May."
    assert plan_text(WENG_A) == "- Weng earns 12/60 per minute.\n- Working 50 minutes, she earned 0.2 x 50."


@pytest.mark.parametrize(
    "solution", ["No annotations here.\n#### 5", "x = <<2**10=1024>>1024\n#### 1024", "<<abs(-3)=3>>3\n#### 3", "<<6=6>>6\n#### 6"]
)
def test_unusable_solutions_are_rejected(solution):
    with pytest.raises(ProgramError):
        build_program(solution)


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "(1).real", "2 ** 3", "[1][0]", "x + 1", "1 / 0"])
def test_evaluator_only_does_arithmetic(expr):
    with pytest.raises(ProgramError):
        evaluate(expr, {})


def test_evaluator_prints_what_python_prints():
    # The shown output must be what running the program prints; check against a real python.
    programs = [
        Program(("a", "answer"), ("0.1 * 3", "a + 1")),
        Program(("answer",), ("7 / 2 - -1",)),
        Program(("answer",), ("(1 + 2) * 3 / 4",)),
        build_program(NATALIA_A, NATALIA_Q),
        build_program(WENG_A, WENG_Q),
    ]
    if (GSM8K / "train.jsonl").is_file():
        items = read_gsm8k(GSM8K / "train.jsonl")[:200]
        for q, a in items:
            try:
                programs.append(build_program(a, q))
            except ProgramError:
                pass
    script = "\n".join(f"exec({p.source()!r}, {{}})" for p in programs)
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert printed.stdout.splitlines() == [p.run() for p in programs]


def test_perturbations_change_one_number_or_operator():
    p = Program(("answer",), ("48 / 2",))
    assert perturbations(p) == [
        (0, "47 / 2"), (0, "49 / 2"), (0, "96 / 2"), (0, "48 * 2"), (0, "48 - 2"),
        (0, "48 / 1"), (0, "48 / 3"), (0, "48 / 4"),
    ]  # fmt: skip
    assert perturbations(Program(("answer",), ("0.2 * step1",))) == [
        (0, "0.1 * step1"), (0, "0.3 * step1"), (0, "0.4 * step1"), (0, "0.2 + step1"), (0, "0.2 / step1"),
    ]  # fmt: skip
    # The unary minus is not an operator to swap; 1 - 1 = 0 is not offered (numbers stay > 0).
    assert perturbations(Program(("answer",), ("-1 + 2",))) == [
        (0, "-2 + 2"), (0, "-1 - 2"), (0, "-1 + 1"), (0, "-1 + 3"), (0, "-1 + 4"),
    ]  # fmt: skip


def test_wrong_twin_differs_in_one_step_and_gives_another_integer():
    for seed in range(5):
        pair = make_pair(NATALIA_Q, NATALIA_A, random.Random(seed))
        assert pair.output == "72.0" and pair.answer == 72
        changed = [i for i, (a, b) in enumerate(zip(pair.program.exprs, pair.wrong_program.exprs)) if a != b]
        assert changed == [pair.wrong_step]
        value = float(pair.wrong_output)
        assert value.is_integer() and value >= 0 and value != 72


def write_gsm8k(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    return path


def test_command_writes_labelled_pairs(tmp_path, capsys):
    src = write_gsm8k(tmp_path / "g.jsonl", [
        {"question": NATALIA_Q, "answer": NATALIA_A},
        {"question": "No program.", "answer": "It is five.\n#### 5"},
        {"question": WENG_Q, "answer": WENG_A},
    ])  # fmt: skip
    out = tmp_path / "v.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(out), "--seed", "1"]) == 0
    assert "3 questions read, 2 used, 1 skipped (no usable program)" in capsys.readouterr().out
    examples = read_examples(out)
    assert [e.label for e in examples] == ["correct", "wrong", "correct", "wrong"]
    assert {e.question for e in examples} == {NATALIA_Q, WENG_Q}
    for good, bad in (examples[0:2], examples[2:4]):
        assert good.question == bad.question and good.source == bad.source == "gsm8k-verify"
        assert good.eventual_answer == good.correct_answer != bad.eventual_answer
        assert good.completion.endswith(f"</think>\n\n\\boxed{{{good.correct_answer}}}")
        assert bad.completion.endswith(f"</think>\n\n{CODE_BLOCK_START}\n")
        for e in (good, bad):
            assert e.prompt.startswith(f"<｜User｜>{e.question}\n\n") and e.prompt.endswith("<｜Assistant｜><think>\n")
            shown = re.search(r"```output\n(.*)\n```", e.prompt).group(1)
            assert parse_int_answer(shown) == int(e.eventual_answer)
            assert 0 < e.prompt_tokens <= 400
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(tmp_path / "v.parquet"), "--seed", "1"]) == 0
    assert read_examples(tmp_path / "v.parquet") == examples


def test_bridges_change_only_the_text_after_the_output(tmp_path):
    # --bridge seed-prefill: the prompt ends with the seed's pre-fill and the completion goes on
    # from its last words, so prompt + completion is the plain example's text with the
    # pre-fill's first sentences inserted before the completion. --bridge check: the prompt's
    # bridge asks for the line-by-line check, the completion is the plain one. Labels and
    # answers are unchanged either way.
    src = write_gsm8k(tmp_path / "g.jsonl", [{"question": NATALIA_Q, "answer": NATALIA_A}])
    made = {}
    for bridge in ("seed", "seed-prefill", "check"):
        made[bridge] = tmp_path / f"{bridge}.jsonl"
        assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(made[bridge]), "--bridge", bridge]) == 0
    from tirgrpo.data.gsm8k import ANALYSIS_START

    assert SEED_BRIDGE.endswith(BRIDGE_PREFILL) and BRIDGE_PREFILL.endswith(ANALYSIS_START)
    head = BRIDGE_PREFILL[: -len(ANALYSIS_START)]
    triples = list(zip(*(read_examples(made[b]) for b in ("seed", "seed-prefill", "check"))))
    assert len(triples) == 2
    for a, b, c in triples:
        assert b.prompt.endswith("Let me go through my code step by step.\n\nLooking at my code,")
        assert b.prompt + b.completion == a.prompt + head + a.completion
        assert b.completion.startswith((" every step", " the line"))
        assert b.prompt_tokens > a.prompt_tokens and b.completion_tokens < a.completion_tokens
        code_and_output = a.prompt[: a.prompt.index("Analyze issues")]
        assert c.prompt.startswith(code_and_output) and "Check the code line by line" in c.prompt
        assert c.prompt.endswith("<｜Assistant｜><think>\n") and c.completion == a.completion
        for e in (b, c):
            assert (a.label, a.correct_answer, a.eventual_answer) == (e.label, e.correct_answer, e.eventual_answer)


def test_prompt_limit_drops_questions(r1):
    items = [(NATALIA_Q, NATALIA_A), (WENG_Q, WENG_A)]
    examples, counts = build_examples(items, r1, max_prompt_tokens=10)
    assert examples == [] and counts["skipped_too_long"] == 2


def test_bad_gsm8k_input_is_named(tmp_path, capsys):
    src = write_gsm8k(tmp_path / "g.jsonl", [{"question": NATALIA_Q, "answer": NATALIA_A}, {"question": "q"}])
    out = tmp_path / "v.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(out)]) == 2
    assert "g.jsonl, line 2, field 'answer'" in capsys.readouterr().err and not out.exists()


# ----------------------------------------------------------------------------- bundled copies


@pytest.mark.parametrize("name, questions", [("gsm8k-verify-train", 280), ("gsm8k-verify-eval", 100)])
def test_bundled_files_are_small_balanced_and_short(r1, name, questions):
    path = BUNDLED / f"{name}.jsonl"
    assert path.stat().st_size < 1_000_000
    examples = read_examples(path)
    assert len(examples) == 2 * questions and len({e.question for e in examples}) == questions
    assert [e.label for e in examples] == ["correct", "wrong"] * questions
    assert max(e.prompt_tokens for e in examples) <= 400
    for e in examples[:10]:
        assert e.prompt_tokens == len(r1.encode(e.prompt))


def test_bundled_train_and_eval_share_no_question():
    train = {e.question for e in read_examples(BUNDLED / "gsm8k-verify-train.jsonl")}
    held = {e.question for e in read_examples(BUNDLED / "gsm8k-verify-eval.jsonl")}
    assert not train & held


@pytest.mark.skipif(not (GSM8K / "test.jsonl").is_file(), reason="GSM8K not present")
@pytest.mark.parametrize("split, name, limit", [("test", "gsm8k-verify-eval", 100), ("train", "gsm8k-verify-train", 280)])
def test_bundled_files_rebuild_exactly(tmp_path, split, name, limit):
    # The command in bundled/README.md must reproduce the shipped files byte for byte.
    readme = (BUNDLED / "README.md").read_text(encoding="utf-8")
    command = (
        f"tirgrpo data gsm8k-verify --input ../shared/data/gsm8k/{split}.jsonl "
        f"--out src/tirgrpo/bundled/{name}.jsonl --limit {limit} --seed 0"
    )
    assert command in readme
    out = tmp_path / f"{name}.jsonl"
    args = ["data", "gsm8k-verify", "--input", str(GSM8K / f"{split}.jsonl"), "--out", str(out), "--limit", str(limit)]
    assert main(args + ["--seed", "0"]) == 0
    assert out.read_bytes() == (BUNDLED / f"{name}.jsonl").read_bytes()


def test_command_refuses_to_write_over_its_input(tmp_path, capsys):
    # Before: --out naming the GSM8K input (or an --exclude file) replaced it with the examples, exit 0.
    src = write_gsm8k(tmp_path / "g.jsonl", [{"question": NATALIA_Q, "answer": NATALIA_A}])
    before = src.read_bytes()
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(tmp_path / "." / "g.jsonl")]) == 2
    assert "--input and --out are the same file" in capsys.readouterr().err
    made = tmp_path / "v.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(made)]) == 0
    made_before = made.read_bytes()
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(made), "--exclude", str(made)]) == 2
    assert f"--exclude {made} and --out are the same file" in capsys.readouterr().err
    assert src.read_bytes() == before and made.read_bytes() == made_before
