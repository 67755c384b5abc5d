"""Named models: where their GGUF files are found, and the error when one is missing."""

import pytest

from tirgrpo.data.bundled import models_dir, named_model_file
from tirgrpo.errors import TirgrpoError


def test_named_qwen_model_is_read_from_the_models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TIRGRPO_MODELS", str(tmp_path))
    assert models_dir() == tmp_path
    with pytest.raises(TirgrpoError, match=r"get.sh qwen2.5-coder-1.5b"):
        named_model_file("qwen2.5-coder-1.5b-instruct")
    f = tmp_path / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    f.write_bytes(b"GGUF")
    assert named_model_file("qwen2.5-coder-1.5b-instruct") == f


def test_other_names_are_not_named_models():
    assert named_model_file("some/folder") is None
    assert named_model_file("x.gguf") is None
