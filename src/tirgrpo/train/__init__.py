"""Training: the GRPO loop (`loop.py`) and one update (`step.py`), with what they are made
of: the `[system]` plan and memory check (`plan.py`), the loss, log-probs through a chunked
LM head, micro-batching, shared-prefix packing, the optimizer, model loading, checkpoints,
metrics, the run-folder lock; and the SFT warm start."""
