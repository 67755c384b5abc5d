"""AdamW that keeps small updates when the model computes in bf16, and the LR schedule.

Why not `torch.optim.AdamW` on bf16 parameters: bf16 has 8 bits of mantissa, so an
update smaller than about 1/256 of a weight rounds away to nothing; with lr 3e-5 most
updates are that small and full bf16 training silently stops learning. Three remedies:

* `master_fp32=True` (`system.optimizer = "fp32-master"`): an fp32 copy of each trainable
  weight plus fp32 moments; the bf16 weight is refreshed from the copy after each step
  (16 bytes per trainable parameter: 2 bf16 weight + 2 bf16 grad + 4 master + 8 moments).
* `master_fp32=False, bf16_update="kahan"` (`bf16-kahan`): bf16 weights, bf16 moments
  (stochastically rounded, see below) and a bf16 Kahan compensation buffer that carries the
  rounding error of each update into the next (10 bytes per parameter), as torchdistx's
  AnyPrecisionAdamW does.
* `master_fp32=False, bf16_update="stochastic"` (`bf16-stochastic`): bf16 weights and
  moments, and each new weight rounded up or down at random with the probabilities that make
  the rounding unbiased, so small updates accumulate in expectation (8 bytes per parameter:
  the same memory as plain bf16 AdamW, which loses them).

fp32 parameters (CPU runs, LoRA adapters kept in fp32) need neither and are updated in place.
"""

from __future__ import annotations

import math

import torch

from tirgrpo.kernels import adamw as adamw_kernels
from tirgrpo.train.dist import local


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to `min_ratio` at `total_steps`.

    `step` counts optimizer steps already taken (0 for the first update).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round fp32 `x` to bf16, up or down at random so that E[result] == x.

    bf16 is the top 16 bits of fp32: adding a uniform random integer in [0, 2^16) to the
    fp32 bit pattern and truncating the low 16 bits rounds up with probability equal to
    the distance from the lower neighbour.
    """
    bits = x.float().contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (bits + noise) & -65536  # -65536 == 0xFFFF0000 as int32
    return rounded.view(torch.float32).to(torch.bfloat16)


CHUNK = 1 << 24  # elements per slice of the update (64 MB of fp32 temporaries each)


class AdamW:
    """AdamW (decoupled weight decay) over the trainable parameters of a model."""

    def __init__(self, params, lr: float, betas=(0.9, 0.99), eps: float = 1e-8, weight_decay: float = 0.0,
                 master_fp32: bool = True, bf16_update: str = "kahan", seed: int = 0, fused: bool | None = None):
        if bf16_update not in ("kahan", "stochastic"):
            raise ValueError(f"bf16_update must be 'kahan' or 'stochastic', got {bf16_update!r}")
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.master_fp32, self.bf16_update = master_fp32, bf16_update
        self.seed = seed
        # On CUDA the master-fp32 and stochastic updates run as one Triton kernel per tensor
        # (kernels/adamw.py); the eager version is ~15 elementwise passes over memory
        # (0.1-0.2 s for 1.5B params). fused=True on CPU needs TRITON_INTERPRET=1 (tests).
        on_cuda = bool(self.params) and self.params[0].is_cuda
        self.fused = (on_cuda and adamw_kernels.available(self.params[0].device)) if fused is None else fused
        if self.fused and self.params and not adamw_kernels.available(self.params[0].device):
            raise ValueError("AdamW(fused=True) needs triton and CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = [self._init_state(p) for p in self.params]

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        if p.dtype == torch.float32:
            return {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
        if self.master_fp32:
            f32 = dict(dtype=torch.float32)
            return {"master": p.detach().float().clone(), "m": torch.zeros_like(p, **f32), "v": torch.zeros_like(p, **f32)}
        if self.bf16_update == "stochastic":
            return {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "comp": torch.zeros_like(p)}

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW update from the parameters' `.grad`; parameters without a grad are skipped.

        Large tensors are updated in slices of `CHUNK` elements: the fp32 temporaries of a
        bf16 embedding matrix (233M values) would otherwise add several GB to the peak.
        """
        self.steps += 1
        b1, b2 = self.betas
        bias_corr = (1 - b1**self.steps, 1 - b2**self.steps)
        for i, (p, st) in enumerate(zip(self.params, self.state)):
            if p.grad is None:
                continue
            if self.fused and self._fused_kernel(p, st):
                self._fused_update(p, st, bias_corr, self._seed(i, 0))
                continue
            # sharded (FSDP) parameters: the update is elementwise, so each rank updates its shard
            flat = {k: local(t).view(-1) for k, t in st.items()}
            w, g = local(p.data).view(-1), local(p.grad).reshape(-1)
            for j, start in enumerate(range(0, w.numel(), CHUNK)):
                sl = slice(start, start + CHUNK)
                self._update(w[sl], g[sl], {k: t[sl] for k, t in flat.items()}, self._seed(i, j))

    def _seed(self, i: int, j: int) -> int:
        """Seed of the rounding noise of tensor i, slice j at this step (reproducible runs)."""
        return (self.seed * 1_000_003 + self.steps * 7919 + i * 131 + j) % 2**31

    def _fused_update(self, p: torch.Tensor, st: dict, bias_corr: tuple[float, float], seed: int) -> None:
        grad = local(p.grad)
        grad = grad if grad.is_contiguous() else grad.contiguous()
        args = (self.lr, self.betas, bias_corr, self.eps, self.weight_decay)
        st = {k: local(t) for k, t in st.items()}
        if "master" in st:
            adamw_kernels.adamw_master_(local(p.data), grad, st["m"], st["v"], st["master"], *args)
        else:
            adamw_kernels.adamw_stochastic_(local(p.data), grad, st["m"], st["v"], *args, seed=seed)

    @staticmethod
    def _fused_kernel(p: torch.Tensor, st: dict) -> bool:
        """Does this parameter's mode have a Triton kernel? (master fp32, or bf16 stochastic; not Kahan or fp32)"""
        return "master" in st or (p.dtype == torch.bfloat16 and "comp" not in st and "m" in st
                                  and st["m"].dtype == torch.bfloat16)

    def _update(self, p: torch.Tensor, grad: torch.Tensor, st: dict[str, torch.Tensor], seed: int) -> None:
        """AdamW on one flat slice: p (weights, updated in place), grad, st (state slices)."""
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
        g = grad.float()
        m = st["m"].float().mul_(b1).add_(g, alpha=1 - b1)
        v = st["v"].float().mul_(b2).addcmul_(g, g, value=1 - b2)
        gen = None
        if st["m"].dtype == torch.bfloat16:
            # bf16 moments stall when (1 - beta) * g^2 is below half an ulp of v; rounding
            # them stochastically keeps their expectation exact.
            gen = torch.Generator(device=p.device).manual_seed(seed)
            st["m"].copy_(stochastic_round_bf16(m, gen))
            st["v"].copy_(stochastic_round_bf16(v, gen))
        else:
            st["m"].copy_(m)
            st["v"].copy_(v)
        weight = st["master"] if "master" in st else p.float()
        delta = (m / bc1) / ((v / bc2).sqrt_().add_(self.eps))
        delta.add_(weight, alpha=self.weight_decay).mul_(-self.lr)
        if "master" in st:
            st["master"].add_(delta)
            p.copy_(st["master"])
        elif "comp" in st:
            # Kahan: add last step's rounding error, round, remember the new error.
            delta.add_(st["comp"].float())
            new = (weight + delta).to(p.dtype)
            st["comp"].copy_(delta - (new.float() - weight))
            p.copy_(new)
        elif p.dtype == torch.bfloat16:
            p.copy_(stochastic_round_bf16(weight + delta, gen))
        else:
            p.add_(delta)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "state": self.state}

    def load_state_dict(self, sd: dict) -> None:
        if len(sd["state"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(sd['state'])} tensors, model has {len(self.params)}")
        self.steps, self.lr = sd["steps"], sd["lr"]
        for mine, theirs in zip(self.state, sd["state"]):
            for k, t in theirs.items():
                mine[k].copy_(t)
        for p, st in zip(self.params, self.state):
            if "master" in st:
                p.data.copy_(st["master"])
