"""Hard gsm8k-verify twins on hand-made GSM8K rows: the code agrees with its plan, the plan misreads the question."""

from __future__ import annotations

import json
import random
import re

import pytest

from tirgrpo.cli import main
from tirgrpo.data.gsm8k import Program, ProgramError, build_program
from tirgrpo.data.gsm8k_hard import (KINDS, _expression_start, make_hard_pair, misreadings, plan_template,
                                     question_numbers, render_plan)
from tirgrpo.data.records import parse_int_answer, read_examples

TOM_Q = "Tom has 5 apples. He buys 3 more. How many apples does he have?"
TOM_A = "Tom has 5+3=<<5+3=8>>8 apples.\n#### 8"
WENG_Q = ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
          "How much did she earn?")
WENG_A = (
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
)
CARL_Q = "Carl uses 2 slices of cheese each day. How many slices does he use in a week?"
CARL_A = "He uses 2 slices for all 7 days: 2*7=<<2*7=14>>14 slices.\n#### 14"


def test_question_numbers_with_words_and_sentences():
    q = "Janet's ducks lay 16 eggs per day. She eats three and bakes with four. She sells 1,200 for $2 each."
    assert question_numbers(q) == [(16.0, 0), (3.0, 1), (4.0, 1), (1200.0, 2), (2.0, 2)]


@pytest.mark.parametrize("before, expr, start", [
    ("Janet sells 16 - 3 - 4 = ", "16-3-4", 12),
    ("It cost $80,000+$50,000=$", "80000+50000", 9),             # thousands commas, dollar signs
    ("she earned 0.2 x 50 = $", "0.2*50", 11),                    # x for *
    ("the trains covered 2 trains * 80 miles/train = ", "2*80", 19),  # units after numbers
    ("Charleston has 4 * 20 sheep = ", "20*4", None),            # written in another order
    ("Janet sells 116-3-4 = ", "16-3-4", None),                  # not inside a longer number
    ("<<", "1+2", None),
])  # fmt: skip
def test_expression_start_finds_the_written_expression(before, expr, start):
    assert _expression_start(before, expr) == start


def test_plan_template_and_render():
    template, written = plan_template(WENG_A)
    assert template == ["- Weng earns {E0} per minute.", "- Working 50 minutes, she earned {E1}."] and written == {0, 1}
    program = build_program(WENG_A, WENG_Q)
    assert program.exprs == ("12 / 60", "step1 * 50")
    # an earlier step is written as its value, as GSM8K writes it
    assert render_plan(template, program) == ("- Weng earns 12 / 60 per minute.\n"
                                              "- Working 50 minutes, she earned 0.2 * 50.")
    # an expression the text does not write loses its annotation and result, as in the easy plan
    assert plan_template("She has <<3*4=12>>12 apples.\n#### 12") == (["- She has apples."], set())


def test_misreadings_of_each_kind_by_hand():
    tom = build_program(TOM_A, TOM_Q)
    assert misreadings(tom, TOM_Q) == [
        ("wrong-number", 0, "3 + 3"),     # 5 (sentence 1) replaced by the 3 of sentence 2
        ("wrong-operation", 0, "5 - 3"),
        ("wrong-number", 0, "5 + 5"),
    ]  # fmt: skip
    weng = build_program(WENG_A, WENG_Q)
    assert misreadings(weng, WENG_Q) == [
        ("wrong-number", 0, "50 / 60"),                           # 12 ($12 an hour) <- 50 (minutes)
        ("wrong-operation", 0, "12 * 60"), ("wrong-operation", 0, "12 - 60"),
        ("unit-mix-up", 0, "12 / 24"), ("unit-mix-up", 0, "12 / 100"),  # 60 is not in the question: a conversion
        ("unit-mix-up", 0, "12 * 60"),                            # converted the wrong way
        ("wrong-operation", 1, "step1 + 50"), ("wrong-operation", 1, "step1 / 50"),
        ("wrong-number", 1, "step1 * 12"),
    ]  # fmt: skip
    # a percentage used as a plain number
    tip = Program(("answer",), ("40 * 0.15",))
    assert ("unit-mix-up", 0, "40 * 15") in misreadings(tip, "A $40 meal and a 15% tip. What is the tip?")


def test_tom_twins_misread_in_plan_and_code_alike():
    seen = set()
    for seed in range(12):
        pair = make_hard_pair(TOM_Q, TOM_A, random.Random(seed))
        assert pair.plan == "- Tom has 5 + 3 apples." and pair.output == "8" and pair.answer == 8
        expr = pair.wrong_program.exprs[0]
        assert pair.wrong_plan == f"- Tom has {expr} apples."      # the plan says what the code does
        assert pair.wrong_output == str(eval(expr))                 # noqa: S307  (hand-written arithmetic)
        seen.add((pair.kind, expr))
    # every candidate works here: 3 + 3 = 6, 5 - 3 = 2, 5 + 5 = 10 (all integers, != 8)
    assert seen == {("wrong-number", "3 + 3"), ("wrong-operation", "5 - 3"), ("wrong-number", "5 + 5")}


def test_weng_twin_is_a_unit_mix_up_printed_like_the_right_output():
    # 50 / 60 * 50 and 12 * 60 * 50 -> not an integer or printed as int (36000 vs 10.0); 12 - 60 < 0;
    # step 2's variants give 50.2, 0.004, 2.4. Left: 12 / 24 -> 25.0 and 12 / 100 -> 6.0.
    outs = set()
    for seed in range(12):
        pair = make_hard_pair(WENG_Q, WENG_A, random.Random(seed))
        assert pair.kind == "unit-mix-up" and pair.wrong_step == 0
        outs.add((pair.wrong_program.exprs[0], pair.wrong_output, pair.wrong_plan))
    assert outs == {
        ("12 / 24", "25.0", "- Weng earns 12 / 24 per minute.\n- Working 50 minutes, she earned 0.5 * 50."),
        ("12 / 100", "6.0", "- Weng earns 12 / 100 per minute.\n- Working 50 minutes, she earned 0.12 * 50."),
    }


def test_a_number_the_plan_states_elsewhere_is_never_dropped():
    # 7 -> 30 or 5 would contradict "for all 7 days"; 2 / 7 is no integer; only 2 + 7 is left.
    for seed in range(8):
        pair = make_hard_pair(CARL_Q, CARL_A, random.Random(seed))
        assert (pair.kind, pair.wrong_plan) == ("wrong-operation", "- He uses 2 slices for all 7 days: 2 + 7 slices.")
    # 2 * 2 = 4 prints as an int (the right output is 1.0), 2 - 2 = 0 is no count, no other number to take
    with pytest.raises(ProgramError, match="no misreading"):
        make_hard_pair("Ann halves 2 cakes. How many?", "She has 2/2=<<2/2=1>>1 cake.\n#### 1", random.Random(0))


def test_hard_command_writes_labelled_pairs(tmp_path, capsys):
    src = tmp_path / "g.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n"
                           for q, a in [(TOM_Q, TOM_A), (WENG_Q, WENG_A), (CARL_Q, CARL_A)]), encoding="utf-8")
    out = tmp_path / "hard.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(out), "--hard"]) == 0
    printed = capsys.readouterr().out
    assert "3 questions read, 3 used" in printed and "wrong twins by kind:" in printed and "unit-mix-up 1" in printed
    examples = read_examples(out)
    assert [e.label for e in examples] == ["correct", "wrong"] * 3
    for good, bad in zip(examples[::2], examples[1::2]):
        assert good.question == bad.question and good.eventual_answer == good.correct_answer != bad.eventual_answer
        assert "follows my plan, but the plan" in bad.completion
        shown = re.search(r"```output\n(.*)\n```", bad.prompt).group(1)
        assert parse_int_answer(shown) == int(bad.eventual_answer) != int(bad.correct_answer)
    assert set(KINDS) >= {"wrong-number", "wrong-operation", "unit-mix-up"}


def test_exclude_leaves_out_the_training_questions(tmp_path, capsys):
    rows = [(TOM_Q, TOM_A), (WENG_Q, WENG_A), (CARL_Q, CARL_A)]
    src = tmp_path / "g.jsonl"
    src.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows), encoding="utf-8")
    train = tmp_path / "train.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(train), "--limit", "1"]) == 0
    held = tmp_path / "eval.jsonl"
    assert main(["data", "gsm8k-verify", "--input", str(src), "--out", str(held), "--exclude", str(train)]) == 0
    assert "1 skipped (in --exclude)" in capsys.readouterr().out
    train_q = {e.question for e in read_examples(train)}
    held_q = {e.question for e in read_examples(held)}
    assert len(train_q) == 1 and len(held_q) == 2 and not train_q & held_q
