"""Optimizer-step benchmark: gradient clipping + AdamW step on a 1.5B-shape model.

Random-init DeepSeek-R1-Distill-Qwen-1.5B shape in bf16 on CUDA, random gradients. Median
over `--repeats` steps after 3 warm-up steps, CUDA events; also the host time of the call
(when it exceeds the GPU time, the step is bound by Python and launches, not memory).

    PYTHONPATH=$PWD/src python3 benchmarks/optimizer_step.py --modes stochastic master

Run it on an older checkout (PYTHONPATH=<old>/src) for the baseline in the same call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tirgrpo.train.model import build_random_model
from tirgrpo.train.optim import AdamW


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["stochastic"], choices=["stochastic", "master", "kahan"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    model = build_random_model("r1-distill-qwen-1.5b", torch.bfloat16, "sdpa", seed=0, device=torch.device("cuda"))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    print(f"{len(params)} tensors, {n / 1e9:.2f}B parameters, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for mode in a.modes:
        opt = AdamW(params, lr=3e-5, master_fp32=mode == "master", bf16_update="kahan" if mode == "kahan" else "stochastic")
        gpu, host = [], []
        for i in range(3 + a.repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            s.record()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            e.record()
            host_s = time.perf_counter() - t
            torch.cuda.synchronize()
            if i >= 3:
                gpu.append(s.elapsed_time(e) / 1e3)
                host.append(host_s)
        print(f"{a.label:<8}{mode:<12} clip+step {statistics.median(gpu) * 1e3:8.1f} ms   host {statistics.median(host) * 1e3:8.1f} ms")
        del opt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
