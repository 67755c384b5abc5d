"""`tirgrpo sft`: the masked NLL, the targets it learns, and a short run that lowers the loss."""

import pytest
import torch

from tirgrpo.data.records import write_examples
from tirgrpo.data.synthetic import DECLINE, SUBMIT, compare_examples
from tirgrpo.train.metrics import read_jsonl
from tirgrpo.train.sft import SFTConfig, sft, sft_loss, target_ids


def test_sft_loss_hand_numbers():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -4.0, -7.0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    # masked sum: -2 - 3 - 0.5 = -5.5; 3 target tokens -> 5.5 / 3 = 1.8333333
    assert float(sft_loss(logp, mask, 3)) == pytest.approx(5.5 / 3)
    # num_tokens is the whole batch's count (micro-batches add up): 10 tokens -> 0.55
    assert float(sft_loss(logp, mask, 10)) == pytest.approx(0.55)
    # no targets: 0, not a division by zero
    assert float(sft_loss(logp, torch.zeros_like(mask), 0)) == 0.0


def test_sft_loss_micro_batches_add_up_to_batch_mean():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -6.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    whole = sft_loss(logp, mask, 3)  # (1 + 2 + 3) / 3 = 2
    parts = sft_loss(logp[:1], mask[:1], 3) + sft_loss(logp[1:], mask[1:], 3)  # 3/3 + 3/3
    assert float(whole) == pytest.approx(2.0) and float(parts) == pytest.approx(2.0)


def test_sft_loss_gradient_only_on_targets():
    logp = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.bool)
    sft_loss(logp, mask, 3).backward()
    # d/dlogp = -mask / 3
    torch.testing.assert_close(logp.grad, -mask.float() / 3)


def test_target_ids_eos_only_for_submissions(byte_tokenizer):
    ex_submit, ex_decline = compare_examples(2, 0, byte_tokenizer)  # i = 0 correct (submit), i = 1 wrong (decline)
    assert ex_submit.completion.startswith("yes</think>\\boxed{") and ex_decline.completion == DECLINE
    tok = byte_tokenizer
    eos = tok.eos_token_id
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert target_ids(ex_submit, tok, True, "```python") == enc(ex_submit.completion) + [eos]
    # a decline ends at the code block: generation stops at the stop string, no eos follows
    assert target_ids(ex_decline, tok, True, "```python") == enc(DECLINE)
    assert eos not in target_ids(ex_decline, tok, True, "```python")
    # append_eos off: never
    assert target_ids(ex_submit, tok, False, "```python") == enc(ex_submit.completion)
    # no bos in the targets
    assert tok.bos_token_id not in target_ids(ex_submit, tok, True, "```python")
    assert SUBMIT.format(output=ex_submit.eventual_answer) == ex_submit.completion


@pytest.mark.slow
def test_sft_run_lowers_the_loss(tmp_path, tiny_model_dir, byte_tokenizer):
    data = tmp_path / "train.jsonl"
    write_examples(data, compare_examples(32, 0, byte_tokenizer))
    cfg = SFTConfig()
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.system.gradient_checkpointing = False
    cfg.data.train = str(data)
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 2
    cfg.optim.total_steps = 20
    cfg.system.micro_batch_tokens = 1024
    cfg.run.out_dir = str(tmp_path / "sft")
    cfg.system.device = "cpu"
    cfg.run.tensorboard = False
    cfg.batch_size = 8
    summary = sft(cfg)
    rows = read_jsonl(tmp_path / "sft" / "metrics.jsonl")
    losses = [r["sft/loss"] for r in rows]
    assert len(losses) == 20 and summary["steps"] == 20
    # a random 262-token model starts near ln(262) = 5.57 nats per token
    assert 4.5 < losses[0] < 7.0
    # seen: 5.58, 5.32, 4.91, ... 2.67, 2.63, 2.62 (most completion tokens are the fixed format);
    # require the last three steps to average below 70% of the first
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    assert summary["final_loss"] == pytest.approx(losses[-1])
    assert (tmp_path / "sft" / "final" / "model.safetensors").is_file()


def test_read_targets_checks_fields(tmp_path):
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.train.sft import read_targets

    good = tmp_path / "t.jsonl"
    good.write_text('{"prompt": "P1", "completion": "C1", "model": "big"}\n\n{"prompt": "P2", "completion": "C2"}\n')
    assert read_targets(str(good)) == [("P1", "C1"), ("P2", "C2")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "P1", "completion": "C1"}\n{"prompt": "P2", "completion": " "}\n')
    with pytest.raises(TirgrpoError, match=r"bad.jsonl, line 2, field 'completion'"):
        read_targets(str(bad))
    bad.write_text('["P", "C"]\n')
    with pytest.raises(TirgrpoError, match="line 1: must be a JSON object"):
        read_targets(str(bad))


def test_sft_from_a_file_of_target_completions(tmp_path, tiny_model_dir, byte_tokenizer):
    import json

    # one fixed target after every prompt, as a larger model might have written
    prompts = [ex.prompt for ex in compare_examples(8, 0, byte_tokenizer)]
    targets = tmp_path / "targets.jsonl"
    targets.write_text("".join(json.dumps({"prompt": p, "completion": "yes</think>\\boxed{7}"}) + "\n" for p in prompts))
    cfg = SFTConfig(targets=str(targets), batch_size=4)
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.system.gradient_checkpointing = False
    cfg.data.train = str(tmp_path / "absent.jsonl")  # never read when targets are given
    cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.total_steps = 1e-2, 0, 8
    cfg.run.out_dir, cfg.system.device, cfg.run.tensorboard = str(tmp_path / "sft"), "cpu", False
    sft(cfg)
    losses = [r["sft/loss"] for r in read_jsonl(tmp_path / "sft" / "metrics.jsonl")]
    # a random model starts near ln(262) = 5.57 nats; one repeated 21-token target is learnt fast
    assert 4.5 < losses[0] < 7.0 and losses[-1] < 0.6 * losses[0], losses
