"""Hand-written kernels (Triton on CUDA, with torch twins elsewhere): decode steps of the
rollout engine, the LM head's softmax statistics, the AdamW update and the shared-prefix
split attention."""
