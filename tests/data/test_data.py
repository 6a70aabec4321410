"""Data layer: emoji catalogue, rendering, scenes, built-in dataset, JSONL loader, lang."""
import json
import logging
import os
import random
import re

import numpy as np
import pytest
from PIL import Image

from ernie_vilg2.config import ConfigError, from_dict
from ernie_vilg2.data.config import BuiltinDataConfig, DataConfig
from ernie_vilg2.data.emoji_catalog import DEMO_EMOJI_FILTER, find_by_name, load_emoji_catalog
from ernie_vilg2.data.render import render_single
from ernie_vilg2.data.scenes import SCENE_CLASSES, relation_holds, sample_scene, scene_captions
from ernie_vilg2.text.lang import detect_lang, split_runs

CJK = re.compile(r"[\u4e00-\u9fff]")


# ---------------------------------------------------------------- catalogue


def test_catalog_is_large_and_bilingual():
    catalog = load_emoji_catalog()
    assert len(catalog) > 1800
    assert len({e.name_en for e in catalog}) == len(catalog)  # deduplicated
    for entry in catalog:
        assert entry.name_en and ":" not in entry.name_en and "_" not in entry.name_en
        assert entry.name_zh and ":" not in entry.name_zh
        assert not any(0x1F3FB <= ord(c) <= 0x1F3FF for c in entry.char), "skin-tone variant kept"
    assert sum(bool(CJK.search(e.name_zh)) for e in catalog) > 0.95 * len(catalog)
    apple = find_by_name("red apple")
    assert (apple.name_zh, apple.char) == ("红苹果", "\U0001F34E")
    with Image.open(apple.png_path) as img:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
    assert alpha.shape == (72, 72) and alpha[0, 0] == 0 and alpha[36, 36] == 255  # transparent border


def test_catalog_filters():
    assert {e.name_en for e in load_emoji_catalog(["apple"])} == {"red apple", "green apple"}  # not pineapple
    assert {e.name_en for e in load_emoji_catalog(["red circle"])} == {"red circle", "hollow red circle"}
    assert [e.name_en for e in load_emoji_catalog(["=red circle"])] == ["red circle"]
    demo = load_emoji_catalog(["@demo"])
    assert sorted(e.name_en for e in demo) == sorted(p.lstrip("=") for p in DEMO_EMOJI_FILTER)
    subset = load_emoji_catalog(max_items=10, seed=3)
    assert len(subset) == 10 and subset == load_emoji_catalog(max_items=10, seed=3)
    assert subset != load_emoji_catalog(max_items=10, seed=4)
    with pytest.raises(ValueError, match="@nope"):
        load_emoji_catalog(["@nope"])


# ---------------------------------------------------------------- rendering


def test_render_single_shape_range_box():
    path = find_by_name("blue circle").png_path
    img, box = render_single(path, 32, scale=0.75)
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert (arr[0, 0] == 255).all() and (arr[-1, -1] == 255).all()  # white background
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert 20 <= x1 - x0 <= 24  # ~ 0.75 * 32 minus the glyph's thin margin
    r, g, b = arr[16, 16].astype(int)
    assert b > r + 50  # the middle of a blue circle is blue
    red_bg, _ = render_single(path, 32, background=(255, 0, 0))
    assert tuple(np.asarray(red_bg)[0, 0]) == (255, 0, 0)


def test_render_single_is_deterministic_given_seed():
    path = find_by_name("cat face").png_path
    a, box_a = render_single(path, 32, jitter=0.2, seed=7)
    b, box_b = render_single(path, 32, jitter=0.2, seed=7)
    assert a.tobytes() == b.tobytes() and box_a == box_b
    others = [render_single(path, 32, jitter=0.2, seed=s)[1] for s in range(8, 14)]
    assert any(box != box_a for box in others)


# ---------------------------------------------------------------- scenes


def test_scene_boxes_match_stated_relation():
    classes = [find_by_name(n) for n in SCENE_CLASSES]
    by_en = {e.name_en: e for e in classes}
    rng = random.Random(0)
    seen = set()
    for _ in range(120):
        scene = sample_scene(classes, 32, rng)
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = scene.boxes
        for x0, y0, x1, y1 in scene.boxes:
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert 0.3 * 32 <= max(x1 - x0, y1 - y0) <= 0.5 * 32  # size about 0.4-0.5 R
        # The caption names a then b, and b's box is where the caption says.
        m = re.fullmatch(r"an? (.+) (to the left of|to the right of|above|below) an? (.+)", scene.caption_en)
        assert m, scene.caption_en
        a, phrase, b = m.groups()
        assert [a, b] == scene.labels
        assert scene.caption_zh.startswith(by_en[a].name_zh + "在" + by_en[b].name_zh + "的")
        if phrase == "to the left of":
            assert ax1 <= bx0 and scene.caption_zh.endswith("左边")
        elif phrase == "to the right of":
            assert bx1 <= ax0 and scene.caption_zh.endswith("右边")
        elif phrase == "above":
            assert ay1 <= by0 and scene.caption_zh.endswith("上面")
        else:
            assert by1 <= ay0 and scene.caption_zh.endswith("下面")
        seen.add(phrase)
        # Outside both boxes only background (or faint antialiasing haze) remains.
        arr = np.asarray(scene.image).astype(int)
        outside = np.ones((32, 32), bool)
        for x0, y0, x1, y1 in scene.boxes:
            outside[y0:y1, x0:x1] = False
            assert arr[y0:y1, x0:x1].min() < 200  # something is drawn inside each box
        assert arr[outside].min() >= 225
    assert len(seen) == 4


def test_scenes_keep_to_the_chosen_relations():
    classes = [find_by_name(n) for n in ("red apple", "banana", "frog")]
    rng = random.Random(1)
    relations = {sample_scene(classes, 32, rng, relations=("left", "right")).relation for _ in range(40)}
    assert relations == {"left", "right"}
    for bad in ((), ("left", "near")):
        with pytest.raises(ValueError, match="relations must be some of left, right, above, below"):
            sample_scene(classes, 32, rng, relations=bad)


def test_relation_holds_and_captions():
    left, right = [0, 10, 10, 20], [12, 12, 22, 22]
    assert relation_holds(left, right, "left") and relation_holds(right, left, "right")
    assert not relation_holds(left, right, "above") and not relation_holds(left, right, "right")
    assert not relation_holds([0, 0, 10, 10], [11, 20, 21, 30], "left")  # more below than right
    with pytest.raises(ValueError):
        relation_holds(left, right, "near")
    en, zh = scene_captions(find_by_name("octopus"), find_by_name("cat face"), "below")
    assert (en, zh) == ("an octopus below a cat face", "章鱼在猫脸的下面")


# ---------------------------------------------------------------- built-in dataset


def _tiny_builtin(tmp_path, **kw):
    settings = dict(out_dir=str(tmp_path / "emoji-{resolution}"), emoji_filter=["=red apple", "=cat face", "=blue circle"],
                    num_scenes=6, num_val_scenes=3)
    settings.update(kw)
    return BuiltinDataConfig(**settings)


def test_prepare_builtin_dataset_writes_files_once(tmp_path):
    from ernie_vilg2.data.prepare import prepare_builtin_dataset

    out = prepare_builtin_dataset(_tiny_builtin(tmp_path), 32, progress=False)
    assert out == str(tmp_path / "emoji-32")
    names = set(os.listdir(out))
    assert {"images", "train.jsonl", "val.jsonl", "labels.json", "ATTRIBUTION.txt", "manifest.json"} <= names
    assert [p for p in os.listdir(tmp_path) if p != "emoji-32"] == []  # no tmp folder left behind
    train = [json.loads(line) for line in open(os.path.join(out, "train.jsonl"), encoding="utf-8")]
    val = [json.loads(line) for line in open(os.path.join(out, "val.jsonl"), encoding="utf-8")]
    assert len(train) == 2 * (3 + 6) and len(val) == 2 * 3
    for zh, en in zip(train[::2], train[1::2]):  # two records per image, zh then en
        assert zh["image"] == en["image"] and (zh["lang"], en["lang"]) == ("zh", "en")
        assert CJK.search(zh["caption"]) and not CJK.search(en["caption"])
        with Image.open(os.path.join(out, zh["image"])) as img:
            assert img.size == (32, 32)
    assert {r["caption"] for r in train[:6]} == {"red apple", "红苹果", "cat face", "猫脸", "blue circle", "蓝色圆"}
    labels = json.load(open(os.path.join(out, "labels.json"), encoding="utf-8"))
    assert labels[0] == {"id": 0, "en": "red apple", "zh": "红苹果"} and len(labels) == len(SCENE_CLASSES)
    assert "CC-BY 4.0" in open(os.path.join(out, "ATTRIBUTION.txt"), encoding="utf-8").read()

    stamp = os.stat(os.path.join(out, "train.jsonl")).st_mtime_ns
    assert prepare_builtin_dataset(_tiny_builtin(tmp_path), 32, progress=False) == out
    assert os.stat(os.path.join(out, "train.jsonl")).st_mtime_ns == stamp  # no-op

    prepare_builtin_dataset(_tiny_builtin(tmp_path, num_scenes=2), 32, progress=False)  # other settings: rebuilt
    assert sum(1 for _ in open(os.path.join(out, "train.jsonl"), encoding="utf-8")) == 2 * (3 + 2)
    assert sorted(os.listdir(tmp_path)) == ["emoji-32"]

    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError, match="mine"):
        prepare_builtin_dataset(_tiny_builtin(tmp_path), 32, out_dir=str(tmp_path / "mine"), progress=False)


def test_built_in_scenes_of_chosen_relations(tmp_path):
    from ernie_vilg2.data.prepare import prepare_builtin_dataset

    out = prepare_builtin_dataset(_tiny_builtin(tmp_path, num_scenes=30, num_val_scenes=10,
                                                scene_relations=["left", "right"]), 32, progress=False)
    for split in ("train", "val"):
        records = [json.loads(line) for line in open(os.path.join(out, f"{split}.jsonl"), encoding="utf-8")]
        assert {r["relation"] for r in records if "relation" in r} == {"left", "right"}


def test_build_dataset_from_config(tmp_path):
    from ernie_vilg2.data.builder import build_dataset

    cfg = from_dict(DataConfig, {"resolution": 32, "languages": ["en"],
                                 "builtin": {"out_dir": str(tmp_path / "b{resolution}"), "emoji_filter": ["=frog"],
                                             "num_scenes": 4, "num_val_scenes": 2}}, "data")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 1 + 4 and len(val) == 2  # English records only
    item = train[0]
    assert item["caption"] == "frog" and item["pixel_values"].shape == (3, 32, 32)
    assert item["labels"] == ["frog"] and item["boxes"].shape == (1, 4)  # a scene class is boxed


def test_data_config_validation():
    with pytest.raises(ConfigError, match="data.resolution"):
        DataConfig(resolution=0)
    with pytest.raises(ConfigError, match="data.builtin.scene_max_size"):
        from_dict(DataConfig, {"builtin": {"scene_max_size": 0.7}}, "data")
    with pytest.raises(ConfigError, match="data.languages"):
        DataConfig(languages=["fr"])
    with pytest.raises(ConfigError, match="data.builtin.typo"):
        from_dict(DataConfig, {"builtin": {"typo": 1}}, "data")
    assert from_dict(DataConfig, {"builtin": {"scene_relations": ["left", "right"]}}, "data").builtin.scene_relations
    for relations in ([], ["left", "near"]):
        with pytest.raises(ConfigError, match="data.builtin.scene_relations': must be a non-empty list"):
            from_dict(DataConfig, {"builtin": {"scene_relations": relations}}, "data")


# ---------------------------------------------------------------- JSONL loader


def _write_jsonl(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False) for l in lines) + "\n",
                    encoding="utf-8")


@pytest.fixture
def user_data(tmp_path):
    (tmp_path / "images").mkdir()
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    Image.fromarray(img).save(tmp_path / "images" / "wide.png")
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "images" / "clear.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")  # found when the dataset loads
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # mostly scan data
    Image.fromarray(noise).save(tmp_path / "images" / "cut.jpg")
    data = (tmp_path / "images" / "cut.jpg").read_bytes()
    (tmp_path / "images" / "cut.jpg").write_bytes(data[: len(data) * 3 // 4])  # header fine, body cut: found later
    _write_jsonl(tmp_path / "train.jsonl", [
        {"image": "images/wide.png", "caption": "红色在左边", "boxes": [[10, 0, 20, 10], [0, 0, 8, 20]],
         "labels": ["red", "cut"]},
        "{not json",
        {"image": "images/missing.png", "caption": "gone"},
        {"image": "images/clear.png"},
        "",
        {"image": "images/cut.jpg", "caption": "truncated image"},
        {"image": str(tmp_path / "images" / "clear.png"), "caption": "nothing", "lang": "en",
         "synthetic_caption": "an empty picture"},
        {"image": "images/broken.png", "caption": "broken image"},
    ])
    return tmp_path


def test_jsonl_skips_bad_records_with_line_numbers(user_data, caplog):
    from ernie_vilg2.data.jsonl import JsonlDataset

    with caplog.at_level(logging.INFO):
        ds = JsonlDataset(user_data, 10)  # a folder: its train.jsonl
    assert len(ds) == 3 and ds.num_skipped == 4  # the count excludes the image that is not an image
    assert [line for line, _ in ds.skipped] == [2, 3, 4, 8]
    assert "malformed JSON" in ds.skipped[0][1] and "not found" in ds.skipped[1][1] and "caption" in ds.skipped[2][1]
    assert "undecodable image" in ds.skipped[3][1] and "broken.png" in ds.skipped[3][1]
    assert f"{ds.path}:2:" in caplog.text and f"{ds.path}:3:" in caplog.text and f"{ds.path}:8:" in caplog.text
    summary = [(r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith(f"{ds.path}: ")]
    assert summary == [(logging.WARNING,  # more lines skipped than kept: a warning, not INFO
                        f"{ds.path}: 3 records (skipped 4: 1 malformed JSON, 1 invalid record, 1 missing image, "
                        "1 undecodable image)")]
    assert ds.summary == summary[0][1]
    assert [r["index"] for r in ds.records] == [0, 5, 6]  # 0-based line numbers
    assert ds.records[0]["lang"] == "zh"  # detected
    assert ds.image_path(2) == str(user_data / "images" / "clear.png")


def test_jsonl_item_rescales_boxes(user_data):
    from ernie_vilg2.data.jsonl import JsonlDataset

    item = JsonlDataset(user_data, 10)[0]  # 40x20 -> 20x10 -> centre crop x in [5, 15)
    assert item["pixel_values"].shape == (3, 10, 10) and item["pixel_values"].dtype == np.float32
    np.testing.assert_allclose(item["boxes"], [[0, 0, 5, 5]])  # second box was cropped away
    assert item["labels"] == ["red"] and item["index"] == 0 and item["synthetic_caption"] is None
    red = item["pixel_values"][:, 5, 2]
    np.testing.assert_allclose(red, [1, -1, -1])  # left half red, in [-1, 1]

    squashed = JsonlDataset(user_data, 10, image_fit="squash")[0]
    np.testing.assert_allclose(squashed["boxes"], [[2.5, 0, 5, 5], [0, 0, 2, 10]])
    assert squashed["labels"] == ["red", "cut"]

    clear = JsonlDataset(user_data, 10)[2]  # transparent RGBA lands on white
    np.testing.assert_allclose(clear["pixel_values"], 1.0)
    assert clear["boxes"].shape == (0, 4) and clear["synthetic_caption"] == "an empty picture"


def test_jsonl_corrupt_image_returns_another_item(user_data, caplog):
    from ernie_vilg2.data.jsonl import JsonlDataset, collate_samples

    ds = JsonlDataset(user_data, 10)
    with caplog.at_level(logging.WARNING):
        item = ds[1]  # cut.jpg: its header passed the load-time check, its body does not decode
    assert item["index"] == 6 and item["caption"] == "nothing"
    assert ds.num_decode_failures == 1 and ds.decode_failures[0][0] == 6
    assert "cut.jpg" in caplog.text
    batch = collate_samples([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (3, 3, 10, 10) and batch["pixel_values"].dtype == np.float32
    assert ds.num_decode_failures == 1  # the bad item is remembered, not retried
    assert batch["index"] == [0, 6, 6] and len(batch["boxes"]) == 3


def test_jsonl_image_that_is_not_a_regular_file_is_named(tmp_path, caplog):
    """A link to /dev/zero or a folder exists: "file not found" would send the user looking for it."""
    from ernie_vilg2.data.jsonl import JsonlDataset

    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "ok.png")
    os.symlink("/dev/zero", tmp_path / "images" / "zero.png")
    (tmp_path / "images" / "folder.png").mkdir()
    os.symlink(tmp_path / "images" / "gone.png", tmp_path / "images" / "broken.png")
    _write_jsonl(tmp_path / "train.jsonl", [{"image": f"images/{name}.png", "caption": name}
                                            for name in ("ok", "zero", "folder", "broken")])
    with caplog.at_level(logging.WARNING):
        ds = JsonlDataset(tmp_path, 8)
    images = tmp_path / "images"
    assert len(ds) == 1 and ds.skipped == [
        (2, f"missing image: not a regular file: {images / 'zero.png'} -> /dev/zero (a character device)"),
        (3, f"missing image: not a regular file: {images / 'folder.png'} (a directory)"),
        (4, f"missing image: file not found: {images / 'broken.png'}"),
    ]
    assert f"{ds.path}:2: missing image: not a regular file: {images / 'zero.png'}" in caplog.text


def _picture(width, height):
    """A white image with a red rectangle over [w/4, h/4, w/2, h/2] and a soft gradient."""
    x = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    img = np.broadcast_to(195 + x, (height, width, 3)).astype(np.uint8).copy()
    img[height // 4: height // 2, width // 4: width // 2] = (220, 30, 30)
    return Image.fromarray(img), [width / 4, height / 4, width / 2, height / 2]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("image_fit", ["center_crop", "squash"])
def test_jsonl_large_image_is_decoded_near_the_target_size(tmp_path, monkeypatch, suffix, image_fit):
    from ernie_vilg2.data import jsonl
    from ernie_vilg2.data.image_decode import load_rgb

    picture, box = _picture(2403, 1801)  # not a multiple of the reduction: partial blocks at the edges
    picture.save(tmp_path / f"big{suffix}", quality=95)
    _write_jsonl(tmp_path / "train.jsonl", [{"image": f"big{suffix}", "caption": "a red box", "boxes": [box]}])
    resized_from = []
    fit_image = jsonl.fit_image
    monkeypatch.setattr(jsonl, "fit_image", lambda img, *a: resized_from.append(img.size) or fit_image(img, *a))
    item = jsonl.JsonlDataset(tmp_path, 32, image_fit=image_fit)[0]
    (width, height), = resized_from
    assert 3 * 32 <= min(width, height) < 2 * 3 * 32  # not 2403x1801
    # The same image and box as resizing the full image, within a fraction of a pixel.
    full, full_boxes, _ = fit_image(load_rgb(str(tmp_path / f"big{suffix}")), np.float32([box]), 32, image_fit)
    np.testing.assert_allclose(item["boxes"], full_boxes, atol=0.1)
    difference = np.abs(item["pixel_values"] - jsonl.to_pixel_values(full))
    assert difference.mean() < 0.01 and difference.max() < 0.3


def test_images_over_the_pixel_limit_are_skipped(tmp_path, caplog):
    from ernie_vilg2.data import build_dataset

    Image.new("RGB", (1200, 1000)).save(tmp_path / "big.png")
    Image.new("RGB", (1000, 1000)).save(tmp_path / "limit.png")
    _write_jsonl(tmp_path / "train.jsonl", [{"image": "big.png", "caption": "too big"},
                                            {"image": "limit.png", "caption": "just fits"}])
    cfg = from_dict(DataConfig, {"root": str(tmp_path), "resolution": 8, "max_image_pixels": 1_000_000}, "data")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg)
    assert [r["caption"] for r in ds.records] == ["just fits"]
    reason = (f"oversized image {tmp_path / 'big.png'} (1200x1000 = 1,200,000 pixels, more than "
              "data.max_image_pixels 1,000,000)")
    assert ds.skipped == [(1, reason)]
    assert f"{ds.path}:1: {reason}; record skipped" in caplog.text
    assert ds.summary.endswith("(skipped 1: 1 oversized image)")
    assert DataConfig().max_image_pixels == 8192 * 8192
    with pytest.raises(ConfigError, match="data.max_image_pixels"):
        DataConfig(max_image_pixels=0)


def test_jsonl_nothing_valid_names_the_file(tmp_path):
    from ernie_vilg2.data.jsonl import JsonlDataset

    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, ["[1, 2]", {"image": "x.png", "caption": "no file"}, {"image": "x.png", "caption": 3}])
    with pytest.raises(ValueError, match="bad.jsonl") as err:
        JsonlDataset(path, 16)
    assert "no valid record in 3 lines (2 invalid records, 1 missing image)" in str(err.value)
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl: no records"):
        JsonlDataset(path, 16)
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        JsonlDataset(tmp_path, 16, split="val")


def test_jsonl_summary_line_and_filters(tmp_path, caplog):
    from ernie_vilg2.data.jsonl import JsonlDataset

    (tmp_path / "a.png").write_bytes(b"")  # an empty file is not an image either
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    lines = [{"image": "b.png", "caption": f"caption {i}"} for i in range(1200)]
    lines += [{"image": "a.png", "caption": "empty"}, {"image": "b.png", "caption": "红色", "lang": "zh"}]
    _write_jsonl(tmp_path / "train.jsonl", lines)
    with caplog.at_level(logging.INFO):
        ds = JsonlDataset(tmp_path, 4, languages=["en"], max_samples=1000)
    path = str(tmp_path / "train.jsonl")
    assert len(ds) == 1000 and ds.summary == (
        f"{path}: 1,000 records (skipped 1: 1 undecodable image; 1 not in data.languages; "
        "200 past data.max_samples)")
    assert [r.levelno for r in caplog.records if r.getMessage() == ds.summary] == [logging.INFO]

    caplog.clear()
    _write_jsonl(tmp_path / "train.jsonl", lines[:1] + ["{oops"] * 2)
    with caplog.at_level(logging.INFO):
        ds = JsonlDataset(tmp_path, 4)
    assert ds.summary == f"{path}: 1 records (skipped 2: 2 malformed JSON)"
    # most lines bad: the summary is a warning
    assert [r.levelno for r in caplog.records if r.getMessage() == ds.summary] == [logging.WARNING]

    _write_jsonl(tmp_path / "train.jsonl", lines[:2])
    assert JsonlDataset(tmp_path, 4).summary == f"{path}: 2 records (none skipped)"


def test_jsonl_refuses_tabular_files(vilg300_csv, tmp_path):
    from ernie_vilg2.data.jsonl import JsonlDataset, read_jsonl_records

    with pytest.raises(ValueError, match=r"ViLG-300\.csv: expected a JSON Lines dataset .*got a \.csv file"):
        read_jsonl_records(vilg300_csv)
    tsv = tmp_path / "data.TSV"
    tsv.write_text("image\tcaption\na.png\ta cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.TSV: expected a JSON Lines dataset"):
        JsonlDataset(tsv, 16)
    txt = tmp_path / "data.txt"  # any other name: the content decides
    txt.write_text("a cat\na dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data\.txt: no valid record in 2 lines \(2 malformed JSON\)"):
        read_jsonl_records(str(txt))


# ---------------------------------------------------------------- language


def test_detect_lang():
    assert detect_lang("红苹果在猫脸的左边") == "zh"
    assert detect_lang("a red apple to the left of a cat face") == "en"
    assert detect_lang("a 红 apple") == "zh"
    assert detect_lang("") == "en" and detect_lang("123 !") == "en"


def test_split_runs_mixed_text():
    text = "一只red apple在桌子上, 3 cats。"
    runs = split_runs(text)
    assert "".join(text[s:e] for s, e, _ in runs) == text
    assert [(text[s:e], lang) for s, e, lang in runs] == [
        ("一只", "zh"), ("red apple", "en"), ("在桌子上, 3 ", "zh"), ("cats。", "en")]
    assert split_runs("  hi") == [(0, 4, "en")]  # leading neutrals join the first run
    assert split_runs("") == [] and split_runs("!!") == [(0, 2, "en")]
