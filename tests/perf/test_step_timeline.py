"""perf/step_timeline.py: the decode loop's parts and the time between them."""

from __future__ import annotations

import json

import pytest

from tirgrpo.perf.step_timeline import PARTS, Stamps, format_timeline, stamped_loop, step_timeline, time_loop

# One decode step after the first sample, in stream order (name, device ms, host ms): the GPU
# waits 0.3 ms (0.15 -> 0.45) for the host to queue the forward, which then runs 1.8 ms.
TIMES = [("sample:start", 0.0, 0.0), ("sample:end", 0.1, 0.02), ("copy:start", 0.1, 0.03), ("copy:end", 0.15, 0.05),
         ("forward:start", 0.45, 0.06), ("forward:end", 2.25, 0.10), ("sample:start", 2.25, 0.11),
         ("sample:end", 2.3, 0.13), ("copy:start", 2.3, 0.14), ("copy:end", 2.35, 0.16)]


def test_step_timeline_on_hand_numbers():
    t = step_timeline(TIMES)
    assert t["steps"] == 1
    assert t["forward_ms"] == pytest.approx(1.8)
    assert t["sample_ms"] == pytest.approx(0.1 + 0.05) and t["copy_ms"] == pytest.approx(0.05 + 0.05)
    assert t["between_ms"] == pytest.approx(0.3)  # the wait before the forward; the other boundaries touch
    assert t["stamped_ms"] == pytest.approx(2.35) and t["host_ms"] == pytest.approx(0.16)
    assert sum(t[f"{p}_ms"] for p in (*PARTS, "between")) == pytest.approx(t["stamped_ms"])
    # a second step like the first: its forward queued 0.3 ms after the copy ended (2.35 -> 2.65)
    two = step_timeline(TIMES + [(n, d + 2.2, h + 0.16) for n, d, h in TIMES[4:]])
    assert two["steps"] == 2 and two["forward_ms"] == pytest.approx(1.8) and two["between_ms"] == pytest.approx(0.3)
    assert two["stamped_ms"] == pytest.approx(4.55 / 2)


def test_step_timeline_refuses_stamps_out_of_order():
    with pytest.raises(ValueError, match="no forward part"):
        step_timeline(TIMES[:4])
    with pytest.raises(ValueError, match="forward:start is followed by sample:start"):
        step_timeline(TIMES[:5] + TIMES[6:])


def test_the_stamped_loop_samples_the_same_tokens_and_is_put_back(tiny_engine):
    import torch

    from tirgrpo.rollout import sampling

    engine, ids, params, tokens = tiny_engine.engine, tiny_engine.ids, tiny_engine.params, tiny_engine.tokens
    before, start = tokens(), sampling.HostCopy.start
    stamps = Stamps(cuda=False)
    with stamped_loop(engine, stamps):
        assert tokens() == before
    assert sampling.HostCopy.start is start and "_step_fn" not in vars(engine) and "_sample" not in vars(engine)
    # 6 new tokens: 6 samples (the first after the prefill), 6 host copies, 5 forwards
    names = [name for name, _, _ in stamps.marks]
    assert (names.count("sample:start"), names.count("copy:start"), names.count("forward:start")) == (6, 6, 5)
    t = time_loop(engine, ids, 2, params, torch.Generator().manual_seed(0))
    assert t["steps"] == 5 and t["clock"] == "host clock" and min(t[f"{p}_ms"] for p in PARTS) > 0
    assert "ms per decode step over 5 steps (host clock)" in format_timeline(t)


def test_profile_rollout_timeline_on_cpu(tmp_path, capsys, load_benchmark):
    module = load_benchmark("profile_rollout")
    out = tmp_path / "timeline.json"
    (result,) = module.main(["--shape", "tiny-qwen2", "--device", "cpu", "--timeline", "--batch", "2", "--group", "2",
                             "--prompt-tokens", "16", "--new-tokens", "4", "--kernels", "torch", "--json", str(out)])
    assert json.loads(out.read_text()) == [result]
    assert result["steps"] == 3 and result["batch"] == 2 and result["kernels"] == "torch"
    assert "between parts" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        module.main(["--timeline", "--by-category"])


@pytest.mark.gpu
def test_profile_rollout_timeline_on_cuda_with_graphs(load_benchmark):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    module = load_benchmark("profile_rollout")
    (result,) = module.main(["--shape", "tiny-qwen2", "--device", "cuda", "--timeline", "--batch", "4", "--group",
                             "2", "--prompt-tokens", "32", "--new-tokens", "16", "--kernels", "torch"])
    assert result["clock"] == "cuda events" and result["steps"] == 15
    assert result["forward_ms"] > 0 and result["between_ms"] >= 0
    parts = sum(result[f"{p}_ms"] for p in (*PARTS, "between"))
    assert parts == pytest.approx(result["stamped_ms"], rel=1e-6)
