"""`tirgrpo prepare`: TIR transcripts (seed-style CSV or transcript JSONL) -> train/eval examples (data/prepare.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tirgrpo.data.prepare import DEFAULT_TOKENIZER
from tirgrpo.errors import TirgrpoError
from tirgrpo.validate import fraction, non_negative_int, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Turn TIR transcripts into train/eval examples. Reads seed-style CSVs (columns prompt, "
        "completion, question, correct_answer, eventual_answer) and transcript JSONL files "
        "(docs/data-format.md), cuts transcripts into (prompt up to a code-output bridge, "
        "completion) segments, counts tokens, filters, pairs and splits by question, and writes "
        "OUT/train.jsonl, OUT/eval.jsonl and OUT/stats.json. Nothing is written on error."
    )
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="seed-style .csv or transcript .jsonl files (or bundled:NAME)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder; replaced as a whole if it holds an earlier prepare output")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, metavar="T",
                        help="r1-distill-qwen (built offline, the default), smollm2-135m-instruct, "
                             "a .gguf file, or a local tokenizer folder / cached Hugging Face id")
    parser.add_argument("--max-prompt-tokens", type=non_negative_int, default=3000, metavar="N",
                        help="drop segments whose prompt (with bos) is longer; 0 = no limit (default 3000)")
    parser.add_argument("--max-completion-tokens", type=non_negative_int, default=1000, metavar="N",
                        help="drop segments whose completion is longer; 0 = no limit (default 1000)")
    parser.add_argument("--no-pairing", dest="pairing", action="store_false",
                        help="keep every segment instead of one correct + one wrong per question")
    parser.add_argument("--pairs-per-question", type=positive_int, metavar="K",
                        help="keep up to K correct/wrong pairs of a question (distinct segments; default 1): "
                             "more examples from questions the solver answered both ways")
    parser.add_argument("--wrong-examples", choices=("all", "answered"), default="all",
                        help="answered: keep only the `wrong` segments whose transcript boxed a (wrong) answer, "
                             "the ones answer selection needs a judge to catch; all: also those of runs that "
                             "never boxed any (default)")
    parser.add_argument("--eval-fraction", type=fraction, default=0.1, metavar="F",
                        help="share of questions (not rows) held out for eval, at least one question "
                             "when there are two or more (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed for pairing choices and the split (default 0)")
    parser.add_argument("--judge-targets", action="store_true",
                        help="replace each completion by the judge's right decision for its label (submit the "
                             "eventual answer on `correct`, decline with a new python block on `wrong`), as SFT "
                             "targets for a judge; without it a completion is what the solver wrote next")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep repeated segments (also from a file given twice) instead of dropping them")


def run(args: argparse.Namespace) -> int:
    from tirgrpo.data.prepare import format_table, prepare_folder

    if not args.pairing and args.pairs_per_question is not None:
        raise TirgrpoError("--pairs-per-question keeps pairs, --no-pairing keeps every segment: give one of them")
    train, held, stats = prepare_folder(args.input, Path(args.out), args.tokenizer, args.max_prompt_tokens,
                                        args.max_completion_tokens, args.pairing, args.eval_fraction, args.seed,
                                        progress=sys.stderr.isatty(), keep_duplicates=args.keep_duplicates,
                                        judge_targets=args.judge_targets, pairs_per_question=args.pairs_per_question or 1,
                                        wrong_examples=args.wrong_examples)
    print(format_table(stats))
    print(f"\nwrote {train} train + {held} eval examples to {args.out}/")
    return 0
