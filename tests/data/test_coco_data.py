"""The COCO captions source (ernie_vilg2/data/coco.py) on a 4-image folder in COCO's schema
(tests/helpers/tiny_coco.py): records in the project's form, boxes, crowd annotations, order, errors."""
from __future__ import annotations

import json
import os

import pytest

from helpers.tiny_coco import CAPTIONS, EXPECTED_BOXES, EXPECTED_KEYS, IMAGES, write_tiny_coco


RECORD_KEYS = {"key", "image", "caption", "lang", "boxes", "labels", "synthetic_caption"}


@pytest.fixture
def coco_root(tmp_path):
    return write_tiny_coco(tmp_path / "coco")


def _captions():
    return {f"{i}_{c}": text.strip() for i, c, text in CAPTIONS}


def test_records_are_one_per_caption_in_the_projects_form(coco_root):
    from ernie_vilg2.data.coco import CocoCaptions
    from ernie_vilg2.data.jsonl import parse_record

    coco = CocoCaptions(coco_root, "val2014")
    records = list(coco)
    assert [r["key"] for r in records] == EXPECTED_KEYS  # by image id, then caption id; the empty one left out
    assert len(coco) == 7 and coco.num_images == 4 and list(coco.image_ids) == [7, 9, 42, 100]
    captions = _captions()
    for record in records:
        image_id = int(record["key"].split("_")[0])
        assert set(record) == RECORD_KEYS
        assert record["image"] == os.path.join(os.path.abspath(coco_root), "val2014", IMAGES[image_id][0])
        assert record["caption"] == captions[record["key"]] and record["lang"] == "en"
        assert (record["boxes"], record["labels"]) == EXPECTED_BOXES[image_id]
        assert record["synthetic_caption"] is None
        # A JSON-lines record as it is: the JSONL validator takes it unchanged.
        parsed, reason = parse_record(json.loads(json.dumps(record)), "/elsewhere")
        assert reason is None and parsed["image_path"] == record["image"]
    assert records[4]["caption"] == "A red square on a grey table."  # white space stripped
    assert (coco.num_crowd_excluded, coco.num_empty_boxes, coco.num_empty_captions) == (1, 1, 1)
    assert coco.summary.endswith("7 captions of 4 images, 3 boxes from "
                                 f"{coco.instances_json} (1 empty caption left out; 1 crowd annotation excluded; "
                                 "1 box without area dropped)")


def test_order_and_random_access_do_not_depend_on_the_files_order(coco_root, tmp_path):
    from ernie_vilg2.data.coco import CocoCaptions

    path = os.path.join(coco_root, "annotations", "captions_val2014.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["annotations"].reverse()
    data["images"].reverse()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    coco = CocoCaptions(coco_root)
    records = list(coco)
    assert [r["key"] for r in records] == EXPECTED_KEYS
    assert [coco[i] for i in range(len(coco))] == records and coco[-1] == records[-1]
    assert coco.records_of_image(42) == records[3:5]
    assert coco.records_for_images([100, 7]) == [records[5:7], records[0:2]]
    with pytest.raises(IndexError):
        coco[7]
    with pytest.raises(KeyError, match="image 5 has no caption"):
        coco.records_of_image(5)


def test_captions_only_and_from_files(coco_root):
    from ernie_vilg2.data.coco import CocoCaptions

    annotations = os.path.join(coco_root, "annotations")
    with_boxes = list(CocoCaptions.from_files(os.path.join(annotations, "captions_val2014.json"),
                                              os.path.join(annotations, "instances_val2014.json"),
                                              image_dir=os.path.join(coco_root, "val2014")))
    assert with_boxes == list(CocoCaptions(coco_root))
    no_boxes = list(CocoCaptions(coco_root, instances=False))
    assert [r["key"] for r in no_boxes] == EXPECTED_KEYS
    assert all(r["boxes"] == [] and r["labels"] == [] for r in no_boxes)
    os.remove(os.path.join(annotations, "instances_val2014.json"))  # optional: not there, no boxes
    assert list(CocoCaptions(coco_root)) == no_boxes
    assert CocoCaptions(coco_root).summary.endswith("7 captions of 4 images, no boxes (no instances file) "
                                                    "(1 empty caption left out)")


def _rewrite(path, change):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    change(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


@pytest.mark.parametrize("damage,expected", [
    (lambda r: os.remove(f"{r}/annotations/captions_val2014.json"),
     "COCO captions file not found: {r}/annotations/captions_val2014.json"),
    (lambda r: os.rename(f"{r}/val2014", f"{r}/images"), "COCO image folder not found: {r}/val2014"),
    (lambda r: open(f"{r}/annotations/captions_val2014.json", "w").write('{"images": ['),
     "{r}/annotations/captions_val2014.json: not a JSON file (Expecting value: line 1 column 13 (char 12))"),
    (lambda r: _rewrite(f"{r}/annotations/captions_val2014.json", lambda d: d.pop("annotations")),
     "{r}/annotations/captions_val2014.json: not a COCO captions file (no 'annotations' list)"),
    (lambda r: _rewrite(f"{r}/annotations/captions_val2014.json", lambda d: d["annotations"][2].pop("caption")),
     "{r}/annotations/captions_val2014.json: annotations[2] has no valid 'caption'"),
    (lambda r: _rewrite(f"{r}/annotations/captions_val2014.json", lambda d: d["annotations"][1].update(id=501,
                                                                                                     image_id=42)),
     "{r}/annotations/captions_val2014.json: caption id 501 appears twice"),
    (lambda r: _rewrite(f"{r}/annotations/instances_val2014.json", lambda d: d["annotations"][3].update(bbox=[1, 2])),
     "{r}/annotations/instances_val2014.json: annotations[3] has no valid 'bbox' [x, y, w, h]"),
    (lambda r: _rewrite(f"{r}/annotations/instances_val2014.json", lambda d: d["annotations"][0].update(
        category_id=99)), "{r}/annotations/instances_val2014.json: annotations[0] names category 99, which is not "
                          "in 'categories'"),
    (lambda r: _rewrite(f"{r}/annotations/instances_val2014.json", lambda d: [
        im.update(id=im["id"] + 1000) for im in d["images"]] and [a.update(image_id=a["image_id"] + 1000)
                                                                   for a in d["annotations"]]),
     "{r}/annotations/instances_val2014.json: lacks 4 of the 4 images of {r}/annotations/captions_val2014.json, "
     "e.g. image 7 (the instances of another split?)"),
])
def test_bad_files_are_one_line_errors_naming_them(coco_root, damage, expected):
    from ernie_vilg2.data.coco import CocoCaptions, CocoError
    from ernie_vilg2.data.jsonl import DatasetError

    damage(coco_root)
    with pytest.raises(CocoError) as info:
        CocoCaptions(coco_root)
    assert str(info.value) == expected.format(r=coco_root)
    assert isinstance(info.value, DatasetError) and isinstance(info.value, ValueError)


def test_missing_folder_split_and_required_instances_are_named(coco_root, tmp_path):
    from ernie_vilg2.data.coco import CocoCaptions, CocoError

    with pytest.raises(CocoError, match=f"^COCO folder not found: {tmp_path / 'nowhere'}$"):
        CocoCaptions(str(tmp_path / "nowhere"))
    with pytest.raises(CocoError, match=f"^COCO captions file not found: {coco_root}/annotations/"
                                        "captions_train2017.json$"):
        CocoCaptions(coco_root, "train2017")
    os.remove(os.path.join(coco_root, "annotations", "instances_val2014.json"))
    with pytest.raises(CocoError, match=f"^COCO instances file not found: {coco_root}/annotations/"
                                        "instances_val2014.json$"):
        CocoCaptions(coco_root, instances=True)
