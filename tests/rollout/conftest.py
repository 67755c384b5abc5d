"""Run the Triton kernels in Triton's CPU interpreter on machines without CUDA.

Triton decides at kernel definition (when tirgrpo.rollout.kernels is first imported) whether
a kernel is interpreted, so the variable is set here, before any test module imports it.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
