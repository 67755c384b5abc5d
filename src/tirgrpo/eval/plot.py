"""`tirgrpo plot RUN_DIR`: PNG dashboards of a run's metrics.jsonl.

rewards.png has one panel per reward component (and the total), like the original run's
dashboard; training.png shows loss, KL, clipping, entropy, lengths and the decision mix.
"""

from __future__ import annotations

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
}


def plot_run(run_dir: Path) -> list[Path]:
    """Write the PNGs for `run_dir` (atomically) and return their paths (none without training rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tirgrpo.files import atomic_path

    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward/total" in r]
    if not rows:  # e.g. an eval-only run (optim.total_steps = 0)
        return []
    written = []
    for name, keys in PANELS.items():
        keys = [k for k in keys if any(k in r for r in rows)]
        if not keys:
            continue
        cols = 3
        nrows = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            xs = [r["step"] for r in rows if isinstance(r.get(key), (int, float))]
            ys = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, linewidth=1)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.tight_layout()
        out = run_dir / name
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        written.append(out)
    return written
