"""Hand-written kernels (Triton on CUDA, with torch twins elsewhere): decode steps of the
rollout engine, the LM head's softmax statistics, the AdamW update and the shared-prefix
split attention."""

# FastEngine's kernel sets (kernels/decode.py `select_kernels`). Here, not in decode.py, so that
# the command line can offer them without importing torch.
KERNEL_CHOICES = ("auto", "torch", "triton", "triton-nogemv", "triton-perrow")
