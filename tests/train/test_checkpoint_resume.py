"""`tirgrpo train --resume RUN_DIR` continues a run so that, on CPU with a fixed seed, its
metrics equal an uninterrupted run's; checkpoints are written atomically.

The interruption is real: run B raises KeyboardInterrupt (as Ctrl-C would) right after
its step-2 checkpoint is on disk, the CLI exits 130, and B is resumed through the CLI.
"""

import json
import os

import pytest
import torch

import tirgrpo.train.checkpoint as checkpoint
from tirgrpo.cli import main
from tirgrpo.data.records import write_examples
from tirgrpo.data.synthetic import compare_examples
from tirgrpo.train.metrics import read_jsonl

VOLATILE = ("time/", "throughput/", "memory/")
CKPT_FILES = {"trainable.safetensors", "optimizer.pt", "rng.pt", "state.json", "config.toml"}


def write_config(tmp_path, tiny_model_dir, tokenizer, name, lora, beta, num_iterations, eval_split):
    train = tmp_path / "train.jsonl"
    ev = tmp_path / "eval.jsonl"
    if not train.exists():
        write_examples(train, compare_examples(16, 0, tokenizer))
        write_examples(ev, compare_examples(4, 1, tokenizer))
    out = tmp_path / name
    text = f"""
[model]
name_or_path = "{tiny_model_dir}"
lora = {str(lora).lower()}
lora_r = 4
lora_alpha = 8

[data]
train = "{train}"
eval = "{ev if eval_split else ''}"

[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 8
temperature = 1.0
stop = ["```python"]

[grpo]
beta = {beta}
num_iterations = {num_iterations}

[optim]
lr = 1e-3
warmup_steps = 1
total_steps = 4

[run]
out_dir = "{out}"
seed = 3
save_every = 2
eval_max_examples = 2
tensorboard = false

[system]
device = "cpu"
gradient_checkpointing = false
micro_batch_tokens = 64
"""
    path = tmp_path / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path, out


def stable_rows(run_dir):
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE) and not k.endswith("seconds")} for r in rows]


def assert_rows_equal(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            if isinstance(ra[k], float):
                assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-6), (ra["step"], k)
            else:
                assert rb[k] == ra[k], (ra["step"], k)


def assert_latest_complete(run_dir):
    root = run_dir / "checkpoints"
    name = (root / "latest").read_text().strip()
    assert CKPT_FILES | {"plan.toml"} <= {p.name for p in (root / name).iterdir()}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    return name


@pytest.mark.slow
@pytest.mark.parametrize(
    "lora,beta,num_iterations,eval_split",
    [(False, 0.1, 1, True), (True, 0.05, 2, False)],
    ids=["full-ft-beta0.1-with-eval", "lora-beta0.05-2-iterations"],
)
def test_resume_equals_uninterrupted(tmp_path, tiny_model_dir, byte_tokenizer, monkeypatch, capsys,
                                     lora, beta, num_iterations, eval_split):
    cfg_a, run_a = write_config(tmp_path, tiny_model_dir, byte_tokenizer, "a", lora, beta, num_iterations, eval_split)
    cfg_b, run_b = write_config(tmp_path, tiny_model_dir, byte_tokenizer, "b", lora, beta, num_iterations, eval_split)

    # A: 4 uninterrupted steps
    assert main(["train", "--config", str(cfg_a)]) == 0
    rows_a = stable_rows(run_a)
    assert rows_a[-1]["step"] == 4

    # B: the same run, interrupted right after the step-2 checkpoint is written
    real_save = checkpoint.save_checkpoint

    def save_then_interrupt(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
    assert main(["train", "--config", str(cfg_b)]) == 130
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    assert assert_latest_complete(run_b) == "step_000002"
    # one metrics row per rollout: steps 1, 2 (1 iteration per rollout) or step 2 (2 iterations)
    assert [r["step"] for r in read_jsonl(run_b / "metrics.jsonl") if "train/loss" in r] == (
        [2] if num_iterations == 2 else [1, 2])
    assert not (run_b / "final").exists()
    state = json.loads((run_b / "checkpoints" / "step_000002" / "state.json").read_text())
    assert state["step"] == 2 and state["data_pos"] == 2 * (2 // num_iterations)

    # a stray row after the checkpoint (as if the process died after logging step 3) is dropped on resume
    with (run_b / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 3, "train/loss": 123.0}) + "\n")

    # resume through the CLI, as a user would
    assert main(["train", "--resume", str(run_b)]) == 0
    rows_b = stable_rows(run_b)
    assert_rows_equal(rows_a, rows_b)
    # training happened with a non-zero loss signal somewhere, so the equality is not vacuous
    assert any(r.get("train/grad_norm", 0) > 0 for r in rows_a)
    assert_latest_complete(run_a)
    assert_latest_complete(run_b)

    # the final models are the same weights
    from safetensors.torch import load_file

    wa = load_file(str(run_a / "final" / "model.safetensors"))
    wb = load_file(str(run_b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-6, atol=1e-7)
    # and they moved away from the initial weights
    w0 = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(w0[k], wa[k]) for k in w0 if k in wa)


def test_resume_without_checkpoint_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- atomicity


class _Opt:
    def __init__(self):
        self.value = torch.zeros(3)

    def state_dict(self):
        return {"steps": 1, "v": self.value}


def test_checkpoint_latest_points_at_complete_folder_and_survives_a_crash(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    frozen = torch.nn.Linear(2, 2)
    model.frozen = frozen
    frozen.requires_grad_(False)
    opt = _Opt()
    p1 = checkpoint.save_checkpoint(tmp_path, 1, model, opt, {"data_pos": 4}, "x = 1\n")
    assert p1.name == "step_000001"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert CKPT_FILES == {p.name for p in p1.iterdir()}
    state = json.loads((p1 / "state.json").read_text())
    assert state == {"data_pos": 4, "step": 1}
    from safetensors.torch import load_file

    assert set(load_file(str(p1 / "trainable.safetensors"))) == {"weight", "bias"}  # frozen weights not saved

    # a crash in the middle of writing step 2 (after the weights, during the optimizer)
    real_save = torch.save
    calls = []

    def crash(obj, f, *a, **k):
        calls.append(f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(tmp_path, 2, model, opt, {"data_pos": 8}, "x = 1\n")
    monkeypatch.setattr(torch, "save", real_save)
    assert calls  # the crash happened inside the checkpoint write
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_000001"
    assert not (root / "step_000002").exists()
    assert sorted(os.listdir(root)) == ["latest", "step_000001"]  # no half-written temporary folder
    assert checkpoint.latest_checkpoint(tmp_path) == p1


def test_checkpoint_keeps_newest_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    from tirgrpo.train.optim import AdamW

    opt = AdamW(model.parameters(), lr=1e-2)
    model.weight.grad = torch.ones(2, 3)
    model.bias.grad = torch.ones(2)
    opt.step()
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(tmp_path, step, model, opt, {"data_pos": step}, "", keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000004", "step_000006"]
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_000006"

    rng_before = torch.rand(3)  # what the generator gives after the checkpoint
    model2 = torch.nn.Linear(3, 2)
    opt2 = AdamW(model2.parameters(), lr=1.0)
    torch.manual_seed(123)  # scramble; load_checkpoint must restore the saved RNG state
    state = checkpoint.load_checkpoint(latest, model2, opt2)
    assert state == {"data_pos": 6, "step": 6}
    torch.testing.assert_close(torch.rand(3), rng_before)
    assert torch.equal(model2.weight, model.weight) and torch.equal(model2.bias, model.bias)
    assert opt2.steps == 1 and opt2.lr == 1e-2
    assert torch.equal(opt2.state[0]["m"], opt.state[0]["m"])


def test_latest_checkpoint_ignores_incomplete_target(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_000003").mkdir(parents=True)
    (root / "latest").write_text("step_000003\n")
    assert checkpoint.latest_checkpoint(tmp_path) is None  # no state.json: not complete
    assert checkpoint.latest_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.parametrize("kind", ["file", "folder of other things"])
def test_export_refuses_an_output_that_is_not_an_earlier_export(tmp_path, capsys, kind):
    # Before: export built the model, then replaced OUT as a whole: a user's folder (say ~/models)
    # was deleted, and a file gave way to a folder and left a .old file behind.
    ckpt = tmp_path / "step_000001"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"step": 1}')
    (ckpt / "config.toml").write_text('[model]\nname_or_path = "random:tiny-qwen2"\n')
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert main(["export", str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "internal error" not in err, err
    assert (out.read_text() == "notes") if kind == "file" else [p.name for p in out.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "step_000001"]


# --------------------------------------------------------------------------- damaged or foreign checkpoints


def _saved(tmp_path):
    """A checkpoint of a Linear(3, 2) trained one AdamW step, at step 4; returns its folder."""
    from tirgrpo.train.optim import AdamW

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = AdamW(model.parameters(), lr=1e-2)
    return checkpoint.save_checkpoint(tmp_path, 4, model, opt, {"rollout": 4, "data_pos": 8, "nonfinite": 0}, "")


def _fresh(shape=(3, 2)):
    from tirgrpo.train.optim import AdamW

    model = torch.nn.Linear(*shape)
    return model, AdamW(model.parameters(), lr=1.0)


DAMAGE = {
    "state.json not JSON": ("state.json", lambda p: p.write_text("{bad")),
    "state.json a list": ("state.json", lambda p: p.write_text("[1]")),
    "state.json step a string": ("state.json", lambda p: p.write_text('{"step": "x"}')),
    "state.json negative position": ("state.json", lambda p: p.write_text('{"step": 4, "data_pos": -1}')),
    "weights cut short": ("trainable.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
    "weights missing": ("trainable.safetensors", lambda p: p.unlink()),
    "optimizer garbage": ("optimizer.pt", lambda p: p.write_bytes(b"garbage\n")),
    "optimizer of other tensors": ("optimizer.pt", lambda p: torch.save({"steps": 1}, p)),
    "rng missing": ("rng.pt", lambda p: p.unlink()),
    "rng of something else": ("rng.pt", lambda p: torch.save([1, 2], p)),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_checkpoint_file_is_named_not_an_internal_error(tmp_path, damage):
    # Before: JSONDecodeError, SafetensorError, "invalid literal for int()", TypeError or KeyError:
    # each an internal error of `tirgrpo train --resume`.
    from tirgrpo.errors import TirgrpoError

    path = _saved(tmp_path)
    name, damage_it = DAMAGE[damage]
    damage_it(path / name)
    with pytest.raises(TirgrpoError, match=f"{path / name}: "):
        checkpoint.load_checkpoint(path, *_fresh())


@pytest.mark.parametrize("shape", [(4, 2), (3, 3)])
def test_a_checkpoint_of_another_model_is_refused(tmp_path, shape):
    # Before: torch's size-mismatch RuntimeError (or a ValueError for other names), an internal
    # error, e.g. after [model] was edited in RUN_DIR/config.toml between the runs.
    from tirgrpo.errors import TirgrpoError

    path = _saved(tmp_path)
    with pytest.raises(TirgrpoError, match=f"checkpoint {path} does not fit the model: .*weight"):
        checkpoint.load_checkpoint(path, *_fresh(shape))
    lora_like = torch.nn.Sequential(torch.nn.Linear(3, 2))  # its names are 0.weight, 0.bias
    from tirgrpo.train.optim import AdamW

    with pytest.raises(TirgrpoError, match="does not fit the model: .*lacks.*weight"):
        checkpoint.load_checkpoint(path, lora_like, AdamW(lora_like.parameters(), lr=1.0))


@pytest.mark.parametrize("pointer", ["missing", "not UTF-8", "names a folder that is gone"])
def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, pointer):
    # A run stopped (Ctrl-C) after its checkpoint folder was renamed into place but before
    # `latest` was written. Before: "--resume: no checkpoint there", the run's progress lost.
    _saved(tmp_path)
    root = tmp_path / "checkpoints"
    (root / "step_000002").mkdir()  # an older folder, not complete (no state.json): never chosen
    latest = root / "latest"
    {"missing": latest.unlink, "not UTF-8": lambda: latest.write_bytes(b"\xff\xfe"),
     "names a folder that is gone": lambda: latest.write_text("step_000009\n")}[pointer]()
    assert checkpoint.latest_checkpoint(tmp_path) == root / "step_000004"


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    # Before: --overwrite was silently ignored and the run resumed.
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", str(tmp_path), "--overwrite"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_resume_with_total_steps_below_the_checkpoint_is_refused(tmp_path, tiny_model_dir, capsys):
    # Before: the run "finished" at step 6 with optim.total_steps = 2 recorded in its config.toml.
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000006").mkdir(parents=True)
    (run / "checkpoints" / "step_000006" / "state.json").write_text('{"step": 6}')
    (run / "checkpoints" / "latest").write_text("step_000006\n")
    (run / "config.toml").write_text(f'[model]\nname_or_path = "{tiny_model_dir}"\n[run]\nout_dir = "{run}"\n')
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", "--resume", str(run), "--set", "optim.total_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "step 6" in err and "optim.total_steps = 2" in err and "internal error" not in err, err
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == before  # refused before any write


@pytest.mark.slow
def test_ctrl_c_between_the_checkpoint_and_latest_resumes_from_it(tmp_path, tiny_model_dir, byte_tokenizer,
                                                                  monkeypatch):
    cfg, run = write_config(tmp_path, tiny_model_dir, byte_tokenizer, "c", False, 0.0, 1, False)
    real_write = checkpoint.atomic_write_text

    def interrupted(path, text):
        if path.name == "latest" and text.strip() == "step_000002":
            raise KeyboardInterrupt  # as SIGINT would, right after the folder was renamed into place
        real_write(path, text)

    monkeypatch.setattr(checkpoint, "atomic_write_text", interrupted)
    assert main(["train", "--config", str(cfg)]) == 130
    monkeypatch.setattr(checkpoint, "atomic_write_text", real_write)
    assert not (run / "checkpoints" / "latest").exists() and (run / "checkpoints" / "step_000002").is_dir()
    assert main(["train", "--resume", str(run)]) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if "train/loss" in r] == [1, 2, 3, 4]
