"""Range checks of config values and numeric command-line options, before any work starts.

`config.load_config` calls `check_config` on every config it builds, so `--set optim.lr=0`
or `rollout.temperature = nan` is refused with a message naming the key, before a run folder
is touched. `RULES` maps "section.key" (or a top-level key such as `batch_size`) to a range;
every float anywhere in a config must also be finite, with or without a rule.

The argparse type functions at the end (`positive_int`, `temperature`, ...) give command-line
options the same checks; argparse prints their message as a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from tirgrpo.errors import TirgrpoError

GiB = 2**30

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
"""The device strings the trainer can use (torch's own error for another is an internal one)."""
DEVICES = "auto, cpu, cuda, cuda:N (N a GPU index, e.g. cuda:1)"


@dataclass(frozen=True)
class Range:
    """A closed or half-open interval; `lo`/`hi` None means unbounded on that side."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def contains(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        if self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi):
            return False
        return True

    def describe(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_shown(self.lo)}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {_shown(self.hi)}"
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"in {left}{_shown(self.lo)}, {_shown(self.hi)}{right}"


def _shown(x: float) -> str:
    """A bound as a message shows it: integers in full (a seed's 4294967295, not 4.29497e+09)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
POSITIVE = Range(0, lo_open=True)
UNIT = Range(0, 1)                       # [0, 1]
UNIT_OPEN_HI = Range(0, 1, hi_open=True)  # [0, 1)
TEMPERATURE = Range(0, 2)
SEED = Range(0, 2**32 - 1)  # what torch.manual_seed takes, with room for the loop's per-rollout offsets

# "section.key" -> the range every value of that key must lie in (each element, for lists).
RULES: dict[str, Range] = {
    "model.lora_r": AT_LEAST_1,
    "model.lora_alpha": POSITIVE,
    "model.lora_dropout": UNIT_OPEN_HI,
    "data.max_prompt_tokens": AT_LEAST_0,
    "rollout.group_size": Range(2),
    "rollout.prompts_per_step": AT_LEAST_1,
    "rollout.max_new_tokens": AT_LEAST_1,
    "rollout.temperature": Range(0, 2, lo_open=True),  # 0 would make every group's samples the same
    "rollout.top_p": Range(0, 1, lo_open=True),
    "rollout.top_k": AT_LEAST_0,
    "grpo.beta": AT_LEAST_0,
    "grpo.epsilon": UNIT_OPEN_HI,
    "grpo.epsilon_high": AT_LEAST_0,
    "grpo.num_iterations": AT_LEAST_1,
    "optim.lr": POSITIVE,
    "optim.weight_decay": AT_LEAST_0,
    "optim.betas": UNIT_OPEN_HI,
    "optim.warmup_steps": AT_LEAST_0,
    "optim.total_steps": AT_LEAST_1,
    "optim.min_lr_ratio": UNIT,
    "optim.max_grad_norm": POSITIVE,
    "system.rollout_batch_size": AT_LEAST_1,
    "system.micro_batch_tokens": AT_LEAST_0,  # or "auto" (not a number, so not checked here)
    "system.logprob_chunk_tokens": AT_LEAST_1,
    "run.eval_every": AT_LEAST_0,
    "run.eval_samples": AT_LEAST_1,
    "run.eval_temperature": Range(-1, 2),  # -1: the rollout temperature
    "run.eval_max_examples": AT_LEAST_0,
    "run.save_every": AT_LEAST_0,
    "run.keep_samples": AT_LEAST_0,
    "run.max_nonfinite": AT_LEAST_1,
    "run.seed": SEED,
    "batch_size": AT_LEAST_1,
}

# Keys whose list value has a fixed length.
LENGTHS: dict[str, int] = {"optim.betas": 2}

# String keys that must not be empty (or blank): an empty out_dir is the current folder, an empty
# code_stop is "in" every completion. Keys where "" means "none" (data.eval, model.tokenizer,
# model.init_from, targets) are not here.
NON_EMPTY = frozenset({"model.name_or_path", "data.train", "run.out_dir", "code_stop"})


def _numbers(value: Any) -> list[float]:
    """The numbers inside a config value: itself, a list's items or a table's values."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    return []


def check_value(key: str, value: Any, choices: tuple[str, ...] | None = None) -> None:
    """Raise TirgrpoError naming `key` when `value` is non-finite, outside RULES[key], not one
    of `choices` (a config field's `metadata["choices"]`) or an empty string of a NON_EMPTY key."""
    if choices is not None and value not in choices:
        raise TirgrpoError(f"config: {key} must be one of {', '.join(choices)}, got {value!r}")
    if key in NON_EMPTY and isinstance(value, str) and not value.strip():
        raise TirgrpoError(f"config: {key} must not be empty")
    if key in LENGTHS and isinstance(value, list) and len(value) != LENGTHS[key]:
        raise TirgrpoError(f"config: {key} must have {LENGTHS[key]} values, got {value!r}")
    rule = RULES.get(key)
    for x in _numbers(value):
        if isinstance(x, float) and not math.isfinite(x):
            raise TirgrpoError(f"config: {key} must be a finite number, got {value!r}")
        if rule is not None and not rule.contains(x):
            raise TirgrpoError(f"config: {key} must be {rule.describe()}, got {value!r}")


def check_config(cfg: Any) -> None:
    """Check every numeric field of a config dataclass (sections one level deep) against RULES,
    every field with `metadata["choices"]` against its names, and then what a section checks
    itself (its `check(section)` method: `[system]`'s device, `[rewards]`' names)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for g in dataclasses.fields(value):
                check_value(f"{f.name}.{g.name}", getattr(value, g.name), g.metadata.get("choices"))
            if callable(getattr(value, "check", None)):
                value.check(f.name)
        else:
            check_value(f.name, value, f.metadata.get("choices"))


# --------------------------------------------------------------------------- memory


def check_fits_ram(peak_bytes: float, ram_bytes: float, what: str, override: bool) -> None:
    """Refuse a CPU run whose estimated peak exceeds the machine's RAM, unless `override`.

    Loading anyway ends in the kernel's OOM killer, minutes later and without a message.
    `what` describes the estimate's parts (printed in the refusal); sizes are in bytes.
    """
    if not ram_bytes or peak_bytes <= ram_bytes:
        return
    message = (f"memory: the estimated peak {peak_bytes / GiB:.1f} GiB exceeds this machine's "
               f"{ram_bytes / GiB:.1f} GiB of RAM ({what})")
    if override:
        import warnings

        warnings.warn(message + "; going on because the memory check is overridden", stacklevel=2)
        return
    raise TirgrpoError(message + "; shrink the config (`tirgrpo memory --config ...`) or override "
                       "the check if the estimate is wrong for this machine")


# --------------------------------------------------------------------------- argparse types


def _typed(convert: Callable[[str], float], rule: Range, name: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not rule.contains(value):
            raise argparse.ArgumentTypeError(f"must be {rule.describe()}, got {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in "invalid <name> value" messages
    return parse


positive_int = _typed(int, AT_LEAST_1, "an integer >= 1")
non_negative_int = _typed(int, AT_LEAST_0, "an integer >= 0")
positive_float = _typed(float, POSITIVE, "a number > 0")
temperature = _typed(float, TEMPERATURE, "a temperature in [0, 2]")
top_p = _typed(float, Range(0, 1, lo_open=True), "a top-p in (0, 1]")
fraction = _typed(float, UNIT_OPEN_HI, "a fraction in [0, 1)")
unit_interval = _typed(float, UNIT, "a number in [0, 1]")
seed = _typed(int, SEED, f"a seed in [0, {SEED.hi}]")


def int_in(lo: int, hi: int) -> Callable[[str], Any]:
    """argparse type of an integer in [lo, hi]: an upper bound where the OS takes the value (a
    resource limit) and a larger one would fail there as "int too large to convert to C long"."""
    return _typed(int, Range(lo, hi), f"an integer in [{lo}, {hi}]")


def seconds_up_to(hi: float) -> Callable[[str], Any]:
    """argparse type of a duration in (0, hi] seconds."""
    return _typed(float, Range(0, hi, lo_open=True), f"a number of seconds in (0, {hi:g}]")


def device(text: str) -> str:
    """argparse type of a --device option: config.DEVICE's strings (auto, cpu, cuda, cuda:N);
    torch.device's own error for another would surface only after loading, as an internal one."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be one of {DEVICES}, got {text!r}")
    return text
