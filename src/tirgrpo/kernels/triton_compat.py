"""Optional Triton: the one import the kernel modules share.

Triton ships with CUDA builds of torch; CPU-only installs (and CI) have none, and then only
the plain-torch versions of each kernel run. `triton`, `tl` and `libdevice` stand in as
no-ops there so the kernel definitions still parse. Triton decides when a kernel is defined
(at import of the module holding it) whether it runs in its CPU interpreter: set
TRITON_INTERPRET=1 before importing tirgrpo to run the kernels on CPU tensors (tests).
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

    class _NoTriton:
        """Stands in for `triton`/`tl`/`libdevice` so the kernel definitions still parse."""

        constexpr = None

        @staticmethod
        def jit(fn):
            return fn

    triton = tl = libdevice = _NoTriton

INTERPRETED = HAVE_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_available(device: torch.device) -> bool:
    """Can Triton kernels run on tensors of `device`? (CUDA with triton, or CPU in the interpreter)"""
    return HAVE_TRITON and (device.type == "cuda" or (INTERPRETED and device.type == "cpu"))
