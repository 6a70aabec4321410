"""The paired comparison of two variants' composition scores (evaluation/paired.py)."""
import numpy as np
import pytest

from ernie_vilg2.evaluation.paired import paired_difference, prompt_scores


def _records(scores):
    """{prompt: [passes of its images]} -> per-image records."""
    return [{"prompt": p, "relation_correct": ok} for p, oks in scores.items() for ok in oks]


def test_a_hand_computed_case():
    a = {0: _records({"x": [1, 0], "y": [0, 0], "z": [1, 1]}), 1: _records({"x": [0, 0], "y": [1, 0], "z": [1, 1]})}
    b = {0: _records({"x": [1, 1], "y": [1, 0], "z": [1, 1]}), 1: _records({"x": [1, 0], "y": [1, 1], "z": [0, 1]})}
    result = paired_difference(a, b, "relation_correct")
    # per prompt, seeds averaged: a x .25 y .25 z 1; b x .75 y .75 z .75 -> differences .5 .5 -.25
    assert (result["mean_a"], result["mean_b"], result["difference"]) == (0.5, 0.75, 0.25)
    assert result["seeds"] == [0, 1] and result["prompts"] == 3
    assert result["low"] <= 0.25 <= result["high"]
    # 8 sign patterns, those with |mean| >= 0.25: (+,+,-), (-,-,+), (+,+,+), (-,-,-) -> 1/2
    assert result["p_value"] == pytest.approx(0.5, abs=0.02)


def test_no_difference_and_a_clear_one():
    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(12)]
    a = {s: _records({p: list(rng.integers(0, 2, 4)) for p in prompts}) for s in range(3)}
    same = paired_difference(a, a, "relation_correct")
    assert same["difference"] == 0 and same["p_value"] == 1.0
    better = {s: _records({p: [1, 1, 1, 1] for p in prompts}) for s in range(3)}
    worse = {s: _records({p: [0, 0, 0, 0] for p in prompts}) for s in range(3)}
    clear = paired_difference(worse, better, "relation_correct")
    assert clear["difference"] == 1.0 and clear["low"] == clear["high"] == 1.0
    assert clear["p_value"] < 0.002  # all 12 signs agree: 2 / 2**12 of the flips


def test_only_what_both_variants_have_is_paired():
    a = {0: _records({"x": [1], "y": [0]}), 1: _records({"x": [1], "y": [1]})}
    b = {1: _records({"x": [0], "z": [1]}), 2: _records({"x": [1]})}
    result = paired_difference(a, b, "relation_correct")
    assert result["seeds"] == [1] and result["prompts"] == 1 and result["difference"] == -1.0
    with pytest.raises(ValueError, match="no training seed in both"):
        paired_difference(a, {5: a[0]}, "relation_correct")
    assert prompt_scores(a[0], "relation_correct") == {"x": 1.0, "y": 0.0}
