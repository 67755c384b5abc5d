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
