"""Which data a data.root names (ernie_vilg2/data/sources.py), the JSON-lines offset index
(jsonl_index.py) and indexed records decoded when read, bad images replaced."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ernie_vilg2.config import from_dict
from ernie_vilg2.data.config import DataConfig
from ernie_vilg2.data.jsonl import DatasetError, JsonlDataset
from ernie_vilg2.data.jsonl_index import JsonlIndex
from ernie_vilg2.data.problems import MISSING_IMAGE, UNDECODABLE_IMAGE
from ernie_vilg2.data.sources import MapDataset, ShardSet, coco_split, detect_format, open_source

from helpers.paths import TINY_YAML
from helpers.shard_data import image_bytes, write_shards
from helpers.tiny_coco import write_tiny_coco


def test_format_is_told_by_the_root(tmp_path):
    write_shards(tmp_path / "shards", 2, shard_size=1)
    (tmp_path / "list.txt").write_text("shards/00000.tar\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "train.jsonl").write_text("")
    coco = write_tiny_coco(tmp_path / "coco")
    assert detect_format(str(tmp_path / "mine")) == "jsonl"
    assert detect_format(str(tmp_path / "mine" / "train.jsonl")) == "jsonl"
    assert detect_format(coco) == "coco"
    for root in ("shards", "shards/{00000..00001}.tar", "list.txt", "shards/00000.tar"):
        assert detect_format(str(tmp_path / root)) == "webdataset", root
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="without train.jsonl, annotations/captions_.*set data.format"):
        detect_format(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="data.root not found: .*nowhere"):
        detect_format(str(tmp_path / "nowhere"))


def _jsonl(tmp_path, lines):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
                                                  for x in lines).encode("utf-8") + b"\n\xff\xfe\n")
    return str(path)


def test_jsonl_index_keeps_offsets_and_parses_a_record_when_read(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(image_bytes(1))
    path = _jsonl(tmp_path, [{"image": "a.png", "caption": "红苹果", "boxes": [[1, 1, 5, 5]], "labels": ["apple"]},
                             "{broken", {"image": "a.png"}, "", {"image": "gone.png", "caption": "an apple"},
                             {"image": str(tmp_path / "a.png"), "caption": "english", "lang": "en", "key": "own"}])
    with caplog.at_level(logging.INFO):
        index = JsonlIndex(path)
    assert len(index) == 3 and index._offsets.dtype == np.int64  # images are not opened: gone.png stays
    assert [line for line, _ in index.skipped] == [2, 3, 7]
    assert index.summary == f"{path}: 3 records (skipped 3: 2 malformed JSON, 1 invalid record)"
    assert f"{path}:7: malformed JSON (not UTF-8" in caplog.text
    first, missing, own = (index.record(i) for i in range(3))
    assert (first["index"], first["key"], first["lang"]) == (0, "000000000", "zh")
    assert first["image"] == str(tmp_path / "a.png")
    assert first["boxes"] == [[1.0, 1.0, 5.0, 5.0]] and missing["index"] == 4 and own["key"] == "own"
    assert index.describe(missing) == f"{path}:5"
    english = JsonlIndex(path, languages=["en"], max_samples=1)
    assert [english.record(0)["caption"]] == ["an apple"]
    assert english.summary.endswith("(skipped 2: 1 malformed JSON, 1 invalid record; 1 not in data.languages; "
                                    "2 lines past data.max_samples)")
    with pytest.raises(DatasetError, match="no records in languages"):
        JsonlIndex(path, languages=[])


def test_map_dataset_replaces_unreadable_images_and_reports_them(tmp_path, caplog):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = (255, 0, 0)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "wide.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _jsonl(tmp_path, [{"image": "wide.png", "caption": "red left", "boxes": [[10, 0, 20, 10], [0, 0, 8, 20]],
                              "labels": ["red", "cut"]},
                             {"image": "gone.png", "caption": "missing"}, {"image": "broken.png", "caption": "broken"},
                             {"image": "wide.png", "caption": "again", "lang": "en"}])
    dataset = MapDataset(JsonlIndex(path), 10)
    assert [dataset.sample(i)["caption"] for i in (1, 2, 1)] == ["again", "again", "again"]
    problems = dataset.take_problems()  # each time it is met (a stage's report counts it once)
    assert len(problems) == 5 and sorted({(p.kind, p.where) for p in problems}) == [
        (MISSING_IMAGE, str(tmp_path / "gone.png")), (UNDECODABLE_IMAGE, str(tmp_path / "broken.png"))]
    assert problems[0].message.startswith(f"{path}:2: missing image") and dataset.take_problems() == []
    # The same item as the in-memory JSON-lines dataset gives (which skips the line that is not UTF-8).
    with caplog.at_level(logging.WARNING):
        theirs = JsonlDataset(path, 10)
    assert [line for line, _ in theirs.skipped][-1] == 5 and f"{path}:5: malformed JSON (not UTF-8" in caplog.text
    ours, theirs = dataset[0], theirs[0]
    np.testing.assert_array_equal(ours["pixel_values"], theirs["pixel_values"])
    np.testing.assert_array_equal(ours["boxes"], theirs["boxes"])
    assert ours["labels"] == theirs["labels"] == ["red"] and ours["index"] == theirs["index"] == 0


def _data(root, **extra):
    return from_dict(DataConfig, {"root": str(root), **extra}, "data")


def test_coco_split_and_refused_settings(tmp_path):
    coco = write_tiny_coco(tmp_path / "coco")
    assert coco_split(coco, None) == "val2014"
    source = open_source(_data(coco))
    assert isinstance(source, MapDataset) and len(source) == 7 and source.record(3)["key"] == "42_17"
    assert len(open_source(_data(coco, max_samples=2))) == 2
    write_tiny_coco(tmp_path / "coco", split="val2017")
    with pytest.raises(DatasetError, match="splits val2014, val2017: set data.coco_split"):
        open_source(_data(coco))
    write_tiny_coco(tmp_path / "coco", split="train2017")
    assert coco_split(coco, None) == "train2017"
    with pytest.raises(DatasetError, match="COCO's captions are English"):
        open_source(_data(coco, coco_split="val2014", languages=["zh"]))
    write_shards(tmp_path / "shards", 2, shard_size=1)
    assert isinstance(open_source(_data(tmp_path / "shards")), ShardSet)
    with pytest.raises(DatasetError, match="data.max_samples applies to jsonl and coco"):
        open_source(_data(tmp_path / "shards", max_samples=5))
    with pytest.raises(DatasetError, match=r"shard not found: .*00002\.tar"):
        open_source(_data(str(tmp_path / "shards" / "{00000..00002}.tar")))


def test_shards_refuse_an_annotation_file(tmp_path):
    from ernie_vilg2.config import ConfigError
    from ernie_vilg2.training.config import load_config
    from ernie_vilg2.training.data_feed import open_training_data

    write_shards(tmp_path / "shards", 2, shard_size=1)
    cfg = load_config(TINY_YAML, [f"data.root={tmp_path / 'shards'}", f"textual_knowledge.annotations={tmp_path}/a"])
    with pytest.raises(ConfigError, match="textual_knowledge.annotations.*NAME.knowledge.jsonl"):
        open_training_data(cfg)
