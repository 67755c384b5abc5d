"""`tirgrpo report RUN_DIR`: one self-contained HTML page about a run.

The page (RUN_DIR/report.html; no scripts, no external files: plots are PNGs embedded as
base64) shows the config, the reward components over steps, the curriculum schedule,
KL/clipping/entropy, the decision mix, the evaluation before and after training next to
the baselines, sample completions with their rewards, and a "log-prob movement" view.

Log-prob movement: for the first few eval prompts, completion tokens are coloured by how
much their log-probability changed between two models of the run (default: the model the
run started from and final/): blue = more likely after, red = less likely; hovering a
token shows both log-probs. Two completions per prompt are shown: the example's reference
completion (what a right judge writes) and, when the run kept it, what the final policy
wrote at the after-training eval. The start model is rebuilt from the config (the base
model, or `model.init_from`'s final model; LoRA adapters start at zero, so the start is
exactly that model); `step_NNNNNN` names one of the run's checkpoints.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tirgrpo.errors import TirgrpoError
from tirgrpo.train.metrics import read_jsonl

MODEL_NAME = re.compile(r"init|final|step_\d+")
"""How a model of the run is named: init, final, or a checkpoint step_NNNNNN."""


# --------------------------------------------------------------------------- small HTML helpers

esc = html.escape


def show(text: str) -> str:
    """HTML-escaped text with control characters (other than newline and tab) spelled out, e.g. \\x12."""
    return esc("".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text))

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .85em; white-space: pre-wrap; }
img { max-width: 100%; display: block; margin: .5em 0; }
.completion { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .85em; background: #fafafa;
              border: 1px solid #ddd; padding: .5em; line-height: 1.7; }
.tok { border-radius: 2px; }
.note { color: #666; font-size: .9em; }
.legend span { padding: 0 .6em; margin-right: .3em; }
"""


def png_data_uri(fig) -> str:
    """A matplotlib figure as a `data:image/png;base64,...` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _num(v: Any) -> float | None:
    from tirgrpo.eval.plot import number

    return number(v)  # one rule for tables and plots: also None for what cannot be drawn


def _fmt(v: Any, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return "—" if v is None else esc(str(v))
    if math.isnan(x):
        return "—"
    return f"{x:.{digits}f}" if not float(x).is_integer() or isinstance(v, float) else str(int(x))


# --------------------------------------------------------------------------- plots


def line_plots(rows: list[dict], groups: list[tuple[str, list[str]]]) -> str | None:
    """One figure with one panel per (title, keys): each key a line over optimizer steps; None if no data."""
    from tirgrpo.eval.plot import panel_figure

    fig = panel_figure(rows, groups, label=lambda key: key.split("/", 1)[-1])
    return None if fig is None else png_data_uri(fig)


def decision_mix_plot(rows: list[dict]) -> str | None:
    """Stacked shares of submit / decline / invalid per rollout; None if not logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if all(_num(r.get(f"decision/{d}")) is not None for d in ("submit", "decline", "invalid"))]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 2.8))
    ax.stackplot(steps, *[[r[f"decision/{d}"] for r in rows] for d in ("submit", "decline", "invalid")],
                 labels=["submit", "decline", "invalid"], colors=["#4c9be8", "#9bd08c", "#e88c8c"], step="mid")
    ax.set_ylim(0, 1)
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_title("decision mix of the rollouts", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return png_data_uri(fig)


# --------------------------------------------------------------------------- sections


def _eval_table(columns: list[tuple[str, dict, dict]]) -> str:
    """An HTML table: one column per (name, metrics, intervals), one row per metric present."""
    from tirgrpo.eval.evaluate import METRICS, format_cell

    head = "".join(f"<th>{esc(c)}</th>" for c in ["metric", *(c[0] for c in columns)])
    body = []
    for m in METRICS:
        if all(m not in c[1] for c in columns):
            continue
        cells = "".join(f"<td>{esc(format_cell(c[1].get(m), c[2].get(m)))}</td>" for c in columns)
        body.append(f"<tr><td>{esc(m)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def eval_section(before: dict, after: dict) -> str:
    """The before/after table with the baselines and 95% intervals, and the greedy before/after
    (eval results as `evaluate.summarize` writes them)."""
    from tirgrpo.eval.evaluate import BASELINES, overall_of

    if not before and not after:
        return "<p class=note>No evaluation in this run (data.eval is empty).</p>"
    ref = after or before

    def ci(result: dict, who: str) -> dict:
        return (result.get("intervals") or {}).get(who) or {}

    base = ref.get("baselines", {})
    cols = [("before", overall_of(before or {}), ci(before or {}, "policy")),
            ("after", overall_of(after or {}), ci(after or {}, "policy"))]
    cols += [(b, base[b], ci(ref, b)) for b in BASELINES if b in base]
    html = _eval_table(cols)
    b_over, a_over = overall_of(before or {}), overall_of(after or {})
    n = a_over.get("examples", b_over.get("examples"))
    k = ref.get("samples")
    html += (f"<p class=note>{_fmt(n)} eval examples" + (f", {k} sample(s) each" if k else "") +
             ". Brackets: bootstrap 95% interval, resampling questions. Baselines need no model: a "
             "submission boxes the transcript's own eventual answer.</p>")
    gb, ga = (before or {}).get("greedy") or {}, (after or {}).get("greedy") or {}
    if gb or ga:
        html += "<h3>Greedy (one completion per example)</h3>" + _eval_table(
            [("before", gb.get("overall", {}), ci(gb, "policy")), ("after", ga.get("overall", {}), ci(ga, "policy"))])
    return html


def samples_section(samples: list[dict], steps_shown: int = 3) -> str:
    """Kept rollout completions of the first, a middle and the last step, with their rewards."""
    if not samples:
        return "<p class=note>No samples.jsonl in this run.</p>"
    steps = sorted({s["step"] for s in samples})
    pick = sorted({steps[0], steps[len(steps) // 2], steps[-1]})[:steps_shown]
    out = []
    for step in pick:
        out.append(f"<h3>step {step}</h3><table><tr><th>label</th><th>correct answer</th><th>decision</th>"
                   "<th>correctness</th><th>length</th><th>formatting</th><th>total</th><th>advantage</th>"
                   "<th>completion</th></tr>")
        for s in (s for s in samples if s["step"] == step):
            text = s.get("completion", "")
            if s.get("finish_reason") == "stop" and s.get("stop"):
                text += f"⟨stop: {s['stop']}⟩"
            out.append(
                "<tr>" + "".join(f"<td>{_fmt(s.get(k))}</td>" for k in ("label", "correct_answer", "decision"))
                + "".join(f"<td>{_fmt(s.get(k))}</td>" for k in ("correctness", "length", "formatting", "total",
                                                                 "advantage"))
                + f"<td class=text><details><summary>prompt tail</summary><pre>{show(s.get('prompt_tail', ''))}</pre>"
                f"</details><div class=completion>{show(text)}</div></td></tr>")
        out.append("</table>")
    return "".join(out)


# --------------------------------------------------------------------------- log-prob movement


@dataclass
class Movement:
    """Per-token log-probs of one completion under two models."""

    title: str
    prompt_tail: str
    tokens: list[str]
    before: list[float]
    after: list[float]


def token_color(delta: float, scale: float) -> str:
    """Background for a log-prob change: blue when it rose, red when it fell, alpha = |delta|/scale (capped at 1)."""
    a = 0.0 if scale <= 0 else min(1.0, abs(delta) / scale)
    rgb = "40,110,230" if delta > 0 else "220,50,50"
    return f"rgba({rgb},{a:.2f})"


def movement_html(moves: list[Movement], from_name: str, to_name: str) -> str:
    """The coloured token views; one colour scale for all (the largest |change|)."""
    if not moves:
        return "<p class=note>No completions to show.</p>"
    scale = max((abs(b - a) for m in moves for a, b in zip(m.before, m.after)), default=0.0)
    parts = [f"<p class=legend>Colour: change of each token's log-prob from <b>{esc(from_name)}</b> to "
             f"<b>{esc(to_name)}</b>. <span style='background:{token_color(scale, scale)}'>+{scale:.2f}</span>"
             f"<span style='background:{token_color(-scale, scale)}'>−{scale:.2f}</span> nats (full colour); "
             "hover a token for its log-probs.</p>"]
    for m in moves:
        spans = []
        for tok, a, b in zip(m.tokens, m.before, m.after):
            tip = f"{tok!r}: logp {a:.3f} -> {b:.3f} (change {b - a:+.3f})"
            spans.append(f"<span class=tok style='background:{token_color(b - a, scale)}' title='{esc(tip)}'>"
                         f"{show(tok)}</span>")
        total = sum(m.after) - sum(m.before)
        parts.append(f"<h4>{esc(m.title)}</h4><p class=note>log-likelihood of the completion: {sum(m.before):.2f} -> "
                     f"{sum(m.after):.2f} ({total:+.2f} nats, {len(m.tokens)} tokens)</p>"
                     f"<details><summary>prompt tail</summary><pre>{show(m.prompt_tail)}</pre></details>"
                     f"<div class=completion>{''.join(spans)}</div>")
    return "".join(parts)


def load_run_model(run_dir: Path, cfg, which: str, device, dtype):
    """A model of the run: `init` (where training started), `final`, or a checkpoint `step_NNNNNN`."""
    from tirgrpo.config import ModelConfig
    from tirgrpo.train.model import load_base_model, load_policy, resolve_init

    if which == "init":
        model = load_base_model(resolve_init(cfg.model), device, dtype, cfg.run.seed)
    elif which == "final":
        if not (run_dir / "final" / "config.json").is_file():
            raise TirgrpoError(f"{run_dir}: no final model (final/config.json)")
        model = load_base_model(ModelConfig(name_or_path=str(run_dir / "final")), device, dtype, cfg.run.seed)
    else:
        ckpt = run_dir / "checkpoints" / which / "trainable.safetensors"
        if not ckpt.is_file():
            raise TirgrpoError(f"{run_dir}: no checkpoint {which!r} (expected {ckpt}); use init, final or step_NNNNNN")
        import torch
        from safetensors.torch import load_file

        model = load_policy(cfg.model, device, dtype, cfg.run.seed, checkpointing=False)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, t in load_file(str(ckpt)).items():
                params[name].copy_(t)
    return model.requires_grad_(False).eval()


def completion_logprobs(model, prompt_ids: list[int], comp_ids: list[int]) -> list[float]:
    """log p(comp_ids[i] | prompt, comp_ids[:i]) for each completion token (temperature 1)."""
    import torch

    from tirgrpo.train.logprobs import token_logprobs

    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids + comp_ids], device=device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(prompt_ids):] = True
    with torch.no_grad():
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids), mask)
    return logp[0, len(prompt_ids):].tolist()


def movement_views(run_dir: Path, cfg, n_prompts: int, from_model: str, to_model: str, device: str) -> list[Movement]:
    """Log-probs of the first eval prompts' completions under both models."""
    from tirgrpo.train.model import resolve_device, resolve_dtype, resolve_init, tokenizer_spec
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.data.prompts import load_prompts

    if not cfg.data.eval:
        raise TirgrpoError("the run has no eval data (data.eval) to take prompts from")
    tokenizer = load_tokenizer(tokenizer_spec(resolve_init(cfg.model)))
    prompts = load_prompts(cfg.data.eval, tokenizer, cfg.data.max_prompt_tokens)[:n_prompts]
    evaluated = read_json_object(run_dir / "eval_after.json").get("completions")
    evaluated = evaluated if isinstance(evaluated, list) else []
    items = []  # (title, prompt, completion text)
    for i, p in enumerate(prompts):
        ex = p.example
        items.append((f"eval prompt {i + 1} ({ex.label}), reference completion", p, ex.completion))
        kept = evaluated[i].get("samples") if i < len(evaluated) and isinstance(evaluated[i], dict) else None
        s = kept[0] if isinstance(kept, list) and kept and isinstance(kept[0], dict) else {}
        text = s.get("text") if isinstance(s.get("text"), str) else ""
        if text and s.get("finish_reason") == "stop" and isinstance(s.get("stop"), str):
            text += s["stop"]
        if text:  # a kept sample of another shape is left out: the reference completion still shows
            items.append((f"eval prompt {i + 1} ({ex.label}), final policy's eval completion "
                          f"(decision: {s.get('decision', '?')})", p, text))
    dev = resolve_device(device)
    dtype = resolve_dtype(cfg.system.dtype, dev)
    encoded = [(t, p, tokenizer(text, add_special_tokens=False)["input_ids"]) for t, p, text in items]
    encoded = [(t, p, ids) for t, p, ids in encoded if ids]
    results = {}
    for which in (from_model, to_model):
        model = load_run_model(run_dir, cfg, which, dev, dtype)
        results[which] = [completion_logprobs(model, p.ids, ids) for _, p, ids in encoded]
        del model
    return [Movement(title, p.example.prompt[-400:], [tokenizer.decode([t]) for t in ids], before, after)
            for (title, p, ids), before, after in zip(encoded, results[from_model], results[to_model])]


# --------------------------------------------------------------------------- the page


def render_report(run_dir: Path, config_text: str, rows: list[dict], samples: list[dict], eval_before: dict,
                  eval_after: dict, summary: dict, movement: str) -> str:
    """The HTML page from a run's logs (pure: no file or model access)."""
    train_rows = [r for r in rows if "reward/total" in r]
    plots = [
        ("Reward components", line_plots(train_rows, [
            ("total reward", ["reward/total"]), ("correctness", ["reward/correctness"]),
            ("length", ["reward/length"]), ("formatting", ["reward/formatting"])])),
        ("Schedule", line_plots(train_rows, [
            ("curriculum weights", ["weight/correctness", "weight/length", "weight/formatting"]),
            ("learning rate", ["lr"])])),
        ("KL, clipping, entropy", line_plots(train_rows, [
            ("KL to the reference (k3)", ["train/kl"]), ("clipped tokens", ["train/clip_low", "train/clip_high"]),
            ("entropy", ["train/entropy"]), ("loss", ["train/loss"]), ("gradient norm", ["train/grad_norm"]),
            ("completion tokens", ["completion/tokens_mean"])])),
        ("Decision mix", decision_mix_plot(train_rows)),
        ("Split by label", line_plots(train_rows, [
            ("submit rate by label", ["label/correct/submit", "label/wrong/submit"]),
            ("mean reward by label", ["label/correct/reward", "label/wrong/reward"]),
            ("skill (submit on correct - on wrong)", ["label/skill"]),
            ("advantage mass by decision", ["adv/submit", "adv/decline", "adv/invalid"]),
            ("advantage x tokens by decision", ["adv_tokens/submit", "adv_tokens/decline", "adv_tokens/invalid"]),
            ("completion tokens by decision", ["length/submit", "length/decline", "length/invalid"])])),
    ]
    eval_rows = [r for r in rows if "eval/correctness" in r]
    if len(eval_rows) > 1:
        plots.append(("Evaluation during training", line_plots(eval_rows, [
            ("eval correctness", ["eval/correctness"]), ("eval decision accuracy", ["eval/decision_accuracy"])])))
    sections = []
    for title, uri in plots:
        body = f"<img alt='{esc(title)}' src='{uri}'>" if uri else "<p class=note>Not logged in this run.</p>"
        sections.append(f"<h2>{esc(title)}</h2>{body}")
    steps = summary.get("steps", train_rows[-1]["step"] if train_rows else 0)
    params = (f"{summary['trainable_params']:,} / {summary['total_params']:,}"
              if isinstance(summary.get("trainable_params"), int) and isinstance(summary.get("total_params"), int) else "—")
    facts = {"run folder": str(run_dir), "optimizer steps": steps, "trainable / total parameters": params,
             "final model": summary.get("final_model", "—"), "report written": time.strftime("%Y-%m-%d %H:%M:%S")}
    fact_rows = "".join(f"<tr><td>{esc(k)}</td><td class=text>{esc(str(v))}</td></tr>" for k, v in facts.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tirgrpo report: {esc(run_dir.name)}</title>
<style>{CSS}</style></head><body>
<h1>tirgrpo run report: {esc(run_dir.name)}</h1>
<table>{fact_rows}</table>
<h2 id="eval">Evaluation before and after training</h2>{eval_section(eval_before, eval_after)}
{''.join(sections)}
<h2 id="samples">Sample completions and their rewards</h2>{samples_section(samples)}
<h2 id="logprobs">Log-prob movement</h2>{movement}
<h2 id="config">Config</h2><pre>{esc(config_text)}</pre>
</body></html>
"""


def read_text(path: Path) -> str:
    """A text file of the run ("" when missing), or a TirgrpoError naming it when it is not UTF-8."""
    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TirgrpoError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(path: Path) -> dict:
    """A JSON object file of the run ({} when missing), or a TirgrpoError naming it."""
    text = read_text(path)
    if not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise TirgrpoError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise TirgrpoError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def read_samples(path: Path) -> list[dict]:
    """samples.jsonl's rows (`read_jsonl`), each text field the page shows checked to be text
    (`stop` may be null: the run did not end on a stop string): a TirgrpoError names the file,
    the row (counting objects, from 1) and the field."""
    samples = read_jsonl(path)
    for n, row in enumerate(samples, start=1):
        for field in ("completion", "prompt_tail", "stop"):
            if field not in row or (field == "stop" and row[field] is None):
                continue
            if not isinstance(row[field], str):
                raise TirgrpoError(f"{path}, row {n}: {field!r} must be text, got {type(row[field]).__name__}")
    return samples


def read_eval(path: Path) -> dict:
    """An eval_*.json of the run, its tables checked to be what the page reads: objects of
    objects, and each interval two numbers (or null)."""
    result = read_json_object(path)
    for part in (result, result.get("greedy") or {}):
        if not isinstance(part, dict):
            raise TirgrpoError(f"{path}: 'greedy' must be an object")
        for key in ("overall", "baselines", "intervals"):
            table = part.get(key)
            if table is not None and not isinstance(table, dict):
                raise TirgrpoError(f"{path}: {key!r} must be an object, got {type(table).__name__}")
            inner = (table or {}).values() if key != "overall" else []
            if any(not isinstance(v, dict) for v in inner):
                raise TirgrpoError(f"{path}: every entry of {key!r} must be an object")
        for who in (part.get("intervals") or {}).values():
            for metric, ci in who.items():
                if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_num(x) is not None for x in ci)):
                    raise TirgrpoError(f"{path}: 'intervals' entry {metric!r} must be two numbers, got {ci!r:.80}")
    return result


# The files of a run folder that the report reads (the page must not replace one of them).
RUN_FILES = ("metrics.jsonl", "samples.jsonl", "eval_before.json", "eval_after.json", "summary.json",
             "config.toml", "plan.toml")


def build_report(run_dir: Path, out: Path | None = None, prompts: int = 3, from_model: str = "init",
                 to_model: str = "final", device: str = "cpu") -> Path:
    """Read a run folder, compute the log-prob movement view, write the page; returns its path."""
    from tirgrpo.config import TrainConfig, load_config
    from tirgrpo.files import atomic_write_text

    from tirgrpo.files import check_distinct_files, check_output_file

    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise TirgrpoError(f"{run_dir}: no metrics.jsonl; not a training run folder")
    # Before any work: a folder or an unwritable place for the page, or a page that would
    # replace one of the run's own files (its log, its config), is refused naming --out.
    out = check_output_file(out or run_dir / "report.html", "--out")
    check_distinct_files({f"the run's {name}": run_dir / name for name in RUN_FILES} | {"--out": out})
    # Every file is read and checked before the (slow) log-prob view, so a malformed one is
    # refused at once, naming it, and no page is written.
    rows, samples = read_jsonl(run_dir / "metrics.jsonl"), read_samples(run_dir / "samples.jsonl")
    evals = {name: read_eval(run_dir / name) for name in ("eval_before.json", "eval_after.json")}
    summary = read_json_object(run_dir / "summary.json")
    config_path = run_dir / "config.toml"
    config_text = read_text(config_path)
    plan_path = run_dir / "plan.toml"
    if plan_path.is_file():
        config_text += "\n# ---- plan.toml: what ran\n" + read_text(plan_path)
    movement = "<p class=note>Not computed (--prompts 0).</p>"
    if prompts > 0:
        try:
            cfg = load_config(TrainConfig, config_path, [])
            moves = movement_views(run_dir, cfg, prompts, from_model, to_model, device)
            movement = movement_html(moves, from_model, to_model)
        except (TirgrpoError, OSError) as e:  # the view is optional: the rest of the page still helps
            where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
            movement = f"<p class=note>Not available: {esc(str(e))}{esc(where)}</p>"
    page = render_report(run_dir, config_text, rows, samples, evals["eval_before.json"], evals["eval_after.json"],
                         summary, movement)
    atomic_write_text(out, page)
    return out
