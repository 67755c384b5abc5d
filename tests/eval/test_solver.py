"""The solver report on hand-made transcripts, every number worked out by hand."""

import json
import math

from tirgrpo.data.records import Transcript, Turn, transcript_to_dict
from tirgrpo.data.templates import SEED_BRIDGE
from tirgrpo.eval.solver import main, solver_markdown, solver_report


def T(pid, sample, correct, eventual, turns):
    return Transcript(pid, sample, f"question {pid}", correct, eventual, "P:", SEED_BRIDGE, tuple(turns))


CODE = Turn("a\n```python\nprint(1)\n```", "print(1)", "1", "code", 1.0)  # 3 words of text


def BOX(n):
    return Turn(f"ok \\boxed{{{n}}}", None, None, "eos", 0.5)


TRANSCRIPTS = [
    # problem A, answer 7: right, wrong, right -> pass@1 2/3, majority 7 (2 of 3) -> 1, pass@K 1
    T("A", 0, "7", "7", [CODE, BOX(7)]),            # 1 output, 1 segment, 1.5 s
    T("A", 1, "7", "3", [CODE, CODE, BOX(3)]),      # 2 outputs, 2 segments, 2.5 s
    T("A", 2, "7", "7", [BOX(7)]),                  # 0 outputs, 0 segments, 0.5 s
    # problem B, answer 5: one wrong answer and one without -> pass@1 0, majority 3 -> 0, pass@K 0
    T("B", 0, "5", "3", [BOX(3)]),
    T("B", 1, "5", None, [Turn("no answer", None, None, "length", None)]),
    # problem C: answer unknown -> not counted
    T("C", 0, None, "1", [BOX(1)]),
]


def test_solver_report_scores_and_counts():
    r = solver_report(TRANSCRIPTS, count_tokens=lambda s: len(s.split()), n_boot=200)
    assert r["problems"] == 2 and r["transcripts"] == 5 and r["transcripts_without_correct_answer"] == 1
    assert r["samples_per_problem"] == {"2": 1, "3": 1}
    m = r["metrics"]
    assert math.isclose(m["pass@1"]["value"], (2 / 3 + 0) / 2)
    assert m["majority@K"]["value"] == 0.5 and m["pass@K"]["value"] == 0.5
    assert 0 <= m["pass@K"]["ci_low"] <= 0.5 <= m["pass@K"]["ci_high"] <= 1
    assert r["answered"] == 4 / 5
    assert r["code_outputs_per_transcript"]["max"] == 2 and r["code_outputs_per_transcript"]["mean"] == 0.6
    assert r["segments_per_transcript"]["mean"] == 0.6  # 1 + 2 + 0 + 0 + 0 over 5
    assert r["turns_per_transcript"]["max"] == 3
    assert r["last_turn_finish"] == {"eos": 4, "length": 1}
    assert r["seconds_per_transcript"]["max"] == 2.5 and r["seconds_per_transcript"]["min"] == 0.0
    # tokens (words here): CODE "a ```python print(1) ```" = 4, BOX "ok \boxed{n}" = 2, "no answer" = 2
    assert r["tokens_per_transcript"]["max"] == 4 + 4 + 2 and r["tokens_per_transcript"]["min"] == 2


def test_majority_tie_scores_the_share_of_right_answers():
    r = solver_report([T("A", 0, "7", "7", [BOX(7)]), T("A", 1, "7", "3", [BOX(3)])], n_boot=10)
    assert r["metrics"]["majority@K"]["value"] == 0.5  # 7 and 3 tie: half of a random tie-break is right
    assert "tokens_per_transcript" not in r


def test_main_writes_json_and_markdown(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(transcript_to_dict(t)) + "\n" for t in TRANSCRIPTS), encoding="utf-8")
    out = tmp_path / "solver.json"
    assert main([str(path), "--out", str(out), "--generation-seconds", "12.5"]) == 0
    report = json.loads(out.read_text())
    assert report["generation_seconds"] == 12.5 and report["problems"] == 2
    md = out.with_suffix(".md").read_text()
    assert "| pass@K | 0.500 |" in md and "generation wall time: 12.5 s" in md
    assert md == solver_markdown(report)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main([str(empty), "--out", str(tmp_path / "x.json")]) == 2
    assert "no transcripts" in capsys.readouterr().err


def test_main_refuses_an_out_whose_markdown_would_replace_it(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(transcript_to_dict(t)) + "\n" for t in TRANSCRIPTS), encoding="utf-8")
    assert main([str(path), "--out", str(tmp_path / "solver.md")]) == 2
    assert "name a .json file" in capsys.readouterr().err
    assert not (tmp_path / "solver.md").exists()
