"""`tirgrpo plot RUN_DIR`: PNG dashboards of a run's metrics.jsonl.

rewards.png has one panel per reward component (and the total), like the original run's
dashboard; training.png shows loss, KL, clipping, entropy, lengths and the decision mix;
labels.png the metrics split by label (label_split.py): decision rates and reward on
`correct` and on `wrong` prompts, the skill, the advantage mass on each decision and the
completion length by decision.
"""

from __future__ import annotations

import math
from pathlib import Path

from tirgrpo.train.metrics import read_jsonl

PANELS = {
    "rewards.png": ["reward/total", "reward/correctness", "reward/length", "reward/formatting",
                    "weight/correctness", "weight/length"],
    "training.png": ["train/loss", "train/kl", "train/clip_low", "train/clip_high", "train/entropy",
                     "train/grad_norm", "completion/tokens_mean", "completion/truncated",
                     "decision/submit", "decision/decline", "decision/invalid", "adv/zero_std_groups"],
    "speed.png": ["time/rollout_s", "time/score_s", "time/train_s", "throughput/train_tokens_per_s",
                  "throughput/gen_tokens_per_s", "memory/peak_gib"],
    # Panels with several lines: (title, keys).
    "labels.png": [
        ("submit rate by label", ["label/correct/submit", "label/wrong/submit"]),
        ("decline rate by label", ["label/correct/decline", "label/wrong/decline"]),
        ("invalid rate by label", ["label/correct/invalid", "label/wrong/invalid"]),
        ("mean reward by label", ["label/correct/reward", "label/wrong/reward"]),
        ("skill (submit on correct - on wrong)", ["label/skill"]),
        ("advantage mass by decision", ["adv/submit", "adv/decline", "adv/invalid"]),
        ("advantage on submits by label", ["adv/correct/submit", "adv/wrong/submit"]),
        ("advantage on declines by label", ["adv/correct/decline", "adv/wrong/decline"]),
        ("advantage on invalids by label", ["adv/correct/invalid", "adv/wrong/invalid"]),
        ("advantage x tokens by decision", ["adv_tokens/submit", "adv_tokens/decline", "adv_tokens/invalid"]),
        ("completion tokens by decision", ["length/submit", "length/decline", "length/invalid"]),
    ],
}


def _panels(spec: list) -> list[tuple[str, list[str]]]:
    """PANELS entries as (title, keys): a plain key is a panel of its own, titled by the key."""
    return [(item, [item]) if isinstance(item, str) else item for item in spec]


# Larger magnitudes are left out of plots: matplotlib cannot scale an axis whose range
# overflows a float (1e308 and -1e308 in one panel ended in an internal ValueError).
MAX_DRAWN = 1e300


def number(v) -> float | None:
    """A metrics value as a float, or None when it is not a number (a missing key, "nan" text)
    or too large to draw (an integer float() cannot hold, a finite value beyond MAX_DRAWN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        x = float(v)
    except OverflowError:  # an integer of over 308 digits in a hand-edited log
        return None
    return None if math.isfinite(x) and abs(x) > MAX_DRAWN else x


def panel_figure(rows: list[dict], groups: list[tuple[str, list[str]]], label=lambda key: key):
    """A grid of line plots, three a row: one panel per (title, keys) that has data, each key a
    line over the optimizer step; None when no panel has data. `label` names a key's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, [k for k in keys if any(number(r.get(k)) is not None for r in rows)]) for t, keys in groups]
    panels = [(t, keys) for t, keys in panels if keys]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            points = [(r["step"], number(r.get(key))) for r in rows if number(r.get(key)) is not None]
            ax.plot([x for x, _ in points], [y for _, y in points], marker="." if len(points) < 50 else None,
                    linewidth=1, label=label(key))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_run(run_dir: Path) -> list[Path]:
    """Write the PNGs for `run_dir` (atomically) and return their paths (none without training rows)."""
    import matplotlib.pyplot as plt

    from tirgrpo.files import atomic_path

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward/total" in r]
    if not rows:  # e.g. an eval-only run (optim.total_steps = 0)
        return []
    written = []
    for name, spec in PANELS.items():
        fig = panel_figure(rows, _panels(spec))
        if fig is None:
            continue
        out = run_dir / name
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written.append(out)
    return written
