"""Training metrics split by label, on one hand-made step."""

import math

import pytest

from tirgrpo.eval.label_split import label_split_metrics

# Two prompts, G = 3: a `correct` one, then a `wrong` one.
LABELS = ["correct"] * 3 + ["wrong"] * 3
DECISIONS = ["submit", "submit", "decline", "submit", "decline", "invalid"]
REWARDS = [1.0, 1.0, 0.0, -1.0, 0.0, -1.0]
ADVANTAGES = [0.5, 0.5, -1.0, -0.5, 1.0, -0.5]
LENGTHS = [10, 12, 30, 8, 20, 40]


def test_label_split_hand_numbers():
    m = label_split_metrics(LABELS, DECISIONS, REWARDS, ADVANTAGES, LENGTHS)
    assert m == pytest.approx({
        "label/correct/submit": 2 / 3, "label/correct/decline": 1 / 3, "label/correct/invalid": 0.0,
        "label/correct/reward": 2 / 3,                       # (1 + 1 + 0) / 3
        "label/wrong/submit": 1 / 3, "label/wrong/decline": 1 / 3, "label/wrong/invalid": 1 / 3,
        "label/wrong/reward": -2 / 3,                        # (-1 + 0 - 1) / 3
        "label/skill": 1 / 3,                                # 2/3 - 1/3
        "adv/submit": 0.5,                                   # 0.5 + 0.5 - 0.5
        "adv/correct/submit": 1.0, "adv/wrong/submit": -0.5,
        "adv/decline": 0.0,                                  # -1 + 1
        "adv/correct/decline": -1.0, "adv/wrong/decline": 1.0,
        "adv/invalid": -0.5, "adv/correct/invalid": 0.0, "adv/wrong/invalid": -0.5,
        "adv_tokens/submit": 7.0,                            # 0.5*10 + 0.5*12 - 0.5*8
        "adv_tokens/decline": -10.0,                         # -1*30 + 1*20
        "adv_tokens/invalid": -20.0,                         # -0.5*40
        "length/submit": 10.0,                               # (10 + 12 + 8) / 3
        "length/decline": 25.0, "length/invalid": 40.0,
    })


def test_missing_label_or_decision_is_nan_not_zero():
    m = label_split_metrics(LABELS[:3], DECISIONS[:3], REWARDS[:3], ADVANTAGES[:3], LENGTHS[:3])
    assert math.isnan(m["label/wrong/submit"]) and math.isnan(m["label/wrong/reward"]) and math.isnan(m["label/skill"])
    assert math.isnan(m["length/invalid"]) and m["adv/invalid"] == 0.0  # no invalid completion: no mass
    assert m["label/correct/submit"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="different lengths"):
        label_split_metrics(LABELS, DECISIONS, REWARDS, ADVANTAGES, LENGTHS[:5])
