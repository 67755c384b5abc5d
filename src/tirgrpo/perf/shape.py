"""Model shapes: the sizes of a decoder that decide its memory, read from a config, GGUF
metadata or a `random:` shape name, never from weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from tirgrpo.errors import TirgrpoError

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2/Llama-style decoder that decide its memory."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int = 0
    """0: hidden // heads."""
    tied: bool = False
    """LM head shares the embedding matrix."""
    qkv_bias: bool = True
    """q/k/v projections have biases (Qwen2: yes; Llama: no)."""
    name: str = ""

    @property
    def d(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def q_dim(self) -> int:
        return self.heads * self.d

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.d

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear of one decoder layer."""
        H, I = self.hidden, self.intermediate
        return {"q_proj": (H, self.q_dim), "k_proj": (H, self.kv_dim), "v_proj": (H, self.kv_dim),
                "o_proj": (self.q_dim, H), "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}

    def layer_params(self) -> int:
        """Parameters of one decoder layer (linears, q/k/v biases, two RMSNorm weights)."""
        w = sum(i * o for i, o in self.linear_dims().values())
        bias = (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        return w + bias + 2 * self.hidden

    def params(self) -> int:
        """All parameters: embedding, layers, final norm, LM head (unless tied)."""
        emb = self.vocab * self.hidden
        return emb + self.layers * self.layer_params() + self.hidden + (0 if self.tied else emb)


def shape_from_hf_config(cfg: dict, name: str = "") -> ModelShape:
    """A shape from a Hugging Face `config.json` dict (Qwen2, Llama, Mistral-style keys)."""
    try:
        return ModelShape(
            hidden=int(cfg["hidden_size"]), layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            intermediate=int(cfg["intermediate_size"]), vocab=int(cfg["vocab_size"]),
            head_dim=int(cfg.get("head_dim") or 0), tied=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")), name=name)
    except KeyError as e:
        raise TirgrpoError(f"{name or 'config'}: config.json lacks {e}; cannot read the model's shape") from e
    except (TypeError, ValueError, AttributeError) as e:  # not an object, or a size that is not a number
        raise TirgrpoError(f"{name or 'config'}: config.json has no usable sizes ({type(e).__name__}: {e}); "
                           f"cannot read the model's shape") from None


def _read_hf_config(path: Path, name: str) -> ModelShape:
    """The shape of the `config.json` at `path`; a file that is not JSON is named, not a traceback."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise TirgrpoError(f"{path}: cannot read the model's config ({type(e).__name__}: {e})") from None
    return shape_from_hf_config(cfg, name=name)


def shape_from_gguf(path: str | Path) -> ModelShape:
    """A shape from a GGUF file's metadata (the tensors' data are not read)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError, struct.error, IndexError... on a file that is no GGUF
        raise TirgrpoError(f"{path}: cannot read the GGUF metadata ({type(e).__name__}: {e})") from None

    def value(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        return f.contents()

    arch = value("general.architecture")
    if arch is None:
        raise TirgrpoError(f"{path}: no general.architecture in the GGUF metadata")
    tokens = value("tokenizer.ggml.tokens")
    vocab = value(f"{arch}.vocab_size") or (len(tokens) if tokens else None)
    heads = int(value(f"{arch}.attention.head_count"))
    hidden = int(value(f"{arch}.embedding_length"))
    names = {t.name for t in reader.tensors}
    return ModelShape(
        hidden=hidden, layers=int(value(f"{arch}.block_count")), heads=heads,
        kv_heads=int(value(f"{arch}.attention.head_count_kv", heads)),
        intermediate=int(value(f"{arch}.feed_forward_length")), vocab=int(vocab),
        head_dim=int(value(f"{arch}.attention.key_length", 0) or 0), tied="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names, name=Path(path).name)


def shape_from_spec(name_or_path: str) -> ModelShape:
    """The shape of the model `model.name_or_path` names: `random:SHAPE`, a Hugging Face
    folder (or a run folder's `final/`), a `.gguf` file, a named model (`data.bundled.NAMED_MODELS`), or a hub id
    in the local cache. Reads configs and metadata only."""
    from tirgrpo.train.model import random_shape

    if name_or_path.startswith("random:"):
        return shape_from_hf_config(random_shape(name_or_path.split(":", 1)[1]), name=name_or_path)
    from tirgrpo.data.bundled import named_model_file

    named = named_model_file(name_or_path)
    if named is not None:
        return replace(shape_from_gguf(named), name=name_or_path)
    p = Path(name_or_path)
    if p.suffix == ".gguf":
        if not p.is_file():
            raise TirgrpoError(f"GGUF file not found: {p}")
        return shape_from_gguf(p)
    for folder in (p / "final", p):
        if (folder / "config.json").is_file():
            return _read_hf_config(folder / "config.json", name_or_path)
    from tirgrpo.train.model import check_model_source

    check_model_source(name_or_path)  # a missing path, or no valid hub id: named, not an HFValidationError
    try:  # a hub id in the local cache
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(name_or_path, "config.json")
        if isinstance(hit, str):
            return _read_hf_config(Path(hit), name_or_path)
    except (ImportError, ValueError):  # ValueError: HFValidationError, e.g. for a folder without config.json
        pass
    raise TirgrpoError(f"cannot read the shape of {name_or_path!r}: not random:SHAPE, a folder with "
                       f"config.json, a .gguf file, or a hub id in the local cache")
