"""Visual knowledge, detector side: the shipped PaddleDetection config builds, trains,
saves/loads, maps boxes back to any image size; annotate_images and train_detector."""
from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

paddle = pytest.importorskip("paddle")
pytest.importorskip("ppdet")

from ernie_vilg2.knowledge.visual import VisualKnowledgeConfig, annotate_images  # noqa: E402
from ernie_vilg2.knowledge.visual.detector import Detector, build_detector_model  # noqa: E402
from ernie_vilg2.knowledge.visual.detector_training import (  # noqa: E402
    SceneBatcher,
    detector_losses,
    read_scene_annotations,
    train_detector,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "detector", "picodet_lcnet_tiny.yml")
SHAPES = [
    {"id": 0, "en": "red square", "zh": "红方块"},
    {"id": 1, "en": "blue circle", "zh": "蓝圆"},
    {"id": 2, "en": "green triangle", "zh": "绿三角"},
]


def draw_scene(rng, size=48):
    """Two different coloured shapes on white, one in each half; returns (image, boxes, class ids)."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    classes = rng.choice(3, 2, replace=False)
    boxes = []
    for k, cls in enumerate(classes):
        s = int(rng.integers(size // 4, size // 2))
        x = int(rng.integers(0, size // 2 - s + 1)) + k * size // 2
        y = int(rng.integers(0, size - s + 1))
        box = [x, y, x + s, y + s]
        if cls == 0:
            d.rectangle([x, y, x + s - 1, y + s - 1], fill=(220, 30, 30))
        elif cls == 1:
            d.ellipse([x, y, x + s - 1, y + s - 1], fill=(30, 60, 220))
        else:
            d.polygon([(x, y + s - 1), (x + s - 1, y + s - 1), (x + s / 2, y)], fill=(30, 170, 60))
        boxes.append(box)
    return img, boxes, [SHAPES[c]["en"] for c in classes]


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory):
    """The built-in dataset's layout with drawn shapes: 12 train and 4 val scenes, each
    image twice (zh, en), plus a record without boxes that training must skip."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    (root / "labels.json").write_text(json.dumps(SHAPES, ensure_ascii=False), encoding="utf-8")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        with open(root / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for i in range(n):
                img, boxes, labels = draw_scene(rng)
                rel = f"images/{split}_{i}.png"
                img.save(root / rel)
                for lang, cap in (("zh", "两个形状"), ("en", "two shapes")):
                    f.write(json.dumps({"image": rel, "caption": cap, "lang": lang, "boxes": boxes,
                                        "labels": labels}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"image": f"images/{split}_0.png", "caption": "single", "lang": "en"}) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def trained(shapes_dataset, tmp_path_factory):
    """A detector trained a few steps on a fixed batch, its losses, and its saved weights."""
    paddle.seed(0)
    det = Detector(CONFIG, os.path.join(shapes_dataset, "labels.json"))
    scenes = read_scene_annotations(os.path.join(shapes_dataset, "train.jsonl"), det.label_map)
    batch = SceneBatcher(scenes, det.preprocess, np.random.default_rng(0), augment=False).sample(8)
    opt = paddle.optimizer.AdamW(learning_rate=2e-3, parameters=det.model.parameters())
    losses = []
    for _ in range(12):
        loss = detector_losses(det.model, batch, epoch_id=0)["loss"]
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    det.model.eval()
    path = str(tmp_path_factory.mktemp("weights") / "detector.safetensors")
    det.save_weights(path)
    return det, losses, path


def test_shipped_config_builds_with_label_count():
    model, cfg = build_detector_model(CONFIG, num_classes=5)
    assert cfg["architecture"] == "PicoDet"
    assert model.head.num_classes == 5
    assert 1e5 < sum(int(p.size) for p in model.parameters()) < 2e6
    # The ppdet registry is restored: a second build with another class count is independent.
    assert build_detector_model(CONFIG, num_classes=2)[0].head.num_classes == 2


def test_scene_records_deduplicated_and_single_records_skipped(shapes_dataset):
    from ernie_vilg2.knowledge.visual import LabelMap

    scenes = read_scene_annotations(os.path.join(shapes_dataset, "train.jsonl"),
                                    LabelMap.from_file(os.path.join(shapes_dataset, "labels.json")))
    assert len(scenes) == 12
    assert all(s.boxes.shape == (2, 4) and s.class_ids.dtype == np.int64 for s in scenes)


def test_detector_trains_and_loss_falls(trained):
    _, losses, _ = trained
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_save_load_round_trip_gives_identical_outputs(trained, shapes_dataset):
    det, _, path = trained
    images = [np.asarray(Image.open(os.path.join(shapes_dataset, "images", f"val_{i}.png"))) for i in range(3)]
    before = det.predict(images, batch_size=2)
    loaded = Detector(CONFIG, os.path.join(shapes_dataset, "labels.json"), weights=path)
    after = loaded.predict(images, batch_size=3)
    assert sum(len(d) for d in before) > 0
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        assert a.labels == b.labels and a.labels_zh == b.labels_zh


def test_pdparams_weights_load(trained, shapes_dataset, tmp_path):
    det, _, _ = trained
    path = str(tmp_path / "model.pdparams")
    paddle.save(det.model.state_dict(), path)
    other = Detector(CONFIG, os.path.join(shapes_dataset, "labels.json"), weights=path)
    for key, value in det.model.state_dict().items():
        np.testing.assert_array_equal(other.model.state_dict()[key].numpy(), value.numpy())


def test_weights_for_other_classes_are_rejected(trained, tmp_path):
    _, _, path = trained
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(SHAPES[:2]), encoding="utf-8")
    with pytest.raises(ValueError, match="differ"):
        Detector(CONFIG, str(labels), weights=path)


def test_boxes_map_back_to_any_input_size(trained):
    detector = trained[0]
    saved = detector.preprocess
    # Linear resize makes "2x nearest upsample, then resize to the input size" give exactly
    # the same network input, so only the box mapping differs.
    detector.preprocess = dataclasses.replace(saved, interp=cv2.INTER_LINEAR)
    try:
        img, _, _ = draw_scene(np.random.default_rng(5), size=128)
        base = np.asarray(img)
        wide = np.repeat(base, 2, axis=1)  # 128 x 256
        big = np.repeat(np.repeat(base, 2, axis=0), 2, axis=1)  # 256 x 256
        d_base, d_wide, d_big = detector.predict([base, wide, big])
        assert len(d_base) > 0
        np.testing.assert_allclose(d_wide.boxes, d_base.boxes * np.float32([2, 1, 2, 1]), atol=1e-3)
        np.testing.assert_allclose(d_big.boxes, d_base.boxes * 2, atol=1e-3)
        np.testing.assert_allclose(d_big.scores, d_base.scores, atol=1e-6)
        assert (d_big.boxes[:, 2] <= 256).all() and (d_big.boxes >= 0).all()
    finally:
        detector.preprocess = saved


def test_empty_and_padding_detections(trained):
    det, _, _ = trained
    empty = det._to_detections(np.zeros((0, 6), np.float32), 32, 32)
    assert empty.boxes.shape == (0, 4) and empty.labels == [] and len(empty) == 0
    padded = det._to_detections(np.array([[-1, 0, 0, 0, 0, 0], [1, 0.5, -3, 2, 40, 9]], np.float32), 32, 32)
    assert padded.labels == ["blue circle"] and padded.labels_zh == ["蓝圆"]
    np.testing.assert_array_equal(padded.boxes, [[0, 2, 32, 9]])


def test_annotate_images(trained, shapes_dataset, tmp_path):
    _, _, weights = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = os.path.join(shapes_dataset, "images", "val_0.png")
    rgba = tmp_path / "rgba.png"
    Image.open(good).convert("RGBA").save(rgba)
    labels = os.path.join(shapes_dataset, "labels.json")
    cfg = VisualKnowledgeConfig(detector_config=CONFIG, detector_weights=weights, labels=labels,
                                score_threshold=0.0, top_n=2, min_box_size=0.0)
    out = annotate_images([good, str(broken), str(rgba)], cfg)
    assert out[1] is None
    assert len(out[0]["objects"]) == 2 and out[0] == out[2]
    obj = out[0]["objects"][0]
    assert set(obj) == {"box", "label", "label_zh", "score"}
    assert obj["label"] in {s["en"] for s in SHAPES} and obj["label_zh"] in {s["zh"] for s in SHAPES}
    strict = dataclasses.replace(cfg, score_threshold=1.0)
    assert annotate_images([good], strict) == [{"objects": []}]


def test_train_detector_reports_map_and_resumes(shapes_dataset, tmp_path):
    out = str(tmp_path / "run")
    first = train_detector(CONFIG, shapes_dataset, out, max_steps=4, batch_size=4, eval_every=2,
                           checkpoint_every=2, warmup_steps=2, log=lambda m: None)
    assert first["steps"] == 4 and 0.0 <= first["map50"] <= 1.0 and first["val_images"] == 4
    assert [h["step"] for h in first["history"]] == [2]
    logs = []
    second = train_detector(CONFIG, shapes_dataset, out, max_steps=6, batch_size=4, eval_every=100,
                            warmup_steps=2, log=logs.append)
    assert any("resumed" in m and "step 4" in m for m in logs)
    assert second["steps"] == 6 and second["finished"]
    assert os.path.isfile(os.path.join(out, "detector.safetensors"))
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 6
    Detector(CONFIG, os.path.join(shapes_dataset, "labels.json"), weights=second["weights"])
