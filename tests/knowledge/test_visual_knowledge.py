"""Visual knowledge, numpy side: loss weight maps, captions, salient selection, config, mAP."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from ernie_vilg2.config import ConfigError, from_dict
from ernie_vilg2.knowledge.visual import (
    LabelMap,
    VisualKnowledge,
    VisualKnowledgeConfig,
    enrich_caption,
    loss_weight_map,
    maybe_replace_caption,
    select_salient,
    stack_weight_maps,
)
from ernie_vilg2.knowledge.visual.metrics import average_precision, voc_map

LABELS = [
    {"id": 0, "en": "red apple", "zh": "红苹果"},
    {"id": 1, "en": "cat face", "zh": "猫脸"},
    {"id": 2, "en": "frog", "zh": "青蛙"},
    {"id": 3, "en": "apple", "zh": "苹果"},
]


@pytest.fixture
def label_map():
    return LabelMap(LABELS)


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(LABELS, ensure_ascii=False), encoding="utf-8")
    return str(path)


def reference_coverage(boxes, image_size, latent_size, factor=40):
    """Union coverage per latent cell by brute-force supersampling of pixel centres."""
    n = image_size * factor
    centres = (np.arange(n) + 0.5) / factor
    inside = np.zeros((n, n), bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((centres[None, :] >= x0) & (centres[None, :] < x1)) & ((centres[:, None] >= y0) & (centres[:, None] < y1))
    # Average the fine grid over each latent cell (image_size * factor divisible by latent_size).
    k = n // latent_size
    return inside.reshape(latent_size, k, latent_size, k).mean(axis=(1, 3))


# ---------------------------------------------------------------------------- weight map
def test_weight_map_known_box_shape_and_values():
    w = loss_weight_map(np.array([[0, 0, 16, 16]]), image_size=32, latent_size=8, w_v=0.1)
    assert w.shape == (1, 8, 8) and w.dtype == np.float32
    expected = np.ones((8, 8), np.float32)
    expected[:4, :4] = 1.1
    np.testing.assert_allclose(w[0], expected, rtol=0, atol=1e-6)


def test_weight_map_border_cells_are_area_weighted():
    # Cells are 4 px: x in [4, 6) covers half of cell column 1, y in [0, 4) one full row.
    w = loss_weight_map([[0, 0, 6, 4]], image_size=32, latent_size=8, w_v=0.2)[0]
    assert w[0, 0] == pytest.approx(1.2)
    assert w[0, 1] == pytest.approx(1.1)
    assert np.all(w[1:] == 1.0) and np.all(w[0, 2:] == 1.0)


def test_weight_map_overlapping_boxes_use_the_union():
    boxes = [[0, 0, 10, 10], [5, 5, 15, 15], [3.3, 20.5, 29.7, 27.1]]
    w = loss_weight_map(boxes, image_size=32, latent_size=8, w_v=1.0)[0]
    np.testing.assert_allclose(w - 1.0, reference_coverage(boxes, 32, 8), atol=2e-3)
    assert w.max() <= 2.0 + 1e-6  # overlap is counted once


def test_weight_map_non_divisible_grid_matches_reference():
    boxes = [[2.5, 1.0, 17.0, 9.5]]
    w = loss_weight_map(boxes, image_size=20, latent_size=5, w_v=0.5)[0]
    np.testing.assert_allclose((w - 1.0) / 0.5, reference_coverage(boxes, 20, 5), atol=2e-3)


def test_weight_map_clips_boxes_partly_outside():
    w = loss_weight_map([[-10, -10, 4, 4], [28, 30, 60, 40]], image_size=32, latent_size=8, w_v=0.1)[0]
    expected = np.ones((8, 8), np.float32)
    expected[0, 0] = 1.1
    expected[7, 7] = 1.0 + 0.1 * 0.5  # rows 28..32, box covers y 30..32: half the cell
    np.testing.assert_allclose(w, expected, atol=1e-6)


@pytest.mark.parametrize("boxes", [None, [], np.zeros((0, 4)), [[40, 40, 50, 50]], [[5, 5, 5, 9]]])
def test_weight_map_without_boxes_inside_is_all_ones(boxes):
    w = loss_weight_map(boxes, image_size=32, latent_size=4, w_v=0.1)
    np.testing.assert_array_equal(w, np.ones((1, 4, 4), np.float32))


def test_weight_map_w_v_zero_is_all_ones():
    np.testing.assert_array_equal(loss_weight_map([[0, 0, 32, 16]], 32, 8, 0.0), np.ones((1, 8, 8), np.float32))


@pytest.mark.parametrize("kwargs", [
    {"boxes": [[0, 0, 1]]},
    {"boxes": [[0, 0, np.nan, 4]]},
    {"w_v": -0.1},
    {"latent_size": 0},
    {"image_size": -32},
])
def test_weight_map_rejects_bad_input(kwargs):
    args = {"boxes": [[0, 0, 4, 4]], "image_size": 32, "latent_size": 8, "w_v": 0.1}
    args.update(kwargs)
    with pytest.raises(ValueError):
        loss_weight_map(**args)


def test_stack_weight_maps_fills_none_with_ones():
    m = loss_weight_map([[0, 0, 8, 8]], 32, 4, 0.1)
    batch = stack_weight_maps([m, None], 4)
    assert batch.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(batch[1], np.ones((1, 4, 4), np.float32))
    np.testing.assert_array_equal(batch[0], m)


# ---------------------------------------------------------------------------- captions
def test_enrich_english_appends_missing_only(label_map):
    out = enrich_caption("a cat face to the left of a frog", ["cat face", "red apple", "frog"], "en", label_map)
    assert out == "a cat face to the left of a frog, red apple"


def test_enrich_chinese_appends_in_chinese(label_map):
    out = enrich_caption("猫脸在青蛙的左边", ["cat face", "red apple", "frog"], "zh", label_map)
    assert out == "猫脸在青蛙的左边，红苹果"


def test_enrich_no_duplicates(label_map):
    # The same object named twice (in both languages) is appended once.
    assert enrich_caption("a frog.", ["red apple", "红苹果"], "en", label_map) == "a frog, red apple"
    # Already present in the other language: nothing to add.
    assert enrich_caption("一只 red apple", ["red apple"], "zh", label_map) == "一只 red apple"
    assert enrich_caption("A RED APPLE", ["红苹果"], "en", label_map) == "A RED APPLE"


def test_enrich_matches_english_whole_words(label_map):
    assert enrich_caption("a pineapple", ["apple"], "en", label_map) == "a pineapple, apple"


def test_enrich_skips_unknown_and_handles_empty(label_map, labels_file):
    assert enrich_caption("a frog", ["unicorn", "独角兽"], "en", label_map) == "a frog"
    assert enrich_caption("a frog", [], "en", label_map) == "a frog"
    assert enrich_caption("", ["frog", "cat face"], "zh", labels_file) == "青蛙，猫脸"
    with pytest.raises(ValueError, match="lang"):
        enrich_caption("a frog", ["frog"], "fr", label_map)


def test_maybe_replace_caption_probability():
    rng = np.random.default_rng(0)
    picks = [maybe_replace_caption("orig", "syn", 0.3, rng) for _ in range(20000)]
    assert abs(picks.count("syn") / len(picks) - 0.3) < 0.015
    assert maybe_replace_caption("orig", "syn", 0.0, rng) == "orig"
    assert maybe_replace_caption("orig", "syn", 1.0, rng) == "syn"
    assert maybe_replace_caption("orig", None, 1.0, rng) == "orig"
    assert maybe_replace_caption("orig", "  ", 1.0, random.Random(0)) == "orig"
    with pytest.raises(ValueError, match="prob"):
        maybe_replace_caption("orig", "syn", 1.5, rng)


# ---------------------------------------------------------------------------- per-sample
def scene_sample(**extra):
    sample = {"caption": "a frog to the left of a cat face", "lang": "en", "boxes": [[0, 0, 16, 16], [16, 0, 32, 16]],
              "labels": ["frog", "red apple"], "synthetic_caption": "a frog and an apple"}
    sample.update(extra)
    return sample


def test_visual_knowledge_enriches_and_weights(labels_file):
    cfg = VisualKnowledgeConfig(enabled=True, weight_prob=1.0, labels=labels_file)
    caption, w = VisualKnowledge(cfg, latent_size=4)(scene_sample(), np.random.default_rng(0), image_size=32)
    assert caption == "a frog to the left of a cat face, red apple"
    expected = np.ones((1, 4, 4), np.float32)
    expected[0, :2, :] = 1.1
    np.testing.assert_allclose(w, expected, atol=1e-6)


def test_visual_knowledge_weight_probability_and_no_boxes(label_map):
    cfg = VisualKnowledgeConfig(enabled=True, weight_prob=0.5, enrich_captions=False)
    vk = VisualKnowledge(cfg, latent_size=4, label_map=label_map)
    rng = np.random.default_rng(1)
    maps = [vk(scene_sample(), rng, 32)[1] for _ in range(4000)]
    assert abs(sum(m is not None for m in maps) / len(maps) - 0.5) < 0.04
    none_boxes = VisualKnowledge(VisualKnowledgeConfig(enabled=True, weight_prob=1.0, enrich_captions=False), 4)
    assert none_boxes(scene_sample(boxes=[], labels=[]), rng, 32) == ("a frog to the left of a cat face", None)


def test_visual_knowledge_replacement_then_enrichment(label_map):
    cfg = VisualKnowledgeConfig(enabled=True, weight_prob=0.0, replace_prob=1.0)
    caption, w = VisualKnowledge(cfg, 4, label_map)(scene_sample(lang="en"), np.random.default_rng(0), 32)
    assert caption == "a frog and an apple, red apple" and w is None


def test_visual_knowledge_uses_detected_objects_without_ground_truth(label_map):
    cfg = VisualKnowledgeConfig(enabled=True, weight_prob=1.0, use_ground_truth=False)
    objects = [{"box": [0, 16, 32, 32], "label": "cat face", "label_zh": "猫脸", "score": 0.9}]
    sample = scene_sample(lang="zh", caption="青蛙", objects=objects)
    caption, w = VisualKnowledge(cfg, 2, label_map)(sample, np.random.default_rng(0), 32)
    assert caption == "青蛙，猫脸"
    np.testing.assert_allclose(w[0], [[1.0, 1.0], [1.1, 1.1]], atol=1e-6)


def test_visual_knowledge_disabled_is_identity_and_draws_nothing(label_map):
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    out = VisualKnowledge(VisualKnowledgeConfig(enabled=False), 4)(scene_sample(), rng, 32)
    assert out == ("a frog to the left of a cat face", None)
    assert rng.bit_generator.state == state


def test_visual_knowledge_needs_labels_for_enrichment():
    with pytest.raises(ConfigError) as err:
        VisualKnowledge(VisualKnowledgeConfig(enabled=True, enrich_captions=True), 4)
    assert err.value.field == "visual_knowledge.labels"


def test_visual_knowledge_rejects_mismatched_labels(label_map):
    vk = VisualKnowledge(VisualKnowledgeConfig(enabled=True), 4, label_map)
    with pytest.raises(ValueError, match="labels"):
        vk(scene_sample(labels=["frog"]), np.random.default_rng(0), 32)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("key,value", [
    ("w_v", -0.5),
    ("weight_prob", 1.5),
    ("replace_prob", -0.1),
    ("score_threshold", 2.0),
    ("top_n", -1),
    ("min_box_size", 1.0),
    ("labels", "/nonexistent/labels.json"),
    ("detector_config", "/nonexistent/picodet.yml"),
    ("detector_weights", "/nonexistent/detector.safetensors"),
    ("w_v", "high"),
])
def test_config_errors_name_the_field(key, value):
    with pytest.raises(ConfigError) as err:
        from_dict(VisualKnowledgeConfig, {key: value}, "visual_knowledge")
    assert err.value.field == f"visual_knowledge.{key}"


def test_config_checks_file_kinds(tmp_path, labels_file):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"x")
    with pytest.raises(ConfigError) as err:
        from_dict(VisualKnowledgeConfig, {"detector_weights": str(weights)}, "visual_knowledge")
    assert err.value.field == "visual_knowledge.detector_weights"
    with pytest.raises(ConfigError) as err:
        from_dict(VisualKnowledgeConfig, {"annotations": str(tmp_path)}, "visual_knowledge")
    assert err.value.field == "visual_knowledge.annotations"
    cfg = from_dict(VisualKnowledgeConfig, {"enabled": True, "labels": labels_file, "w_v": 0, "top_n": 0,
                                            "annotations": str(tmp_path / "not_yet.jsonl")}, "visual_knowledge")
    assert cfg.w_v == 0.0 and cfg.labels == labels_file


def test_label_map_validation():
    with pytest.raises(ValueError, match="ids must be"):
        LabelMap([{"id": 1, "en": "a", "zh": "甲"}])
    with pytest.raises(ValueError, match="duplicate"):
        LabelMap([{"id": 0, "en": "a", "zh": "甲"}, {"id": 0, "en": "b", "zh": "乙"}])
    lm = LabelMap(LABELS)
    assert lm.id_of("Red Apple") == 0 and lm.id_of("猫脸") == 1 and lm.id_of("unicorn") is None


# ---------------------------------------------------------------------------- salient
def test_select_salient_rules():
    boxes = np.array([
        [0, 0, 10, 10],  # score .9 area 100 -> 90
        [0, 0, 30, 30],  # score .5 area 900 -> 450
        [40, 40, 42, 42],  # too small (2 px < 0.05 * 64 = 3.2)
        [20, 20, 60, 60],  # below the score threshold
        [1, 1, 31, 31],  # same object as box 1 (IoU > .7), lower score
        [50, 0, 60, 20],  # score .6 area 200 -> 120
    ], np.float32)
    scores = np.array([0.9, 0.5, 0.95, 0.2, 0.45, 0.6])
    keep = select_salient(boxes, scores, (64, 64), score_threshold=0.35, top_n=2, min_box_size=0.05)
    assert keep.tolist() == [1, 5]
    assert select_salient(boxes, scores, 64, 0.35, 0, 0.05).tolist() == [1, 5, 0]
    assert select_salient(np.zeros((0, 4)), [], 64).tolist() == []


# ---------------------------------------------------------------------------- mAP
def test_voc_map_known_values():
    gt = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))]
    perfect = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]), np.array([0.9, 0.8]))]
    assert voc_map(perfect, gt, 2)[0] == pytest.approx(1.0)
    # TP (.9), duplicate of the same box = FP (.8), TP (.7): P = 1, .5, .67 at R = .5, .5, 1.
    dets = [(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [21, 21, 30, 30]]), np.array([0, 0, 0]),
             np.array([0.9, 0.8, 0.7]))]
    mean_ap, per_class = voc_map(dets, gt, 2)
    assert per_class == {0: pytest.approx(0.5 + 0.5 * 2 / 3)} and mean_ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Wrong class or IoU < .5: zero AP.
    wrong = [(np.array([[0, 0, 10, 10], [25, 25, 35, 35]]), np.array([1, 0]), np.array([0.9, 0.8]))]
    assert voc_map(wrong, gt, 2)[0] == 0.0
    assert average_precision(np.array([]), np.array([])) == 0.0
