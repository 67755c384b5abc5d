"""Outputs that cannot be written are refused before any work, without a traceback, and nothing
is written; `score --out` naming a folder is refused before scoring."""

import json
import os

import pytest

from tirgrpo.cli import main
from tirgrpo.errors import TirgrpoError
from tirgrpo.files import check_output_dir, check_output_file

UNWRITABLE = "/proc/tirgrpo-no-such/out"  # /proc takes no new files, even from root


def _gsm8k(tmp_path):
    p = tmp_path / "gsm8k.jsonl"
    p.write_text(json.dumps({"question": "Tom has 2 apples and buys 3. How many?",
                             "answer": "2+3=<<2+3=5>>5 apples.\n#### 5"}) + "\n")
    return p


def _score_input(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"completion": "so \\boxed{5}", "correct_answer": "5", "finish_reason": "eos"}) + "\n")
    return p


def test_check_functions(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    check_output_file(tmp_path / "new" / "deeper" / "out.jsonl")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    check_output_dir(tmp_path / "folder")
    with pytest.raises(TirgrpoError, match="is a folder"):
        check_output_file(tmp_path / "folder")
    with pytest.raises(TirgrpoError, match="is a file, not a folder"):
        check_output_file(tmp_path / "file" / "out.jsonl")
    with pytest.raises(TirgrpoError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(TirgrpoError, match="cannot write in /proc"):
        check_output_file(UNWRITABLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]  # no probe left behind


def test_check_messages_name_the_path_as_given(tmp_path):
    # Before: "--out /proc: cannot write in /proc" for --out /proc/x (the parent named as the
    # option's value), and "--out FILE: FILE is a file" for --out FILE/out.jsonl.
    (tmp_path / "file").write_text("x")
    for check, path in [(check_output_file, "/proc/tirgrpo-x/out.jsonl"), (check_output_dir, "/proc/tirgrpo-x"),
                        (check_output_file, str(tmp_path / "file" / "out.jsonl")),
                        (check_output_dir, str(tmp_path / "file" / "sub"))]:
        with pytest.raises(TirgrpoError) as e:
            check(path)
        assert str(e.value).startswith(f"--out {path}: "), str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-555 folder")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(TirgrpoError, match="cannot write in"):
        check_output_file(ro / "out.jsonl")


@pytest.mark.parametrize("out", [UNWRITABLE, "FILE/out"])
def test_commands_refuse_unwritable_outputs_cleanly(tmp_path, capsys, out):
    (tmp_path / "FILE").write_text("x")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    csv = tmp_path / "in.csv"
    csv.write_text("prompt,completion,question,correct_answer,eventual_answer\np,c,q,1,1\n")
    for argv in (["prepare", "--input", str(csv), "--out", out],
                 ["data", "gsm8k-verify", "--input", str(_gsm8k(tmp_path)), "--out", out + ".jsonl"],
                 ["score", "--input", str(_score_input(tmp_path)), "--out", out + ".jsonl"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err, err


def test_score_out_naming_a_folder_refused_before_work(tmp_path, capsys, monkeypatch):
    import tirgrpo.score.rewards as rewards

    def never(*a, **k):
        raise AssertionError("scored before checking --out")

    monkeypatch.setattr(rewards, "score_records", never)
    (tmp_path / "outdir").mkdir()
    assert main(["score", "--input", str(_score_input(tmp_path)), "--out", str(tmp_path / "outdir")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_report_paths_and_distinct_files(tmp_path):
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.files import check_distinct_files, report_paths

    assert report_paths(tmp_path / "r.json") == (tmp_path / "r.json", tmp_path / "r.md")
    assert report_paths(tmp_path / "r") == (tmp_path / "r", tmp_path / "r.md")
    with pytest.raises(TirgrpoError, match="--out .*r.md: the Markdown report goes beside"):
        report_paths(tmp_path / "r.md")
    check_distinct_files({"--a": tmp_path / "a", "--b": tmp_path / "b"})
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(TirgrpoError, match="--a and --b are the same file"):
        check_distinct_files({"--a": tmp_path / "real", "--b": tmp_path / "link"})
