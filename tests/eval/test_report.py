"""`tirgrpo report`: the renderer on hand-made logs, the page a tiny training run ends with, and
the page opened in headless Chromium (skipped when Chromium is not installed)."""

import base64
import json
import re
import shutil
import subprocess
import tempfile

import pytest
import torch

from tirgrpo.cli import main
from tirgrpo.data.records import write_examples
from tirgrpo.data.synthetic import compare_examples
from tirgrpo.eval.evaluate import summarize
from tirgrpo.eval.label_split import label_split_metrics
from tirgrpo.eval.report import Movement, movement_html, render_report, token_color

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data_uris(page):
    return re.findall(r"src='(data:image/png;base64,[^']+)'", page)


def hand_made_logs():
    rows = [{"step": s, "lr": 1e-3, "reward/total": 0.1 * s, "reward/correctness": -1 + 0.5 * s, "reward/length": 0.2,
             "reward/formatting": 0.3, "weight/correctness": 0.5 * s, "weight/length": 1 - 0.5 * s,
             "decision/submit": 0.25 * s, "decision/decline": 0.5, "decision/invalid": 0.5 - 0.25 * s,
             "train/kl": 0.01 * s, "train/clip_low": 0.0, "train/clip_high": 0.1, "train/entropy": 2.0,
             "train/loss": 0.5, "train/grad_norm": 1.0, "completion/tokens_mean": 12.0,
             **label_split_metrics(["correct", "wrong"], ["submit", "decline"], [1.0, 0.0], [0.5 * s, -0.5], [4, 9])}
            for s in (1, 2)]
    samples = [{"step": 2, "prompt_tail": "expected 3 <output>", "label": "wrong", "correct_answer": "12",
                "completion": "<script>alert(1)</script>no\x12</think>", "finish_reason": "stop", "stop": "```python",
                "decision": "decline", "length": 0.2, "formatting": 0.1, "correctness": 0.0, "total": 0.15,
                "advantage": 0.5}]
    ev = summarize(["q"], ["correct"], [["submit"]], [[1.0]], [[5]])
    return rows, samples, ev


def test_render_report_is_self_contained_and_escaped(tmp_path):
    rows, samples, ev = hand_made_logs()
    page = render_report(tmp_path / "run", "[model]\nname = \"<x>\"\n", rows, samples, ev, ev,
                         {"steps": 2, "trainable_params": 1000, "total_params": 5000}, "<p>movement</p>")
    for anchor in ("id=\"eval\"", "Reward components", "Schedule", "KL, clipping, entropy", "Decision mix",
                   "Split by label", "id=\"samples\"", "id=\"logprobs\"", "id=\"config\"", "<p>movement</p>"):
        assert anchor in page, anchor
    # five plots, each a PNG inside the page; nothing loaded from elsewhere
    uris = data_uris(page)
    assert len(uris) == 5
    for uri in uris:
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    assert "<script" not in page  # the completion's markup is shown as text
    # markup shown as text, a control character spelled out, the stop string marked
    assert "&lt;script&gt;alert(1)&lt;/script&gt;no\\x12&lt;/think&gt;⟨stop: ```python⟩" in page
    assert "name = &quot;&lt;x&gt;&quot;" in page
    assert "1,000 / 5,000" in page
    # the eval table: the policy's correctness before/after, then the four baselines, each with its
    # interval (one question: every resample is that question, so each interval is a point)
    one = lambda v: f"<td>{v:.3f} [{v:.3f}, {v:.3f}]</td>"  # noqa: E731
    assert "<tr><td>correctness</td>" + one(1) + one(1) + one(1) + one(0) + one(0.5) in page


def test_render_report_without_eval_or_samples(tmp_path):
    page = render_report(tmp_path, "", [{"step": 1, "reward/total": 0.0}], [], {}, {}, {}, "")
    assert "No evaluation in this run" in page and "No samples.jsonl" in page
    assert "Not logged in this run" in page  # the decision mix was not logged
    assert len(data_uris(page)) == 1  # only the total reward panel has data


def test_token_colours_and_movement_view():
    assert token_color(1.0, 2.0) == "rgba(40,110,230,0.50)"   # rose by half the scale: half-strength blue
    assert token_color(-4.0, 2.0) == "rgba(220,50,50,1.00)"   # fell by more than the scale: full red
    assert token_color(0.0, 0.0) == "rgba(220,50,50,0.00)"    # no change anywhere: transparent
    html = movement_html([Movement("t", "tail", ["a", "<b>"], [-1.0, -2.0], [-0.5, -3.0])], "init", "final")
    # scale = the largest change, |(-3) - (-2)| = 1; "a" rose by 0.5
    assert "rgba(40,110,230,0.50)" in html and "rgba(220,50,50,1.00)" in html
    assert "&lt;b&gt;" in html and "-3.00 -> -3.50 (-0.50 nats, 2 tokens)" in html
    assert "logp -1.000 -&gt; -0.500 (change +0.500)" in html


# --------------------------------------------------------------------------- a real (tiny) run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, byte_tokenizer):
    """A 2-step full fine-tuning run with eval, through the CLI; returns (run_dir, stdout)."""
    root = tmp_path_factory.mktemp("report-run")
    write_examples(root / "train.jsonl", compare_examples(8, 0, byte_tokenizer))
    write_examples(root / "eval.jsonl", compare_examples(4, 1, byte_tokenizer))
    run_dir = root / "run"
    (root / "cfg.toml").write_text(f"""
[model]
name_or_path = "{tiny_model_dir}"
[data]
train = "{root / 'train.jsonl'}"
eval = "{root / 'eval.jsonl'}"
[rollout]
group_size = 2
prompts_per_step = 2
max_new_tokens = 8
[grpo]
beta = 0.0
num_iterations = 1
[optim]
lr = 1e-2
warmup_steps = 0
total_steps = 2
[run]
out_dir = "{run_dir}"
save_every = 1
eval_samples = 2
eval_temperature = 1.0
eval_max_examples = 3
tensorboard = false
[system]
device = "cpu"
gradient_checkpointing = false
""", encoding="utf-8")
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", "--config", str(root / "cfg.toml")]) == 0
    return run_dir, out.getvalue()


@pytest.mark.slow  # the tiny run behind it: ~10 s
def test_training_ends_with_eval_table_and_report(tiny_run):
    run_dir, stdout = tiny_run
    assert "| metric | before | after | always-submit | always-decline | random | oracle |" in stdout
    assert f"report: {run_dir / 'report.html'}" in stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["report"] == str(run_dir / "report.html")
    assert summary["eval_after"]["overall"]["n"] == 6  # 3 examples x 2 samples
    after = json.loads((run_dir / "eval_after.json").read_text())
    assert len(after["completions"]) == 3 and len(after["completions"][0]["samples"]) == 2
    page = (run_dir / "report.html").read_text()
    assert "Not available" not in page
    # the log-prob view: 3 reference completions + 3 of the final policy, each token a coloured span
    assert page.count("reference completion") == 3 and page.count("final policy&#x27;s eval completion") == 3
    assert page.count("class=tok") > 30


@pytest.mark.slow  # the tiny run behind it: ~10 s
def test_logprob_views_load_the_right_weights(tiny_run, byte_tokenizer):
    from tirgrpo.config import TrainConfig, load_config
    from tirgrpo.eval.report import completion_logprobs, load_run_model

    run_dir, _ = tiny_run
    cfg = load_config(TrainConfig, run_dir / "config.toml", [])
    ex = compare_examples(1, 1, byte_tokenizer)[0]
    prompt = byte_tokenizer(ex.prompt)["input_ids"]
    comp = byte_tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
    lp = {w: completion_logprobs(load_run_model(run_dir, cfg, w, torch.device("cpu"), torch.float32), prompt, comp)
          for w in ("init", "final", "step_000002", "step_000001")}
    # the last checkpoint holds the final weights; the first and the start differ from them (lr 1e-2)
    torch.testing.assert_close(torch.tensor(lp["step_000002"]), torch.tensor(lp["final"]), rtol=1e-5, atol=1e-5)
    assert max(abs(a - b) for a, b in zip(lp["init"], lp["final"])) > 1e-3
    assert max(abs(a - b) for a, b in zip(lp["step_000001"], lp["final"])) > 1e-3
    assert len(lp["init"]) == len(comp) and all(x <= 0 for x in lp["init"])


@pytest.mark.slow  # the tiny run behind it: ~10 s
def test_report_command_between_checkpoints(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out), "--from", "step_000001", "--prompts", "1"]) == 0
    assert f"report: {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "from <b>step_000001</b> to <b>final</b>" in page and page.count("reference completion") == 1
    assert main(["report", str(run_dir), "--from", "latest"]) == 2
    assert "use init, final or step_NNNNNN" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # not a run folder


GOOD_ROW = json.dumps({"step": 1, "reward/total": 0.1}) + "\n"


@pytest.mark.parametrize("name, text, message", [
    ("metrics.jsonl", GOOD_ROW + '{"step": 2, "rew\n' + GOOD_ROW, "line 2: not valid JSON"),
    ("metrics.jsonl", GOOD_ROW + "3\n", "line 2: expected a JSON object"),
    ("metrics.jsonl", '{"reward/total": 0.1}\n', "line 1: no integer 'step'"),
    ("metrics.jsonl", '{"step": "1", "reward/total": 0.1}\n', "line 1: no integer 'step'"),
    ("metrics.jsonl", b'{"step": 1, "a": "\xff"}\n', "not UTF-8"),
    ("samples.jsonl", '{"completion": "x"}\n', "line 1: no integer 'step'"),
    ("samples.jsonl", '{"step": 1,\n', "line 1: not valid JSON"),
    ("samples.jsonl", GOOD_ROW + '{"step": 1, "completion": 7}\n', "row 2: 'completion' must be text, got int"),
    ("samples.jsonl", '{"step": 1, "completion": "x", "prompt_tail": ["a"]}\n', "row 1: 'prompt_tail' must be text"),
    ("samples.jsonl", '{"step": 1, "finish_reason": "stop", "stop": {"s": 1}}\n', "row 1: 'stop' must be text"),
    ("samples.jsonl", '{"step": 1, "completion": null}\n', "row 1: 'completion' must be text, got NoneType"),
    ("eval_before.json", '{"overall": ', "not valid JSON"),
    ("eval_before.json", "[1]", "expected a JSON object"),
    ("eval_after.json", '{"overall": {}, "baselines": 3}', "'baselines' must be an object"),
    ("eval_after.json", '{"intervals": {"policy": {"correctness": ["a", 1]}}}', "'intervals'"),
    ("summary.json", "[]", "expected a JSON object"),
    ("config.toml", b"\xff\xfe", "not UTF-8"),
])
def test_a_malformed_run_file_is_an_error_naming_it_not_a_traceback(tmp_path, capsys, name, text, message):
    (tmp_path / "metrics.jsonl").write_text(GOOD_ROW)
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["report", str(tmp_path), "--prompts", "0"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / name) in err and message in err, err
    assert "internal error" not in err and not (tmp_path / "report.html").exists()


def test_a_cut_off_last_log_line_of_a_crashed_run_is_left_out(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(GOOD_ROW + '{"step": 2, "rew')  # killed mid-append
    assert main(["report", str(tmp_path), "--prompts", "0"]) == 0
    assert (tmp_path / "report.html").is_file()


@pytest.mark.parametrize("out, message", [
    ("metrics.jsonl", "the run's metrics.jsonl and --out are the same file"),
    ("config.toml", "the run's config.toml and --out are the same file"),
    (".", "is a folder; name the output file instead"),
])
def test_report_refuses_an_out_that_is_a_folder_or_one_of_the_runs_files(tmp_path, capsys, out, message):
    # Before: --out RUN/metrics.jsonl replaced the run's log with the page (exit 0), and a folder
    # failed after all the work with "Is a directory: RUN/..r5.xxxx.tmp", a name the user never gave.
    (tmp_path / "metrics.jsonl").write_text(GOOD_ROW)
    (tmp_path / "config.toml").write_text("")
    assert main(["report", str(tmp_path), "--prompts", "0", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "--out" in err and "internal error" not in err, err
    assert (tmp_path / "metrics.jsonl").read_text() == GOOD_ROW
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml", "metrics.jsonl"]


def test_report_refuses_a_negative_prompt_count_at_parse_time(tmp_path, capsys):
    # Before: --prompts -1 was taken (and meant 0) without a word.
    (tmp_path / "metrics.jsonl").write_text(GOOD_ROW)
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path), "--prompts", "-1"])
    assert e.value.code == 2 and "argument --prompts" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_report_refuses_an_unknown_device_naming_the_option(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text(GOOD_ROW)
    assert main(["report", str(tmp_path), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "cuda:N" in err and "internal error" not in err


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]


@pytest.mark.slow  # the tiny run behind it: ~10 s
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (make install adds it where it can)")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    page = run_dir / "report.html"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the browser parsed the whole page: every section is in the DOM it built
    for anchor in ('id="eval"', 'id="samples"', 'id="logprobs"', 'id="config"', "class=\"tok\""):
        assert anchor in dom.stdout, anchor
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not errors, errors
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}",
                            "--window-size=1200,1600", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.read_bytes().startswith(PNG_MAGIC), r.stderr[-2000:]
    # the page is not blank: the screenshot has more than a handful of colours (text, tables, plots)
    from PIL import Image

    assert len(Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
