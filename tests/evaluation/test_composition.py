"""The composition score: scene prompts in both languages, the judge's rules on hand-made
detections, an oracle judge on real held-out scenes (and their mirror images), and the
bootstrap summaries."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from ernie_vilg2.data.scenes import RELATIONS, relation_holds, scene_captions
from ernie_vilg2.evaluation.composition import (
    METRICS,
    ImageScore,
    ScenePrompt,
    centre_relation_holds,
    judge_accuracy,
    judge_images,
    load_scene_records,
    parse_scene_prompt,
    score_image,
    summarize,
)

from helpers.paths import REPO_ROOT

# Names that are prefixes/suffixes of each other, to check the longest name wins.
LABELS = [
    {"id": 0, "en": "cat face", "zh": "猫脸"},
    {"id": 1, "en": "cat", "zh": "猫"},
    {"id": 2, "en": "red apple", "zh": "红苹果"},
    {"id": 3, "en": "apple", "zh": "苹果"},
    {"id": 4, "en": "octopus", "zh": "章鱼"},
]


def entry(en, zh):
    return SimpleNamespace(name_en=en, name_zh=zh)


# ---------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("a,b", [(("red apple", "红苹果"), ("cat face", "猫脸")),
                                 (("octopus", "章鱼"), ("apple", "苹果")),
                                 (("cat", "猫"), ("red apple", "红苹果"))])
def test_builtin_templates_parse_in_both_languages(a, b, relation):
    en, zh = scene_captions(entry(*a), entry(*b), relation)
    assert parse_scene_prompt(en, LABELS) == ScenePrompt(a[0], b[0], relation, "en")
    assert parse_scene_prompt(zh, LABELS) == ScenePrompt(a[0], b[0], relation, "zh")


@pytest.mark.parametrize("prompt,expected", [
    ("a cat face on the left of an apple", ("cat face", "apple", "left")),
    ("A cat face is left of the red apple.", ("cat face", "red apple", "left")),
    ("an octopus to the right side of a cat", ("octopus", "cat", "right")),
    ("a cat  on the right of  a cat face!", ("cat", "cat face", "right")),
    ("an apple on top of an octopus", ("apple", "octopus", "above")),
    ("the octopus over the cat", ("octopus", "cat", "above")),
    ("a red apple under a cat face", ("red apple", "cat face", "below")),
    ("a cat beneath an octopus", ("cat", "octopus", "below")),
    ("an apple underneath a cat face", ("apple", "cat face", "below")),
    ("a cat face to the left of a cat face", ("cat face", "cat face", "left")),
    ("猫脸在苹果左边", ("cat face", "apple", "left")),
    ("猫在红苹果的左侧。", ("cat", "red apple", "left")),
    ("一只猫脸在一个红苹果的右侧", ("cat face", "red apple", "right")),
    ("章鱼 在 猫 的 右边", ("octopus", "cat", "right")),
    ("苹果在章鱼上方", ("apple", "octopus", "above")),
    ("苹果是在章鱼的上面", ("apple", "octopus", "above")),
    ("红苹果在猫脸下方！", ("red apple", "cat face", "below")),
    ("猫在章鱼的下面", ("cat", "octopus", "below")),
])
def test_paraphrases_parse(prompt, expected):
    scene = parse_scene_prompt(prompt, LABELS)
    assert scene is not None and (scene.a, scene.b, scene.relation) == expected
    assert scene.lang == ("zh" if any("\u4e00" <= ch <= "\u9fff" for ch in prompt) else "en")


@pytest.mark.parametrize("prompt", [
    "", "   ", "a red apple", "红苹果", "a red apple and a cat face", "红苹果和猫脸",
    "a red car to the left of a cat face",  # unknown object
    "a red apple to the left of a dog",  # unknown object
    "红苹果在狗的左边", "汽车在猫脸的右边",  # unknown objects
    "a red apple near a cat face", "红苹果在猫脸旁边",  # no stated relation
    "a red apple to the left of", "to the left of a cat face", "红苹果在的左边",
    "a big red apple to the left of a cat face",  # extra words: not a plain scene
    "a red apple to the left of a cat face and an octopus",
])
def test_non_scenes_are_none(prompt):
    assert parse_scene_prompt(prompt, LABELS) is None


def test_non_string_prompt_is_none():
    assert parse_scene_prompt(None, LABELS) is None


def test_labels_from_a_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(LABELS, ensure_ascii=False), encoding="utf-8")
    assert parse_scene_prompt("章鱼在猫的上面", str(path)) == ScenePrompt("octopus", "cat", "above", "zh")


# ---------------------------------------------------------------------------- one image
def dets(*rows):
    """Detections from (label, score, box) rows."""
    return SimpleNamespace(labels=[r[0] for r in rows], scores=np.float32([r[1] for r in rows]),
                           boxes=np.float32([r[2] for r in rows]).reshape(-1, 4))


LEFT_BOX, RIGHT_BOX, TOP_BOX, BOTTOM_BOX = [2, 10, 14, 22], [18, 9, 30, 21], [10, 2, 22, 14], [9, 18, 21, 30]
APPLE_LEFT_OF_CAT = ScenePrompt("red apple", "cat face", "left", "en")


def verdict(score: ImageScore):
    return tuple(getattr(score, m) for m in METRICS)


def test_both_present_and_relation_right():
    d = dets(("red apple", 0.9, LEFT_BOX), ("cat face", 0.8, RIGHT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT, 0.35)) == (True, True, True, True)


def test_wrong_relation():
    d = dets(("red apple", 0.9, RIGHT_BOX), ("cat face", 0.8, LEFT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT, 0.35)) == (True, True, True, False)
    d = dets(("red apple", 0.9, TOP_BOX), ("cat face", 0.8, BOTTOM_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT, 0.35)) == (True, True, True, False)
    assert score_image(d, ScenePrompt("red apple", "cat face", "above", "zh"), 0.35).relation_correct


def test_absent_objects():
    assert verdict(score_image(dets(("red apple", 0.9, LEFT_BOX)), APPLE_LEFT_OF_CAT)) == (True, False, False, False)
    assert verdict(score_image(dets(("octopus", 0.9, RIGHT_BOX)), APPLE_LEFT_OF_CAT)) == (False, False, False, False)
    assert verdict(score_image(dets(), APPLE_LEFT_OF_CAT)) == (False, False, False, False)


def test_below_threshold_is_absent():
    d = dets(("red apple", 0.9, LEFT_BOX), ("cat face", 0.3, RIGHT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT, 0.35)) == (True, False, False, False)
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT, 0.25)) == (True, True, True, True)


def test_duplicates_of_a_class_use_the_best_box():
    # The best apple is right of the cat; a weaker apple on the left does not rescue it.
    d = dets(("red apple", 0.9, RIGHT_BOX), ("cat face", 0.8, TOP_BOX), ("red apple", 0.5, LEFT_BOX))
    moved = dets(("red apple", 0.9, LEFT_BOX), ("cat face", 0.8, RIGHT_BOX), ("red apple", 0.5, RIGHT_BOX))
    scene = ScenePrompt("red apple", "cat face", "left", "en")
    assert score_image(d, scene).relation_correct is False
    assert score_image(moved, scene).relation_correct is True


def test_one_object_read_as_both_classes_counts_once():
    d = dets(("red apple", 0.9, LEFT_BOX), ("cat face", 0.6, LEFT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT)) == (True, False, False, False)
    # The cat face's next box elsewhere is the object; the shared box stays the apple's.
    d = dets(("red apple", 0.9, LEFT_BOX), ("cat face", 0.6, LEFT_BOX), ("cat face", 0.5, RIGHT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT)) == (True, True, True, True)
    # The better score keeps the shared box: here it is the cat face, so the apple is missing.
    d = dets(("cat face", 0.9, LEFT_BOX), ("red apple", 0.6, LEFT_BOX))
    assert verdict(score_image(d, APPLE_LEFT_OF_CAT)) == (False, True, False, False)


def test_one_class_named_twice_needs_two_boxes():
    scene = ScenePrompt("cat face", "cat face", "left", "en")
    assert verdict(score_image(dets(("cat face", 0.9, LEFT_BOX)), scene)) == (True, False, False, False)
    same = dets(("cat face", 0.9, LEFT_BOX), ("cat face", 0.8, [2.5, 10, 14, 22]))
    assert verdict(score_image(same, scene)) == (True, False, False, False)
    two = dets(("cat face", 0.9, RIGHT_BOX), ("cat face", 0.8, LEFT_BOX))  # either order reads "left of"
    assert verdict(score_image(two, scene)) == (True, True, True, True)
    stacked = dets(("cat face", 0.9, TOP_BOX), ("cat face", 0.8, BOTTOM_BOX))
    assert verdict(score_image(stacked, scene)) == (True, True, True, False)


def test_mismatched_detections_are_an_error():
    bad = SimpleNamespace(labels=["cat face"], scores=np.float32([0.9, 0.8]), boxes=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="detections"):
        score_image(bad, APPLE_LEFT_OF_CAT)


def test_centre_rule():
    assert centre_relation_holds(LEFT_BOX, RIGHT_BOX, "left") and centre_relation_holds(RIGHT_BOX, LEFT_BOX, "right")
    assert centre_relation_holds(TOP_BOX, BOTTOM_BOX, "above") and centre_relation_holds(BOTTOM_BOX, TOP_BOX, "below")
    # Overlapping by 3 px: not disjoint (the data's strict rule fails) but clearly side by side.
    overlap_a, overlap_b = [2, 10, 17, 25], [14, 9, 29, 24]
    assert not relation_holds(overlap_a, overlap_b, "left")
    assert centre_relation_holds(overlap_a, overlap_b, "left")
    # Centres 2 px apart on 12-px boxes: under the 0.1 x (12 + 12) margin.
    assert not centre_relation_holds([10, 10, 22, 22], [12, 10, 24, 22], "left")
    # A diagonal pair further apart vertically than horizontally is "above", not "left of".
    assert not centre_relation_holds([0, 0, 10, 10], [8, 12, 18, 22], "left")
    assert centre_relation_holds([0, 0, 10, 10], [8, 12, 18, 22], "above")
    with pytest.raises(ValueError, match="relation"):
        centre_relation_holds(LEFT_BOX, RIGHT_BOX, "near")


# ---------------------------------------------------------------------------- real held-out scenes
@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    """60 real held-out scenes (all 20 scene classes) at 32 px, each with an English and a
    Chinese caption."""
    from ernie_vilg2.data import BuiltinDataConfig, prepare_builtin_dataset

    cfg = BuiltinDataConfig(include_singles=False, num_scenes=1, num_val_scenes=60)
    return prepare_builtin_dataset(cfg, 32, out_dir=str(tmp_path_factory.mktemp("scenes") / "emoji-32"),
                                   progress=False)


class OracleDetector:
    """Detects exactly the ground-truth boxes of known images (and of their mirror images)."""

    def __init__(self, records, label_map):
        from PIL import Image

        self.label_map = label_map
        self.truth = {}
        for rec in records:
            with Image.open(rec["image_path"]) as img:
                arr = np.asarray(img.convert("RGB"))
            boxes = np.float32(rec["boxes"])
            width = arr.shape[1]
            mirrored = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)
            self.truth[arr.tobytes()] = (boxes, rec["labels"])
            self.truth[np.ascontiguousarray(arr[:, ::-1]).tobytes()] = (mirrored, rec["labels"])
        self.calls = 0

    def predict(self, images, batch_size=16):
        self.calls += 1
        out = []
        for im in images:
            boxes, labels = self.truth[np.asarray(im).tobytes()]
            out.append(SimpleNamespace(boxes=boxes, labels=list(labels), scores=np.ones(len(labels), np.float32)))
        return out


def test_captions_of_real_scenes_parse_to_their_objects_and_relation(scenes_dir):
    records = load_scene_records(scenes_dir)
    assert len(records) == 120 and {r["lang"] for r in records} == {"en", "zh"}
    labels = os.path.join(scenes_dir, "labels.json")
    for rec in records:
        scene = parse_scene_prompt(rec["caption"], labels)
        assert scene is not None, rec["caption"]
        assert ([scene.a, scene.b], scene.relation, scene.lang) == (rec["labels"], rec["relation"], rec["lang"])
        # The centre rule agrees with the data's strict rule on every true scene.
        assert centre_relation_holds(*rec["boxes"], rec["relation"])


def test_oracle_judge_scores_one_and_mirror_images_break_left_right(scenes_dir):
    from ernie_vilg2.knowledge.visual.labels import LabelMap

    records = load_scene_records(scenes_dir)
    extra = dict(records[0], caption="a frog", index=-1)  # not a scene prompt: left out
    oracle = OracleDetector(records, LabelMap.from_file(os.path.join(scenes_dir, "labels.json")))
    result = judge_accuracy(oracle, records + [extra], n_boot=200)
    assert (result["records"], result["images"], result["not_scenes"], result["caption_mismatches"]) == (120, 60, 1, 0)
    assert oracle.calls == 2  # each image detected once, and once mirrored
    for lang in ("en", "zh", "all"):
        for metric in METRICS:
            assert result["judge"][lang][metric] == {"mean": 1.0, "low": 1.0, "high": 1.0,
                                                     "n": 120 if lang == "all" else 60}
    vertical = np.mean([r["relation"] in ("above", "below") for r in records])
    assert 0 < vertical < 1
    flipped = result["flipped"]["all"]
    assert flipped["both_present"]["mean"] == 1.0
    assert flipped["relation_correct"]["mean"] == pytest.approx(vertical, abs=1e-4)
    assert flipped["relation_correct"]["low"] < vertical < flipped["relation_correct"]["high"]
    assert result["relation_by_axis"] == {"original": {"above/below": 1.0, "left/right": 1.0},
                                          "flipped": {"above/below": 1.0, "left/right": 0.0}}
    classes = {name for r in records for name in r["labels"]}
    assert result["presence_by_class"] == {name: 1.0 for name in sorted(classes)}
    assert result["false_presence"] == 0.0


def test_captions_that_disagree_with_their_record_are_counted(scenes_dir):
    from ernie_vilg2.knowledge.visual.labels import LabelMap

    records = load_scene_records(scenes_dir)[:4]
    oracle = OracleDetector(records, LabelMap.from_file(os.path.join(scenes_dir, "labels.json")))
    other = next(r for r in RELATIONS if r != records[0]["relation"])
    changed = [dict(records[0], relation=other), dict(records[1], labels=records[1]["labels"][::-1])] + records[2:]
    assert judge_accuracy(oracle, changed, n_boot=10)["caption_mismatches"] == 2


class EverythingDetector:
    """Reports every class in every image: on one shared box, or each on its own box in a row
    (class k at x = 10k, so "a left of b" holds exactly when a's id is lower)."""

    def __init__(self, label_map, spread):
        self.label_map, self.spread = label_map, spread

    def predict(self, images, batch_size=16):
        n = len(self.label_map.en)
        x0 = np.arange(n, dtype=np.float32)[:, None] * (10 if self.spread else 0)
        boxes = np.concatenate([x0, np.zeros_like(x0), x0 + 8, np.full_like(x0, 8)], axis=1)
        return [SimpleNamespace(boxes=boxes, labels=list(self.label_map.en),
                                scores=np.linspace(1.0, 0.5, n, dtype=np.float32)) for _ in images]


def test_a_judge_that_sees_every_class_everywhere(scenes_dir):
    from ernie_vilg2.knowledge.visual.labels import LabelMap

    label_map = LabelMap.from_file(os.path.join(scenes_dir, "labels.json"))
    records = load_scene_records(scenes_dir)
    spread = judge_accuracy(EverythingDetector(label_map, spread=True), records, n_boot=50)
    assert spread["judge"]["all"]["both_present"]["mean"] == 1.0 and spread["false_presence"] == 1.0
    ids = [(label_map.id_of(r["labels"][0]), label_map.id_of(r["labels"][1]), r["relation"]) for r in records]
    expected = np.mean([(rel == "left" and a < b) or (rel == "right" and a > b) for a, b, rel in ids])
    assert 0 < expected < 1
    assert spread["judge"]["all"]["relation_correct"]["mean"] == pytest.approx(expected, abs=1e-4)
    # All classes on one box: one object, so only the better-scored of the two named classes is there.
    shared = judge_accuracy(EverythingDetector(label_map, spread=False), records, n_boot=50)
    first_wins = np.mean([a < b for a, b, _ in ids])
    assert shared["judge"]["all"]["a_present"]["mean"] == pytest.approx(first_wins, abs=1e-4)
    assert shared["judge"]["all"]["b_present"]["mean"] == pytest.approx(1 - first_wins, abs=1e-4)
    assert shared["judge"]["all"]["both_present"]["mean"] == 0.0 and shared["false_presence"] == 0.5


@pytest.mark.slow
def test_judge_images_with_the_real_detector(scenes_dir):
    """The plumbing with the project's Detector (random weights: nothing reaches 0.35)."""
    from ernie_vilg2.knowledge.visual.detector import Detector

    config = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")
    detector = Detector(config, os.path.join(scenes_dir, "labels.json"))
    records = load_scene_records(scenes_dir)[:4]
    result = judge_accuracy(detector, records, n_boot=50)
    assert result["images"] == 2 and result["judge"]["all"]["a_present"]["mean"] == 0.0
    from PIL import Image

    images = [Image.open(r["image_path"]) for r in records]
    scenes = [parse_scene_prompt(r["caption"], detector.label_map) for r in records]
    assert len(judge_images(detector, images, scenes, score_threshold=0.0)) == 4
    with pytest.raises(ValueError, match="scenes"):
        judge_images(detector, images, scenes[:3])


# ---------------------------------------------------------------------------- summaries
def scores_with_rate(n, rate, seed=0):
    hits = np.random.default_rng(seed).random(n) < rate
    return [ImageScore(True, bool(h), bool(h), bool(h)) for h in hits]


def test_intervals_contain_the_mean_and_narrow_with_n():
    widths = []
    for n in (40, 400, 4000):
        scores = scores_with_rate(n, 0.3)
        summary = summarize(scores, ["en"] * n, n_boot=500)
        for metric in METRICS:
            s = summary["all"][metric]
            assert 0.0 <= s["low"] <= s["mean"] <= s["high"] <= 1.0 and s["n"] == n
        rel = summary["all"]["relation_correct"]
        assert rel["mean"] == pytest.approx(np.mean([s.relation_correct for s in scores]), abs=1e-4)
        widths.append(rel["high"] - rel["low"])
        assert summary["all"]["a_present"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": n}
    assert widths[0] > 2 * widths[1] > 4 * widths[2] > 0


def test_summaries_per_language_and_seeded():
    scores = scores_with_rate(30, 0.8) + scores_with_rate(20, 0.2, seed=1)
    langs = ["zh"] * 30 + ["en"] * 20
    first = summarize(scores, langs, n_boot=300, seed=3)
    assert list(first) == ["en", "zh", "all"]
    assert (first["zh"]["both_present"]["n"], first["en"]["both_present"]["n"], first["all"]["both_present"]["n"]) == (30, 20, 50)
    assert first["zh"]["relation_correct"]["mean"] > first["en"]["relation_correct"]["mean"]
    assert summarize(scores, langs, n_boot=300, seed=3) == first
    other = summarize(scores, langs, n_boot=300, seed=4)
    assert other["all"]["relation_correct"]["mean"] == first["all"]["relation_correct"]["mean"]
    assert other != first
    # One language's interval does not depend on which other languages are in the call.
    assert summarize(scores[30:], langs[30:], n_boot=300, seed=3)["en"] == first["en"]


def test_grouped_bootstrap_moves_a_prompts_images_together():
    # 20 prompts x 10 images; a prompt's images all succeed or all fail.
    prompt_ok = np.random.default_rng(0).random(20) < 0.5
    scores = [ImageScore(True, bool(ok), bool(ok), bool(ok)) for ok in prompt_ok for _ in range(10)]
    groups = [p for p in range(20) for _ in range(10)]
    by_image = summarize(scores, ["en"] * 200, n_boot=500)["all"]["relation_correct"]
    by_prompt = summarize(scores, ["en"] * 200, n_boot=500, groups=groups)["all"]["relation_correct"]
    assert by_image["mean"] == by_prompt["mean"]
    assert by_prompt["high"] - by_prompt["low"] > 2 * (by_image["high"] - by_image["low"])


def test_summary_errors():
    scores = scores_with_rate(4, 0.5)
    with pytest.raises(ValueError, match="langs"):
        summarize(scores, ["en"] * 3)
    with pytest.raises(ValueError, match="groups"):
        summarize(scores, ["en"] * 4, groups=[0, 1])
    with pytest.raises(ValueError, match="n_boot"):
        summarize(scores, ["en"] * 4, n_boot=0)
