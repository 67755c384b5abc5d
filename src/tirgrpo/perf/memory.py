"""Where the trainer imports its memory check from (`train/loop.py`); the estimator itself is
split by topic: shape.py, workload.py, estimate.py, fit.py, measure.py."""

from tirgrpo.perf.fit import check_train_config  # noqa: F401
