"""Single-object prompts: which prompts name one object of the judge, in both languages, and
whether an image's detections show it."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ernie_vilg2.evaluation.object_prompts import (
    ObjectPrompt,
    judge_object_images,
    object_present,
    parse_object_prompt,
    summarize_objects,
)

LABELS = [
    {"id": 0, "en": "cat face", "zh": "猫脸"},
    {"id": 1, "en": "cat", "zh": "猫"},
    {"id": 2, "en": "red apple", "zh": "红苹果"},
    {"id": 3, "en": "banana", "zh": "香蕉"},
]


@pytest.mark.parametrize("prompt,expected", [
    ("red apple", ObjectPrompt("red apple", "en")),
    ("A Red  Apple.", ObjectPrompt("red apple", "en")),
    ("the banana", ObjectPrompt("banana", "en")),
    ("cat", ObjectPrompt("cat", "en")),
    ("a cat face", ObjectPrompt("cat face", "en")),
    ("红苹果", ObjectPrompt("red apple", "zh")),
    ("一根香蕉。", ObjectPrompt("banana", "zh")),
    ("猫 脸", ObjectPrompt("cat face", "zh")),
])
def test_single_object_prompts_parse_in_both_languages(prompt, expected):
    assert parse_object_prompt(prompt, LABELS) == expected


@pytest.mark.parametrize("prompt", [
    "", "a", "an apple", "苹果", "a green apple", "red apples", "a red apple and a banana",
    "a red apple to the left of a banana", "红苹果在香蕉的左边", "a a red apple", "yellow square", None,
])
def test_other_prompts_are_not_single_objects(prompt):
    assert parse_object_prompt(prompt, LABELS) is None


def dets(*rows):
    return SimpleNamespace(labels=[r[0] for r in rows], scores=np.float32([r[1] for r in rows]),
                           boxes=np.float32([[0, 0, 8, 8]] * len(rows)).reshape(-1, 4))


def test_the_object_is_present_when_its_class_scores_above_the_threshold():
    apple = ObjectPrompt("red apple", "en")
    assert object_present(dets(("banana", 0.9), ("red apple", 0.36)), apple)
    assert not object_present(dets(("banana", 0.9), ("red apple", 0.34)), apple)
    assert not object_present(dets(), apple)
    assert object_present(dets(("red apple", 0.2)), apple, score_threshold=0.2)
    with pytest.raises(ValueError, match="2 scores and 1 labels"):
        object_present(SimpleNamespace(labels=["red apple"], scores=np.float32([0.9, 0.1])), apple)


def test_judge_object_images_asks_the_detector_once_per_image():
    class Detector:
        def predict(self, images, batch_size):
            return [dets(("banana", 0.8)) if im.mean() > 0 else dets() for im in images]

    images = [np.ones((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)]
    objects = [ObjectPrompt("banana", "en"), ObjectPrompt("banana", "zh"), ObjectPrompt("red apple", "en")]
    assert judge_object_images(Detector(), images, objects) == [True, False, False]
    with pytest.raises(ValueError, match="one per image"):
        judge_object_images(Detector(), images, objects[:2])


def test_summary_per_language_resamples_prompts():
    present = [True, True, False, False, True, True]
    langs = ["zh", "zh", "en", "en", "en", "en"]
    groups = ["香蕉", "香蕉", "banana", "banana", "red apple", "red apple"]
    summary = summarize_objects(present, langs, groups=groups)
    assert summary["zh"]["present"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2}
    assert summary["en"]["present"]["mean"] == 0.5 and summary["all"]["present"]["n"] == 6
    # Two prompts in English: a resample holds 0, 1 or 2 copies of the failing one.
    assert summary["en"]["present"]["low"] == 0.0 and summary["en"]["present"]["high"] == 1.0
