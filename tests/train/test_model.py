"""Model loading through `transformers`, LoRA wrapping, and the saved HF folder."""

import tempfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tirgrpo.config import ModelConfig
from tirgrpo.errors import TirgrpoError
from tirgrpo.train.model import (count_parameters, load_base_model, load_policy, resolve_dtype, save_hf_folder,
                           tokenizer_spec)

CPU = torch.device("cpu")


def test_load_tiny_folder(tiny_model_dir, byte_tokenizer):
    model = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.vocab_size == len(byte_tokenizer) == 262
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert next(model.parameters()).dtype == torch.float32
    # the same weights as saved
    from safetensors.torch import load_file

    saved = load_file(str(tiny_model_dir / "model.safetensors"))
    torch.testing.assert_close(model.lm_head.weight, saved["lm_head.weight"], rtol=0, atol=0)
    bf16 = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_errors(tmp_path):
    with pytest.raises(TirgrpoError, match="without config.json"):
        load_base_model(ModelConfig(name_or_path=str(tmp_path)), CPU, torch.float32)
    with pytest.raises(TirgrpoError, match="GGUF file not found"):
        load_base_model(ModelConfig(name_or_path=str(tmp_path / "x.gguf")), CPU, torch.float32)
    with pytest.raises(TirgrpoError, match="unknown random shape"):
        load_base_model(ModelConfig(name_or_path="random:nope"), CPU, torch.float32)
    with pytest.raises(TirgrpoError, match="dtype must be one of"):
        resolve_dtype("fp8", CPU)


def test_random_tiny_qwen2_shape():
    model = load_base_model(ModelConfig(name_or_path="random:tiny-qwen2"), CPU, torch.float32)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (64, 2, 4, 2)
    assert c.intermediate_size == 128 and c.vocab_size == 151936 and not c.tie_word_embeddings
    assert model.lm_head.weight.shape == (151936, 64)
    assert model.model.embed_tokens.weight.shape == (151936, 64)
    assert tokenizer_spec(ModelConfig(name_or_path="random:tiny-qwen2")) == "r1-distill-qwen"
    # seeded: the same weights twice
    again = load_base_model(ModelConfig(name_or_path="random:tiny-qwen2"), CPU, torch.float32)
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, again.model.layers[0].mlp.up_proj.weight)


def test_policy_use_cache_off_and_checkpointing(tiny_model_dir):
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.float32, checkpointing=True)
    assert model.config.use_cache is False
    assert model.is_gradient_checkpointing
    plain = load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.float32, checkpointing=False)
    assert not plain.is_gradient_checkpointing


def _lora_model(tiny_model_dir, targets=("q_proj", "v_proj", "up_proj")):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir), lora=True, lora_r=4, lora_alpha=8,
                      lora_target_modules=list(targets))
    return load_policy(cfg, CPU, torch.float32, checkpointing=False)


def test_lora_trains_only_adapters(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    # 2 layers x 3 targets x (A + B)
    assert len(trainable) == 2 * 3 * 2
    n_train, n_total = count_parameters(model)
    # q_proj 64->64: r*(64+64) = 512; v_proj 64->32 (2 KV heads of 16): 4*(64+32) = 384;
    # up_proj 64->256: 4*(64+256) = 1280; per layer 2176, x 2 layers = 4352
    assert n_train == 4352
    base = load_base_model(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.float32)
    assert n_total == n_train + sum(p.numel() for p in base.parameters())  # every base weight is there, frozen

    # a backward pass reaches the adapters and nothing else
    ids = torch.tensor([[257, 10, 20, 30, 40]])
    model(input_ids=ids).logits.sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(trainable)


def test_save_hf_folder_of_lora_model_loads_without_peft(tiny_model_dir, byte_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _lora_model(tiny_model_dir)
    # peft initialises lora_B to zero (merged == base); give the adapters a real effect
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    ids = torch.tensor([byte_tokenizer("Is 3 = 3? yes")["input_ids"]])
    with torch.no_grad():
        lora_logits = model(input_ids=ids).logits
        with model.disable_adapter():
            base_logits = model(input_ids=ids).logits
    assert (lora_logits - base_logits).abs().max() > 1e-2  # the adapters matter

    out = tmp_path / "final"
    save_hf_folder(model, byte_tokenizer, out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert not (out / "adapter_config.json").exists()
    from safetensors.torch import load_file

    assert not [k for k in load_file(str(out / "model.safetensors")) if "lora" in k]
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(plain).__name__ == "Qwen2ForCausalLM"
    assert plain.config.use_cache is True  # saved for inference
    with torch.no_grad():
        merged_logits = plain(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, lora_logits, atol=1e-5, rtol=1e-5)
    # saving merged a copy: the policy still has its adapters
    assert any("lora_A" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, lora_logits)
    # and the tokenizer came along
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == byte_tokenizer("abc")["input_ids"]


def test_save_hf_folder_full_model_round_trip(tiny_model_dir, tmp_path):
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir)), CPU, torch.float32)
    with torch.no_grad():
        model.lm_head.weight.add_(0.25)
    save_hf_folder(model, None, tmp_path / "m")
    again = load_base_model(ModelConfig(name_or_path=str(tmp_path / "m")), CPU, torch.float32)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert model.config.use_cache is False  # the live policy keeps its training setting


# --------------------------------------------------------------------------- the real SmolLM2


@pytest.mark.slow
def test_smollm2_gguf_answers_a_chat_prompt():
    from tirgrpo.data.bundled import smollm2_gguf

    try:
        smollm2_gguf()
    except TirgrpoError as e:
        pytest.skip(str(e))
    from tirgrpo.rollout import SamplingParams
    from tirgrpo.rollout.simple import SimpleEngine
    from tirgrpo.data.tokenizer import load_tokenizer

    cfg = ModelConfig(name_or_path="smollm2-135m-instruct")
    tok = load_tokenizer(tokenizer_spec(cfg))
    model = load_base_model(cfg, CPU, torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    (c,), = SimpleEngine(model, tok).generate([ids], 1, SamplingParams(max_new_tokens=24, temperature=0.0))
    assert "5" in c.text, c.text  # seen: '2 + 3 = 5'
    assert c.finish_reason == "eos"  # the chat model ends its turn (<|im_end|>) within 24 tokens
    # A GGUF-loaded model is dequantised; saving it (with merged LoRA) must give a plain
    # HF folder. transformers refuses save_pretrained while the GGUF quantizer is attached.
    from transformers import AutoModelForCausalLM

    from tirgrpo.train.model import add_lora

    lora = add_lora(model, ModelConfig(lora=True))
    out = Path(tempfile.mkdtemp()) / "final"
    save_hf_folder(lora, tok, out)
    back = AutoModelForCausalLM.from_pretrained(out)
    x = torch.tensor([ids])
    assert torch.allclose(back(input_ids=x).logits, lora(input_ids=x).logits, atol=1e-5)


def test_compile_layers_setting():
    from tirgrpo.config import SystemConfig
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.train.plan import resolve_execution

    def planned(setting, device):
        return resolve_execution(SystemConfig(compile_layers=setting), torch.device(device)).compile_layers

    assert planned("auto", "cpu") is False and planned("auto", "cuda") is True  # auto: CUDA only
    assert planned("off", "cuda") is False and planned("on", "cpu") is True
    with pytest.raises(TirgrpoError, match="compile_layers"):
        planned("yes", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["off", "block"])
def test_compiled_layers_equal_eager_on_cuda(tiny_model_dir, kind):
    """Compiled decoder layers (with checkpointing; unshared and FlexAttention block masks)
    give the eager log-probs and gradients; under eager_layers() the model runs uncompiled."""
    from tirgrpo.train.model import compile_decoder_layers, eager_layers
    from tirgrpo.train.prefix import use_prefix_attention
    from tirgrpo.train.step import build_micro_batches, micro_batch_logprobs

    torch.manual_seed(0)
    prompts = [torch.randint(0, 250, (40,)).tolist()] * 3
    comps = [torch.randint(0, 250, (n,)).tolist() for n in (7, 30, 12)]
    results = []
    for compiled in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).cuda()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        if kind != "off":
            use_prefix_attention(model)
        if compiled:
            compile_decoder_layers(model)
        (mb,) = build_micro_batches(prompts, comps, 3, 0, kind, 0, "cuda")
        logp, _ = micro_batch_logprobs(model, mb, 64, 1.0, grad=True)
        (logp * mb.mask).sum().backward()
        with eager_layers():
            again, _ = micro_batch_logprobs(model, mb, 64, 1.0, grad=False)
        assert torch.allclose(again, logp.detach(), atol=1e-4)
        results.append((logp.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    assert torch.allclose(a, b, atol=1e-4)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-4, rtol=1e-3), n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_layers_with_split_groups_equal_eager_on_cuda(tiny_model_dir):
    """bf16, the split form with three groups in one pass (its sizes reach the compiled layers
    as a SplitSizes keyword): compiled log-probs and gradients equal eager ones to bf16 rounding,
    and a second pass of other sizes runs through the same compiled layers."""
    from tirgrpo.train.model import compile_decoder_layers
    from tirgrpo.train.prefix import use_prefix_attention
    from tirgrpo.train.step import build_micro_batches, micro_batch_logprobs

    torch.manual_seed(0)
    prompts = [torch.randint(0, 250, (n,)).tolist() for n in (40, 40, 25, 25, 33)]
    comps = [torch.randint(0, 250, (n,)).tolist() for n in (7, 30, 12, 3, 20)]
    prompts, comps = prompts[:2] + prompts[2:4] + [prompts[4], prompts[4]], comps + [comps[0]]
    results = []
    for compiled in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).cuda()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        use_prefix_attention(model)
        if compiled:
            compile_decoder_layers(model)
        (mb,) = build_micro_batches(prompts, comps, 2, 0, "split", 0, "cuda")
        assert mb.inputs.split.groups == 3
        logp, _ = micro_batch_logprobs(model, mb, 64, 1.0, grad=True)
        (logp.float() * mb.mask).sum().backward()
        (mb2,) = build_micro_batches(prompts[:4], comps[:4], 2, 0, "split", 0, "cuda")  # two groups
        micro_batch_logprobs(model, mb2, 64, 1.0, grad=False)
        results.append((logp.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    assert (a - b).abs().max().item() < 0.05
    for n in ga:
        err = (ga[n] - gb[n]).norm() / ga[n].norm().clamp(min=1e-6)
        assert err < 0.05, (n, err.item())
