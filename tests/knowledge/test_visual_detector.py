"""Visual knowledge, detector side: the shipped PaddleDetection config builds, trains,
saves/loads, maps boxes back to any image size; annotate_images and train_detector,
including its single-emoji images and negatives."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw

paddle = pytest.importorskip("paddle")
if importlib.util.find_spec("ppdet") is None:  # found, not imported: see _import_ppdet in detector.py
    pytest.skip("paddledet is not installed", allow_module_level=True)

from ernie_vilg2.knowledge.visual import VisualKnowledgeConfig, annotate_images  # noqa: E402
from ernie_vilg2.knowledge.visual.detector import Detector, build_detector_model  # noqa: E402
from ernie_vilg2.knowledge.visual.metrics import image_false_positive_rate  # noqa: E402
from ernie_vilg2.training.detector import DetectorTrainConfig, SingleEmojiData, evaluate_weights  # noqa: E402
from ernie_vilg2.training.detector.augment import SceneBatcher  # noqa: E402
from ernie_vilg2.training.detector.data import (  # noqa: E402
    LOOKALIKE_WORDS,
    SceneAnnotation,
    class_emoji,
    negative_emoji,
    read_scene_annotations,
    render_single_annotations,
)
from ernie_vilg2.training.detector.loop import detector_losses, train_detector  # noqa: E402

from helpers.paths import REPO_ROOT

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_detector_reports_map_and_resumes(shapes_dataset, tmp_path):
    out = str(tmp_path / "run")
    first = train_detector(DetectorTrainConfig(CONFIG, shapes_dataset, out, max_steps=4, batch_size=4, eval_every=2,
                                               checkpoint_every=2, warmup_steps=2), log=lambda m: None)
    assert first["steps"] == 4 and 0.0 <= first["map50"] <= 1.0 and first["val_images"] == 4
    assert [h["step"] for h in first["history"]] == [2]
    logs = []
    second = train_detector(DetectorTrainConfig(CONFIG, shapes_dataset, out, max_steps=6, batch_size=4,
                                                eval_every=100, warmup_steps=2), log=logs.append)
    assert any("resumed" in m and "step 4" in m for m in logs)
    assert second["steps"] == 6 and second["finished"]
    assert os.path.isfile(os.path.join(out, "detector.safetensors"))
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 6
    Detector(CONFIG, os.path.join(shapes_dataset, "labels.json"), weights=second["weights"])


def test_a_run_of_the_earlier_checkpoint_format_is_refused_in_one_line(shapes_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(b"written by an earlier version")
    cfg = DetectorTrainConfig(CONFIG, shapes_dataset, str(out), max_steps=1, batch_size=2)
    with pytest.raises(ValueError) as err:
        train_detector(cfg, log=lambda m: None)
    message = str(err.value)
    assert message.startswith(f"{out / 'checkpoint.safetensors'}: a checkpoint of an earlier version")
    assert "--no-resume" in message and "\n" not in message
    fresh = train_detector(dataclasses.replace(cfg, resume=False), log=lambda m: None)
    assert fresh["steps"] == 1 and (out / "checkpoint.safetensors").exists()  # left as it was


@pytest.mark.parametrize("flags,expected", [
    (["--eval-every", "0"], "error: config field 'eval_every': must be >= 1"),
    (["--batch-size", "0"], "error: config field 'batch_size': must be >= 1"),
    (["--single-scale", "0.5", "0.2"], "error: singles.scale: need 0 < min <= max <= 1, got (0.5, 0.2)"),
])
def test_train_detector_cli_bad_values_are_one_line(shapes_dataset, tmp_path, capsys, flags, expected):
    from helpers.deploy_exports import load_tool

    code = load_tool("tools/train_detector.py").main(["--data", shapes_dataset, "--out", str(tmp_path / "run"),
                                                       *flags])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [expected]
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- single-emoji images
def test_negative_emoji_exclude_classes_and_lookalikes_and_hold_some_out():
    from ernie_vilg2.data import SCENE_CLASSES

    train, held = negative_emoji(SCENE_CLASSES)
    names_train, names_held = {e.name_en for e in train}, {e.name_en for e in held}
    assert len(held) > 50 and len(train) > 3 * len(held)
    assert not names_train & names_held
    for name in names_train | names_held:
        assert name not in SCENE_CLASSES and not LOOKALIKE_WORDS & set(name.lower().split())
    assert "cat" not in names_train | names_held and "purple heart" in names_train | names_held


def test_render_single_annotations_boxes_and_negatives():
    from ernie_vilg2.data.emoji_catalog import find_by_name

    entries = [find_by_name("red apple"), find_by_name("frog")]
    singles = render_single_annotations(entries, [4, 7], 32, 10, (0.3, 0.95), "t")
    assert len(singles) == 10 and sorted(int(s.class_ids[0]) for s in singles) == [4] * 5 + [7] * 5
    for s in singles:
        assert s.pixels.shape == (32, 32, 3) and s.pixels.dtype == np.uint8 and s.boxes.shape == (1, 4)
        x0, y0, x1, y1 = s.boxes[0]
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32 and max(x1 - x0, y1 - y0) >= 0.3 * 32 * 0.6
        outside = np.ones((32, 32), bool)
        outside[int(y0):int(y1), int(x0):int(x1)] = False
        assert (s.pixels[outside] > 200).all()  # nothing drawn outside the tight box
    sides = [max(s.boxes[0, 2] - s.boxes[0, 0], s.boxes[0, 3] - s.boxes[0, 1]) for s in singles]
    assert max(sides) - min(sides) > 5  # random scales
    negatives = render_single_annotations(entries, None, 32, 3, (0.5, 0.5), "t")
    assert all(n.boxes.shape == (0, 4) and n.class_ids.shape == (0,) for n in negatives)
    again = render_single_annotations(entries, None, 32, 3, (0.5, 0.5), "t")
    np.testing.assert_array_equal(negatives[2].pixels, again[2].pixels)


def test_single_emoji_errors(shapes_dataset):
    from ernie_vilg2.knowledge.visual import LabelMap

    with pytest.raises(ValueError, match="green triangle"):  # red square and blue circle are emoji
        class_emoji(LabelMap.from_file(os.path.join(shapes_dataset, "labels.json")))
    with pytest.raises(ValueError, match="singles.scale"):
        SingleEmojiData(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="fraction"):
        SingleEmojiData(single_fraction=0.6, negative_fraction=0.4)


def test_image_false_positive_rate():
    scores = [np.float32([0.9, 0.1]), np.float32([]), np.float64([0.5]), np.float32([0.34])]
    assert image_false_positive_rate(scores, 0.5) == 0.5
    assert image_false_positive_rate(scores, 0.05) == 0.75
    assert image_false_positive_rate([], 0.35) == 0.0


def test_batches_with_negatives_keep_a_positive_and_a_finite_loss(trained, shapes_dataset):
    det = trained[0]
    scenes = read_scene_annotations(os.path.join(shapes_dataset, "train.jsonl"), det.label_map)
    blank = np.full((48, 48, 3), 255, np.uint8)
    blank[10:30, 5:40] = (120, 40, 160)  # an unknown purple object, no box
    negative = SceneAnnotation("<negative>", np.zeros((0, 4), np.float32), np.zeros(0, np.int64), pixels=blank)
    batcher = SceneBatcher(scenes, det.preprocess, np.random.default_rng(0), negatives=[negative],
                           negative_fraction=0.95)
    saw_negative = False
    for _ in range(6):
        batch = batcher.sample(3)
        per_image = batch["pad_gt_mask"].sum(axis=(1, 2))
        assert (per_image > 0).any()  # never a batch without boxes (PicoDet's loss is NaN then)
        saw_negative |= bool((per_image == 0).any())
    assert saw_negative
    loss = detector_losses(det.model, batch, epoch_id=0)["loss"]
    assert np.isfinite(float(loss))
    det.model.eval()
    with pytest.raises(ValueError, match="below 1"):
        SceneBatcher(scenes, det.preprocess, np.random.default_rng(0), negatives=[negative], negative_fraction=1.0)


@pytest.fixture(scope="module")
def emoji_dataset(tmp_path_factory):
    """A tiny built-in dataset (3 scene classes, 8 train and 4 val scenes at 32 px)."""
    from ernie_vilg2.data import BuiltinDataConfig, prepare_builtin_dataset

    cfg = BuiltinDataConfig(include_singles=False, num_scenes=8, num_val_scenes=4,
                            scene_classes=["red apple", "banana", "frog"])
    return prepare_builtin_dataset(cfg, 32, out_dir=str(tmp_path_factory.mktemp("emoji") / "emoji-32"),
                                   progress=False)


@pytest.mark.slow
def test_train_detector_with_singles_reports_all_metrics(emoji_dataset, tmp_path):
    singles = SingleEmojiData(per_class=2, negatives=4, val_per_class=2, val_negatives=5)
    metrics = train_detector(DetectorTrainConfig(CONFIG, emoji_dataset, str(tmp_path / "run"), max_steps=2,
                                                 batch_size=4, warmup_steps=1, singles=singles), log=lambda m: None)
    assert metrics["val_single_images"] == 6 and metrics["val_negative_images"] == 5
    assert 0.0 <= metrics["single_ap50"] <= 1.0 and set(metrics["single_ap50_per_class"]) == {
        "red apple", "banana", "frog"}
    assert 0.0 <= metrics["negative_fp_rate"] <= 1.0 and metrics["negative_score_threshold"] == 0.35
    assert metrics["singles"]["per_class"] == 2
    # Scoring the saved weights alone gives the same numbers on the same held-out data.
    again = evaluate_weights(CONFIG, emoji_dataset, metrics["weights"], singles)
    for key in ("map50", "single_ap50", "negative_fp_rate"):
        assert again[key] == pytest.approx(metrics[key])


@pytest.mark.slow
def test_building_a_detector_keeps_pillow_strict_about_truncated_images():
    # ppdet's import sets ImageFile.LOAD_TRUNCATED_IMAGES = True for the whole process, which
    # would make truncated training images decode half grey instead of being reported.
    import subprocess
    import sys

    code = ("from PIL import ImageFile\n"
            "from ernie_vilg2.knowledge.visual.detector import build_detector_model\n"
            f"build_detector_model({CONFIG!r}, 3)\n"
            "print(ImageFile.LOAD_TRUNCATED_IMAGES)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.slow
def test_train_detector_cli_on_a_full_disk_is_one_line(shapes_dataset, tmp_path, monkeypatch, capsys):
    import errno

    import safetensors.numpy

    from helpers.deploy_exports import load_tool
    from ernie_vilg2.training import checkpoint

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.numpy, "save_file", full_disk)  # the weights
    monkeypatch.setattr(checkpoint, "save_file", full_disk)  # the training checkpoint
    out = tmp_path / "run"
    code = load_tool("tools/train_detector.py").main([
        "--config", CONFIG, "--data", shapes_dataset, "--out", str(out), "--max-steps", "2", "--batch-size", "4",
        "--checkpoint-every", "2", "--eval-every", "100", "--warmup-steps", "1", "--no-singles"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {out / 'checkpoints' / 'step-000002'}: not enough space on the device"), last
    assert "needs about" in last and "free there" in last
    left = [name for _, folders, files in os.walk(out) for name in folders + files]
    assert not [name for name in left if name.endswith(".safetensors") or ".tmp" in name]
