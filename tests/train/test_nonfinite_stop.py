"""A run stops after run.max_nonfinite skipped updates, counted since the session began."""

from types import SimpleNamespace

import pytest

from tirgrpo.errors import TirgrpoError
from tirgrpo.train.loop import Progress, after_rollout


def _session(nonfinite, at_start, limit=3):
    saved = []
    cfg = SimpleNamespace(run=SimpleNamespace(max_nonfinite=limit, eval_every=0, save_every=0))
    s = SimpleNamespace(cfg=cfg, progress=Progress(step=5, nonfinite=nonfinite), nonfinite_at_start=at_start,
                        total_steps=10, last_save=0, save=lambda: saved.append(True))
    return s, saved


def test_the_limit_stops_the_run_with_a_checkpoint():
    s, saved = _session(nonfinite=3, at_start=0)
    with pytest.raises(TirgrpoError, match="3 steps had a non-finite loss .* stopped at step 5, checkpoint saved"):
        after_rollout(s, step_before=4)
    assert saved == [True]


def test_a_resumed_run_counts_only_its_own_skipped_updates():
    s, saved = _session(nonfinite=3, at_start=3)  # the stop's checkpoint, resumed: 0 skipped since
    after_rollout(s, step_before=4)
    assert saved == []
    s.progress.nonfinite = 5  # two more in this session: still under 3
    after_rollout(s, step_before=4)
    s.progress.nonfinite = 6
    with pytest.raises(TirgrpoError, match="^3 steps had"):
        after_rollout(s, step_before=4)
