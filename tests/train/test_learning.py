"""GRPO learns: a tiny model's held-out correctness goes from ~0 to >= 0.3 (perfect: 0.5).

The task (`tirgrpo.data.synthetic.compare_examples(..., wrong="error")`): each prompt shows
an expected digit and a code output that is either that digit (right: submit
`\\boxed{digit}`, +1) or `Error` (the code crashed: decline by opening a new code block,
0; submitting it scores -1). A fresh 2-layer Qwen2 (hidden 128, byte-level tokenizer) is
first taught the answer *format* by SFT on completions whose decision is a coin flip, so
it writes valid submissions and declines but chooses between them at random:
correctness ~0. GRPO with the correctness reward alone must then learn the decision.

Settings and why (measured on a 2-core CPU, sampled eval at temperature 1.0, 4 samples
on 64 held-out examples, so "before" is the policy's real ~0, not an argmax accident):

* KL to the SFT model (grpo.beta 0.1, a frozen copy): without it, or with lr 1e-3 and a
  2-step warm-up, the first Adam steps (each ~lr * sign(grad) on every weight) broke the
  format (invalid up to 40%) and the policy fell into always-decline (0 reward, groups
  with no spread, no signal left). lr 5e-4 with a 5-step warm-up and beta 0.1 was stable.
* `wrong="error"`, not a wrong digit: telling two digits apart needs a comparison circuit
  that this model groks only after ~200 *supervised* steps (SFT on the true labels: still
  chance at 150 steps, 0.99 decision accuracy at 400). GRPO on it rose late or not at all:
  13 runs over digits 2/3/5/10, lr 5e-4..2e-3, beta 0..0.2, scaled rewards, 8 or 16
  prompts a step and 150-300 steps all ended below 0.2, most in always-decline. A crashed
  output is read off one token, so what is tested is GRPO moving the decision.
* The wrong example's true answer is a number the prompt never shows: when it was
  `expected`, one run learned to box `expected` instead of the output and scored 0.74.

Numbers seen with exactly these settings (digits 5; SFT 150 steps; GRPO 100 steps of 16
prompts x 8 samples; SEED below sets the model, the data draws and the run):

    seed   correctness before -> after   decision accuracy before -> after
    0      +0.02 -> +0.40                0.56 -> 0.94    (simple engine, unshared)
    0      +0.04 -> +0.40                0.59 -> 0.95    (this test: fast engine, shared prefix)
    1      -0.07 -> +0.40                0.54 -> 0.92
    2      -0.19 -> +0.34                0.41 -> 0.88    (takes off at ~step 40)
    3      -0.04 -> +0.42                0.51 -> 0.94
    seed 0, update sign flipped (advantages -A):  +0.02 -> -0.95   (0.56 -> 0.20, 39% invalid)
    seed 0, advantages zeroed (0 * A):            +0.02 -> +0.02   (unchanged: the policy
                                                  never leaves the reference, so KL adds nothing)

(flipped/zeroed: `tirgrpo.train.loss.group_advantages` wrapped with monkeypatch, run once by
hand.) Cost: ~110 CPU-seconds in all, on one thread; the wall
time equals that on an idle runner and grows with its load.

Held-out: the eval examples are their own seeded draw, written to their own file and
passed as `data.eval`; the test checks that the evaluation before and after training ran
on exactly those examples, and that they are a different draw from the training examples.
(With 5 values x {right, crashed} there are only 10 distinct prompts, so every eval
*prompt* also occurs in training: what is held out is the draw, not the prompts.)
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import byte_level_tokenizer, save_tiny_qwen2

DIGITS = 5
SEED = 0


def _overall(m: dict) -> dict:
    """The flat metrics of an eval result (newer summaries nest them under `overall`)."""
    return m.get("overall", m)


@pytest.fixture
def one_thread():
    """One intra-op thread: the matrices are tiny, so a second thread saves little, and on
    a busy runner spinning OpenMP threads cost several times the CPU (one run under load:
    528 CPU-seconds with 2 threads, 110 with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_grpo_raises_heldout_correctness(tmp_path, one_thread):
    from tirgrpo.config import TrainConfig, load_config
    from tirgrpo.data.records import read_examples, write_examples
    from tirgrpo.data.synthetic import compare_examples
    from tirgrpo.train.sft import SFTConfig, sft
    from tirgrpo.train.loop import train

    t0 = time.perf_counter()
    tok = byte_level_tokenizer()
    model_dir = save_tiny_qwen2(tmp_path / "model", tok, hidden=128, layers=2, seed=SEED)
    sft_set = compare_examples(256, 100 + SEED, tok, target="random", digits=DIGITS, wrong="error")
    train_set = compare_examples(256, 200 + SEED, tok, digits=DIGITS, wrong="error")
    eval_set = compare_examples(64, 300 + SEED, tok, digits=DIGITS, wrong="error")
    for name, examples in (("sft", sft_set), ("train", train_set), ("eval", eval_set)):
        write_examples(tmp_path / f"{name}.jsonl", examples)

    common = [f"model.name_or_path={model_dir}", "system.gradient_checkpointing=false", "run.tensorboard=false",
              f"run.seed={SEED}"]
    sft(load_config(SFTConfig, None, common + [
        f"data.train={tmp_path / 'sft.jsonl'}", f"run.out_dir={tmp_path / 'sft'}",
        "optim.total_steps=150", "optim.lr=3e-3", "optim.warmup_steps=5", "batch_size=32"]))
    samples = 4
    cfg = load_config(TrainConfig, None, common + [
        f"model.init_from={tmp_path / 'sft'}", f"data.train={tmp_path / 'train.jsonl'}",
        f"data.eval={tmp_path / 'eval.jsonl'}",
        f"run.out_dir={tmp_path / 'grpo'}", "run.save_every=0",
        "rollout.prompts_per_step=16", "rollout.group_size=8", "rollout.max_new_tokens=20",
        "rewards.curriculum=false", "rewards.weights={correctness=1.0}",
        "grpo.beta=0.1", "grpo.num_iterations=1",
        "optim.lr=5e-4", "optim.warmup_steps=5", "optim.total_steps=100",
        "run.eval_temperature=1.0", f"run.eval_samples={samples}"])
    summary = train(cfg, overwrite=True)
    before, after = _overall(summary["eval_before"]), _overall(summary["eval_after"])
    print(f"\ncorrectness {before['correctness']:+.3f} -> {after['correctness']:+.3f}, decision accuracy "
          f"{before['decision_accuracy']:.2f} -> {after['decision_accuracy']:.2f}, "
          f"{time.perf_counter() - t0:.0f} s")

    # Held out: both evaluations ran on exactly the eval file's examples, a draw of its own
    # (not the training file, nor a slice of the training draw).
    assert read_examples(str(tmp_path / "eval.jsonl")) == eval_set
    assert cfg.data.eval != cfg.data.train
    assert [ex.question for ex in eval_set] != [ex.question for ex in train_set[: len(eval_set)]]
    assert before["n"] == after["n"] == len(eval_set) * samples
    for tag in ("before", "after"):
        saved = json.loads((tmp_path / "grpo" / f"eval_{tag}.json").read_text())
        if "completions" in saved:  # per-example results: the eval examples, in order
            assert [c["question"] for c in saved["completions"]] == [ex.question for ex in eval_set]

    assert before["correctness"] <= 0.1, before
    assert after["correctness"] >= 0.3, after
    assert after["decision_accuracy"] >= 0.8, after
