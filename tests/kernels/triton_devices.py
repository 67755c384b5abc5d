"""What the Triton kernel tests share: the devices they run on and their tolerances.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before anything imports triton), on CUDA compiled; without triton the tests are skipped.
"""

from __future__ import annotations

import pytest
import torch

from tirgrpo.kernels import decode as K

if K.triton_interpreting():
    DEVICES = ["cpu"]
elif K.HAVE_TRITON and torch.cuda.is_available():
    DEVICES = [pytest.param("cuda", marks=pytest.mark.gpu)]
else:
    DEVICES = []


def on_devices(test):
    """Run `test` on each device where the Triton kernels can run; skip it where none can."""
    test = pytest.mark.parametrize("device", DEVICES or ["none"])(test)
    return pytest.mark.skipif(not DEVICES, reason="needs triton, and CUDA or TRITON_INTERPRET=1 before "
                              "import (tests/conftest.py)")(test)


def tol(dtype, device):
    """assert_close tolerances for a kernel's output against its torch twin."""
    if dtype == torch.float32:
        return {"atol": 1e-5, "rtol": 1e-5}
    # Triton's interpreter truncates fp32 -> bf16 where the GPU (and torch) round to nearest.
    return {"atol": 1e-2, "rtol": 1e-2} if device == "cuda" else {"atol": 4e-2, "rtol": 4e-2}
