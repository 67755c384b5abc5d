"""The curriculum: learn the form first (length, formatting), then the decision (correctness).

Over optimizer steps k of K, w_c = 0.75 * clip((k - K/4) / (K - K/4), 0, 1) and the length
and formatting weights are (1 - w_c) / 2 each: 0.5/0.5/0 for the first quarter, then a
linear ramp to 0.125/0.125/0.75 at k = K. `tirgrpo schedule` prints (and plots) the curve.
"""

from __future__ import annotations


from tirgrpo.errors import TirgrpoError

MAX_CORRECTNESS_WEIGHT = 0.75
RAMP_START_FRACTION = 0.25
"""The correctness weight starts to grow after this fraction of the run."""
PLOT_POINTS = 2000
"""About this many steps are drawn by `plot_schedule`."""
MAX_TABLE_ROWS = 1_000_000
"""`tirgrpo schedule` prints at most this many rows (more is a mistake in --every, and would not fit in memory)."""


def curriculum_weights(k: float, K: float) -> dict[str, float]:
    """Weights at optimizer step k of K: {"length", "formatting", "correctness"}, summing to 1."""
    if K <= 0:
        raise TirgrpoError(f"curriculum: total steps must be positive, got {K}")
    start = K * RAMP_START_FRACTION
    progress = min(max((k - start) / (K - start), 0.0), 1.0)
    w_c = MAX_CORRECTNESS_WEIGHT * progress
    w_rest = (1.0 - w_c) / 2.0
    return {"length": w_rest, "formatting": w_rest, "correctness": w_c}


def schedule_steps(total_steps: int, every: int) -> list[int]:
    """0, every, 2*every, ... and always the last step K."""
    steps = list(range(0, total_steps + 1, every))
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def format_table(total_steps: int, every: int) -> str:
    """The weights as a text table, one row per printed step."""
    lines = [f"{'step':>8}  {'w_length':>9}  {'w_formatting':>12}  {'w_correctness':>13}"]
    for k in schedule_steps(total_steps, every):
        w = curriculum_weights(k, total_steps)
        lines.append(f"{k:>8}  {w['length']:>9.4f}  {w['formatting']:>12.4f}  {w['correctness']:>13.4f}")
    return "\n".join(lines)


def plot_schedule(total_steps: int, path: str) -> None:
    """Write a PNG of the three weights over the steps 0..K (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    from tirgrpo.files import atomic_path

    # The curve is piecewise linear: ~2,000 points draw it exactly as every step would, and a run
    # of 10^9 steps does not need a list of 10^9 of them.
    steps = schedule_steps(total_steps, max(1, total_steps // PLOT_POINTS))
    curves = [curriculum_weights(k, total_steps) for k in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    try:
        for name in ("length", "formatting", "correctness"):
            # length and formatting coincide: dash one so both stay visible.
            style = "--" if name == "formatting" else "-"
            ax.plot(steps, [w[name] for w in curves], style, label=f"w_{name}")
        ax.set_xlabel("optimizer step k")
        ax.set_ylabel("weight")
        ax.set_ylim(0, 1)
        ax.set_title(f"Reward curriculum over K = {total_steps} steps")
        ax.legend()
        ax.grid(alpha=0.3)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
