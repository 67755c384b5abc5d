"""The system plan: every `auto` resolved once, before weights load; refused when it cannot
fit a GPU; written to and read back from plan.toml."""

from pathlib import Path

import pytest
import torch

from tirgrpo.config import TrainConfig, load_config
from tirgrpo.errors import TirgrpoError
from tirgrpo.train import plan as P

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


def seed_config(*overrides):
    return load_config(TrainConfig, ROOT / "configs/seed-r1-distill-1.5b.toml", list(overrides))


def fake_gpu(monkeypatch, gib):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(gib * P.GiB), int(gib * P.GiB)))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)


def test_auto_on_cuda_packs_groups_into_16k_passes_when_it_fits(monkeypatch):
    fake_gpu(monkeypatch, 79)
    plan = P.resolve_plan(seed_config(), CUDA)
    assert plan.dtype == "bf16" and plan.shared_prefix == "split" and plan.compile_layers is True
    assert plan.optimizer == "fp32-master" and plan.engine == "fast" and plan.device == "cuda"
    # a group (the prompt once, G = 4 completions) is 3072 + 4 x 1024 = 7,168 tokens: two to a pass
    assert plan.micro_batch_tokens == P.AUTO_PASS_TOKENS == 16384
    # a group over 16k is a pass of its own: 3072 + 16 x 1024
    assert P.resolve_plan(seed_config("rollout.group_size=16"), CUDA).micro_batch_tokens == 3072 + 16 * 1024
    assert plan.memory is not None and 0 < plan.memory.peak_gib < plan.memory.need_gib < 79
    assert plan.memory.device_gib == pytest.approx(79, abs=0.01)
    # the seed config evaluates (bundled eval data, 8 samples): its greedy pass, 64 prompt slots of
    # 4,096 tokens, is the peak of the run, above the train phase
    assert plan.memory.eval_gib == plan.memory.peak_gib > plan.memory.train_gib > plan.memory.rollout_gib


def test_auto_budget_is_lowered_to_what_fits(monkeypatch):
    fake_gpu(monkeypatch, 60)
    cfg = seed_config("system.gradient_checkpointing=false", "system.optimizer=bf16-stochastic",
                      "system.shared_prefix=off")
    plan = P.resolve_plan(cfg, CUDA)
    assert 0 < plan.micro_batch_tokens < 4 * 4096 and plan.micro_batch_tokens % 4096 == 0
    assert cfg.system.micro_batch_tokens == "auto"  # the config is not changed


def test_explicit_budget_that_does_not_fit_is_refused_with_one_that_does(monkeypatch):
    fake_gpu(monkeypatch, 60)
    cfg = seed_config("system.gradient_checkpointing=false", "system.optimizer=bf16-stochastic",
                      "system.shared_prefix=off", "system.micro_batch_tokens=16384")
    with pytest.raises(TirgrpoError, match=r"micro_batch_tokens = 16384 does not fit.*--set system.micro_batch_tokens="):
        P.resolve_plan(cfg, CUDA)


def test_explicit_whole_step_budget_is_kept_when_it_fits(monkeypatch):
    fake_gpu(monkeypatch, 140)
    assert P.resolve_plan(seed_config("system.micro_batch_tokens=0"), CUDA).micro_batch_tokens == 0


def test_what_cannot_fit_is_refused_naming_parts_and_changes(monkeypatch):
    fake_gpu(monkeypatch, 24)
    with pytest.raises(TirgrpoError) as e:
        P.resolve_plan(seed_config(), CUDA)
    msg = str(e.value)
    assert "does not fit" in msg and "optimizer states" in msg and "master weights" in msg
    assert "system.optimizer=bf16-stochastic" in msg or "model.lora=true" in msg


def test_cpu_refuses_what_exceeds_the_ram_unless_overridden(monkeypatch):
    monkeypatch.setattr(P, "device_bytes", lambda device: 4 * P.GiB)  # a 1.5B step needs far more than 4 GiB
    with pytest.raises(TirgrpoError, match=r"exceeds this machine's 4.0 GiB of RAM"):
        P.resolve_plan(seed_config(), torch.device("cpu"))
    with pytest.warns(UserWarning, match="overridden"):
        plan = P.resolve_plan(seed_config("system.ignore_memory_check=true"), torch.device("cpu"))
    assert plan.dtype == "fp32" and plan.shared_prefix == "dense" and plan.compile_layers is False
    assert plan.kernels == "torch" and plan.micro_batch_tokens == 3072 + 4 * 1024 and plan.memory is not None


def test_explicit_budget_too_large_runs_when_the_check_is_overridden(monkeypatch):
    fake_gpu(monkeypatch, 24)
    plan = P.resolve_plan(seed_config("system.ignore_memory_check=true", "system.micro_batch_tokens=8192"), CUDA)
    assert plan.micro_batch_tokens == 8192


@pytest.mark.parametrize("override,key", [
    ("system.shared_prefix=on", "system.shared_prefix"),
    ("system.optimizer=adam8bit", "system.optimizer"),
    ("system.micro_batch_tokens=lots", "system.micro_batch_tokens"),
    ("system.micro_batch_tokens=-5", "system.micro_batch_tokens"),
    ("system.engine=vllm", "system.engine"),
    ("system.dtype=fp8", "system.dtype"),
    ("system.attention=flash", "system.attention"),
])
def test_bad_settings_name_their_key(override, key):
    with pytest.raises(TirgrpoError, match=key):
        P.resolve_plan(load_config(TrainConfig, None, [override, "model.name_or_path=random:tiny-qwen2"]),
                       torch.device("cpu"))


def test_plan_toml_round_trip_says_gib(tmp_path):
    plan = P.resolve_plan(load_config(TrainConfig, None, ["model.name_or_path=random:tiny-qwen2"]), torch.device("cpu"))
    P.write_plan(tmp_path, plan)
    text = (tmp_path / "plan.toml").read_text()
    assert "[system]" in text and "[memory]" in text and 'unit = "GiB (2**30 bytes)"' in text
    assert P.read_plan(tmp_path / "plan.toml") == plan
    with pytest.raises(TirgrpoError, match="no recorded plan"):
        P.read_plan(tmp_path / "absent.toml")


def test_sft_plan_has_no_rollout():
    from tirgrpo.config import ExecutionConfig

    plan = P.resolve_sft_plan(ExecutionConfig(device="cpu", dtype="bf16", optimizer="bf16-kahan"))
    assert plan.engine == "none" and plan.shared_prefix == "off" and plan.memory is None
    assert plan.micro_batch_tokens == P.SFT_AUTO_MICRO_BATCH_TOKENS and plan.optimizer == "bf16-kahan"
    assert not plan.master_fp32 and plan.bf16_update == "kahan"
    fp32 = P.resolve_sft_plan(ExecutionConfig(device="cpu", optimizer="bf16-stochastic"))
    assert fp32.dtype == "fp32" and fp32.optimizer == "fp32"  # fp32 weights: plain fp32 AdamW
