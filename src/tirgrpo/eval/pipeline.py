"""The summary of a `benchmarks/real_pipeline.sh` run: one JSON and one Markdown page from the
files its steps wrote under WORK.

    python -m tirgrpo.eval.pipeline WORK     # writes WORK/summary.json and WORK/summary.md

Read (each optional; a missing one is left out of the summary): `solver.json` (the solver's
report, eval/solver.py), `prepared-{train,heldout}/stats.json` (`prepare`), `judge/summary.json`
(`sft`), `judge-grpo/summary.json` (GRPO on top of it), `judge-base-grpo/summary.json` (GRPO
alone from the untrained model, `JUDGE_START=base`), `eval-judge.json` and `eval-judge.model`
(which model the judge is, on its first line), `eval-sft.json` and `eval-base.json`
(`tirgrpo eval` of the final judge, of the SFT judge when GRPO ran after it, and of the
untrained model on the held-out problems' examples), `selection.json` (`tirgrpo eval
--selection` on the held-out problems' transcripts) and `timings.jsonl` (the steps' times).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from tirgrpo.eval.bootstrap import HEADLINE
from tirgrpo.eval.selection import answer_ranking, differences_table, differences_to_majority, group_candidates


# the evaluations of the held-out examples, in table order, and their column names
GRPO_RUNS = {"grpo": "judge-grpo", "grpo_from_base": "judge-base-grpo"}  # summary key -> WORK folder
EVALS = {"eval-judge": "judge", "eval-sft": "SFT judge", "eval-base": "untrained model"}
# the AUROC against only the `wrong` examples whose transcript boxed an answer (evaluate.wrong_kind_split)
AUROC_ANSWERED = "auroc_vs_wrong_answers"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """{metric: {"value", "ci"}} of an eval result's policy, plus its example and sample counts, and
    from its split by kind of wrong example (stored, or derived from its completions): the AUROC
    against wrong answers only (AUROC_ANSWERED) and the submit rate on each kind."""
    overall = result.get("overall", {})
    intervals = (result.get("intervals") or {}).get("policy") or {}
    out: dict[str, Any] = {m: {"value": overall.get(m), "ci": intervals.get(m)} for m in HEADLINE if m in overall}
    out.update(examples=overall.get("examples"), samples=result.get("samples"), invalid=overall.get("invalid"))
    split = result.get("by_wrong_kind") or _wrong_kind_from_completions(result) or {}
    hard = split.get("wrong_answered")
    if hard and hard["wrong_examples"]:  # the AUROC that answer selection needs: right vs wrong answers
        out[AUROC_ANSWERED] = {"value": hard["overall"].get("auroc"), "ci": hard["intervals"].get("auroc")}
        out["wrong_answered_examples"] = hard["wrong_examples"]
    for kind, part in split.items():  # how often it submits on each kind of wrong example
        if part["wrong_examples"]:
            out[f"submit_rate_on_{kind}"] = {"value": part["overall"].get("submit_rate_on_wrong"),
                                             "ci": part["intervals"].get("submit_rate_on_wrong")}
    return out


def _wrong_kind_from_completions(result: dict[str, Any]) -> dict[str, Any] | None:
    """`evaluate.wrong_kind_split` of an evaluation made before it was stored, from its completions
    (None without them, or when they do not record their eventual answers)."""
    rows = result.get("completions")
    if not rows or any("eventual_answer" not in r for r in rows):
        return None
    from tirgrpo.eval.evaluate import wrong_kind_split  # torch: only for such older evaluations

    return wrong_kind_split([r["question"] for r in rows], [r["label"] for r in rows],
                            [r["eventual_answer"] is not None for r in rows],
                            [[s["decision"] for s in r["samples"]] for r in rows],
                            [[s["correctness"] for s in r["samples"]] for r in rows])


def _answer_ranking_from_completions(selection: dict[str, Any]) -> dict[str, Any] | None:
    """`selection.answer_ranking` of a selection made before it was stored, from its completions
    (one per judged transcript, grouped by question; None without them or their answers). Unjudged transcripts
    are not among them, so here they are also left out of the majority vote that decides which
    problems are contested (`compare_selection` counts them there)."""
    rows = selection.get("completions")
    if not rows or any("eventual_answer" not in r or "correct_answer" not in r for r in rows):
        return None
    from tirgrpo.eval.evaluate import p_submit  # torch: only for such older selections

    return answer_ranking(group_candidates([r["question"] for r in rows], [r["correct_answer"] for r in rows],
                                           [r["eventual_answer"] for r in rows], [p_submit(r) for r in rows]))


def _examples(stats: dict[str, Any]) -> dict[str, Any]:
    """The last `train` step of a prepare stats.json: rows, questions, correct, wrong."""
    step = next((s for s in reversed(stats.get("steps", [])) if s["step"] == "train"), {})
    return {k: step.get(k) for k in ("rows", "questions", "correct", "wrong")}


def pipeline_summary(work: str | Path) -> dict[str, Any]:
    """The run's numbers, gathered from WORK (see the module docstring)."""
    work = Path(work)
    summary: dict[str, Any] = {"work": str(work)}
    solver = _read_json(work / "solver.json")
    if solver:
        summary["solver"] = {k: solver.get(k) for k in ("problems", "transcripts", "metrics", "answered",
                                                          "segments_per_transcript", "tokens_per_transcript",
                                                          "generation_seconds")}
    for side in ("train", "heldout"):
        stats = _read_json(work / f"prepared-{side}" / "stats.json")
        if stats:
            summary.setdefault("judge_examples", {})[side] = _examples(stats)
    sft = _read_json(work / "judge" / "summary.json")
    if sft:
        summary["sft"] = sft
    for key, folder in GRPO_RUNS.items():
        grpo = _read_json(work / folder / "summary.json")
        if grpo:
            summary[key] = {"steps": grpo.get("steps"), "folder": folder}
    judge = work / "eval-judge.model"
    if judge.is_file():
        summary["judge_model"] = judge.read_text(encoding="utf-8").splitlines()[0].strip()  # then its budget
    for name in EVALS:
        result = _read_json(work / f"{name}.json")
        if result:
            summary[name] = _headline(result)
    selection = _read_json(work / "selection.json")
    if selection and "selection" in selection:
        summary["selection"] = {"problems": selection["selection"]["problems"],
                                "threshold": selection["selection"]["threshold"],
                                "methods": selection["selection"]["methods"],
                                # selections made before the paired differences existed: from their rows
                                "vs_majority": selection["selection"].get("vs_majority") or differences_to_majority(
                                    selection["selection"].get("per_problem", [])),
                                "answer_ranking": selection["selection"].get("answer_ranking")
                                or _answer_ranking_from_completions(selection),
                                "judge_tokens": selection["selection"].get("judge_tokens"),  # newer ones
                                "transcript_judge": _headline(selection)}
    timings = work / "timings.jsonl"
    if timings.is_file():
        summary["timings"] = last_runs([json.loads(line) for line in timings.read_text(encoding="utf-8").splitlines()
                                        if line.strip()])
    return summary


def last_runs(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in order of first appearance: its last run (a record whose status is not
    "skipped"), else its last record. A resumed run appends "skipped" for the steps done before."""
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["status"] != "skipped" or r["step"] not in last or last[r["step"]]["status"] == "skipped":
            last[r["step"]] = r
    return list(last.values())


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _tokens_lines(cost: dict[str, Any] | None, solver_tokens: dict[str, Any] | None) -> list[str]:
    """The selection's judging cost beside the solver's generated tokens, per transcript ([] without it)."""
    if not cost or not cost.get("transcripts"):
        return []
    line = (f"Tokens a transcript: judging read {cost['prompt_per_transcript']:.0f} prompt tokens and generated "
            f"{cost['generated_per_transcript']:.0f} over its K judgements ({cost['transcripts']} judged)")
    if solver_tokens and solver_tokens.get("mean"):
        line += (f"; the solver generated {solver_tokens['mean']:.0f} (mean over the run), so judging adds "
                 f"{cost['generated_per_transcript'] / solver_tokens['mean']:.0%} in generated tokens")
    return [line + ".", ""]


def summary_markdown(s: dict[str, Any]) -> str:
    """`pipeline_summary` as Markdown: solver, judge examples, judge vs untrained model, selection, timings."""
    lines = [f"# Real pipeline: {s['work']}", ""]
    if "solver" in s:
        sv = s["solver"]
        lines += [f"Solver: {sv['problems']} problems, {sv['transcripts']} transcripts; "
                  + ", ".join(f"{k} {m['value']:.3f}{_ci([m['ci_low'], m['ci_high']])}" for k, m in sv["metrics"].items())
                  + (f"; generation {sv['generation_seconds']:.0f} s" if sv.get("generation_seconds") is not None else ""), ""]
    if "judge_examples" in s:
        lines += ["Judge examples: " + "; ".join(
            f"{side} {e['rows']} ({e['questions']} questions, {e['correct']} correct, {e['wrong']} wrong)"
            for side, e in s["judge_examples"].items()), ""]
    if "sft" in s:
        lines += [f"SFT: {s['sft'].get('steps')} steps, final loss {_fmt(s['sft'].get('final_loss'))}", ""]
    for key, what in (("grpo", "GRPO on top of the SFT judge"), ("grpo_from_base", "GRPO alone from the untrained model")):
        if key in s:
            judged = Path(s.get("judge_model", "")).name == s[key]["folder"]
            lines += [f"{what}: {s[key].get('steps')} steps" + (" (the judge below)" if judged else ""), ""]
    cols = [c for c in EVALS if c in s]
    if cols:
        lines += ["Held-out examples (K sampled judgements each, 95% intervals over questions):", "",
                  "| metric | " + " | ".join(EVALS[c] for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for m in (*HEADLINE, AUROC_ANSWERED, "submit_rate_on_wrong_answered", "submit_rate_on_wrong_unanswered",
                  "invalid", "examples", "wrong_answered_examples"):
            cells = [s[c].get(m) for c in cols]
            if all(x is None for x in cells):
                continue
            lines.append(f"| {m} | " + " | ".join(
                _fmt(x["value"]) + _ci(x["ci"]) if isinstance(x, dict) else _fmt(x) for x in cells) + " |")
        lines.append("")
    if "selection" in s:
        sel = s["selection"]
        lines += [f"Answer selection on {sel['problems']} held-out problems (judge threshold {sel['threshold']}; "
                  "any_correct = pass@K):", "", "| method | accuracy | 95% CI |", "|---|---:|---|"]
        lines += [f"| {m} | {v['accuracy']:.3f} | [{v['ci_low']:.3f}, {v['ci_high']:.3f}] |"
                  for m, v in sel["methods"].items()]
        diff = differences_table(sel.get("vs_majority"))
        lines += ["", diff.strip("\n"), ""] if diff else [""]
        rank = sel.get("answer_ranking")
        if rank:
            lines += [f"The judge's P(submit) on the transcripts with an answer: AUROC of right vs wrong answers "
                      f"{_fmt(rank['auroc'])}; within the {rank['contested_problems']} problems whose majority is wrong "
                      f"(or tied) while some transcript is right, {_fmt(rank['contested_auroc'])} on average (0.5: chance)."
                      + (f" The share of a problem's transcripts that give the answer (what majority vote uses) "
                         f"ranks them with AUROC {_fmt(rank['vote_share_auroc'])}." if "vote_share_auroc" in rank else ""),
                      ""]
        lines += _tokens_lines(sel.get("judge_tokens"), (s.get("solver") or {}).get("tokens_per_transcript"))
    if "timings" in s:
        lines += ["| step | status | seconds |", "|---|---|---:|"]
        lines += [f"| {t['step']} | {t['status']} | {t['seconds']} |" for t in s["timings"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tirgrpo.eval.pipeline WORK`: write WORK/summary.json and WORK/summary.md."""
    from tirgrpo.files import atomic_write_text

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m tirgrpo.eval.pipeline WORK  (a real_pipeline.sh output folder)", file=sys.stderr)
        return 2
    summary = pipeline_summary(args[0])
    atomic_write_text(Path(args[0]) / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(Path(args[0]) / "summary.md", summary_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
