"""The memory estimator's public names under their former module, for code written against
it (the trainer imports `check_train_config` from here). The code lives by topic in
shape.py, workload.py, estimate.py, fit.py and measure.py; import from those."""

from tirgrpo.perf.estimate import (estimate, fits, largest_fitting, pick_micro_batch_tokens, rollout_phase,  # noqa: F401
                                   train_phase)
from tirgrpo.perf.fit import check_train_config, describe, suggest_changes  # noqa: F401
from tirgrpo.perf.measure import measure_config, measure_step, synthetic_batch  # noqa: F401
from tirgrpo.perf.shape import ModelShape, shape_from_spec  # noqa: F401
from tirgrpo.perf.workload import GiB, Workload, micro_batch_plan, workload_from_config  # noqa: F401
