"""`tirgrpo data ...`: build other data sets: `gsm8k-verify` (see tirgrpo.data.gsm8k),
`format-warmup`, format-only SFT targets whose decisions ignore the label
(tirgrpo.data.format_warmup), and `split-transcripts`, train / held-out transcript files by
problem (tirgrpo.data.split)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirgrpo.data.gsm8k import BRIDGES
    from tirgrpo.validate import positive_int

    sub = parser.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    p = sub.add_parser(
        "gsm8k-verify",
        help="short-context judging task from GSM8K (--hard: wrong twins whose plan misreads the question)",
        description=(
            "Build the gsm8k-verify task from a GSM8K JSONL file (fields question, answer). Each "
            "solution's <<expr=value>> annotations become a short Python program whose output is "
            "shown after the seed's code-output bridge; each question gives a correct example and "
            "a wrong twin (one perturbed number or operator, a different integer output; with --hard, a "
            "misreading of the question in plan and code alike). Prompts "
            "over --max-prompt-tokens are dropped. Writes examples (docs/data-format.md) as "
            ".jsonl or .parquet."
        ),
    )
    p.add_argument("--input", required=True, metavar="PATH", help="GSM8K JSONL, e.g. ../shared/data/gsm8k/train.jsonl")
    p.add_argument("--out", required=True, metavar="FILE", help="output .jsonl or .parquet (written atomically)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="stop after N usable questions (2N examples)")
    p.add_argument("--seed", type=int, default=0, help="seed for the question order and the perturbations (default 0)")
    p.add_argument("--tokenizer", default="r1-distill-qwen", metavar="T",
                   help="tokenizer for the token counts and the prompt limit (default r1-distill-qwen)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=400, metavar="N",
                   help="drop questions whose prompt (with bos) is longer (default 400)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep repeated questions (same question and answer) instead of dropping them")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="leave out every question of these examples (.jsonl/.parquet or bundled:NAME), e.g. the "
                        "training file when building a held-out eval file (repeatable)")
    p.add_argument("--hard", action="store_true",
                   help="hard wrong twins: the code agrees with its own plan, but the plan misreads the question "
                        "(a number from another sentence, a wrong operation, a unit or rate mix-up)")
    p.add_argument("--bridge", choices=tuple(BRIDGES), default="seed",
                   help="the text after the code's output: the seed's bridge (default); the same with the seed's "
                        "pre-filled start of the analysis (\"... Let me go through my code step by step. Looking at "
                        "my code,\"; the target completion is the rest of that sentence; +55 prompt tokens with the default "
                        "tokenizer); or one that asks to check each code line against its plan step and the problem "
                        "(+8 tokens)")
    _add_format_warmup(sub)
    _add_split_transcripts(sub)


def _add_format_warmup(sub) -> None:
    p = sub.add_parser(
        "format-warmup",
        help="examples -> the same examples with format-only completions whose decision ignores the label",
        description=(
            "Replace each example's completion by a bare submission (boxing the code's own output) or a bare "
            "decline (opening a new code block), half of each label's examples each, by a seeded shuffle. "
            "`tirgrpo sft` on the result teaches the answer format without the decision, so GRPO from it "
            "has to learn the decision (docs/learning.md)."
        ),
    )
    p.add_argument("--input", required=True, metavar="PATH", help="examples (.jsonl/.parquet or bundled:NAME)")
    p.add_argument("--out", required=True, metavar="FILE", help="output .jsonl or .parquet (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="seed of the decisions (default 0)")


def _add_split_transcripts(sub) -> None:
    from tirgrpo.validate import unit_interval

    p = sub.add_parser(
        "split-transcripts",
        help="transcript JSONL -> train and held-out transcript files, whole problems to one side",
        description=(
            "Split a transcript JSONL (tirgrpo generate's output) by problem id: a problem goes to the "
            "held-out file when its hash (sha256 of the seed and the id) is among the smallest "
            "round(fraction x problems), at least one problem on each side when there are two or more. "
            "Each side then goes through `tirgrpo prepare` on its own; the held-out file keeps every "
            "transcript of its problems for answer selection (`tirgrpo eval --transcripts --selection`)."
        ),
    )
    p.add_argument("--input", required=True, metavar="PATH", help="transcript JSONL")
    p.add_argument("--train", required=True, metavar="FILE", help="output: the training problems' transcripts")
    p.add_argument("--heldout", required=True, metavar="FILE", help="output: the held-out problems' transcripts")
    p.add_argument("--heldout-fraction", type=unit_interval, default=0.3, metavar="F",
                   help="share of problems held out (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hash order (default 0)")
    p.add_argument("--extra-train", nargs="+", default=[], metavar="PATH",
                   help="transcript JSONLs of other problems, all to the training side (e.g. the solver's "
                        "transcripts of another split); with them --heldout-fraction 1 holds out every "
                        "problem of --input")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "gsm8k-verify":
        return _gsm8k_verify(args)
    if args.data_command == "format-warmup":
        return _format_warmup(args)
    if args.data_command == "split-transcripts":
        from tirgrpo.data.split import split_transcripts

        counts = split_transcripts(args.input, args.train, args.heldout, args.heldout_fraction, args.seed,
                                   args.extra_train)
        extra = (f" ({counts['extra_problems']} of them, {counts['extra_transcripts']} transcripts, from "
                 f"--extra-train)" if args.extra_train else "")
        print(f"{args.input}: {counts['train_problems']} problems ({counts['train_transcripts']} transcripts) "
              f"to {args.train}{extra}, {counts['heldout_problems']} problems ({counts['heldout_transcripts']} "
              f"transcripts) to {args.heldout}")
        return 0
    raise AssertionError(args.data_command)  # argparse only lets known names through


def _gsm8k_verify(args: argparse.Namespace) -> int:
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.gsm8k import build_examples, question_key, read_gsm8k
    from tirgrpo.data.limits import drop_duplicates, report_duplicates
    from tirgrpo.data.records import read_examples, write_examples
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.data.tokenizer import load_tokenizer

    if args.limit is not None and args.limit < 1:
        raise TirgrpoError(f"--limit must be >= 1, got {args.limit}")
    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".parquet"):
        raise TirgrpoError(f"--out {out}: use a .jsonl or .parquet file name")
    from tirgrpo.files import check_distinct_files, check_output_file

    check_output_file(out)
    # The examples must not replace the GSM8K file they are made from, nor a file they leave out.
    check_distinct_files({"--input": bundled_path(args.input), "--out": out})
    for path in args.exclude:
        check_distinct_files({f"--exclude {path}": bundled_path(path), "--out": out})
    items, duplicates = drop_duplicates(read_gsm8k(args.input), key=lambda qa: qa, keep=args.keep_duplicates)
    report_duplicates(duplicates, "questions (same question and answer)", args.keep_duplicates)
    exclude = frozenset(question_key(e.question) for path in args.exclude for e in read_examples(bundled_path(path)))
    tokenizer = load_tokenizer(args.tokenizer)
    from tirgrpo.data.gsm8k_hard import make_hard_pair

    examples, counts = build_examples(items, tokenizer, limit=args.limit, seed=args.seed,
                                      max_prompt_tokens=args.max_prompt_tokens,
                                      make=make_hard_pair if args.hard else None, exclude=exclude,
                                      bridge=args.bridge)
    if not examples:
        raise TirgrpoError(f"{args.input}: no usable questions ({counts})")
    write_examples(out, examples)
    labels = Counter(e.label for e in examples)
    longest = max(e.prompt_tokens for e in examples)
    print(
        f"{args.input}: {counts['questions_seen']} questions read, {counts['used']} used, "
        + (f"{counts['skipped_excluded']} skipped (in --exclude), " if args.exclude else "")
        + f"{counts['skipped_program']} skipped (no usable program), "
        f"{counts['skipped_too_long']} skipped (prompt > {args.max_prompt_tokens} tokens)"
    )
    kinds = ", ".join(f"{k.split(':', 1)[1]} {v}" for k, v in sorted(counts.items()) if k.startswith("kind:"))
    print(f"wrong twins by kind: {kinds}")
    print(
        f"wrote {len(examples)} examples ({labels['correct']} correct, {labels['wrong']} wrong; "
        f"longest prompt {longest} tokens) to {out}"
    )
    return 0


def _format_warmup(args: argparse.Namespace) -> int:
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.format_warmup import coin_flip_examples
    from tirgrpo.data.records import read_examples, write_examples
    from tirgrpo.errors import TirgrpoError
    from tirgrpo.files import check_distinct_files, check_output_file

    out = Path(args.out)
    if out.suffix.lower() not in (".jsonl", ".parquet"):
        raise TirgrpoError(f"--out {out}: use a .jsonl or .parquet file name")
    check_output_file(out)
    check_distinct_files({"--input": bundled_path(args.input), "--out": out})  # the examples stay as they were
    examples = read_examples(bundled_path(args.input))
    if not examples:
        raise TirgrpoError(f"{args.input}: no examples")
    warm = coin_flip_examples(examples, args.seed, where=args.input)
    write_examples(out, warm)
    table = Counter((e.label, "submit" if "\\boxed" in e.completion else "decline") for e in warm)
    print(f"wrote {len(warm)} examples to {out}: " + ", ".join(f"{label} -> {d} {n}" for (label, d), n in sorted(table.items())))
    return 0
