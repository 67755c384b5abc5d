"""Range and finiteness checks of config values and numeric options, each refused naming its key."""

import math

import pytest

from tirgrpo.cli import main
from tirgrpo.config import TrainConfig, load_config
from tirgrpo.errors import TirgrpoError
from tirgrpo.train.sft import SFTConfig
from tirgrpo.validate import RULES, Range, check_fits_ram, check_value, positive_int, temperature


@pytest.mark.parametrize("override, key", [
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-1e-5", "optim.lr"),
    ("rollout.max_new_tokens=0", "rollout.max_new_tokens"),
    ("rollout.temperature=nan", "rollout.temperature"),
    ("rollout.temperature=inf", "rollout.temperature"),
    ("rollout.temperature=2.5", "rollout.temperature"),
    ("rollout.temperature=0", "rollout.temperature"),  # greedy groups: no reward spread, nothing learned
    ("system.logprob_chunk_tokens=0", "system.logprob_chunk_tokens"),
    ("rollout.group_size=1", "rollout.group_size"),
    ("rollout.top_p=0", "rollout.top_p"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("grpo.beta=-0.1", "grpo.beta"),
    ("optim.total_steps=0", "optim.total_steps"),
    ("rewards.submit_correct=nan", "rewards.submit_correct"),
    ("rewards.weights={correctness = inf}", "rewards.weights"),
    ("run.eval_temperature=-1.5", "run.eval_temperature"),
    ('grpo.loss_type="dapo2"', "grpo.loss_type"),
    ('grpo.credit="decisions"', "grpo.credit"),
])
def test_load_config_refuses_out_of_range_naming_the_key(override, key):
    with pytest.raises(TirgrpoError, match=key.replace(".", r"\.")):
        load_config(TrainConfig, None, [override])


def test_sft_config_checked_too():
    with pytest.raises(TirgrpoError, match="batch_size"):
        load_config(SFTConfig, None, ["batch_size=0"])


def test_defaults_and_edges_pass():
    load_config(TrainConfig, None, ["rollout.temperature=0.01", "rollout.top_p=1", "system.logprob_chunk_tokens=1",
                                    "grpo.beta=0", "optim.min_lr_ratio=1", "run.eval_temperature=0"])
    load_config(TrainConfig, None, ["rollout.temperature=2"])
    load_config(SFTConfig)


def test_every_rule_names_a_real_field():
    import dataclasses

    cfg = TrainConfig()
    known = {f"{s.name}.{g.name}" for s in dataclasses.fields(cfg) for g in dataclasses.fields(getattr(cfg, s.name))}
    known |= {f.name for f in dataclasses.fields(SFTConfig)}
    assert set(RULES) <= known


def test_range_edges():
    r = Range(0, 1, lo_open=True)
    assert not r.contains(0) and r.contains(1e-9) and r.contains(1) and not r.contains(1.0000001)
    assert r.describe() == "in (0, 1]"
    with pytest.raises(TirgrpoError, match="finite"):
        check_value("unruled.key", math.nan)


def test_argparse_types():
    assert positive_int("3") == 3 and temperature("0") == 0.0
    import argparse

    for fn, text in [(positive_int, "-1"), (positive_int, "0"), (positive_int, "x"),
                     (temperature, "nan"), (temperature, "inf"), (temperature, "3")]:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


@pytest.mark.parametrize("option", [["--max-new-tokens", "-1"], ["--temperature", "nan"], ["--samples", "0"]])
def test_eval_refuses_bad_numbers_at_parse_time(option, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", "nowhere", "--data", "x.jsonl", *option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert option[0] in err and "Traceback" not in err


@pytest.mark.parametrize("option", [["--temperature", "nan"], ["--temperature", "-1"], ["--top-p", "5"],
                                    ["--top-p", "0"], ["--request-timeout", "nan"], ["--retries", "-1"]])
def test_generate_refuses_bad_numbers_at_parse_time(option, capsys):
    # Before: taken as they came, sent to the server (nan, top-p 5) or handed to the HTTP client.
    with pytest.raises(SystemExit) as e:
        main(["generate", "--problems", "p.csv", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
              "--out", "o.jsonl", *option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["eval", "--model", "nowhere", "--data", "x.jsonl", "--device", "gpu"],
    ["memory", "--device", "bogus", "--measure"],
    ["serve", "--model", "nowhere", "--device", "cuda:x"],
])
def test_a_device_option_is_checked_at_parse_time(argv, capsys):
    # Before: eval and memory --measure passed it to torch.device, whose RuntimeError was an
    # internal error (after the tokenizer and data had loaded).
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device" in err and "cuda:N" in err and "Traceback" not in err


def test_resolve_device_names_a_bad_device_string():
    from tirgrpo.train.model import resolve_device

    with pytest.raises(TirgrpoError, match="device must be one of auto, cpu, cuda"):
        resolve_device("bogus")


@pytest.mark.parametrize("data_name, out_name, message", [
    ("x.jsonl", "x.jsonl", "--data and --out are the same file"),
    ("x.md", "x.json", "--data and the Markdown report beside --out are the same file"),
])
def test_eval_refuses_to_write_its_report_over_its_data(tmp_path, capsys, data_name, out_name, message):
    # Before: checked only after the whole evaluation, and not at all: the data file was replaced by eval.json.
    data = tmp_path / data_name
    data.write_text("examples")
    assert main(["eval", "--model", "random:tiny-qwen2", "--data", str(data), "--out", str(tmp_path / out_name)]) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err, err
    assert data.read_text() == "examples"


@pytest.mark.parametrize("option", [["--timeout", "1e300"], ["--memory-mb", "99999999999999999999"],
                                    ["--max-processes", "99999999999999999999"], ["--disk-mb", "0"]])
def test_sandbox_limits_are_checked_at_parse_time(option, capsys):
    # Before: a huge value reached setrlimit: "sandbox mode bwrap: setup failed: Python int too
    # large to convert to C long", naming no option.
    with pytest.raises(SystemExit) as e:
        main(["sandbox", "run", "x.py", *option])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option[0]}" in err and "Traceback" not in err


def test_cpu_ram_check_refuses_unless_overridden():
    check_fits_ram(10 * 2**30, 20 * 2**30, "parts", override=False)  # fits
    with pytest.raises(TirgrpoError, match=r"697\.0 GiB exceeds .* 23\.5 GiB"):
        check_fits_ram(697 * 2**30, 23.5 * 2**30, "parts", override=False)
    with pytest.warns(UserWarning, match="overridden"):
        check_fits_ram(697 * 2**30, 23.5 * 2**30, "parts", override=True)


@pytest.mark.parametrize("overrides, key, listed", [
    (['rewards.set="sed"'], "rewards.set", "default, seed"),
    (["rewards.curriculum=false", "rewards.weights={correctnes = 1.0}"], "rewards.weights", "correctness"),
    (["rewards.weights={brevity = 0.5}"], "rewards.weights", "module:function"),  # a user reward rides along
    (["rewards.weights={':f' = 0.5}"], "rewards.weights", "module:function"),
    (["rewards.curriculum=false"], "rewards.weights", "empty"),  # nothing to score
    (["rewards.weights={correctness = 1.0}"], "rewards.curriculum", "curriculum"),  # the schedule sets it
])
def test_reward_names_and_set_are_checked_at_load_naming_the_key_and_the_valid_names(overrides, key, listed):
    with pytest.raises(TirgrpoError, match=key.replace(".", r"\.")) as e:
        load_config(TrainConfig, None, overrides)
    assert listed in str(e.value)


@pytest.mark.parametrize("override, key", [
    ("rewards.judge_only=true", "rewards.judge_only"),
    ("rewards.decline=-1.0", "rewards.decline"),
    ("rewards.submit_wrong=-2.0", "rewards.submit_wrong"),
])
def test_the_seed_set_refuses_the_default_sets_settings(override, key):
    # `seed` reproduces the original formulas exactly: judge_only and the decision constants
    # are the default set's and would otherwise be ignored without a word.
    with pytest.raises(TirgrpoError, match=key.replace(".", r"\.") + '.*rewards.set = "seed"'):
        load_config(TrainConfig, None, ['rewards.set="seed"', override])
    load_config(TrainConfig, None, [override])  # the default set applies them
    load_config(TrainConfig, None, ['rewards.set="seed"', "rewards.curriculum=false",
                                    "rewards.weights={correctness = 1.0, 'my_mod:fn' = 0.1}"])


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:-1", "CUDA", "cuda:0:1", ""])
def test_an_unknown_device_is_refused_at_load_naming_the_key_and_the_valid_values(device):
    for cls in (TrainConfig, SFTConfig):
        with pytest.raises(TirgrpoError, match=r"system\.device.*auto, cpu, cuda, cuda:N"):
            load_config(cls, None, [f'system.device="{device}"'])


def test_valid_devices_load():
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:7"):
        assert load_config(TrainConfig, None, [f'system.device="{device}"']).system.device == device


def test_a_bad_device_through_the_cli_is_a_message_not_a_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--set", 'system.device="gpu"', "--set", f'run.out_dir="{run}"']) == 2
    err = capsys.readouterr().err
    assert "system.device" in err and "Traceback" not in err and "internal error" not in err
    assert not run.exists()  # refused before the run folder is made


@pytest.mark.parametrize("cls, override, key", [
    (TrainConfig, "run.out_dir=", "run.out_dir"),  # was: the run wrote into the current folder
    (TrainConfig, 'run.out_dir="  "', "run.out_dir"),
    (TrainConfig, "data.train=", "data.train"),  # was: ".: unknown example file type ''" after the plan
    (TrainConfig, "model.name_or_path=", "model.name_or_path"),  # was: a tokenizer error about ''
    (SFTConfig, "run.out_dir=", "run.out_dir"),
    (SFTConfig, "code_stop=", "code_stop"),  # was: "" is in every completion, so no target got its eos
])
def test_a_required_string_left_empty_is_refused_naming_the_key(cls, override, key):
    with pytest.raises(TirgrpoError, match=key.replace(".", r"\.") + " must not be empty"):
        load_config(cls, None, [override])


def test_empty_strings_that_mean_none_still_load():
    cfg = load_config(TrainConfig, None, ["data.eval=", "model.tokenizer=", "model.init_from="])
    assert (cfg.data.eval, cfg.model.tokenizer, cfg.model.init_from) == ("", "", "")
    assert load_config(SFTConfig, None, ["targets="]).targets == ""


@pytest.mark.parametrize("cls", [TrainConfig, SFTConfig])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999", str(2**32)])
def test_a_seed_torch_cannot_take_is_refused_at_load(cls, seed):
    # was: "internal error: ValueError: Overflow when unpacking long long" from torch.manual_seed,
    # after the plan was printed
    with pytest.raises(TirgrpoError, match=r"run\.seed must be in \[0, 4294967295\]"):
        load_config(cls, None, [f"run.seed={seed}"])
    assert load_config(cls, None, [f"run.seed={2**32 - 1}"]).run.seed == 2**32 - 1


@pytest.mark.parametrize("argv", [["eval", "--model", "m", "--data", "d.jsonl"], ["serve", "--model", "m"]])
@pytest.mark.parametrize("seed", ["-1", "99999999999999999999"])
def test_a_seed_option_is_checked_at_parse_time(argv, seed, capsys):
    # was (eval): "internal error: ValueError: Overflow when unpacking long long" after the model loaded
    with pytest.raises(SystemExit) as e:
        main([*argv, "--seed", seed])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


def test_integer_ranges_are_described_exactly():
    assert Range(0, 2**32 - 1).describe() == "in [0, 4294967295]"
    assert Range(0, 1.5).describe() == "in [0, 1.5]"


@pytest.mark.parametrize("gpus, spec, message", [
    (0, "cuda", "no CUDA device here"), (0, "cuda:1", "no CUDA device here"),
    (2, "cuda:2", r"this machine has 2 CUDA devices \(cuda:0\.\.cuda:1\)"),
])
def test_resolve_device_names_a_cuda_device_that_is_not_there(monkeypatch, gpus, spec, message):
    # Before: torch's "AssertionError: Torch not compiled with CUDA enabled" (or an invalid device
    # ordinal) as an internal error, after the plan (sft) or in the memory estimate (train).
    import torch

    from tirgrpo.train.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(TirgrpoError, match=f"device {spec!r}: {message}; use auto or cpu"):
        resolve_device(spec)
    if gpus:
        assert resolve_device("cuda:1") == torch.device("cuda:1") and resolve_device("cuda") == torch.device("cuda")


def test_train_on_a_cuda_device_that_is_not_there_is_a_message(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert main(["train", "--set", f"model.name_or_path={tiny_model_dir}", "--set", f"run.out_dir={out}",
                 "--set", "system.device=cuda"]) == 2
    err = capsys.readouterr().err
    assert "device 'cuda': no CUDA device here" in err and "internal error" not in err, err
    assert not out.exists()
