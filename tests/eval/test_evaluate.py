"""Evaluation metrics on hand-made predictions, with the numbers worked out in comments."""

import itertools
import math

import pytest
import torch

from tirgrpo.config import RewardConfig
from tirgrpo.eval.evaluate import (BASELINES, auroc, baseline_decisions, baseline_metrics, before_after_table,
                              decision_metrics, eval_rewards, evaluate_examples, log_values, markdown_table, overall_of,
                              policy_metrics, summarize, wrong_kind_split)
from tirgrpo.rollout import Completion, SamplingParams

nan = math.nan


def approx(d):
    """pytest.approx that also treats NaN == NaN."""
    return pytest.approx(d, nan_ok=True)


# --------------------------------------------------------------------------- AUROC


def test_auroc_perfect_reversed_and_all_tied():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    # every pair tied: each counts 1/2
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5


def test_auroc_ties_count_one_half():
    # pos {0.5, 1.0}, neg {0.5, 0.0}: pairs (0.5,0.5) tie 0.5, (0.5,0.0) 1, (1.0,0.5) 1, (1.0,0.0) 1 -> 3.5/4
    assert auroc([0.5, 1.0, 0.5, 0.0], [True, True, False, False]) == 0.875
    # pos {0.75, 0.25, 0.25}, neg {0.25, 0.0}: 0.75 beats both (2); each 0.25 ties one, beats one (1.5 each)
    # -> (2 + 1.5 + 1.5) / 6 = 0.8333
    assert auroc([0.75, 0.25, 0.25, 0.25, 0.0], [True, True, True, False, False]) == pytest.approx(5 / 6)


def test_auroc_empty_class_is_nan():
    assert math.isnan(auroc([0.1, 0.9], [True, True]))
    assert math.isnan(auroc([0.1, 0.9], [False, False]))
    assert math.isnan(auroc([], []))


def test_auroc_equals_the_trapezoid_under_the_roc_curve():
    # an independent computation on random scores with many ties (values on a 0.25 grid)
    g = torch.Generator().manual_seed(0)
    scores = (torch.randint(0, 5, (40,), generator=g) / 4).tolist()
    positive = (torch.rand(40, generator=g) < 0.5).tolist()
    P, N = sum(positive), len(positive) - sum(positive)
    points = [(0.0, 0.0)]
    for t in sorted(set(scores), reverse=True):  # lower the threshold one distinct score at a time
        tp = sum(s >= t and p for s, p in zip(scores, positive))
        fp = sum(s >= t and not p for s, p in zip(scores, positive))
        points.append((fp / N, tp / P))
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    assert auroc(scores, positive) == pytest.approx(area)


# --------------------------------------------------------------------------- per-completion metrics


def test_decision_metrics_hand_numbers():
    labels = ["correct", "correct", "wrong", "wrong"]
    decisions = ["submit", "decline", "submit", "invalid"]
    correctness = [1.0, 0.0, -1.0, -1.0]
    m = decision_metrics(decisions, labels, correctness)
    assert m == approx({
        "correctness": -0.25,            # (1 + 0 - 1 - 1) / 4
        "submit": 0.5, "decline": 0.25, "invalid": 0.25,
        "decision_accuracy": 0.25,       # only the submit on a correct example is right
        "precision": 0.5,                # submits on: correct, wrong
        "recall": 0.5,                   # on correct examples: submit, decline
        "submit_rate_on_correct": 0.5,
        "submit_rate_on_wrong": 0.5,     # on wrong examples: submit, invalid
        "skill": 0.0,                    # 0.5 - 0.5
        "balanced_accuracy": 0.25,       # (submit on correct 0.5 + decline on wrong 0) / 2
    })


def test_decision_metrics_no_submission_and_nothing():
    m = decision_metrics(["decline", "decline"], ["correct", "wrong"], [0.0, 0.0])
    assert math.isnan(m["precision"])  # no submission: precision is undefined, not 0
    assert m["recall"] == 0.0 and m["decision_accuracy"] == 0.5
    assert decision_metrics([], [], []) == {}


def test_policy_metrics_with_k_samples():
    labels = ["correct", "wrong", "wrong"]
    decisions = [["submit", "submit"], ["submit", "decline"], ["decline", "decline"]]
    correctness = [[1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]
    tokens = [[4, 6], [3, 5], [2, 4]]
    m = policy_metrics(labels, decisions, correctness, tokens)
    assert m["correctness"] == pytest.approx(1 / 6)      # (1 + 1 - 1 + 0 + 0 + 0) / 6
    assert m["submit"] == 0.5 and m["decline"] == 0.5 and m["invalid"] == 0.0
    assert m["decision_accuracy"] == pytest.approx(5 / 6)  # all but the submit on the first wrong example
    assert m["precision"] == pytest.approx(2 / 3)        # submits on correct, correct, wrong
    assert m["recall"] == 1.0
    assert m["auroc"] == 1.0                              # P(submit) = 1, 0.5, 0: the correct one ranks first
    assert m["balanced_accuracy"] == 0.875                # (submit on correct 2/2 + decline on wrong 3/4) / 2
    assert m["skill"] == 0.75                             # 1 - 1/4
    assert m["completion_tokens"] == 4.0                  # 24 / 6
    assert (m["n"], m["examples"]) == (6, 3)
    # a tie in P(submit) between the correct example and a wrong one: (0.5 tie + 1 win) / 2 = 0.75
    tied = policy_metrics(labels, [["submit", "decline"], ["submit", "decline"], ["decline", "decline"]],
                          [[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    assert tied["auroc"] == 0.75 and "completion_tokens" not in tied


def test_sampled_p_submit_tells_skill_from_a_constant_policy():
    # K = 4 samples on 2 correct and 2 wrong examples.
    labels = ["correct", "correct", "wrong", "wrong"]

    def run(decisions):
        corr = [[{"submit": 1.0 if lab == "correct" else -1.0, "decline": 0.0}[d] for d in ds]
                for ds, lab in zip(decisions, labels)]
        return policy_metrics(labels, decisions, corr)

    S, D = "submit", "decline"
    # A policy that flips the same biased coin on every example: P(submit) = 0.5 everywhere.
    coin = run([[S, S, D, D]] * 4)
    assert (coin["auroc"], coin["balanced_accuracy"], coin["skill"], coin["correctness"]) == (0.5, 0.5, 0.0, 0.0)
    # A judge that submits more on correct examples: P(submit) = 3/4, 2/4 vs 1/4, 2/4.
    # AUROC pairs: 3/4 beats 1/4 and 2/4 (2); 2/4 beats 1/4, ties 2/4 (1.5) -> 3.5/4 = 0.875
    judge = run([[S, S, S, D], [S, S, D, D], [S, D, D, D], [S, S, D, D]])
    assert judge["auroc"] == 0.875
    assert judge["submit_rate_on_correct"] == 0.625 and judge["submit_rate_on_wrong"] == 0.375
    assert judge["skill"] == 0.25 and judge["balanced_accuracy"] == 0.625  # (5/8 + 5/8) / 2
    assert judge["correctness"] == pytest.approx((5 - 3) / 16)
    # Greedy-style constant decisions (one sample each) give AUROC 0.5 whatever they are.
    assert run([[S]] * 4)["auroc"] == 0.5 and run([[D]] * 4)["balanced_accuracy"] == 0.5


# --------------------------------------------------------------------------- baselines


def test_baselines_hand_numbers():
    labels = ["correct", "correct", "wrong", "wrong", "wrong"]  # 2 correct, 3 wrong
    b = baseline_metrics(labels)
    assert set(b) == set(BASELINES)
    pick = ("correctness", "submit", "decision_accuracy", "precision", "recall", "auroc")
    got = {name: {k: b[name][k] for k in pick} for name in BASELINES}
    assert got["always-submit"] == approx(dict(
        correctness=-0.2,        # (2 * 1 + 3 * -1) / 5
        submit=1.0, decision_accuracy=0.4, precision=0.4, recall=1.0, auroc=0.5))  # one score for all: all tied
    assert got["always-decline"] == approx(dict(
        correctness=0.0, submit=0.0, decision_accuracy=0.6, precision=nan, recall=0.0, auroc=0.5))
    assert got["random"] == approx(dict(
        correctness=-0.1,        # half of always-submit's plus half of always-decline's
        submit=0.5, decision_accuracy=0.5, precision=0.4, recall=0.5, auroc=0.5))
    assert got["oracle"] == approx(dict(
        correctness=0.4,         # +1 on the 2 correct, 0 on the 3 wrong
        submit=0.4, decision_accuracy=1.0, precision=1.0, recall=1.0, auroc=1.0))
    assert b["oracle"]["invalid"] == 0.0 and "completion_tokens" not in b["oracle"]


def test_random_baseline_is_the_expectation_over_coin_flips():
    labels = ["correct", "wrong", "wrong"]
    rewards = RewardConfig(set="default", submit_correct=1.0, submit_wrong=-2.0, decline=0.25)
    outcomes = []
    for flips in itertools.product(["submit", "decline"], repeat=len(labels)):
        corr = [[{"submit": (1.0 if lab == "correct" else -2.0), "decline": 0.25}[d]] for d, lab in zip(flips, labels)]
        outcomes.append(policy_metrics(labels, [[d] for d in flips], corr))
    random_ = baseline_metrics(labels, rewards)["random"]
    for key in ("correctness", "submit", "decline", "decision_accuracy", "recall"):
        assert random_[key] == pytest.approx(sum(o[key] for o in outcomes) / len(outcomes)), key
    # hand check: correct example 0.5*1 + 0.5*0.25 = 0.625; each wrong 0.5*-2 + 0.5*0.25 = -0.875
    assert random_["correctness"] == pytest.approx((0.625 - 0.875 - 0.875) / 3)


def test_baselines_with_one_class_only():
    b = baseline_metrics(["correct", "correct"])
    assert all(math.isnan(b[name]["auroc"]) for name in BASELINES)  # no wrong example to rank against
    assert b["oracle"]["correctness"] == 1.0 and b["always-decline"]["decision_accuracy"] == 0.0
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_decisions(["correct"], "coin")


def test_eval_rewards_are_the_protocol_whatever_the_run_trained_with():
    # a run's own constants (here the seed set, a harsher submit_wrong, a paid decline) do
    # not change the evaluation's scale; judge_only is kept (it decides what a submission is)
    r = eval_rewards(RewardConfig(set="seed", submit_wrong=-3.0, decline=-1.0, decline_wrong=1.0, judge_only=True))
    assert r == RewardConfig(set="default", judge_only=True)
    assert eval_rewards(None) == RewardConfig(set="default")


# --------------------------------------------------------------------------- per question and tables


def test_summarize_per_question_in_order():
    questions = ["q2", "q1", "q2"]
    labels = ["correct", "correct", "wrong"]
    decisions = [["submit"], ["decline"], ["decline"]]
    res = summarize(questions, labels, decisions, [[1.0], [0.0], [0.0]], [[3], [5], [7]])
    assert [q["question"] for q in res["per_question"]] == ["q2", "q1"]
    q2 = res["per_question"][0]
    assert q2["overall"]["decision_accuracy"] == 1.0 and q2["overall"]["auroc"] == 1.0  # submit on right, decline on wrong
    assert q2["overall"]["completion_tokens"] == 5.0  # (3 + 7) / 2
    assert q2["baselines"]["oracle"]["correctness"] == 0.5
    q1 = res["per_question"][1]
    assert q1["overall"]["correctness"] == 0.0 and math.isnan(q1["overall"]["auroc"])  # one label only
    assert res["overall"]["correctness"] == pytest.approx(1 / 3)


def test_wrong_kind_split_by_whether_the_wrong_transcript_boxed_an_answer():
    """P(submit): correct examples 1 and 0.5; the wrong one that boxed an answer 0.5; the two that
    boxed none 0. Against the answered wrong one: pairs (1 > 0.5) + (0.5 = 0.5, a half) -> AUROC 0.75,
    skill 3/4 - 1/2; against the unanswered ones every correct example scores higher -> 1.0; pooled
    (1 beats 3, 0.5 ties 1 and beats 2) 5.5 / 6."""
    questions = ["q1", "q1", "q2", "q2", "q3"]
    labels = ["correct", "wrong", "correct", "wrong", "wrong"]
    answered = [True, True, True, False, False]
    decisions = [["submit", "submit"], ["submit", "decline"], ["submit", "decline"], ["decline"] * 2, ["decline"] * 2]
    correctness = [[1.0, 1.0], [-1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    split = wrong_kind_split(questions, labels, answered, decisions, correctness, bootstrap=200)
    hard, easy = split["wrong_answered"], split["wrong_unanswered"]
    assert (hard["wrong_examples"], easy["wrong_examples"]) == (1, 2)
    assert hard["overall"]["auroc"] == 0.75 and hard["overall"]["skill"] == pytest.approx(0.25)
    assert hard["overall"]["submit_rate_on_wrong"] == 0.5 and hard["overall"]["examples"] == 3
    assert easy["overall"]["auroc"] == 1.0 and easy["overall"]["skill"] == pytest.approx(0.75)
    assert set(hard["intervals"]) >= {"auroc", "skill"}
    res = summarize(questions, labels, decisions, correctness, [[1, 1]] * 5, bootstrap=200, answered=answered)
    assert res["overall"]["auroc"] == pytest.approx(5.5 / 6) and res["by_wrong_kind"] == split
    md = markdown_table(res)
    assert "| boxed a wrong answer | 1 | 0.750 [" in md and "| boxed no answer | 2 | 1.000 [" in md
    assert "by_wrong_kind" not in summarize(questions, labels, decisions, correctness, [[1, 1]] * 5, bootstrap=0)


def test_tables_show_every_metric_and_dashes_for_undefined():
    res = summarize(["a|b", "a|b"], ["correct", "wrong"], [["decline"], ["decline"]], [[0.0], [0.0]], [[2], [2]])
    md = markdown_table(res)
    assert md.splitlines()[0] == "| metric | policy | always-submit | always-decline | random | oracle |"
    # one question: every resample is that question, so each interval is a point
    assert "| precision | — | 0.500 | — | 0.500 | 1.000 |" in md  # the policy never submits: no precision
    assert "| skill | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | " \
           "1.000 [1.000, 1.000] |" in md
    assert "| a\\|b | 2 |" in md  # a pipe in a question is escaped
    table = before_after_table(res, res)
    # before, after, then the baselines: always-submit (+1 - 1) / 2 = 0, decline 0, random 0, oracle 0.5
    assert "| correctness | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | " \
           "0.000 [0.000, 0.000] | 0.000 [0.000, 0.000] | 0.500 [0.500, 0.500] |" in table
    assert "Greedy" not in table
    # an older flat eval file (no baselines, no intervals) still prints, with before/after columns only
    flat = {"correctness": 0.25, "submit": 0.5}
    assert overall_of(flat) is flat
    assert "| correctness | 0.250 | — |" in before_after_table(flat, {})


def test_before_after_shows_greedy_and_intervals():
    questions, labels = ["q1", "q1", "q2", "q2"], ["correct", "wrong", "correct", "wrong"]
    before = summarize(questions, labels, [["submit"]] * 4, [[1.0], [-1.0], [1.0], [-1.0]], [[1]] * 4, bootstrap=200)
    after = summarize(questions, labels, [["submit"], ["decline"], ["submit"], ["submit"]],
                      [[1.0], [0.0], [1.0], [-1.0]], [[1]] * 4, bootstrap=200)
    # after: q1 judged right (skill 1), q2 not (skill 0): resamples give skill 1, 0.5 or 0
    assert after["overall"]["skill"] == 0.5 and after["intervals"]["policy"]["skill"] == [0.0, 1.0]
    before["greedy"] = {"overall": before["overall"], "intervals": before["intervals"]}
    after["greedy"] = {"overall": after["overall"], "intervals": after["intervals"]}
    table = before_after_table(before, after)
    assert "| skill | 0.000 [0.000, 0.000] | 0.500 [0.000, 1.000] |" in table
    assert table.count("| skill | 0.000 [0.000, 0.000] | 0.500 [0.000, 1.000]") == 2  # sampled and greedy tables
    assert "Greedy (one completion per example)" in table
    row = log_values(after)
    assert row["eval/skill"] == 0.5 and (row["eval/skill_lo"], row["eval/skill_hi"]) == (0.0, 1.0)
    assert row["eval/greedy/skill"] == 0.5 and row["eval/n"] == 4
    assert log_values({"correctness": 0.25}) == {"eval/correctness": 0.25}  # an older flat result


# --------------------------------------------------------------------------- sampling + scoring


class FakeEngine:
    """Returns fixed completions (one group per prompt), like SimpleEngine.generate."""

    def __init__(self, groups):
        self.groups = groups
        self.model = torch.nn.Linear(1, 1)

    def generate(self, prompt_ids, group_size, params, generator):
        assert len(prompt_ids) == len(self.groups)
        if params.temperature == 0:  # the greedy pass: the first completion of each group
            assert group_size == 1
            return [g[:1] for g in self.groups]
        assert all(len(g) == group_size for g in self.groups)
        return self.groups


def test_evaluate_examples_scores_decisions_from_finish_reasons(byte_tokenizer):
    from tirgrpo.data.synthetic import compare_examples

    ex_right, ex_wrong = compare_examples(2, 0, byte_tokenizer)  # labels: correct, wrong
    boxed_right = f"ok</think>\\boxed{{{ex_right.correct_answer}}}"
    groups = [
        [Completion(boxed_right, [1, 2, 3], [0.0] * 3, "eos", None),             # submit, right: +1
         Completion("hmm", [1, 2], [0.0] * 2, "stop", "```python")],            # decline: 0
        [Completion(f"\\boxed{{{ex_wrong.eventual_answer}}}", [1] * 4, [0.0] * 4, "eos", None),  # submit, wrong: -1
         Completion("and so", [1] * 6, [0.0] * 6, "length", None)],             # truncated: invalid, -1
    ]
    res = evaluate_examples(FakeEngine(groups), byte_tokenizer, [ex_right, ex_wrong], [[1], [1]],
                            SamplingParams(8, 1.0), samples=2, seed=0)
    o = res["overall"]
    assert o["correctness"] == pytest.approx(-0.25)  # (1 + 0 - 1 - 1) / 4
    assert (o["submit"], o["decline"], o["invalid"]) == (0.5, 0.25, 0.25)
    assert o["completion_tokens"] == 3.75  # (3 + 2 + 4 + 6) / 4
    assert o["auroc"] == 0.5  # P(submit) 0.5 on both
    assert [s["decision"] for s in res["completions"][1]["samples"]] == ["submit", "invalid"]
    assert res["samples"] == 2 and res["baselines"]["oracle"]["correctness"] == 0.5
    # the greedy pass (here each group's first completion): submit right, submit wrong
    g = res["greedy"]["overall"]
    assert (g["n"], g["submit"], g["correctness"], g["skill"]) == (2, 1.0, 0.0, 0.0)
    assert res["completions"][1]["greedy"]["decision"] == "submit"
    assert "intervals" in res["greedy"] and res["intervals"]["policy"]["correctness"][0] <= -0.25
    # at temperature 0 the samples are the greedy ones: no second pass
    res0 = evaluate_examples(FakeEngine([g[:1] for g in groups]), byte_tokenizer, [ex_right, ex_wrong], [[1], [1]],
                             SamplingParams(8, 0.0), samples=1, seed=0, bootstrap=0)
    assert "greedy" not in res0 and res0["intervals"]["policy"] == {}


# --------------------------------------------------------------------------- the command


def test_eval_command_on_examples_with_selection(tmp_path, tiny_model_dir, byte_tokenizer, capsys):
    import json

    from tirgrpo.cli import main
    from tirgrpo.data.records import write_examples
    from tirgrpo.data.synthetic import compare_examples
    from tirgrpo.eval.selection import compare_selection, group_candidates

    examples = compare_examples(4, 1, byte_tokenizer)
    write_examples(tmp_path / "eval.jsonl", examples)
    out = tmp_path / "out" / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "eval.jsonl"), "--samples", "2",
                 "--max-new-tokens", "4", "--device", "cpu", "--selection", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["overall"]["examples"], res["overall"]["n"], res["samples"]) == (4, 8, 2)
    assert len(res["per_question"]) == len({ex.question for ex in examples})
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| metric | policy (K=2) | greedy |") and "| gated |" in md and md in capsys.readouterr().out
    # the selection is the one computed from the sampled decisions
    p = [sum(s["decision"] == "submit" for s in c["samples"]) / 2 for c in res["completions"]]
    again = compare_selection(group_candidates([e.question for e in examples], [e.correct_answer for e in examples],
                                               [e.eventual_answer for e in examples], p))
    assert res["selection"]["methods"] == again["methods"]
    # what the judging cost: every example's prompt once, and its 2 sampled judgements of <= 4 tokens
    cost = res["selection"]["judge_tokens"]
    assert cost["transcripts"] == 4 and cost["prompt"] == sum(len(byte_tokenizer(e.prompt)["input_ids"]) for e in examples)
    assert cost["generated"] == sum(s["tokens"] for c in res["completions"] for s in c["samples"]) <= 4 * 2 * 4
    assert "prompt_lengths" not in res and "Judging cost: 4 transcripts judged" in md


def test_eval_command_on_transcripts(tmp_path, tiny_model_dir):
    import json

    from tirgrpo.cli import main
    from tirgrpo.data.records import Transcript, Turn, transcript_to_dict
    from tirgrpo.data.templates import SEED_BRIDGE

    def t(pid, sample, answer, with_code):
        code = [Turn("x```python\nprint(4)\n```", "print(4)", "4", None, None)] if with_code else []
        return Transcript(pid, sample, f"q{pid}", "4", answer, "<｜User｜>q<｜Assistant｜><think>\n", SEED_BRIDGE,
                          tuple(code + [Turn(f"</think>\\boxed{{{answer}}}", None, None, "eos", None)]))

    runs = [t("a", 0, "4", True), t("a", 1, "5", True), t("a", 2, "5", False), t("b", 0, "4", True)]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(transcript_to_dict(r)) + "\n" for r in runs), encoding="utf-8")
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--transcripts", str(path), "--samples", "2",
                 "--max-new-tokens", "4", "--device", "cpu", "--selection", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["unjudged"] == 1 and res["overall"]["examples"] == 3  # the run without code output is not judged
    sel = res["selection"]
    assert sel["problems"] == 2 and [r["transcripts"] for r in sel["per_problem"]] == [3, 1]
    # problem a: 4 once, 5 twice -> the plain vote picks 5 (wrong); problem b: 4 (right)
    assert sel["methods"]["majority"]["accuracy"] == 0.5 and sel["methods"]["any_correct"]["accuracy"] == 1.0


def test_eval_refuses_a_markdown_out_before_loading_anything(tmp_path, capsys):
    from tirgrpo.cli import main

    # the model does not exist: the --out check comes first, before any loading or judging
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--data", "x.jsonl", "--out", str(tmp_path / "e.md")]) == 2
    assert "name a .json file" in capsys.readouterr().err


def test_eval_of_transcripts_without_a_code_output_to_judge(tmp_path, tiny_model_dir, capsys):
    """Before: an empty metrics table ("0 examples") and exit 0. Now refused without --selection
    (nothing to judge, before the model loads); with it the runs still vote."""
    import json

    from tirgrpo.cli import main
    from tirgrpo.data.records import Transcript, Turn, transcript_to_dict
    from tirgrpo.data.templates import SEED_BRIDGE

    runs = [Transcript("a", i, "qa", "4", answer, "<｜User｜>q<｜Assistant｜><think>\n", SEED_BRIDGE,
                       (Turn(f"\\boxed{{{answer}}}", None, None, "eos", None),)) for i, answer in enumerate("445")]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(transcript_to_dict(r)) + "\n" for r in runs), encoding="utf-8")
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(tiny_model_dir), "--transcripts", str(path), "--device", "cpu", "--samples", "1",
            "--max-new-tokens", "2", "--out", str(out)]
    assert main(args) == 2
    assert "nothing to judge" in capsys.readouterr().err and not out.exists()
    assert main(args + ["--selection"]) == 0
    assert json.loads(out.read_text())["selection"]["methods"]["majority"]["accuracy"] == 1.0
