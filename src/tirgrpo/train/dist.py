"""Many processes, one per GPU: the only module that knows about ranks.

`torchrun --nproc-per-node N -m tirgrpo train ...` starts N copies of the trainer; each reads
its rank from the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...).
Without torchrun every function here is a no-op or returns the single-process answer, so the
single-process trainer runs exactly as it did before this module existed.

What is distributed (docs/distributed.md):

* weights, gradients and optimizer states are sharded with PyTorch's FSDP2 (`fully_shard`):
  each decoder layer is one unit (gathered just before its forward/backward, freed after),
  the root holds the embeddings, the final norm and the LM head. LoRA: the same units; only
  the adapters have gradients and optimizer states.
* gradients are *summed* across ranks (`set_gradient_divide_factor(1.0)`), not averaged:
  the loss of each rank is already normalised by the global counts (`global_sum`), so the
  sum of the ranks' gradients is the single-process gradient.
* generation: `gathered(model)` all-gathers every unit once and keeps them whole until the
  block ends, so the rollout engines (HF forward or the fast engine, which reads
  `layer.self_attn.q_proj.weight` etc. at each call) see plain full tensors and issue no
  collectives (ranks generate different numbers of tokens). The full weights live only for
  the block: no second copy of the model is kept.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as td


def launched() -> bool:
    """Started by torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init() -> None:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); no-op when not
    launched or already joined. Each rank then uses GPU LOCAL_RANK."""
    if not launched() or td.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        td.init_process_group("nccl", timeout=datetime.timedelta(minutes=30))
    else:
        td.init_process_group("gloo", timeout=datetime.timedelta(minutes=30))


def active() -> bool:
    """More than one rank is running."""
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world_size() -> int:
    return td.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """The rank that writes logs, plots, evaluations, checkpoint metadata and the report
    (after `teardown` too: then from torchrun's RANK)."""
    return rank() == 0 if active() else int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if active():
        td.barrier()


def teardown(finished: bool = True) -> None:
    """Leave the process group (end of a launched run). `finished`: every rank got here the
    normal way, so they first wait for each other (a rank that leaves while another still talks
    to the store rank 0 hosts aborts it); after an error there is no such wait (it could hang)."""
    if td.is_available() and td.is_initialized():
        if finished:
            td.barrier()
        td.destroy_process_group()


# --------------------------------------------------------------------------- reductions


def global_sum(*values: float) -> list[float]:
    """Element-wise sums over ranks of some numbers (counts, token sums); one collective."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t.tolist()


def global_max(value: int) -> int:
    """The largest `value` over ranks (e.g. micro-batches per rank, to keep collectives in step)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=collective_device())
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return int(t.item())


def sum_tensors(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Sums over ranks of 0-dim tensors (a loss, token counts, statistic sums), one collective."""
    if not active() or not tensors:
        return tensors
    flat = torch.stack([t.detach().double().to(collective_device()) for t in tensors])
    td.all_reduce(flat, op=td.ReduceOp.SUM)
    return [flat[i].to(t.device, torch.float32) for i, t in enumerate(tensors)]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (e.g. a gradient norm over sharded gradients) as a plain tensor; others as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view that in-place updates write through); others as is."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def my_share(items: list) -> list:
    """This rank's contiguous share of `items` (len(items) a multiple of the world size): whole
    groups and adjacent pairs stay on one rank."""
    n = len(items) // world_size()
    return items[rank() * n:(rank() + 1) * n]


def gather_objects(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- sharding


def unwrapped(model):
    """The transformers causal LM, under peft's wrapper or not."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


SHARDED_DECODER = "sharded_decoder"
"""The attribute `shard` sets on the transformers model: its decoder called through the root
unit's FSDP hooks (train/logprobs.py calls the decoder and reads the LM head's weight, so the
root's own `forward` never runs)."""


def shard(model) -> None:
    """FSDP2 in place. Units: each decoder layer, then the root (embeddings, final norm, LM
    head), kept gathered from its forward to its backward (`reshard_after_forward=False`)
    because the log-prob code reads the LM head's weight after the decoder's forward.
    Gradients sum over ranks (the loss is normalised by global counts, see `global_sum`).
    No-op in a single process."""
    if not active():
        return
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    base = unwrapped(model)
    for layer in base.model.layers:
        fully_shard(layer)
    fully_shard(base, reshard_after_forward=False)
    setattr(base, SHARDED_DECODER, base.get_decoder().__call__)
    register_fsdp_forward_method(base, SHARDED_DECODER)
    for module in fsdp_modules(model):
        module.set_gradient_divide_factor(1.0)  # a sum, not FSDP's default mean over ranks
        module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)


def fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Within the block, every FSDP unit of `model` holds its full weights and forward passes
    run no collectives (generation, evaluation; ranks may run different numbers of them).
    Costs one full copy of the weights for the block's duration (the plan's "gathered
    layers" in the rollout phase), freed at its end. No-op unsharded."""
    modules = fsdp_modules(model) if active() else []
    if not modules:
        yield model
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in modules:
            m.reshard()
        for layer in unwrapped(model).model.layers:  # the root unit stays as `shard` set it
            layer.set_reshard_after_forward(True, recurse=False)


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` (a whole tensor, the same on every rank) laid out as `like` (a DTensor): this
    rank's shard. A plain `like` takes `full` as is."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)
