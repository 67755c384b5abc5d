"""`tirgrpo plot`: the PNG dashboards of a run folder, including the split by label."""

import json

from tirgrpo.eval.label_split import label_split_metrics
from tirgrpo.eval.plot import PANELS, _panels, plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_run_writes_the_label_split_dashboard(tmp_path):
    rows = [{"step": s, "reward/total": 0.1 * s, "decision/submit": 0.5,
             **label_split_metrics(["correct", "correct", "wrong", "wrong"], ["submit", "decline", "submit", "invalid"],
                                   [1.0, 0.0, -1.0, -1.0], [0.8, -0.2, -0.3, -0.3], [5, 12, 6, 40])}
            for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == ["labels.png", "rewards.png", "training.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.png", "metrics.jsonl", "rewards.png", "training.png"]


def test_every_label_split_key_is_plotted():
    keys = set(label_split_metrics(["correct"], ["submit"], [1.0], [0.0], [1]))
    plotted = {k for _, ks in _panels(PANELS["labels.png"]) for k in ks}
    assert keys == plotted


def test_values_too_large_to_draw_are_left_out_not_a_crash(tmp_path, capsys):
    # A hand-edited or corrupted log: an integer of 400 digits (float() overflows) and values
    # whose range overflows an axis. Before: an internal OverflowError / "arange: cannot compute
    # length" from matplotlib, for `plot` and `report` alike.
    from tirgrpo.cli import main

    rows = ['{"step": 1, "reward/total": 0.1, "train/loss": 1e308, "train/entropy": 0.5}',
            '{"step": 2, "reward/total": 0.2, "train/loss": -1e308}',
            '{"step": 3, "reward/total": 0.3, "train/kl": 1' + "0" * 400 + "}"]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "rewards.png").is_file() and (tmp_path / "training.png").is_file()
    assert main(["report", str(tmp_path), "--prompts", "0"]) == 0
    assert "internal error" not in capsys.readouterr().err


def test_plot_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    # Before: "RUN/metrics.jsonl: no training rows to plot" for a mistyped or empty folder.
    from tirgrpo.cli import main

    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no metrics.jsonl; not a training run folder" in capsys.readouterr().err
