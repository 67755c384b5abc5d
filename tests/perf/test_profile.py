"""perf/profile.py: kernel names -> categories, the per-step table on hand-made entries, and
(slow) benchmarks/profile_rollout.py --by-category on the CPU with a tiny random model."""

from __future__ import annotations

import json

import pytest

from tirgrpo.perf.profile import CATEGORIES, format_table, kernel_category, per_step_table


@pytest.mark.parametrize("name, category", [
    ("nvjet_tst_128x64_64x8_1x2_h_bz_coopA_NTN", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float, __nv_bfloat16>", "matmul"),
    ("aten::addmm", "matmul"),
    ("_decode_attention_split_kernel", "attention"),
    ("_decode_attention_combine_kernel", "attention"),
    ("_rotary_cache_write_kernel", "rotary + cache write"),
    ("_add_rmsnorm_kernel", "add + RMSNorm"),
    ("_silu_mul_kernel", "silu * mul"),
    ("_gemv_kernel", "matmul"),
    ("_gemv_reduce_kernel", "matmul"),
    ("_decode_attention_prompt_kernel", "attention"),
    ("_sample_split_kernel", "sampling"),
    ("_sample_combine_kernel", "sampling"),
    ("decode::gate_up_silu > _gemv_kernel", "matmul"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel>", "silu * mul"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>>>",
     "sampling"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>", "sampling"),
    ("Memcpy DtoH (Device -> Pageable)", "copies / other"),
    ("void at::native::index_elementwise_kernel<128, 4>", "copies / other"),
    # a labelled range decides over the kernel name
    ("decode::lm_head > nvjet_tst_128x64_64x8_1x2_h_bz_coopA_NTN", "LM head / logits"),
    ("decode::add_rmsnorm > void at::native::vectorized_elementwise_kernel<4, at::native::mul>",
     "add + RMSNorm"),
    ("decode::decode_attention > aten::softmax", "attention"),
    ("decode::sample > void at::native::elementwise_kernel<128, 2, exponential>", "sampling"),
    ("decode::sample", "sampling"),  # the range's own CPU time
    # C++ kernel names hold " > " themselves: the range is still the one before the first
    ("decode::decode_attention > void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<"
     "at::native::OpaqueType<2> > >(at::TensorIteratorBase&) const&)::{lambda(int)#1})", "attention"),
    ("void at::native::index_elementwise_kernel<128, 4, at::native::gpu_index_kernel<at::native::OpaqueType<2> > >"
     "(at::TensorIteratorBase&) const&)::{lambda(int)#1})", "copies / other"),
    ("decode::step", "copies / other"),
    ("decode::prefill > sm90_xmma_gemm_bf16bf16", None),
    ("decode::prefill", None),
])
def test_kernel_category(name, category):
    assert kernel_category(name) == category


def test_profile_entries_on_older_torch_match_kernels_in_time_order():
    """torch 2.11: no linked_correlation_id; each op lists its kernels (name, duration), and a
    device event is matched to one of them. The same kernel listed by two ops in different
    ranges goes to them in time order, whatever the order of the event list; a labelled
    range's own device span is left out; a kernel no op lists is named by itself."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from tirgrpo.perf.profile import profile_entries

    def op(id_, name, start, parent=None, kernels=()):
        return SimpleNamespace(id=id_, name=name, cpu_parent=parent, device_type=DeviceType.CPU, is_async=False,
                               self_cpu_time_total=1.0, time_range=SimpleNamespace(start=start),
                               kernels=[SimpleNamespace(name=n, device=0, duration=d) for n, d in kernels])

    def device(name, start, us):
        return SimpleNamespace(id=0, name=name, device_type=DeviceType.CUDA, is_async=False,
                               time_range=SimpleNamespace(start=start, elapsed_us=lambda: us))

    step = op(1, "decode::step", 0)
    norm = op(2, "decode::add_rmsnorm", 1, step)
    norm_mul = op(3, "aten::mul", 2, norm, kernels=[("k_same", 3.0)])
    silu = op(4, "decode::silu_mul", 5, step)
    silu_mul = op(5, "aten::mul", 6, silu, kernels=[("k_same", 3.0)])
    events = [step, norm, norm_mul, silu, silu_mul,
              device("k_same", 120, 3.0), device("k_same", 100, 3.0),  # listed late first
              device("decode::silu_mul", 119, 5.0),  # the range's device span
              device("_triton_kernel", 110, 7.0)]  # launched by Triton, listed by no op
    entries, steps = profile_entries(SimpleNamespace(events=lambda: events), "cuda")
    assert steps == 1
    assert entries == [("decode::silu_mul > k_same", 3.0, 1), ("decode::add_rmsnorm > k_same", 3.0, 1),
                       ("_triton_kernel", 7.0, 1)]


def test_split_scope_keeps_whole_kernel_names():
    from tirgrpo.perf.profile import split_scope

    kernel = "void k<at::native::OpaqueType<2> > >(int) const&)::{lambda(int)#1})"
    assert split_scope(f"decode::sample > {kernel}") == ("decode::sample", kernel)
    assert split_scope(kernel) == ("", kernel)


def test_per_step_table_on_hand_numbers():
    entries = [
        ("nvjet_a", 600.0, 6), ("sm90_xmma_gemm_b", 200.0, 2),  # matmul: 800 us, 8 kernels
        ("_decode_attention_split_kernel", 300.0, 2), ("_decode_attention_combine_kernel", 100.0, 2),
        ("decode::lm_head > nvjet_a", 400.0, 2),
        ("decode::sample > argmax", 200.0, 4),
        ("decode::prefill > nvjet_a", 5000.0, 1),  # left out
        ("Memcpy DtoH", 0.0, 2),
    ]
    table = per_step_table(entries, steps=2, top=1)
    assert table["steps"] == 2
    assert table["total_ms_per_step"] == pytest.approx(0.9)  # 800 + 400 + 400 + 200 + 0 us / 2 steps
    rows = {r["category"]: r for r in table["categories"]}
    assert [r["category"] for r in table["categories"]] == list(CATEGORIES)
    assert rows["matmul"]["ms_per_step"] == pytest.approx(0.4)
    assert rows["matmul"]["percent"] == pytest.approx(800 / 1800 * 100)
    assert rows["matmul"]["kernels_per_step"] == 4
    assert rows["matmul"]["top"] == [["nvjet_a", pytest.approx(0.3)]]  # the LM head's nvjet_a is not here
    assert rows["attention"]["ms_per_step"] == pytest.approx(0.2)
    assert rows["LM head / logits"]["ms_per_step"] == pytest.approx(0.2)
    assert rows["sampling"]["kernels_per_step"] == 2
    assert rows["silu * mul"] == {"category": "silu * mul", "ms_per_step": 0.0, "percent": 0.0,
                                  "kernels_per_step": 0.0, "top": []}
    assert rows["copies / other"]["kernels_per_step"] == 1
    text = format_table(table)
    assert "44.4%" in text.splitlines()[1] and "0.900" in text.splitlines()[-1]
    with pytest.raises(ValueError):
        per_step_table(entries, steps=0)


@pytest.mark.slow
def test_profile_rollout_by_category_on_cpu(tmp_path, capsys, load_benchmark):
    module = load_benchmark("profile_rollout")
    out = tmp_path / "profile.json"
    (table,) = module.main(["--shape", "tiny-qwen2", "--device", "cpu", "--by-category", "--batch", "2",
                            "--group", "2", "--prompt-tokens", "16", "--new-tokens", "4", "--kernels", "torch",
                            "--json", str(out)])
    assert json.loads(out.read_text()) == [table]
    assert table["steps"] == 3 and table["time"] == "cpu self"  # 4 new tokens: 3 decode steps
    rows = {r["category"]: r for r in table["categories"]}
    for category in CATEGORIES:  # every part of the step shows up, the LM head apart from the matmuls
        assert rows[category]["ms_per_step"] > 0, category
    assert sum(r["ms_per_step"] for r in rows.values()) == pytest.approx(table["total_ms_per_step"])
    assert "over 3 decode steps" in capsys.readouterr().out


def test_labelled_engine_samples_the_same_tokens_and_is_put_back(tiny_engine):
    from tirgrpo.perf.profile import label_decode_ops

    engine, tokens = tiny_engine.engine, tiny_engine.tokens
    before, kernels, lm_head = tokens(), engine.kernels, engine.lm_head
    with label_decode_ops(engine):
        assert engine.kernels is not kernels
        labelled = tokens()
    assert labelled == before
    assert engine.kernels is kernels and engine.lm_head is lm_head
    assert "_step_fn" not in vars(engine) and "_prefill" not in vars(engine)


def test_profile_entries_names_cuda_kernels_by_their_launching_range():
    """The CUDA branch on hand-made profiler events: each kernel takes the labelled range of the
    op whose correlation id it links to (no GPU needed)."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from tirgrpo.perf.profile import profile_entries

    def op(id_, name, parent=None):
        return SimpleNamespace(id=id_, name=name, cpu_parent=parent, device_type=DeviceType.CPU, is_async=False,
                               linked_correlation_id=0, self_cpu_time_total=1.0)

    def kernel(name, launcher, us):
        return SimpleNamespace(id=0, name=name, device_type=DeviceType.CUDA, is_async=False,
                               linked_correlation_id=launcher, time_range=SimpleNamespace(elapsed_us=lambda: us))

    step1, step2 = op(1, "decode::step"), op(10, "decode::step")
    head = op(2, "decode::lm_head", step1)
    mm = op(3, "aten::mm", head)
    norm = op(4, "decode::add_rmsnorm", step1)
    qkv = op(5, "aten::addmm", step1)
    events = [step1, head, mm, norm, qkv, step2,
              kernel("nvjet_lm", 3, 40.0), kernel("_add_rmsnorm_kernel", 4, 5.0), kernel("nvjet_qkv", 5, 20.0),
              kernel("Memcpy DtoH", 99, 1.0)]  # launcher not recorded: its name decides
    prof = SimpleNamespace(events=lambda: events)
    entries, steps = profile_entries(prof, "cuda")
    assert steps == 2
    assert entries == [("decode::lm_head > nvjet_lm", 40.0, 1), ("decode::add_rmsnorm > _add_rmsnorm_kernel", 5.0, 1),
                       ("nvjet_qkv", 20.0, 1), ("Memcpy DtoH", 1.0, 1)]
    rows = {r["category"]: r["ms_per_step"] for r in per_step_table(entries, steps)["categories"]}
    assert rows["LM head / logits"] == pytest.approx(0.02) and rows["matmul"] == pytest.approx(0.01)
    entries, _ = profile_entries(prof, "cpu")  # the ops' own CPU time, each in its range
    assert ("decode::lm_head > aten::mm", 1.0, 1) in entries and ("decode::lm_head", 1.0, 1) in entries
    assert ("aten::addmm", 1.0, 1) in entries and len(entries) == 6



@pytest.mark.parametrize("value", ["100", "0"])
def test_profile_rollout_refuses_keys_per_split_off_the_block(value, load_benchmark, capsys):
    module = load_benchmark("profile_rollout")
    with pytest.raises(SystemExit):
        module.parse_args(["--keys-per-split", "128", value])
    assert "positive multiple of 64" in capsys.readouterr().err
    assert module.parse_args(["--keys-per-split", "64", "256"]).keys_per_split == [64, 256]
