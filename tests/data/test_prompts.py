"""Training-prompt order: plain streams and correct/wrong pairs, as pure functions of the position."""

import pytest
import torch

from tirgrpo.data.prompts import paired_prompts, prompts_for_rollout, question_pairs
from tirgrpo.errors import TirgrpoError


def test_stream_in_file_order_wraps_epochs():
    assert prompts_for_rollout(3, 2, 5, seed=0, shuffle=False) == [2, 0, 1, 2, 0]


def test_stream_shuffled_is_a_permutation_per_epoch_and_resumable():
    whole = prompts_for_rollout(5, 0, 10, seed=7, shuffle=True)
    assert sorted(whole[:5]) == [0, 1, 2, 3, 4] and sorted(whole[5:]) == [0, 1, 2, 3, 4]
    # the same seeded permutation as torch gives for (seed, epoch)
    g = torch.Generator().manual_seed(7 * 100_003 + 1)
    assert whole[5:] == torch.randperm(5, generator=g).tolist()
    # a resumed stream continues exactly where it stopped
    assert prompts_for_rollout(5, 3, 4, seed=7, shuffle=True) == whole[3:7]


def test_question_pairs_hand_case():
    questions = ["a", "a", "b", "c", "c", "c", "b"]
    labels = ["wrong", "correct", "correct", "correct", "wrong", "wrong", "correct"]
    pairs, unpaired = question_pairs(questions, labels)
    # a: (1, 0); b has no wrong example; c: correct 3 with the first wrong 4, wrong 5 is left over
    assert pairs == [(1, 0), (3, 4)]
    assert unpaired == 3


def test_paired_prompts_alternate_labels_and_resume():
    pairs = [(0, 1), (2, 3), (4, 5)]
    got = paired_prompts(pairs, 0, 6, seed=0, shuffle=False)
    assert got == [0, 1, 2, 3, 4, 5]
    shuffled = paired_prompts(pairs, 0, 12, seed=3, shuffle=True)
    for k in range(0, 12, 2):  # every step holds whole pairs: correct (even id) then its wrong twin
        assert shuffled[k] % 2 == 0 and shuffled[k + 1] == shuffled[k] + 1
    assert paired_prompts(pairs, 4, 4, seed=3, shuffle=True) == shuffled[4:8]


def test_paired_prompts_refuse_odd_counts_and_no_pairs():
    with pytest.raises(TirgrpoError, match="even number"):
        paired_prompts([(0, 1)], 0, 3, seed=0, shuffle=True)
    with pytest.raises(TirgrpoError, match="both a correct and a wrong"):
        paired_prompts([], 0, 2, seed=0, shuffle=True)


def test_an_empty_example_file_is_named_as_empty_not_as_too_long(tmp_path, byte_tokenizer):
    # Before: "no example has a prompt within 3072 tokens", which sends the user to max_prompt_tokens.
    from tirgrpo.data.prompts import load_prompts

    path = tmp_path / "train.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(TirgrpoError, match=f"{path}: no examples"):
        load_prompts(str(path), byte_tokenizer, 3072)
