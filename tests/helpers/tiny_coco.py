"""A 4-image COCO 2014 folder in COCO's own JSON schema, for tests/data/test_coco_data.py and
tests/evaluation/test_coco_protocol.py: captions out of order, one empty caption, boxes with one crowd
annotation (an RLE segmentation), one box past the image's edge and one without area."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

# image id -> (file name, width, height)
IMAGES = {42: ("COCO_val2014_000000000042.jpg", 40, 30), 7: ("COCO_val2014_000000000007.jpg", 30, 40),
          100: ("COCO_val2014_000000000100.jpg", 48, 48), 9: ("COCO_val2014_000000000009.jpg", 64, 32)}
CAPTIONS = [  # (image id, caption id, caption) in the file's order
    (42, 501, "A red square on a grey table. "), (7, 12, "Two people standing in a crowd."),
    (42, 17, "A dog lying next to a person."), (100, 3, "A wooden chair in an empty room."),
    (7, 8, "A crowd of people at a market."), (9, 40, "A wide view of a beach at sunset."),
    (100, 300, "\nAn old chair by the window."), (9, 41, "   "),
]
CATEGORIES = [{"supercategory": "animal", "id": 18, "name": "dog"},
              {"supercategory": "person", "id": 1, "name": "person"},
              {"supercategory": "furniture", "id": 62, "name": "chair"}]
INSTANCES = [  # (annotation id, image id, category id, bbox [x, y, w, h], iscrowd)
    (1001, 42, 18, [2.5, 3.0, 10.0, 12.25], 0),
    (1002, 42, 1, [30.0, 20.0, 15.0, 15.0], 0),  # past the right and bottom edges of 40x30
    (1003, 7, 1, [0.0, 0.0, 30.0, 40.0], 1),  # a crowd
    (1004, 100, 62, [5.0, 6.0, 7.0, 8.0], 0),
    (1005, 100, 62, [1.0, 1.0, 0.0, 5.0], 0),  # no area
]
# What CocoCaptions makes of it, in its order (image id, then caption id).
EXPECTED_KEYS = ["7_8", "7_12", "9_40", "42_17", "42_501", "100_3", "100_300"]
EXPECTED_BOXES = {7: ([], []), 9: ([], []), 42: ([[2.5, 3.0, 12.5, 15.25], [30.0, 20.0, 40.0, 30.0]], ["dog", "person"]),
                  100: ([[5.0, 6.0, 12.0, 14.0]], ["chair"])}


def _images_entries():
    return [{"license": 3, "file_name": name, "coco_url": f"http://images.cocodataset.org/val2014/{name}",
             "height": h, "width": w, "date_captured": "2013-11-14 11:18:45", "id": image_id}
            for image_id, (name, w, h) in IMAGES.items()]


def _write_json(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def write_tiny_coco(root, split: str = "val2014") -> str:
    """Write the folder under ``root`` (annotations/, val2014/); return ``root`` as a str."""
    root = str(root)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, (name, w, h) in IMAGES.items():
        base = rng.integers(0, 256, 3)
        pixels = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, split, name), quality=90)
    info = {"description": "tiny COCO for tests", "version": "1.0", "year": 2014}
    _write_json(os.path.join(root, "annotations", f"captions_{split}.json"), {
        "info": info, "licenses": [{"url": "", "id": 3, "name": "test"}], "images": _images_entries(),
        "annotations": [{"image_id": i, "id": c, "caption": text} for i, c, text in CAPTIONS]})
    annotations = []
    for ann_id, image_id, category_id, (x, y, w, h), crowd in INSTANCES:
        segmentation = ({"counts": [0, 12, 1188], "size": [IMAGES[image_id][2], IMAGES[image_id][1]]} if crowd
                        else [[x, y, x + w, y, x + w, y + h, x, y + h]])
        annotations.append({"segmentation": segmentation, "area": w * h, "iscrowd": crowd, "image_id": image_id,
                            "bbox": [x, y, w, h], "category_id": category_id, "id": ann_id})
    _write_json(os.path.join(root, "annotations", f"instances_{split}.json"), {
        "info": info, "licenses": [], "images": _images_entries(), "annotations": annotations,
        "categories": CATEGORIES})
    return root
