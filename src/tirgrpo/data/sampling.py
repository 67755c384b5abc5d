"""Which training prompts each rollout takes: a pure function of the stream position.

Two orders, both endless streams of epochs that a resumed run continues from its position
alone (the number of prompts taken so far):

* `stream_indices` — every example once per epoch, shuffled by (seed, epoch) or in file order;
* `paired_indices` — each rollout takes whole *pairs*: a question's correct example and its
  wrong twin, side by side. Every step then holds exactly as many correct-label as
  wrong-label prompts, on the same questions.

Why pairs: with random prompts a step may hold, say, 10 correct and 6 wrong examples; the
gradient then pushes P(submit) up more than down, and the next step the other way. Such a
random walk ends where GRPO has no signal left, at always-submit or always-decline (every
group's rewards equal). With pairs the push towards submitting on the correct twin and the
push away from it on the wrong twin come in equal numbers, so what they share (the question,
the plan, the bridge text) cancels and only what tells them apart is learned.
"""

from __future__ import annotations

import torch

from tirgrpo.errors import TirgrpoError


def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded permutation of range(n) for one epoch (the same on every machine)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def stream_indices(n_data: int, position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """Indices of the next `count` examples of an endless stream of epochs over `n_data`.

    Each epoch is a permutation seeded by (seed, epoch) (or file order without `shuffle`),
    so the stream is a pure function of `position`: resuming needs only the position.
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


def paired_indices(pairs: list[tuple[int, int]], position: int, count: int, seed: int, shuffle: bool) -> list[int]:
    """The next `count` prompts of an endless stream of pairs: correct, wrong, correct, wrong...

    `position` and `count` count prompts and must be even (a rollout takes whole pairs).
    """
    if position % 2 or count % 2:
        raise TirgrpoError(f"data.paired needs an even number of prompts per step, got {count}")
    if not pairs:
        raise TirgrpoError("data.paired: no question has both a correct and a wrong example")
    out = []
    for k in stream_indices(len(pairs), position // 2, count // 2, seed, shuffle):
        out.extend(pairs[k])
    return out
