"""Profile FastEngine decode steps (CPU and CUDA time per op) on the random 1.5B shape.

    PYTHONPATH=$PWD/src python3 benchmarks/profile_rollout.py --batch 8 --new-tokens 64 --kernels triton
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from tirgrpo.train.model import build_random_model
from tirgrpo.rollout import SamplingParams
from tirgrpo.rollout.engine import FastEngine
from tirgrpo.data.tokenizer import load_tokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--group", type=int, default=4)
ap.add_argument("--prompt-tokens", type=int, default=3072)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto")
a = ap.parse_args()
model = build_random_model("r1-distill-qwen-1.5b", torch.bfloat16, device="cuda").eval()
tok = load_tokenizer("r1-distill-qwen")
eng = FastEngine(model, tok, max_batch=a.batch, kernels=a.kernels)
g = torch.Generator().manual_seed(0)
ids = [torch.randint(0, 150000, (a.prompt_tokens,), generator=g).tolist() for _ in range(a.batch // a.group)]
params = SamplingParams(a.new_tokens, 1.0, min_new_tokens=a.new_tokens)
eng.generate(ids, a.group, params)
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    eng.generate(ids, a.group, params)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50))
print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
