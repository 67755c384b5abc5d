"""A model that does not exist is named as such before anything loads (no HFValidationError)."""

import pytest

from tirgrpo.errors import TirgrpoError
from tirgrpo.train.model import check_model_source


@pytest.mark.parametrize("name", ["/no/such/model", "./nope", "~/nope-tirgrpo", "a/b/c", "gone.gguf", " "])
def test_missing_path_named(name):
    with pytest.raises(TirgrpoError, match="does not exist"):
        check_model_source(name)


def test_unknown_hub_id_named():
    with pytest.raises(TirgrpoError, match="not a Hugging Face id in the local cache"):
        check_model_source("nobody-tirgrpo/nothing")


def test_known_specs_pass(tmp_path, tiny_model_dir):
    for name in ("smollm2-135m-instruct", "random:tiny-qwen2", str(tiny_model_dir), str(tmp_path)):
        check_model_source(name)


def test_named_models_pass_when_their_file_is_there(tmp_path, monkeypatch):
    from tirgrpo.train.model import check_model_source

    monkeypatch.setenv("TIRGRPO_MODELS", str(tmp_path))
    with pytest.raises(TirgrpoError, match="get.sh qwen2.5-coder-0.5b"):
        check_model_source("qwen2.5-coder-0.5b-instruct")
    (tmp_path / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").write_bytes(b"GGUF")
    check_model_source("qwen2.5-coder-0.5b-instruct")
