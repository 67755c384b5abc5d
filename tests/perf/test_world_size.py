"""The memory estimate per rank of a sharded run (FSDP2 over `world_size` GPUs): shards of
the resident tensors, the gathered units and gathered weights, each rank's share of the
prompts; the 7B shape; `tirgrpo memory --gpus`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tirgrpo.errors import TirgrpoError
from tirgrpo.perf.estimate import estimate
from tirgrpo.perf.shape import ModelShape, shape_from_spec
from tirgrpo.perf.workload import Workload, gathered_parts, micro_batch_plan, resident_parts

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=192, vocab=300, name="tiny")
# TINY by hand (tests/perf/test_memory.py): 137,280 params; one layer 49,408; the root (embedding
# 19,200 + final norm 64 + head 19,200) 38,464


def test_resident_parts_are_shards():
    one = resident_parts(TINY, Workload(dtype_bytes=2))
    two = resident_parts(TINY, Workload(dtype_bytes=2, world_size=2))
    n = 137_280
    assert two == {"weights": n, "reference model": n, "optimizer states (m, v, kahan)": 4 * n,
                   "master weights (fp32)": 2 * n, "gradients": n}
    assert {k: 2 * v for k, v in two.items()} == one
    three = resident_parts(TINY, Workload(dtype_bytes=2, world_size=3))
    assert three["weights"] == -(-2 * n // 3) == 91_520  # a rank holds at most ceil(1/3)


def test_gathered_parts_by_hand():
    assert gathered_parts(TINY, Workload(dtype_bytes=2), "train") == {} == gathered_parts(TINY, Workload(), "rollout")
    wl = Workload(dtype_bytes=2, world_size=2)
    assert gathered_parts(TINY, wl, "rollout") == {"gathered weights (generation, all layers)": 2 * 137_280}
    assert gathered_parts(TINY, wl, "train") == {"gathered units (root + 2 layers)": 2 * (38_464 + 2 * 49_408),
                                                 "unsharded gradients (root + 1 layer)": 2 * (38_464 + 49_408)}
    lora = gathered_parts(TINY, replace(wl, lora=True, reference_model=False), "train")
    assert lora["unsharded gradients (root + 1 layer)"] == 0  # adapters' gradients are in the shards


def test_each_rank_trains_its_share_of_the_prompts():
    wl = Workload(prompts_per_step=8, group_size=4, prompt_tokens=100, completion_tokens=50, prefix="dense",
                  micro_batch_tokens=300)  # one group of 100 + 4 x 50 per pass
    assert micro_batch_plan(wl)["micro_batches"] == 8
    assert micro_batch_plan(replace(wl, world_size=4))["micro_batches"] == 2
    assert micro_batch_plan(replace(wl, world_size=4, micro_batch_tokens=0))["tokens"] == 2 * 300  # a rank's step
    padded = replace(wl, prefix="off", world_size=2, micro_batch_tokens=0)
    assert padded.sequences == 16 and micro_batch_plan(padded)["rows"] == 16


def test_more_ranks_need_less_per_rank():
    wl = Workload(prompts_per_step=8, group_size=8)
    shape = shape_from_spec("random:r1-distill-qwen-7b")
    needs = [estimate(shape, replace(wl, world_size=w))["need"] for w in (1, 2, 8)]
    assert needs[0] > needs[1] > needs[2]
    with pytest.raises(TirgrpoError, match="world_size"):
        Workload(world_size=0)


def test_r1_distill_7b_shape_by_hand():
    s = shape_from_spec("random:r1-distill-qwen-7b")
    assert (s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, s.vocab, s.tied) == (
        3584, 28, 28, 4, 18944, 152064, False)
    # layer: q, o 3584^2 each; k, v 3584 x 512 each; gate/up/down 3 x 3584 x 18944; biases 4,608; norms 7,168
    assert s.layer_params() == 2 * 12_845_056 + 2 * 1_835_008 + 203_685_888 + 4_608 + 7_168 == 233_057_792
    assert s.params() == 2 * 152_064 * 3_584 + 28 * 233_057_792 + 3_584 == 7_615_616_512


def test_memory_command_per_gpu(capsys):
    from tirgrpo.cli import main

    args = ["memory", "--config", str(ROOT / "configs/seed-r1-distill-1.5b.toml"), "--gpu-memory", "80GB",
            "--set", "model.name_or_path=random:r1-distill-qwen-7b", "--set", "rollout.group_size=8",
            "--set", "rollout.prompts_per_step=8"]
    assert main(args) == 0
    assert "(74.5 GiB): NO" in capsys.readouterr().out  # one 80 GB GPU cannot hold it
    assert main(args + ["--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "per rank of 8 (FSDP2)" in out and "gathered weights (generation, all layers)" in out
    assert "(74.5 GiB): yes" in out
    assert main(args + ["--world-size", "3"]) == 2  # 8 prompts do not split over 3 ranks
    assert "--world-size 3" in capsys.readouterr().err


def test_step_table_speed_up_over_one_gpu():
    from tirgrpo.perf.step_bench import table

    row = {"shape": "s", "prompts": 4, "G": 16, "context": "3072+1024", "step_s": 10.0, "rollout_s": 8.0,
           "train_s": 2.0, "tokens_per_s": 1000.0, "peak_gib": 30.0, "estimate_gib": 31.5, "lora": False}
    text = table([{**row, "gpus": 1}, {**row, "gpus": 2, "prompts": 8, "tokens_per_s": 1900.0, "estimate_gib": None},
                  {**row, "gpus": 2}])
    lines = text.splitlines()
    assert "1.00x" in lines[1] and "1.90x" in lines[2]  # the same 4 prompts per GPU
    assert lines[3].split()[-3] == "1.00x"  # 2 prompts per GPU: the 1-GPU row of the same 4 prompts per step
    assert lines[2].split()[-1] == "-"  # no estimate
    # With no 1-GPU row of the same prompts per GPU, the one with the same prompts per step.
    lines = table([{**row, "gpus": 1, "prompts": 8}, {**row, "gpus": 2, "prompts": 8, "tokens_per_s": 1900.0}]).splitlines()
    assert "1.90x" in lines[2]
    # Both kinds present: the same work per GPU wins; of two such rows, the nearest (its call's).
    rows = [{**row, "gpus": 1, "prompts": 8, "tokens_per_s": 500.0}, {**row, "gpus": 1, "tokens_per_s": 1000.0},
            {**row, "gpus": 2, "prompts": 8, "tokens_per_s": 1900.0},
            {**row, "gpus": 2, "prompts": 8, "tokens_per_s": 2100.0}, {**row, "gpus": 1, "tokens_per_s": 1050.0}]
    lines = table(rows).splitlines()
    assert [line.split()[-3] for line in lines[1:]] == ["1.00x", "1.00x", "1.90x", "2.00x", "1.00x"]
    # A profiled row is not compared, and is no baseline.
    lines = table([{**row, "gpus": 1, "profiled": True}, {**row, "gpus": 2, "prompts": 8}]).splitlines()
    assert lines[1].split()[-3] == "profiled" and lines[2].split()[-3] == "-"
    lines = table([{**row, "gpus": 1, "prompts": 8}, {**row, "gpus": 2, "prompts": 6}]).splitlines()
    assert lines[2].split()[-3] == "-"  # neither 3 nor 6 prompts on one GPU: nothing to compare with


@pytest.mark.slow
def test_bench_step_runs_the_trainer_phases(tmp_path, capsys):
    from tirgrpo.cli import main

    results = tmp_path / "r.jsonl"
    assert main(["bench", "step", "--shape", "tiny-qwen2", "--group-size", "2", "--prompts", "2",
                 "--prompt-tokens", "48", "--new-tokens", "4", "--work", str(tmp_path / "w"),
                 "--results", str(results), "--profile", str(tmp_path / "prof")]) == 0
    import json

    profile = (tmp_path / "prof" / "update_rank0.txt").read_text()
    assert profile.startswith("rank 0: ") and "in collectives" in profile and "aten::" in profile

    row = json.loads(results.read_text())
    assert row["gpus"] == 1 and row["tokens"] > 0 and row["step_s"] > 0
    assert "tiny-qwen2" in capsys.readouterr().out.splitlines()[-1]


def test_is_collective_names_communication_kernels():
    from tirgrpo.perf.step_bench import is_collective

    assert is_collective("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)")
    assert is_collective("c10d::allreduce_") and is_collective("record_param_comms") is False
    assert not is_collective("aten::mm") and not is_collective("void cutlass::Kernel<...>")

