"""RunLog on resume: rows after the checkpoint go, and a final evaluation about to run again goes too."""

import json

from tirgrpo.train.metrics import RunLog, read_jsonl


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_resume_drops_rows_after_the_checkpoint_and_the_final_eval_it_redoes(tmp_path):
    train = lambda step: {"step": step, "reward/total": 0.1 * step}  # noqa: E731
    rows = [train(2), {"step": 2, "eval/correctness": 0.1}, train(4), train(6), {"step": 6, "eval/correctness": 0.3}]
    _write(tmp_path / "metrics.jsonl", rows)
    _write(tmp_path / "samples.jsonl", [{"step": 6, "completion": "x"}])
    RunLog(tmp_path, tensorboard=False, resume_step=4)
    assert read_jsonl(tmp_path / "metrics.jsonl") == rows[:3]
    _write(tmp_path / "metrics.jsonl", rows)
    _write(tmp_path / "samples.jsonl", [{"step": 6, "completion": "x"}])
    RunLog(tmp_path, tensorboard=False, resume_step=6, redo_evals=True)  # killed during/after the final eval
    assert read_jsonl(tmp_path / "metrics.jsonl") == rows[:4]
    assert read_jsonl(tmp_path / "samples.jsonl") == [{"step": 6, "completion": "x"}]


def test_device_timer_on_the_cpu():
    import time as _time

    import torch

    from tirgrpo.train.metrics import DeviceTimer

    timer = DeviceTimer(torch.device("cpu"))
    assert timer.seconds() == 0.0  # never started nor stopped: no pass was timed
    timer.start()
    _time.sleep(0.02)
    timer.stop()
    assert 0.015 < timer.seconds() < 1.0


def test_read_jsonl_names_the_file_and_line_of_a_bad_row_and_skips_a_cut_off_last_line(tmp_path):
    import pytest

    from tirgrpo.errors import TirgrpoError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "reward/to')  # a run killed mid-append
    assert read_jsonl(path) == [{"step": 1}]
    for text, message in [('{"step": 1,\n{"step": 2}\n', "line 1: not valid JSON"),
                          ('{"step": 1}\n[1]\n', "line 2: expected a JSON object"),
                          ('{"loss": 1}\n', "line 1: no integer 'step'")]:
        path.write_text(text)
        with pytest.raises(TirgrpoError, match=f"metrics.jsonl, {message}"):
            read_jsonl(path)


def test_resume_rewrites_the_log_whole_or_not_at_all(tmp_path, monkeypatch):
    # The log is cut back to the checkpoint's step on resume. Before, it was rewritten in place:
    # a full disk (or a kill) during the write left a truncated metrics.jsonl, the run's history lost.
    import errno
    import pathlib

    rows = "".join(json.dumps({"step": s, "reward/total": 0.1}) + "\n" for s in (1, 2, 3))
    (tmp_path / "metrics.jsonl").write_text(rows)
    write_text = pathlib.Path.write_text

    def disk_full(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    try:
        RunLog(tmp_path, tensorboard=False, resume_step=2)
    except OSError:
        pass
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_text() == rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
