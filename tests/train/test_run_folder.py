"""What a CPU run leaves in its folder: config.toml is what the user asked (the file plus
`--set`), plan.toml what ran; `--resume` runs the recorded plan without resolving again."""

import tomllib

import pytest

import tirgrpo.train.plan as plan_module
from tirgrpo.cli import main
from tirgrpo.config import apply_overrides
from tirgrpo.data.records import write_examples
from tirgrpo.data.synthetic import compare_examples
from tirgrpo.train.metrics import read_jsonl


@pytest.mark.slow  # ~11 s: two short CPU runs with plots and report
def test_cpu_run_writes_request_and_plan_and_resume_reads_the_plan(tmp_path, tiny_model_dir, byte_tokenizer,
                                                                     monkeypatch):
    write_examples(tmp_path / "train.jsonl", compare_examples(8, 0, byte_tokenizer))
    run_dir = tmp_path / "run"
    text = f"""
[model]
name_or_path = "{tiny_model_dir}"

[data]
train = "{tmp_path / 'train.jsonl'}"
eval = ""

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 6

[optim]
total_steps = 2
warmup_steps = 0

[run]
out_dir = "{run_dir}"
save_every = 1
tensorboard = false

[system]
device = "cpu"
gradient_checkpointing = false
micro_batch_tokens = "auto"
"""
    config = tmp_path / "c.toml"
    config.write_text(text, encoding="utf-8")
    overrides = ["optim.lr=0.002", "grpo.num_iterations=1"]
    assert main(["train", "--config", str(config)] + [a for o in overrides for a in ("--set", o)]) == 0

    asked = apply_overrides(tomllib.loads(text), overrides)
    assert tomllib.loads((run_dir / "config.toml").read_text()) == asked  # no defaults filled in
    plan = plan_module.read_plan(run_dir / "plan.toml")
    assert plan.device == "cpu" and plan.dtype == "fp32" and plan.shared_prefix == "dense"
    assert plan.micro_batch_tokens > 0 and plan.memory is not None
    assert plan.memory.eval_gib == 0.0  # no eval data (eval = ""): no evaluation phase in the estimate
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert (ckpt / "plan.toml").read_text() == (run_dir / "plan.toml").read_text()
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    # auto on CPU: one full-length group of tokens per pass, which both (shorter) groups fit
    assert [r["train/micro_batches"] for r in rows] == [1, 1]
    for r in rows:  # the peak of each phase, beside the plan's estimate of each (CPU: peak RSS so far)
        assert 0 < r["memory/rollout_peak_gib"] <= r["memory/train_peak_gib"] == r["memory/peak_gib"]

    # Resume with a recorded budget that resolution would not give: one completion per pass.
    recorded = (run_dir / "plan.toml").read_text().replace(
        f"micro_batch_tokens = {plan.micro_batch_tokens}\n", "micro_batch_tokens = 1\n")
    (run_dir / "plan.toml").write_text(recorded)

    def no_resolution(*args, **kwargs):
        raise AssertionError("a resumed run must not resolve its plan again")

    monkeypatch.setattr(plan_module, "resolve_plan", no_resolution)
    assert main(["train", "--resume", str(run_dir), "--set", "optim.total_steps=3"]) == 0
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["train/micro_batches"] == 4
    assert tomllib.loads((run_dir / "config.toml").read_text())["optim"]["total_steps"] == 3


def test_resume_refuses_to_change_system_settings(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[system]\ndevice = "cpu"\n', encoding="utf-8")
    assert main(["train", "--resume", str(tmp_path), "--set", "system.micro_batch_tokens=64"]) == 2
    assert "[system] settings cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--set", "optim.micro_batch_tokens=64"]) == 2  # old key too


def test_sft_writes_request_and_plan(tmp_path, tiny_model_dir, byte_tokenizer):
    write_examples(tmp_path / "train.jsonl", compare_examples(4, 0, byte_tokenizer))
    out = tmp_path / "sft"
    sets = [f"model.name_or_path={tiny_model_dir}", f"data.train={tmp_path / 'train.jsonl'}", "optim.total_steps=1",
            "batch_size=2", f"run.out_dir={out}", "run.tensorboard=false", "system.device=cpu"]
    assert main(["sft"] + [a for s in sets for a in ("--set", s)]) == 0
    asked = tomllib.loads((out / "config.toml").read_text())
    assert asked["optim"] == {"total_steps": 1} and asked["batch_size"] == 2 and "append_eos" not in asked
    plan = plan_module.read_plan(out / "plan.toml")
    assert plan.engine == "none" and plan.micro_batch_tokens == plan_module.SFT_AUTO_MICRO_BATCH_TOKENS


def test_sft_unused_key_is_an_error(capsys):
    assert main(["sft", "--set", "data.eval=x.jsonl"]) == 2
    assert "'eval'" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _quiet_tqdm(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_resume_refuses_to_change_the_model_or_the_folder(tmp_path, capsys):
    (tmp_path / "config.toml").write_text('[model]\nname_or_path = "random:tiny-qwen2"\n[system]\ndevice = "cpu"\n',
                                          encoding="utf-8")
    assert main(["train", "--resume", str(tmp_path), "--set", "model.lora=true"]) == 2
    assert "[model] cannot change on resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--set", "run.out_dir=elsewhere"]) == 2
    assert "run.out_dir cannot change on resume" in capsys.readouterr().err


def test_overwrite_removes_the_earlier_runs_checkpoints_and_final_model(tmp_path):
    from tirgrpo.train.run_folder import claim_run_dir

    for d in ("checkpoints/step_000004", "final", "tensorboard"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_000004")
    for f in ("metrics.jsonl", "summary.json", "eval_step_000050.json", "labels.png", "notes.txt"):
        (tmp_path / f).write_text("old")
    claim_run_dir(tmp_path, resume=False, config_toml="", plan_toml="")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["config.toml", "notes.txt", "plan.toml"]  # the user's own file stays
    (tmp_path / "checkpoints").mkdir()
    claim_run_dir(tmp_path, resume=True, config_toml="", plan_toml="")
    assert (tmp_path / "checkpoints").is_dir()  # a resume keeps everything


def test_sft_refuses_a_folder_that_holds_a_run_unless_overwrite(tmp_path, tiny_model_dir, byte_tokenizer, capsys):
    write_examples(tmp_path / "train.jsonl", compare_examples(4, 0, byte_tokenizer))
    out = tmp_path / "run"
    (out / "checkpoints" / "step_000002").mkdir(parents=True)  # e.g. a GRPO run's
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    sets = [f"model.name_or_path={tiny_model_dir}", f"data.train={tmp_path / 'train.jsonl'}", "optim.total_steps=1",
            "batch_size=2", f"run.out_dir={out}", "run.tensorboard=false", "system.device=cpu"]
    argv = ["sft"] + [a for s in sets for a in ("--set", s)]
    assert main(argv) == 2
    assert "already holds a run; use --overwrite" in capsys.readouterr().err
    assert (out / "checkpoints").is_dir() and (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert main(argv + ["--overwrite"]) == 0
    assert not (out / "checkpoints").exists() and (out / "final").is_dir()


def test_a_users_reward_that_does_not_import_is_refused_before_the_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    sets = ['model.name_or_path="random:tiny-qwen2"', "system.device=cpu", f"run.out_dir={run}",
            "rewards.weights={'no_such_module_xyz:f' = 1.0}", "run.eval_max_examples=2", "run.eval_samples=1"]
    assert main(["train"] + [a for s in sets for a in ("--set", s)]) == 2
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err
    assert not run.exists()  # not after the before-training evaluation


@pytest.mark.parametrize("edit, name", [
    ('[model]\nname_or_path = "random:tiny-qwen2"\nlora = true\n[system]\ndevice = "cpu"\n', "[model]"),
    ('[model]\nname_or_path = "random:tiny-qwen2"\n[system]\ndevice = "cpu"\nmicro_batch_tokens = 64\n', "[system]"),
])
def test_resume_refuses_a_config_toml_edited_since_the_checkpoint(tmp_path, capsys, edit, name):
    """Before: an edited [model] (another base of the same shape under LoRA adapters) trained on
    silently, and an edited [system] was ignored for the recorded plan while config.toml said otherwise."""
    original = '[model]\nname_or_path = "random:tiny-qwen2"\n[system]\ndevice = "cpu"\n'
    ckpt = tmp_path / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text('{"step": 2}')
    (ckpt / "config.toml").write_text(original)
    (tmp_path / "checkpoints" / "latest").write_text("step_000002\n")
    (tmp_path / "config.toml").write_text(edit)
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{name} of {tmp_path / 'config.toml'} differs from the checkpoint's" in err and "step_000002" in err, err
