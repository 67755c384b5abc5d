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
    run = tmp_path / "run"  # a run folder: its final model
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    for name in ("smollm2-135m-instruct", "random:tiny-qwen2", str(tiny_model_dir), str(run), str(tmp_path / "m.gguf")):
        check_model_source(name)


@pytest.mark.parametrize("kind", ["empty folder", "folder of other files", "plain file"])
def test_an_existing_path_that_holds_no_model_is_named(tmp_path, kind):
    # Before: any existing path passed, and the tokenizer, loaded first, failed on it with a
    # message about sentencepiece or an invalid JSON config file.
    path = tmp_path / "thing"
    if kind == "plain file":
        path.write_text("notes")
    else:
        path.mkdir()
        if kind == "folder of other files":
            (path / "notes.txt").write_text("mine")
    with pytest.raises(TirgrpoError, match=f"{path}: .*(without config.json|not a .gguf)"):
        check_model_source(str(path))


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


@pytest.mark.parametrize("targets", [[], ["nope"]])
def test_lora_target_modules_that_match_nothing_are_named(tiny_model_dir, targets):
    # Before: peft's NoMatchingPeftModuleError, an internal error after the plan and the data.
    import torch

    from tirgrpo.config import ModelConfig
    from tirgrpo.train.model import load_policy

    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora=True, lora_r=4, lora_alpha=8, lora_target_modules=targets)
    with pytest.raises(TirgrpoError, match=r"model\.lora_target_modules .*q_proj"):
        load_policy(cfg, torch.device("cpu"), torch.float32, checkpointing=False)
