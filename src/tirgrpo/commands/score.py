"""`tirgrpo score`: score completions from a file with a reward set and write the components.

Input: JSONL, one object per line with `completion`, `correct_answer` and optionally
`finish_reason` (`eos`/`stop`/`length`) and `stop` (the matched stop string); or a CSV file
with those columns (such as the seed's sample transcripts; an empty cell counts as absent).
Output: JSONL, each input record with `valid`, `decision`, `length`, `formatting`,
`correctness`, `w_length`, `w_formatting`, `w_correctness` and `total` added. Every record is
checked before anything is written, and the output appears whole or not at all.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from tirgrpo.errors import TirgrpoError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tirgrpo.validate import non_negative_int, positive_int

    parser.add_argument("--input", required=True, metavar="FILE", help="JSONL (or CSV) with completion, correct_answer")
    parser.add_argument("--out", required=True, metavar="FILE", help="JSONL written with the scores added")
    parser.add_argument(
        "--rewards", choices=["seed", "default"], help="reward set (default: the config's, else 'default')"
    )
    parser.add_argument(
        "--tokenizer", default="r1-distill-qwen", metavar="T", help="tokenizer for token counts (default: %(default)s)"
    )
    parser.add_argument(
        "--total-steps", type=positive_int, metavar="K", help="K for the curriculum (default: the config's optim.total_steps)"
    )
    parser.add_argument(
        "--step", type=non_negative_int, metavar="k", help="optimizer step k (default: K, the end of the curriculum)"
    )
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="score repeated identical records again instead of dropping them")
    parser.add_argument("--config", metavar="FILE.toml", help="take [rewards] (and optim.total_steps) from this config")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. rewards.decline=0.1",
    )


def run(args: argparse.Namespace) -> int:
    from tirgrpo.config import TrainConfig, load_config
    from tirgrpo.files import atomic_path
    from tirgrpo.score.rewards import score_records
    from tirgrpo.data.tokenizer import load_tokenizer
    from tirgrpo.score.records import check_records, read_records, summarize
    from tirgrpo.data.limits import drop_duplicates, report_duplicates
    from tirgrpo.files import check_output_file

    check_output_file(args.out)
    config = load_config(TrainConfig, args.config, args.overrides)
    cfg = dataclasses.replace(config.rewards, set=args.rewards) if args.rewards else config.rewards
    total_steps = config.optim.total_steps if args.total_steps is None else args.total_steps
    step = total_steps if args.step is None else args.step
    if total_steps <= 0 or step < 0:
        raise TirgrpoError(f"need --total-steps > 0 and --step >= 0, got K={total_steps}, k={step}")

    records, locations = read_records(args.input)
    pairs, duplicates = drop_duplicates(zip(records, locations), keep=args.keep_duplicates,
                                        key=lambda rl: json.dumps(rl[0], sort_keys=True))
    report_duplicates(duplicates, "records (identical)", args.keep_duplicates)
    records, locations = [r for r, _ in pairs], [w for _, w in pairs]
    check_records(records, locations, cfg.set)
    tokenizer = load_tokenizer(args.tokenizer)
    scores = score_records(records, cfg, tokenizer, step, total_steps)

    with atomic_path(args.out) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for record, score in zip(records, scores):
                f.write(json.dumps({**record, **score}, ensure_ascii=False) + "\n")
    print(f"rewards {cfg.set!r} at step {step} of {total_steps}, tokenizer {args.tokenizer!r}")
    print(summarize(scores))
    print(f"wrote {args.out}")
    return 0
