"""The curriculum schedule and `tirgrpo schedule`; expected weights worked out by hand."""

from __future__ import annotations

import pytest

from tirgrpo.cli import main
from tirgrpo.errors import TirgrpoError
from tirgrpo.score.schedule import curriculum_weights, schedule_steps


@pytest.mark.parametrize(
    "k, K, expected",
    [
        # K = 100, ramp from K/4 = 25 over K - K/4 = 75 steps.
        (0, 100, (0.5, 0.5, 0.0)),  # before the ramp: w_c = 0, the others (1 - 0) / 2
        (25, 100, (0.5, 0.5, 0.0)),  # k = K/4: (25 - 25) / 75 = 0
        (50, 100, (0.375, 0.375, 0.25)),  # k = K/2: 0.75 * 25/75 = 0.25; (1 - 0.25) / 2 = 0.375
        (100, 100, (0.125, 0.125, 0.75)),  # k = K: 0.75 * 1; (1 - 0.75) / 2 = 0.125
        (150, 100, (0.125, 0.125, 0.75)),  # past K: clipped at 1
        # K = 10 (K/4 = 2.5 is not a step): k = 5 -> 0.75 * 2.5/7.5 = 0.25; k = 4 -> 0.75 * 1.5/7.5 = 0.15, others 0.425.
        (5, 10, (0.375, 0.375, 0.25)),
        (4, 10, (0.425, 0.425, 0.15)),
        (2, 10, (0.5, 0.5, 0.0)),
    ],
)
def test_curriculum_weights(k, K, expected):
    w = curriculum_weights(k, K)
    assert (w["length"], w["formatting"], w["correctness"]) == pytest.approx(expected, abs=1e-12)
    assert sum(w.values()) == pytest.approx(1.0)


def test_curriculum_needs_positive_total():
    with pytest.raises(TirgrpoError, match="positive"):
        curriculum_weights(0, 0)


def test_schedule_steps_end_at_K():
    assert schedule_steps(10, 4) == [0, 4, 8, 10]
    assert schedule_steps(10, 5) == [0, 5, 10]


def test_schedule_command_prints_the_table(capsys):
    assert main(["schedule", "--total-steps", "100", "--every", "25"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["step", "w_length", "w_formatting", "w_correctness"]
    rows = [[float(x) for x in line.split()] for line in lines[1:]]
    assert rows == [
        [0, 0.5, 0.5, 0.0],
        [25, 0.5, 0.5, 0.0],
        [50, 0.375, 0.375, 0.25],
        [75, 0.25, 0.25, 0.5],  # 0.75 * 50/75 = 0.5
        [100, 0.125, 0.125, 0.75],
    ]


def test_schedule_command_default_every_and_plot(tmp_path, capsys):
    png = tmp_path / "plots" / "schedule.png"
    assert main(["schedule", "--total-steps", "40", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    # Default --every is K/20 = 2: steps 0, 2, ..., 40 -> 21 rows after the header.
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 21
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["schedule.png"]  # no temp file left


def test_schedule_command_rejects_bad_total(capsys):
    assert main(["schedule", "--total-steps", "0"]) == 2
    assert "--total-steps must be positive" in capsys.readouterr().err


def test_schedule_plot_to_a_folder_is_refused_before_the_table(tmp_path, capsys):
    # Before: the table printed, then "Is a directory: ...tmp", a temporary name the user never gave.
    assert main(["schedule", "--total-steps", "40", "--plot", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"--plot {tmp_path}: is a folder" in captured.err and captured.out == ""
    assert not list(tmp_path.iterdir())


def test_schedule_of_a_huge_run_plots_and_refuses_a_table_too_long_to_print(tmp_path, capsys):
    # Before: both ended in an internal MemoryError (a list of every step, 10^14 of them).
    png = tmp_path / "schedule.png"
    assert main(["schedule", "--total-steps", str(10**14), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["schedule", "--total-steps", str(10**14), "--every", "1"]) == 2
    err = capsys.readouterr().err
    assert "--every 1" in err and "rows" in err and "internal error" not in err
