"""Two ranks (gloo, CPU processes) update exactly as one process on the same data: FSDP2
sharding, gradients summed over ranks, the loss normalised by global counts, ranks with
different numbers of micro-batches, and one checkpoint saved at 2 ranks resumed at 1."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tirgrpo.config import GRPOConfig
from tirgrpo.train import dist
from tirgrpo.train.optim import AdamW
from tirgrpo.train.step import GRPOObjective, build_micro_batches, grpo_update, reference_logprobs

from test_step import GROUP, PAD, hand_made_rollout, perturbed_copy, tiny_policy

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, *args) -> None:
    """Run fn(rank, *args) in WORLD processes joined by gloo."""
    port = free_port()
    mp.start_processes(_entry, args=(fn, port, args), nprocs=WORLD, join=True, start_method="spawn")


def _entry(rank: int, fn, port: int, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init()
    try:
        fn(rank, *args)
    except BaseException:
        dist.teardown(finished=False)
        raise
    dist.barrier()
    # Leave without gloo's teardown: its threads can std::terminate a spawned worker at exit
    # (seen about one run in four on the 2-core CI machine), after the work is done and checked.
    os._exit(0)


def update_once(model_dir, loss_type: str, lora: bool, groups: list[int], prefix: str = "off"):
    """One update of the hand-made rollout's `groups` (all of them in one process, one group per
    rank at world size 2), with a KL term; returns (result, full trainable parameters, counts)."""
    model = tiny_policy(model_dir, lora, prefix)
    reference = None if lora else perturbed_copy(model)
    dist.shard(model)
    dist.shard(reference) if reference is not None else None
    prompt_ids, completions, advantages = hand_made_rollout()
    rows = [g * GROUP + j for g in groups for j in range(GROUP)]
    prompt_ids, completions = [prompt_ids[i] for i in rows], [completions[i] for i in rows]
    advantages = advantages[rows]
    # "off", budget 16: group 0 takes 3 micro-batches, group 1 two, so the ranks differ in passes;
    # "split", budget 15: packed parts that repeat the prompt (group 0 two, group 1 one)
    batches = build_micro_batches(prompt_ids, completions, GROUP, 16 if prefix == "off" else 15, prefix, PAD, "cpu")
    with dist.gathered(reference if reference is not None else model):
        refs = [reference_logprobs(model, reference, b, 4, 1.0) for b in batches]
    num_sequences, num_tokens = dist.global_sum(len(completions), sum(map(len, completions)))
    cfg = GRPOConfig(beta=0.1, epsilon=0.02, epsilon_high=0.03, loss_type=loss_type)
    objective = GRPOObjective(cfg, [advantages[b.rows] for b in batches], refs, max_completion_tokens=6,
                              num_sequences=int(num_sequences), num_tokens=int(num_tokens))
    optimizer = AdamW(model.parameters(), lr=1e-2)
    model.train()
    result = grpo_update(model, optimizer, batches, objective, max_grad_norm=0.05, chunk_tokens=4)
    params = {n: dist.full_tensor(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, params, len(batches)


def _update_rank(rank: int, model_dir, loss_type: str, lora: bool, prefix: str, out: str) -> None:
    result, params, count = update_once(model_dir, loss_type, lora, [rank], prefix)
    counts = dist.gather_objects(count)
    if dist.is_main():
        torch.save({"result": result, "params": params, "counts": counts}, out)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type,lora,prefix", [("dapo", False, "off"), ("grpo", True, "off"),
                                                   ("dr_grpo", False, "split")],
                         ids=["dapo-full", "grpo-lora", "dr_grpo-split"])
def test_two_ranks_update_as_one_process(tiny_model_dir, tmp_path, loss_type, lora, prefix):
    torch.set_num_threads(1)
    one, one_params, _ = update_once(tiny_model_dir, loss_type, lora, [0, 1], prefix)
    run_ranks(_update_rank, tiny_model_dir, loss_type, lora, prefix, str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    assert two["counts"][0] != two["counts"][1]  # the ranks ran different numbers of micro-batches
    assert two["result"].applied and one.applied
    assert two["result"].loss == pytest.approx(one.loss, abs=1e-5)
    assert two["result"].grad_norm == pytest.approx(one.grad_norm, abs=1e-5)
    assert one.grad_norm > 0.05  # clipping is active: the global norm scales every shard
    assert two["result"].num_tokens == one.num_tokens
    for key, value in one.stats.items():
        assert two["result"].stats[key] == pytest.approx(value, abs=1e-5), key
    assert two["params"].keys() == one_params.keys()
    for name, p in one_params.items():
        torch.testing.assert_close(two["params"][name], p, atol=1e-5, rtol=0, msg=name)


# --------------------------------------------------------------------------- checkpoints across sizes


def grpo_step(model, optimizer, model_dir_groups: list[int]):
    """One on-policy update (beta 0) of the hand-made rollout's groups on this rank."""
    prompt_ids, completions, advantages = hand_made_rollout()
    rows = [g * GROUP + j for g in model_dir_groups for j in range(GROUP)]
    prompt_ids, completions, advantages = [prompt_ids[i] for i in rows], [completions[i] for i in rows], advantages[rows]
    batches = build_micro_batches(prompt_ids, completions, GROUP, 16, "off", PAD, "cpu")
    num_sequences, num_tokens = dist.global_sum(len(completions), sum(map(len, completions)))
    objective = GRPOObjective(GRPOConfig(beta=0.0, loss_type="dapo"), [advantages[b.rows] for b in batches],
                              [None] * len(batches), 6, int(num_sequences), int(num_tokens))
    model.train()
    return grpo_update(model, optimizer, batches, objective, max_grad_norm=0.05, chunk_tokens=4)


def checkpoint_texts(model_dir) -> tuple[str, str]:
    """config.toml and plan.toml of a checkpoint of the tiny model (what an export reads)."""
    from tirgrpo.config import TrainConfig, dumps_toml, to_dict
    from tirgrpo.train.plan import Plan, plan_to_toml

    cfg = TrainConfig()
    cfg.model.name_or_path = str(model_dir)
    plan = Plan(device="cpu", dtype="fp32", attention="sdpa", gradient_checkpointing=False, compile_layers=False,
                micro_batch_tokens=16, logprob_chunk_tokens=4, optimizer="fp32", world_size=dist.world_size())
    return dumps_toml(to_dict(cfg)), plan_to_toml(plan)


def full_params(model) -> dict[str, torch.Tensor]:
    return {n: dist.full_tensor(p.detach()).clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_then_step_rank(rank: int, model_dir, run_dir: str, out: str) -> None:
    from pathlib import Path

    from tirgrpo.train.checkpoint import save_checkpoint

    model = tiny_policy(model_dir, False, "off")
    dist.shard(model)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    grpo_step(model, optimizer, [rank])
    saved = full_params(model)
    save_checkpoint(Path(run_dir), 1, model, optimizer, {"rollout": 1}, *checkpoint_texts(model_dir))
    result = grpo_step(model, optimizer, [rank])
    after = full_params(model)
    if dist.is_main():
        torch.save({"saved": saved, "after": after, "result": result}, out)


@pytest.mark.slow
def test_checkpoint_of_two_ranks_resumes_and_exports_at_one(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from tirgrpo.train.checkpoint import export_hf_folder, latest_checkpoint, load_checkpoint

    torch.set_num_threads(1)
    run_ranks(_save_then_step_rank, tiny_model_dir, str(tmp_path / "run"), str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "step_000001" and (ckpt / "dcp" / ".metadata").is_file()
    assert not (ckpt / "trainable.safetensors").exists()  # sharded, not gathered into one file

    model = tiny_policy(tiny_model_dir, False, "off")
    optimizer = AdamW(model.parameters(), lr=1e-2)
    state = load_checkpoint(ckpt, model, optimizer)
    assert state["step"] == 1 and optimizer.steps == 1
    for name, p in full_params(model).items():
        torch.testing.assert_close(p, two["saved"][name], atol=0, rtol=0, msg=name)
    result = grpo_step(model, optimizer, [0, 1])  # the next step at one process, on both ranks' data
    assert result.loss == pytest.approx(two["result"].loss, abs=1e-5)
    assert result.grad_norm == pytest.approx(two["result"].grad_norm, abs=1e-5)
    for name, p in full_params(model).items():
        torch.testing.assert_close(p, two["after"][name], atol=1e-5, rtol=0, msg=name)

    exported = export_hf_folder(ckpt, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(exported)
    for name, p in plain.named_parameters():
        torch.testing.assert_close(p, two["saved"][name], atol=0, rtol=0, msg=name)


# --------------------------------------------------------------------------- the trainer at two ranks


def _train_rank(rank: int, config: str) -> None:
    from tirgrpo.cli import main

    code = main(["train", "--config", config, "--set", "optim.total_steps=2"])
    assert code == 0, f"rank {rank}: tirgrpo train exited {code}"


@pytest.mark.slow
def test_train_at_two_ranks_then_resume_at_one(tiny_model_dir, byte_tokenizer, tmp_path):
    import json
    import tomllib

    from test_checkpoint_resume import write_config

    from tirgrpo.cli import main
    from tirgrpo.train.metrics import read_jsonl

    torch.set_num_threads(1)
    config, run = write_config(tmp_path, tiny_model_dir, byte_tokenizer, "two", False, 0.1, 1, True)
    run_ranks(_train_rank, str(config))
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]  # one row per rollout, written once
    assert all(r["train/micro_batches"] >= 2 for r in rows)  # both ranks' micro-batches counted
    assert tomllib.loads((run / "plan.toml").read_text())["system"]["world_size"] == 2
    assert (run / "checkpoints" / "step_000002" / "dcp").is_dir()
    assert (run / "final" / "config.json").is_file() and (run / "eval_after.json").is_file()
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 2 * 4  # keep_samples of each rollout, from both ranks' 2 x 2 completions
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0  # the run's latest: the DCP checkpoint
    from safetensors.torch import load_file

    final, exported = load_file(run / "final" / "model.safetensors"), load_file(tmp_path / "exported" / "model.safetensors")
    assert final.keys() == exported.keys() and all(torch.equal(final[k], exported[k]) for k in final)

    assert main(["train", "--resume", str(run), "--set", "optim.total_steps=4"]) == 0
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert tomllib.loads((run / "plan.toml").read_text())["system"]["world_size"] == 1
    assert (run / "checkpoints" / "step_000004" / "trainable.safetensors").is_file()


def _resume_then_step_rank(rank: int, model_dir, ckpt: str, out: str) -> None:
    from pathlib import Path

    from tirgrpo.train.checkpoint import load_checkpoint

    model = tiny_policy(model_dir, False, "off")
    dist.shard(model)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    load_checkpoint(Path(ckpt), model, optimizer)
    loaded = full_params(model)
    result = grpo_step(model, optimizer, [rank])
    after = full_params(model)
    if dist.is_main():
        torch.save({"loaded": loaded, "after": after, "result": result}, out)


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_at_two_ranks(tiny_model_dir, tmp_path):
    from tirgrpo.train.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    model = tiny_policy(tiny_model_dir, False, "off")
    optimizer = AdamW(model.parameters(), lr=1e-2)
    grpo_step(model, optimizer, [0, 1])
    saved = full_params(model)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, optimizer, {"rollout": 1}, *checkpoint_texts(tiny_model_dir))
    assert (ckpt / "trainable.safetensors").is_file()
    result = grpo_step(model, optimizer, [0, 1])
    run_ranks(_resume_then_step_rank, tiny_model_dir, str(ckpt), str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    for name, p in saved.items():
        torch.testing.assert_close(two["loaded"][name], p, atol=0, rtol=0, msg=name)
    assert two["result"].loss == pytest.approx(result.loss, abs=1e-5)
    assert two["result"].grad_norm == pytest.approx(result.grad_norm, abs=1e-5)
    for name, p in full_params(model).items():
        torch.testing.assert_close(two["after"][name], p, atol=1e-5, rtol=0, msg=name)
