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


def test_an_unknown_random_shape_is_named_with_the_known_ones():
    from tirgrpo.config import ModelConfig
    from tirgrpo.train.model import tokenizer_spec

    for check in (check_model_source, lambda name: tokenizer_spec(ModelConfig(name_or_path=name))):
        with pytest.raises(TirgrpoError, match=r"unknown random shape 'tiny'; known: .*'tiny-qwen2'"):
            check("random:tiny")


def test_eval_of_an_unknown_random_shape_is_an_error_not_a_traceback(tmp_path, capsys):
    from tirgrpo.cli import main

    # Before: tokenizer_spec looked the shape up unchecked, and eval ended in "internal error: KeyError".
    assert main(["eval", "--model", "random:tiny", "--data", "bundled:gsm8k-verify-eval",
                 "--out", str(tmp_path / "eval.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown random shape 'tiny'" in err and "internal error" not in err, err
    assert not list(tmp_path.iterdir())
