"""The system plan: every `[system]` setting resolved for the device and the workload, once.

`resolve_plan(cfg, device)` turns each `auto` (and checks each explicit choice) into what
actually runs, before any weights load, and asks the memory estimate (`tirgrpo.perf`)
for the micro-batch budget and the peak of each phase. On CUDA a configuration that cannot
fit is refused, naming the parts and the changes that would fit; on other devices the
estimate only warns. The result, a `Plan`, is written to RUN_DIR/plan.toml and into every
checkpoint; `--resume` reads it back instead of resolving again, so a resumed run runs as the
original did even on another device or with another amount of free memory.
"""

from __future__ import annotations

import dataclasses
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from tirgrpo.config import ExecutionConfig, SystemConfig, TrainConfig, dumps_toml
from tirgrpo.errors import TirgrpoError
from tirgrpo.train.model import resolve_device

GiB = 2**30
ATTENTIONS = ("sdpa", "eager", "flex_attention")
PREFIXES = ("off", "auto", "dense", "block", "split")
OPTIMIZERS = ("auto", "fp32-master", "bf16-kahan", "bf16-stochastic")


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory estimate of the plan, in GiB (2**30 bytes): the peak of each phase as
    `torch.cuda.max_memory_allocated` would report it, their max, what the device needs on
    top (allocator slack and CUDA context), and the memory the device offers (0: unknown)."""

    rollout_gib: float
    train_gib: float
    peak_gib: float
    need_gib: float
    device_gib: float
    rollout_moment: str
    train_moment: str
    eval_gib: float = 0.0
    """The evaluation's peak (an upper bound: full engine batches); 0.0: the run evaluates nothing."""


@dataclass(frozen=True)
class Plan:
    """What runs: each `[system]` setting with `auto` resolved (see `SystemConfig` for their
    meaning). `engine`/`kernels` are "none" and `rollout_batch_size` 0 where nothing is
    generated (sft); `memory` is None where no estimate was made."""

    device: str
    dtype: str  # "bf16" | "fp32"
    attention: str  # "sdpa" | "eager" | "flex_attention"
    gradient_checkpointing: bool
    compile_layers: bool
    micro_batch_tokens: int  # 0: the whole step in one pass
    logprob_chunk_tokens: int
    optimizer: str  # "fp32-master" | "bf16-kahan" | "bf16-stochastic"; "fp32" with fp32 weights
    engine: str = "none"  # "fast" | "simple"
    kernels: str = "none"  # "triton" | "torch" (the fast engine's decode kernels)
    rollout_batch_size: int = 0
    shared_prefix: str = "off"  # "off" | "dense" | "block" | "split"
    world_size: int = 1  # ranks (GPUs) the run is sharded over (train/dist.py)
    memory: MemoryEstimate | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "bf16" else torch.float32

    @property
    def master_fp32(self) -> bool:
        """AdamW's `master_fp32` argument (moot for fp32 weights)."""
        return self.optimizer in ("fp32-master", "fp32")

    @property
    def bf16_update(self) -> str:
        """AdamW's `bf16_update` argument."""
        return "stochastic" if self.optimizer == "bf16-stochastic" else "kahan"


# --------------------------------------------------------------------------- one setting at a time


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise TirgrpoError(f"system.{key} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def resolve_dtype_name(setting: str, device: torch.device) -> str:
    """system.dtype -> "bf16" | "fp32": auto is bf16 on CUDA, fp32 elsewhere."""
    setting = {"bfloat16": "bf16", "float32": "fp32"}.get(setting, setting)
    _choice("dtype", setting, ("auto", "bf16", "fp32"))
    if setting == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return setting


def resolve_prefix(setting: str, attention: str, device: torch.device, dtype: str) -> str:
    """system.shared_prefix -> "off" | "dense" | "block" | "split" on `device`.

    auto: split on CUDA in bf16 (its flash-attention and cuDNN kernels take no fp32), block on
    CUDA in fp32, dense elsewhere, off when the attention is not sdpa or eager (a custom mask
    needs one of them)."""
    _choice("shared_prefix", setting, PREFIXES)
    if setting == "auto":
        if attention not in ("sdpa", "eager"):
            return "off"
        if device.type != "cuda":
            return "dense"
        return "split" if dtype == "bf16" else "block"
    if setting != "off" and attention not in ("sdpa", "eager"):
        raise TirgrpoError(f"system.shared_prefix = {setting!r} needs system.attention sdpa or eager (a custom "
                           f"attention mask), not {attention!r}; set system.shared_prefix = \"off\" or \"auto\"")
    if setting == "block" and device.type != "cuda":
        raise TirgrpoError("system.shared_prefix = 'block' needs CUDA (FlexAttention has no CPU backward); "
                           "use 'auto', 'dense' or 'split'")
    return setting


def resolve_execution(system: ExecutionConfig, device: torch.device) -> Plan:
    """The settings `train` and `sft` share, resolved (micro_batch_tokens: a number, or
    -1 for `auto`, which the caller resolves)."""
    dtype = resolve_dtype_name(system.dtype, device)
    attention = _choice("attention", system.attention, ATTENTIONS)
    compile_layers = _choice("compile_layers", system.compile_layers, ("auto", "on", "off"))
    optimizer = _choice("optimizer", system.optimizer, OPTIMIZERS)
    budget = system.micro_batch_tokens
    if isinstance(budget, str):
        if budget != "auto":
            raise TirgrpoError(f"system.micro_batch_tokens must be a number of tokens or 'auto'; got {budget!r}")
        budget = -1
    elif budget < 0:
        raise TirgrpoError(f"system.micro_batch_tokens must be >= 0 (0: the whole step) or 'auto'; got {budget}")
    if system.logprob_chunk_tokens < 0:
        raise TirgrpoError(f"system.logprob_chunk_tokens must be >= 0; got {system.logprob_chunk_tokens}")
    from tirgrpo.train import dist

    return Plan(device=str(device), dtype=dtype, attention=attention, world_size=dist.world_size(),
                gradient_checkpointing=system.gradient_checkpointing,
                compile_layers=compile_layers == "on" or (compile_layers == "auto" and device.type == "cuda"),
                micro_batch_tokens=budget, logprob_chunk_tokens=system.logprob_chunk_tokens,
                optimizer="fp32" if dtype == "fp32" else "fp32-master" if optimizer == "auto" else optimizer)


def resolve_rollout(system: SystemConfig, device: torch.device, plan: Plan) -> Plan:
    """`plan` with the rollout's settings and the shared prefix resolved."""
    from tirgrpo.kernels.decode import select_kernels

    engine = _choice("engine", system.engine, ("fast", "simple"))
    kernels = _choice("kernels", system.kernels, ("auto", "triton", "torch"))
    if engine == "fast":
        kernels = select_kernels(kernels, device).name
    else:
        kernels = "none"
    if system.rollout_batch_size < 1:
        raise TirgrpoError(f"system.rollout_batch_size must be >= 1; got {system.rollout_batch_size}")
    return dataclasses.replace(plan, engine=engine, kernels=kernels, rollout_batch_size=system.rollout_batch_size,
                               shared_prefix=resolve_prefix(system.shared_prefix, plan.attention, device, plan.dtype))


# --------------------------------------------------------------------------- memory


def prompt_tokens_bound(cfg: TrainConfig) -> int:
    """The longest prompt the run can see: data.max_prompt_tokens, 4096 when unlimited."""
    return cfg.data.max_prompt_tokens or 4096


def group_tokens(cfg: TrainConfig, prefix: str) -> int:
    """Tokens of one whole group at full prompt and completion length, as a forward pass counts
    them: packed, the prompt once plus G completions; padded rows, G x (prompt + completion)."""
    prompt, completion, g = prompt_tokens_bound(cfg), cfg.rollout.max_new_tokens, cfg.rollout.group_size
    return prompt + g * completion if prefix != "off" else g * (prompt + completion)


AUTO_PASS_TOKENS = 16384
"""`auto` budget of a pass of packed groups on CUDA (split or block form): short groups share
a pass up to this many tokens, so the projections run as large matmuls (one 19,456-token pass
trains at ~115k tokens/s on an H200, docs/benchmarks.md; a ~1,600-token group alone is far
below that). The dense form (CPU) asks for one full-length group of tokens, which shorter
groups may share: its mask costs T^2."""


def auto_budget(cfg: TrainConfig, prefix: str) -> int:
    """The micro-batch budget `auto` asks for before the memory check: one whole group, or
    `AUTO_PASS_TOKENS` when that is more and the form computes only visible pairs."""
    one = group_tokens(cfg, prefix)
    return max(one, AUTO_PASS_TOKENS) if prefix in ("split", "block") else one


def workload(cfg: TrainConfig, plan: Plan):
    """The `perf.workload.Workload` of a training config run as `plan` (worst case: every prompt
    at its bound, every completion at rollout.max_new_tokens)."""
    from tirgrpo.perf.workload import Workload

    bf16 = plan.dtype == "bf16"
    return Workload(
        prompt_tokens=prompt_tokens_bound(cfg), completion_tokens=cfg.rollout.max_new_tokens,
        group_size=cfg.rollout.group_size, prompts_per_step=cfg.rollout.prompts_per_step,
        rollout_batch_size=plan.rollout_batch_size, micro_batch_tokens=plan.micro_batch_tokens,
        logprob_chunk_tokens=plan.logprob_chunk_tokens, dtype_bytes=2 if bf16 else 4,
        checkpointing=plan.gradient_checkpointing, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
        lora_targets=tuple(cfg.model.lora_target_modules),
        reference_model=cfg.grpo.beta > 0 and not cfg.model.lora,
        master_fp32=plan.master_fp32, bf16_update=plan.bf16_update,
        fused_optimizer=plan.device.startswith("cuda") and bf16 and plan.optimizer != "bf16-kahan",
        prefix=plan.shared_prefix, engine=plan.engine if plan.engine != "none" else "fast",
        device="cuda" if plan.device.startswith("cuda") else "cpu", world_size=plan.world_size,
        eval_samples=cfg.run.eval_samples if cfg.data.eval else 0)


def planned_workload(cfg: TrainConfig, device: torch.device):
    """(plan, Workload) of a training config as it would run on `device`, without the memory
    check: an `auto` micro-batch budget is `auto_budget` (`tirgrpo memory` shows what fits)."""
    plan = resolve_rollout(cfg.system, device, resolve_execution(cfg.system, device))
    if plan.micro_batch_tokens < 0:
        plan = dataclasses.replace(plan, micro_batch_tokens=auto_budget(cfg, plan.shared_prefix))
    return plan, workload(cfg, plan)


def device_bytes(device: torch.device) -> int:
    """Memory the run may use: on CUDA free + already reserved by this process; else the RAM."""
    import os

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device)
    if hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return 0


def memory_of(est: dict, available: int) -> MemoryEstimate:
    """`perf.estimate.estimate`'s result in GiB."""
    return MemoryEstimate(rollout_gib=round(est["rollout"]["total"] / GiB, 3),
                          train_gib=round(est["train"]["total"] / GiB, 3), peak_gib=round(est["peak"] / GiB, 3),
                          need_gib=round(est["need"] / GiB, 3), device_gib=round(available / GiB, 3),
                          rollout_moment=est["rollout"]["moment"], train_moment=est["train"]["moment"],
                          eval_gib=round(est["eval"]["total"] / GiB, 3) if "eval" in est else 0.0)


def fit_memory(cfg: TrainConfig, plan: Plan, device: torch.device, requested: int) -> Plan:
    """`plan` with its micro-batch budget set and its memory estimate attached.

    requested: the configured budget, or -1 (auto: `auto_budget`, lowered on CUDA
    to the largest budget whose estimate fits). CUDA: an explicit budget that does not fit, or
    a configuration in which not even one sequence per pass fits, is refused."""
    from tirgrpo.perf.estimate import estimate, fits, pick_micro_batch_tokens
    from tirgrpo.perf.fit import describe
    from tirgrpo.perf.shape import shape_from_spec

    target = auto_budget(cfg, plan.shared_prefix) if requested < 0 else requested
    plan = dataclasses.replace(plan, micro_batch_tokens=target)
    try:
        shape = shape_from_spec(cfg.model.init_from or cfg.model.name_or_path)
    except TirgrpoError as e:
        warnings.warn(f"memory estimate skipped: {e}", stacklevel=3)
        return plan
    wl = workload(cfg, plan)
    available = device_bytes(device)
    if device.type == "cuda" and not fits(shape, wl, available):
        budget = pick_micro_batch_tokens(shape, wl, available)  # 0: not even one sequence per pass fits
        if requested < 0 and budget:  # auto: lowered to what fits
            plan = dataclasses.replace(plan, micro_batch_tokens=budget)
            wl = dataclasses.replace(wl, micro_batch_tokens=budget)
        elif not cfg.system.ignore_memory_check:
            refuse(shape, wl, available, device, budget)
    est = estimate(shape, wl)
    if device.type != "cuda":  # loading anyway would end in the OOM killer, minutes later
        from tirgrpo.validate import check_fits_ram

        phases = "; ".join(f"{p} {describe(est[p])}" for p in ("train", "rollout", "eval") if p in est)
        check_fits_ram(est["peak"], available, phases, override=cfg.system.ignore_memory_check)
    return dataclasses.replace(plan, memory=memory_of(est, available))


def refuse(shape, wl, available: int, device: torch.device, fitting_budget: int) -> None:
    """Raise the error of a configuration that does not fit `available` bytes, naming the
    largest parts and the changes that would fit."""
    from tirgrpo.perf.estimate import estimate
    from tirgrpo.perf.fit import describe, suggest_changes

    if fitting_budget:  # an explicit budget that is too large, where a smaller one fits
        est = estimate(shape, wl)
        raise TirgrpoError(
            f"system.micro_batch_tokens = {wl.micro_batch_tokens} does not fit the {available / GiB:.1f} GiB free on "
            f"{device} (estimated need {est['need'] / GiB:.1f} GiB: train {describe(est['train'])}); "
            f"--set system.micro_batch_tokens={fitting_budget} fits, and 'auto' picks it")
    est = estimate(shape, dataclasses.replace(wl, micro_batch_tokens=wl.seq_tokens))
    tips = suggest_changes(shape, wl, available)
    raise TirgrpoError(
        f"this configuration does not fit the {available / GiB:.1f} GiB free on {device} "
        f"(estimated need {est['need'] / GiB:.1f} GiB, one sequence per micro-batch).\n"
        f"  train:   {describe(est['train'])}\n  rollout: {describe(est['rollout'])}\n"
        + (f"  eval:    {describe(est['eval'])}\n" if "eval" in est else "")
        + ("  would fit: " + "; ".join(tips) if tips else "  no single change fits; see `tirgrpo memory`")
        + "\n  (estimate: `tirgrpo memory --config ...`; docs/memory.md)")


# --------------------------------------------------------------------------- the two entry points


def resolve_plan(cfg: TrainConfig, device: torch.device | None = None) -> Plan:
    """Every `[system]` setting of a training config resolved for `device` (default: from
    system.device) and the workload, with the memory estimate. Reads no weights."""
    device = resolve_device(cfg.system.device) if device is None else device
    plan = resolve_rollout(cfg.system, device, resolve_execution(cfg.system, device))
    return fit_memory(cfg, plan, device, plan.micro_batch_tokens)


SFT_AUTO_MICRO_BATCH_TOKENS = 16384
"""`auto` budget of sft, which has no completion bound to plan a group from: 16 rows of
1024 tokens, about what a 1.5B model's full fine-tuning takes on one 80 GB GPU."""


def resolve_sft_plan(system: ExecutionConfig, device: torch.device | None = None) -> Plan:
    """The plan of `tirgrpo sft`: its settings resolved; no rollout, no memory estimate."""
    device = resolve_device(system.device) if device is None else device
    plan = resolve_execution(system, device)
    if plan.micro_batch_tokens < 0:
        plan = dataclasses.replace(plan, micro_batch_tokens=SFT_AUTO_MICRO_BATCH_TOKENS)
    return plan


# --------------------------------------------------------------------------- plan.toml


def plan_to_toml(plan: Plan) -> str:
    """plan.toml's text: [system] (what runs) and [memory] (the estimate, GiB)."""
    data = {k: v for k, v in dataclasses.asdict(plan).items() if k != "memory"}
    out = {"system": data}
    if plan.memory is not None:
        out["memory"] = {"unit": "GiB (2**30 bytes)", **dataclasses.asdict(plan.memory)}
    head = ("# What this run executes: every [system] setting with `auto` resolved for the device and the\n"
            "# workload (tirgrpo.train.plan). [memory]: the estimated peak of each phase, in GiB.\n")
    return head + dumps_toml(out)


def plan_from_toml(text: str, where: str = "plan.toml") -> Plan:
    """The `Plan` written by `plan_to_toml`."""
    try:
        data = tomllib.loads(text)
        memory = data.get("memory")
        if memory is not None:
            memory = MemoryEstimate(**{k: v for k, v in memory.items() if k != "unit"})
        return Plan(**data["system"], memory=memory)
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise TirgrpoError(f"{where}: not a plan written by tirgrpo ({type(e).__name__}: {e})") from e


def write_plan(run_dir: Path, plan: Plan) -> None:
    from tirgrpo.files import atomic_write_text

    atomic_write_text(Path(run_dir) / "plan.toml", plan_to_toml(plan))


def read_plan(path: Path) -> Plan:
    """The plan recorded at `path` (RUN_DIR/plan.toml or a checkpoint's)."""
    if not path.is_file():
        raise TirgrpoError(f"{path}: no recorded plan")
    return plan_from_toml(path.read_text(encoding="utf-8"), str(path))


def describe_plan(plan: Plan) -> str:
    """One line of what runs, for the console."""
    mem = (f"; memory estimate: peak {plan.memory.peak_gib:.2f} GiB (train {plan.memory.train_gib:.2f}, "
           f"rollout {plan.memory.rollout_gib:.2f}, eval {plan.memory.eval_gib:.2f})" if plan.memory else "")
    return (f"plan: {plan.device} {plan.dtype}, attention {plan.attention}, shared prefix {plan.shared_prefix}, "
            f"micro-batch {plan.micro_batch_tokens} tokens, checkpointing {'on' if plan.gradient_checkpointing else 'off'}, "
            f"compiled layers {'on' if plan.compile_layers else 'off'}, optimizer {plan.optimizer}, "
            f"engine {plan.engine} ({plan.kernels} kernels){mem}")
