"""Micro-batches packed by a token budget, and right padding with its masks."""

import pytest
import torch

from tirgrpo.train.batching import pack_by_tokens, right_pad


def test_pack_hand_case():
    # lengths [5, 3, 8, 2], budget 16; longest first: 2(8), 0(5), 1(3), 3(2)
    # [2, 0]: 2 rows * 8 = 16 <= 16; adding 1 -> 3 * 8 = 24 > 16: close the batch
    # [1, 3]: 2 rows * 3 = 6
    assert pack_by_tokens([5, 3, 8, 2], 16) == [[2, 0], [1, 3]]


def test_pack_tight_budget_one_row_each():
    # budget 9: any two rows of length >= 5 exceed it -> 8 alone, 5 alone; 3 + 2 -> 2 * 3 = 6 fits
    assert pack_by_tokens([5, 3, 8, 2], 9) == [[2], [0], [1, 3]]


def test_pack_sequence_longer_than_budget_gets_its_own_batch():
    # 20 > budget 10: alone; then 3, 3 -> 2 * 3 = 6 <= 10; a third 3 -> 9 <= 10
    assert pack_by_tokens([20, 3, 3, 3], 10) == [[0], [1, 2, 3]]
    assert pack_by_tokens([3, 20], 10) == [[1], [0]]


def test_pack_budget_zero_or_negative_is_one_batch():
    assert pack_by_tokens([5, 3, 8], 0) == [[2, 0, 1]]
    assert pack_by_tokens([5, 3, 8], -1) == [[2, 0, 1]]
    assert pack_by_tokens([], 0) == []
    assert pack_by_tokens([], 10) == []


def test_pack_ties_keep_index_order():
    assert pack_by_tokens([4, 4, 4, 4], 8) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("budget", [1, 7, 16, 50, 1000])
def test_pack_is_a_partition_within_budget(budget):
    g = torch.Generator().manual_seed(budget)
    lengths = torch.randint(1, 40, (37,), generator=g).tolist()
    batches = pack_by_tokens(lengths, budget)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(37))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= budget or len(b) == 1


def test_right_pad_hand_case():
    ids, attn, comp = right_pad([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 0], [3, 5, 6, 7]]
    assert attn.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert comp.tolist() == [[False, False, True, False], [False, True, True, True]]
    assert ids.dtype == torch.long and attn.dtype == torch.long and comp.dtype == torch.bool


def test_right_pad_uses_pad_id_and_empty_completion():
    ids, attn, comp = right_pad([[9, 9, 9], [8]], [[], [7]], pad_id=99)
    assert ids.tolist() == [[9, 9, 9], [8, 7, 99]]
    assert attn.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert comp.tolist() == [[False, False, False], [False, True, False]]
