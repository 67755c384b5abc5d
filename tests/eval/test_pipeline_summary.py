"""The summary of a real_pipeline.sh folder, from hand-written step outputs."""

import json

import pytest

from tirgrpo.eval.pipeline import last_runs, main, pipeline_summary, summary_markdown


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_last_runs_keeps_the_last_real_run_of_each_step():
    recs = [{"step": "a", "status": "ran", "seconds": 5}, {"step": "b", "status": "failed 2", "seconds": 1},
            {"step": "a", "status": "skipped", "seconds": 0}, {"step": "b", "status": "ran", "seconds": 3},
            {"step": "c", "status": "skipped", "seconds": 0}]
    assert last_runs(recs) == [recs[0], recs[3], recs[4]]


def test_summary_gathers_every_step_and_leaves_out_missing_ones(tmp_path):
    m = {"value": 0.5, "ci_low": 0.25, "ci_high": 0.75}
    _write(tmp_path / "solver.json", {"problems": 4, "transcripts": 8, "metrics": {"pass@1": m, "pass@K": m},
                                      "answered": 1.0, "generation_seconds": 12.0,
                                      "tokens_per_transcript": {"mean": 400.0}})
    _write(tmp_path / "prepared-train" / "stats.json",
           {"steps": [{"step": "segments read", "rows": 9}, {"step": "train", "rows": 4, "questions": 2, "correct": 2,
                                                              "wrong": 2}, {"step": "eval", "rows": 0}]})
    _write(tmp_path / "judge" / "summary.json", {"steps": 3, "final_loss": 0.25})
    _write(tmp_path / "eval-judge.json", {"overall": {"auroc": 0.9, "correctness": 0.4, "invalid": 0.0, "examples": 6},
                                          "intervals": {"policy": {"auroc": [0.8, 1.0]}}, "samples": 2})
    _write(tmp_path / "selection.json", {"overall": {"auroc": 0.7}, "samples": 2, "selection": {
        "problems": 3, "threshold": 0.5, "methods": {"majority": {"accuracy": 1 / 3, "ci_low": 0.0, "ci_high": 1.0}},
        "per_problem": [{"majority": 1.0, "gated": 1.0, "weighted": 0.5}, {"majority": 0.0, "gated": 1.0, "weighted": 0.0},
                        {"majority": 0.0, "gated": 0.0, "weighted": 0.0}],
        "judge_tokens": {"transcripts": 6, "prompt": 4800, "generated": 600, "prompt_per_transcript": 800.0,
                         "generated_per_transcript": 100.0}}})
    (tmp_path / "timings.jsonl").write_text('{"step": "sft", "status": "ran", "seconds": 7}\n')
    s = pipeline_summary(tmp_path)
    assert s["solver"]["problems"] == 4 and s["solver"]["metrics"]["pass@K"] == m
    assert s["judge_examples"] == {"train": {"rows": 4, "questions": 2, "correct": 2, "wrong": 2}}
    assert s["sft"]["final_loss"] == 0.25
    assert s["eval-judge"]["auroc"] == {"value": 0.9, "ci": [0.8, 1.0]}
    assert s["eval-judge"]["correctness"] == {"value": 0.4, "ci": None} and s["eval-judge"]["examples"] == 6
    assert "eval-base" not in s and s["selection"]["problems"] == 3
    md = summary_markdown(s)
    assert "pass@K 0.500 [0.250, 0.750]; generation 12 s" in md and "GRPO" not in md
    assert "| auroc | 0.900 [0.800, 1.000] |" in md and "| correctness | 0.400 |" in md
    assert "| majority | 0.333 | [0.000, 1.000] |" in md and "| sft | ran | 7 |" in md
    # paired differences from the rows of a selection made before they were stored: gated (0 + 1 + 0) / 3
    assert s["selection"]["vs_majority"]["gated"]["difference"] == pytest.approx(1 / 3)
    assert "| gated | +0.333 |" in md and "| weighted | -0.167 |" in md
    # judging's 100 generated tokens a transcript against the solver's 400
    assert ("judging read 800 prompt tokens and generated 100 over its K judgements (6 judged); the solver generated "
            "400 (mean over the run), so judging adds 25% in generated tokens") in md
    assert main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert (tmp_path / "summary.md").read_text() == md
    assert main([str(tmp_path / "nowhere")]) == 2


def test_summary_puts_the_grpo_judge_beside_the_sft_judge(tmp_path):
    _write(tmp_path / "judge" / "summary.json", {"steps": 3, "final_loss": 0.25})
    _write(tmp_path / "judge-grpo" / "summary.json", {"steps": 2, "eval_after": {}})
    for name, auroc in (("eval-base", 0.55), ("eval-judge", 0.9), ("eval-sft", 0.8)):
        _write(tmp_path / f"{name}.json", {"overall": {"auroc": auroc, "examples": 6}, "samples": 2})
    (tmp_path / "eval-judge.model").write_text(f"{tmp_path / 'judge-grpo'}\n")
    s = pipeline_summary(tmp_path)
    assert s["grpo"] == {"steps": 2, "folder": "judge-grpo"} and s["judge_model"] == str(tmp_path / "judge-grpo")
    md = summary_markdown(s)
    assert "GRPO on top of the SFT judge: 2 steps (the judge below)" in md
    assert "| metric | judge | SFT judge | untrained model |" in md and "| auroc | 0.900 | 0.800 | 0.550 |" in md


def test_summary_names_a_judge_trained_by_grpo_alone_from_the_untrained_model(tmp_path):
    _write(tmp_path / "judge-base-grpo" / "summary.json", {"steps": 5, "eval_after": {}})
    _write(tmp_path / "judge-grpo" / "summary.json", {"steps": 2, "eval_after": {}})  # an older run in WORK
    (tmp_path / "eval-judge.model").write_text(f"{tmp_path / 'judge-base-grpo'}\n")
    md = summary_markdown(pipeline_summary(tmp_path))
    assert "GRPO alone from the untrained model: 5 steps (the judge below)" in md
    assert "GRPO on top of the SFT judge: 2 steps\n" in md  # not the judge evaluated


def _completion(question, correct, answer, decisions):
    label = "correct" if answer == correct else "wrong"
    return {"question": question, "label": label, "correct_answer": correct, "eventual_answer": answer,
            "samples": [{"decision": d, "correctness": 0.0} for d in decisions]}


def test_evaluations_made_before_the_answer_splits_get_them_from_their_completions(tmp_path):
    """q1: right 5 (P 1), wrong 4 (P 0.5), no answer (P 0); q2: right 7 (P 0.5), wrong 3 twice (P 1):
    majority ties 5 with 4 on q1 and picks 3 on q2: both contested. Pooled pairs (right 1, 0.5 x wrong
    0.5, 1, 1): 1 > 0.5, 1 = 1 twice, 0.5 = 0.5, 0.5 < 1 twice -> (1 + 0.5 + 0.5 + 0.5) / 6; within q1
    (1 vs 0.5) 1, within q2 (0.5 vs 1, 1) 0: mean 0.5."""
    rows = [_completion("q1", "5", "5", ["submit", "submit"]), _completion("q1", "5", "4", ["submit", "decline"]),
            _completion("q1", "5", None, ["decline", "decline"]), _completion("q2", "7", "7", ["submit", "decline"]),
            _completion("q2", "7", "3", ["submit", "submit"]), _completion("q2", "7", "3", ["submit", "submit"])]
    _write(tmp_path / "eval-judge.json", {"overall": {"auroc": 0.7, "examples": 6}, "samples": 2, "completions": rows})
    _write(tmp_path / "selection.json", {"overall": {}, "samples": 2, "completions": rows, "selection": {
        "problems": 2, "threshold": 0.5, "methods": {}, "per_problem": []}})
    s = pipeline_summary(tmp_path)
    hard = s["eval-judge"]["auroc_vs_wrong_answers"]  # correct (P 1, 0.5) vs the three wrong answers (0.5, 1, 1)
    assert hard["value"] == pytest.approx(2.5 / 6) and s["eval-judge"]["wrong_answered_examples"] == 3
    assert s["eval-judge"]["submit_rate_on_wrong_answered"]["value"] == pytest.approx(5 / 6)  # 1 + 2 + 2 of 6 samples
    assert s["eval-judge"]["submit_rate_on_wrong_unanswered"]["value"] == 0.0  # q1's run without an answer
    rank = s["selection"]["answer_ranking"]
    assert rank["auroc"] == pytest.approx(2.5 / 6) and rank["contested_problems"] == 2 and rank["contested_auroc"] == 0.5
    # vote shares: right 5 (1 of q1's 3) and 7 (1 of 3) against wrong 4 (1/3), 3 and 3 (2/3 each):
    # each right answer ties one wrong and loses to two: 2 x 0.5 / 6
    assert rank["vote_share_auroc"] == pytest.approx(1 / 6)
    md = summary_markdown(s)
    assert "(what majority vote uses) ranks them with AUROC 0.167" in md
    assert "| auroc_vs_wrong_answers | 0.417 [" in md and "within the 2 problems whose majority is wrong (or tied)" in md


def test_completions_without_answers_give_no_split_rather_than_an_error(tmp_path):
    rows = [{"question": "q", "label": "correct", "samples": [{"decision": "submit", "correctness": 1.0}]}]
    _write(tmp_path / "eval-judge.json", {"overall": {"auroc": 0.7, "examples": 1}, "samples": 1, "completions": rows})
    _write(tmp_path / "selection.json", {"overall": {}, "samples": 1, "completions": rows, "selection": {
        "problems": 1, "threshold": 0.5, "methods": {}, "per_problem": []}})
    s = pipeline_summary(tmp_path)
    assert "auroc_vs_wrong_answers" not in s["eval-judge"] and s["selection"]["answer_ranking"] is None
