"""Prompts for training and evaluation: examples with their tokenized prompts, and the
order in which training takes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tirgrpo.errors import TirgrpoError


@dataclass
class Prompt:
    """An example (`tirgrpo.data.records.Example`) and its prompt's token ids."""

    example: object
    ids: list[int]


def load_prompts(spec: str, tokenizer, max_prompt_tokens: int) -> list[Prompt]:
    """Read examples (JSONL/Parquet or `bundled:NAME`), tokenize prompts, drop over-long ones
    (max_prompt_tokens <= 0: keep all). A file without examples, or without one that fits, is refused."""
    from tirgrpo.data.bundled import bundled_path
    from tirgrpo.data.records import read_examples

    examples = read_examples(bundled_path(spec))
    if not examples:
        raise TirgrpoError(f"{spec}: no examples (the file has no rows)")
    out = []
    for ex in examples:
        ids = tokenizer(ex.prompt)["input_ids"]
        if max_prompt_tokens <= 0 or len(ids) <= max_prompt_tokens:
            out.append(Prompt(ex, ids))
    if not out:
        raise TirgrpoError(f"{spec}: no example has a prompt within {max_prompt_tokens} tokens")
    return out


def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of range(n) for one epoch (the same on every machine)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def prompts_for_rollout(n_data: int, position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the next `count` prompts of an endless stream of epochs over `n_data`.

    Each epoch is a permutation seeded by (seed, epoch) (file order without `shuffle`), so
    the stream is a pure function of its position: resuming needs only the position.
    """
    out = []
    perm, perm_epoch = None, -1
    for pos in range(position, position + count):
        epoch, i = divmod(pos, n_data)
        if not shuffle:
            out.append(i)
            continue
        if epoch != perm_epoch:
            perm, perm_epoch = _permutation(n_data, seed, epoch), epoch
        out.append(int(perm[i]))
    return out


# --------------------------------------------------------------------------- pairs
#
# With `data.paired`, each rollout takes whole *pairs*: a question's correct example and its
# wrong twin, side by side, so every step holds exactly as many correct-label as wrong-label
# prompts, on the same questions. Why: with random prompts a step may hold, say, 10 correct
# and 6 wrong examples; the gradient then pushes P(submit) up more than down, and the next
# step the other way. Such a random walk ends where GRPO has no signal left, at always-submit
# or always-decline (every group's rewards equal). With pairs the push towards submitting on
# the correct twin and the push away from it on the wrong twin come in equal numbers, so what
# they share (the question, the plan, the bridge text) cancels and only what tells them apart
# is learned.


def question_pairs(questions: list[str], labels: list[str]) -> tuple[list[tuple[int, int]], int]:
    """(correct, wrong) example-index pairs that share a question, and how many examples
    were left without a partner.

    A question with several examples of each label gives min(#correct, #wrong) pairs, in
    file order; pairs are listed in order of the question's first appearance.
    """
    by_question: dict[str, tuple[list[int], list[int]]] = {}
    for i, (q, lab) in enumerate(zip(questions, labels)):
        right, wrong = by_question.setdefault(q, ([], []))
        (right if lab == "correct" else wrong).append(i)
    pairs = [p for right, wrong in by_question.values() for p in zip(right, wrong)]
    return pairs, len(labels) - 2 * len(pairs)


def paired_prompts(pairs: list[tuple[int, int]], position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """The next `count` prompts of an endless stream of pairs: correct, wrong, correct, wrong...

    `position` and `count` count prompts and must be even (a rollout takes whole pairs).
    """
    if position % 2 or count % 2:
        raise TirgrpoError(f"data.paired needs an even number of prompts per step, got {count}")
    if not pairs:
        raise TirgrpoError("data.paired: no question has both a correct and a wrong example")
    out = []
    for k in prompts_for_rollout(len(pairs), position // 2, count // 2, seed, shuffle):
        out.extend(pairs[k])
    return out
