"""MS-COCO captions (and, optionally, its ground-truth boxes) as records of the project's form.

A COCO folder as it is downloaded::

    ROOT/annotations/captions_val2014.json    (also train2014, train2017, val2017)
    ROOT/annotations/instances_val2014.json   optional: the boxes
    ROOT/val2014/COCO_val2014_000000391895.jpg ...

:class:`CocoCaptions` yields one record per caption, a dict with the keys of a JSON-lines
record (:mod:`.jsonl`), the image path absolute::

    {"key": "391895_770337", "image": "/data/coco/val2014/COCO_val2014_000000391895.jpg",
     "caption": "A man with a red helmet on a small moped on a dirt road.", "lang": "en",
     "boxes": [[359.17, 146.17, 471.62, 359.74], ...], "labels": ["person", ...],
     "synthetic_caption": None}

``key`` is ``{image_id}_{caption_id}``: stable and unique. Records come by image id, then
caption id, whatever the order of the file. A caption is stripped of surrounding white space;
an empty one is left out (counted in :attr:`CocoCaptions.summary`).

Boxes are the instances file's ground truth: COCO's ``[x, y, w, h]`` becomes ``[x0, y0, x1,
y1]`` in pixels of the stored image, clipped to it; labels are the category names (English).
Crowd annotations (``iscrowd: 1``, a region of many objects such as a crowd of people) are
left out, as are boxes with no area after clipping. Without an instances file every record
has empty boxes.

Plain ``json`` is used rather than pycocotools: ``COCO()`` keeps the whole file including
every segmentation polygon and builds per-id dictionaries (gigabytes for the train2014
instances), and prints to stdout while it loads. Here the polygons are dropped as each
annotation is parsed, and what is kept is stored in NumPy arrays and one list of caption
strings; a record's dict is made only when it is read.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .jsonl import DatasetError


class CocoError(DatasetError):
    """A COCO file or folder is missing or unusable; the message names it."""


def coco_paths(root: str, split: str) -> Tuple[str, str, str]:
    """``(captions json, instances json, image folder)`` of ``split`` under a COCO folder."""
    annotations = os.path.join(root, "annotations")
    return (os.path.join(annotations, f"captions_{split}.json"), os.path.join(annotations, f"instances_{split}.json"),
            os.path.join(root, split))


def _read_json(path: str, kind: str, object_hook=None) -> dict:
    if not os.path.isfile(path):
        raise CocoError(f"COCO {kind} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_hook=object_hook)
    except OSError as exc:
        raise CocoError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise CocoError(f"{path}: not a COCO {kind} file (expected a JSON object with 'images' and 'annotations')")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise CocoError(f"{path}: not a COCO {kind} file (no '{key}' list)")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _bad(path: str, where: str, what: str) -> CocoError:
    return CocoError(f"{path}: {where} has no valid {what}")


def _compact_instance(obj: dict):
    """json object_hook: an instance annotation becomes a small tuple as soon as it is parsed,
    so its segmentation polygon is freed at once; other objects stay as they are."""
    if "bbox" in obj and "category_id" in obj:
        return obj.get("image_id"), obj.get("category_id"), obj.get("iscrowd", 0), obj.get("bbox")
    return obj


class CocoCaptions:
    """The captions of one COCO split, one record per caption (format in the module docstring).

    Args:
        root: the COCO folder (``annotations/``, ``train2014/``, ``val2014/``, ...).
        split: ``val2014``, ``train2014``, ``val2017``, ``train2017`` (the file and folder names).
        instances: read ``annotations/instances_{split}.json`` for the boxes: None (default)
            when the file is there, True required, False never (empty boxes).

    Missing or malformed files are a :class:`CocoError` (a ValueError) naming the file.
    """

    def __init__(self, root: str, split: str = "val2014", instances: Optional[bool] = None):
        if not os.path.isdir(root):
            raise CocoError(f"COCO folder not found: {root}")
        captions_json, instances_json, image_dir = coco_paths(root, split)
        if instances is None:
            instances = os.path.isfile(instances_json)
        self.split = split
        self._load(captions_json, instances_json if instances else None, image_dir)

    @classmethod
    def from_files(cls, captions_json: str, instances_json: Optional[str] = None, *, image_dir: str) -> "CocoCaptions":
        """The captions of ``captions_json`` with the boxes of ``instances_json`` (None: no
        boxes) and the images in ``image_dir``."""
        self = cls.__new__(cls)
        self.split = os.path.basename(os.path.normpath(image_dir))
        self._load(captions_json, instances_json, image_dir)
        return self

    # -- loading -----------------------------------------------------------------------------------
    def _load(self, captions_json: str, instances_json: Optional[str], image_dir: str) -> None:
        self.captions_json = os.path.abspath(captions_json)
        self.instances_json = os.path.abspath(instances_json) if instances_json else None
        self.image_dir = os.path.abspath(image_dir)
        if not os.path.isfile(captions_json):
            raise CocoError(f"COCO captions file not found: {captions_json}")
        if not os.path.isdir(image_dir):
            raise CocoError(f"COCO image folder not found: {image_dir}")
        data = _read_json(captions_json, "captions")
        files = self._read_images(data["images"], captions_json)
        image_of_caption, caption_ids, captions, self.num_empty_captions = self._read_captions(
            data["annotations"], files, captions_json)
        del data
        # Sort by (image id, caption id); keep only images with a caption.
        order = np.lexsort((caption_ids, image_of_caption))
        image_of_caption, caption_ids = image_of_caption[order], caption_ids[order]
        duplicate = (np.diff(image_of_caption) == 0) & (np.diff(caption_ids) == 0)
        if duplicate.any():
            raise CocoError(f"{captions_json}: caption id {caption_ids[np.argmax(duplicate)]} appears twice")
        self._captions: List[str] = [captions[i] for i in order]
        self._image_ids, first = np.unique(image_of_caption, return_index=True)
        self._caption_start = np.append(first, len(caption_ids)).astype(np.int64)
        self._caption_ids = caption_ids
        self._file_names: List[str] = [files[int(i)] for i in self._image_ids]
        self._box_start = np.zeros(len(self._image_ids) + 1, np.int64)
        self._boxes = np.zeros((0, 4), np.float64)
        self._box_labels = np.zeros(0, np.int32)
        self.category_names: List[str] = []
        self.num_crowd_excluded = self.num_empty_boxes = 0
        if instances_json:
            self._read_instances(instances_json)

    @staticmethod
    def _read_images(images: list, path: str) -> Dict[int, str]:
        files = {}
        for k, image in enumerate(images):
            if not isinstance(image, dict) or not _is_int(image.get("id")):
                raise _bad(path, f"images[{k}]", "'id'")
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                raise _bad(path, f"images[{k}]", "'file_name'")
            files[image["id"]] = image["file_name"]
        return files

    @staticmethod
    def _read_captions(annotations: list, files: Dict[int, str], path: str):
        image_ids, caption_ids, captions, empty = [], [], [], 0
        for k, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise _bad(path, f"annotations[{k}]", "caption annotation")
            for key in ("image_id", "id"):
                if not _is_int(ann.get(key)):
                    raise _bad(path, f"annotations[{k}]", f"'{key}'")
            if not isinstance(ann.get("caption"), str):
                raise _bad(path, f"annotations[{k}]", "'caption'")
            if ann["image_id"] not in files:
                raise CocoError(f"{path}: annotations[{k}] names image {ann['image_id']}, which is not in 'images'")
            caption = ann["caption"].strip()
            if not caption:
                empty += 1
                continue
            image_ids.append(ann["image_id"])
            caption_ids.append(ann["id"])
            captions.append(caption)
        if not captions:
            raise CocoError(f"{path}: no captions")
        return np.asarray(image_ids, np.int64), np.asarray(caption_ids, np.int64), captions, empty

    def _read_instances(self, path: str) -> None:
        data = _read_json(path, "instances", object_hook=_compact_instance)
        sizes = {}
        for k, image in enumerate(data["images"]):
            if not isinstance(image, dict) or not all(_is_int(image.get(key)) for key in ("id", "width", "height")):
                raise _bad(path, f"images[{k}]", "'id', 'width' and 'height'")
            sizes[image["id"]] = (image["width"], image["height"])
        categories = data.get("categories")
        if not isinstance(categories, list):
            raise CocoError(f"{path}: not a COCO instances file (no 'categories' list)")
        category_index = {}
        for k, category in enumerate(categories):
            if not isinstance(category, dict) or not _is_int(category.get("id")) or \
                    not isinstance(category.get("name"), str):
                raise _bad(path, f"categories[{k}]", "'id' and 'name'")
            category_index[category["id"]] = len(self.category_names)
            self.category_names.append(category["name"])
        captioned = set(self._image_ids.tolist())
        unknown = captioned - sizes.keys()
        if unknown:
            raise CocoError(f"{path}: lacks {len(unknown):,} of the {len(captioned):,} images of {self.captions_json}, "
                            f"e.g. image {min(unknown)} (the instances of another split?)")
        rows = []  # (image id, category index, x0, y0, x1, y1)
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, tuple):
                raise _bad(path, f"annotations[{k}]", "'bbox' and 'category_id'")
            image_id, category_id, crowd, bbox = ann
            if not _is_int(image_id) or image_id not in sizes:
                raise CocoError(f"{path}: annotations[{k}] names image {image_id!r}, which is not in its 'images'")
            if category_id not in category_index:
                raise CocoError(f"{path}: annotations[{k}] names category {category_id!r}, which is not in 'categories'")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise _bad(path, f"annotations[{k}]", "'bbox' [x, y, w, h]")
            if crowd not in (0, 1):
                raise _bad(path, f"annotations[{k}]", "'iscrowd' (0 or 1)")
            if crowd:
                self.num_crowd_excluded += 1
                continue
            if image_id not in captioned:
                continue
            width, height = sizes[image_id]
            x, y, w, h = bbox
            box = (min(max(x, 0), width), min(max(y, 0), height), min(max(x + w, 0), width), min(max(y + h, 0), height))
            if box[2] <= box[0] or box[3] <= box[1]:
                self.num_empty_boxes += 1
                continue
            rows.append((image_id, category_index[category_id], *box))
        del data
        if rows:
            table = np.asarray(rows, np.float64)
            image_index = np.searchsorted(self._image_ids, table[:, 0].astype(np.int64))
            order = np.argsort(image_index, kind="stable")  # within an image: the file's order
            self._boxes = np.ascontiguousarray(table[order, 2:])
            self._box_labels = table[order, 1].astype(np.int32)
            counts = np.bincount(image_index, minlength=len(self._image_ids))
            self._box_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # -- reading -----------------------------------------------------------------------------------
    @property
    def summary(self) -> str:
        """One line for a log: captions, images, boxes and what was left out (loading logs nothing)."""
        def count(n: int, one: str, many: str = "") -> str:
            return f"{n:,} {one if n == 1 else many or one + 's'}"

        notes = []
        if self.num_empty_captions:
            notes.append(f"{count(self.num_empty_captions, 'empty caption')} left out")
        if self.instances_json:
            boxes = f", {count(len(self._boxes), 'box', 'boxes')} from {self.instances_json}"
            notes.append(f"{count(self.num_crowd_excluded, 'crowd annotation')} excluded")
            if self.num_empty_boxes:
                notes.append(f"{count(self.num_empty_boxes, 'box', 'boxes')} without area dropped")
        else:
            boxes = ", no boxes (no instances file)"
        extra = f" ({'; '.join(notes)})" if notes else ""
        return (f"{self.captions_json}: {count(len(self), 'caption')} of {count(self.num_images, 'image')}"
                f"{boxes}{extra}")

    def __len__(self) -> int:
        return len(self._captions)

    @property
    def num_images(self) -> int:
        return len(self._image_ids)

    @property
    def image_ids(self) -> np.ndarray:
        """The ids of the images with at least one caption, ascending (a read-only view)."""
        view = self._image_ids.view()
        view.flags.writeable = False
        return view

    def _image_index(self, image_id: int) -> int:
        i = int(np.searchsorted(self._image_ids, image_id))
        if i == len(self._image_ids) or self._image_ids[i] != image_id:
            raise KeyError(f"image {image_id} has no caption in {self.captions_json}")
        return i

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_dir, self._file_names[self._image_index(image_id)])

    def _record(self, c: int, i: int) -> Dict[str, Any]:
        start, end = self._box_start[i], self._box_start[i + 1]
        return {
            "key": f"{self._image_ids[i]}_{self._caption_ids[c]}",
            "image": os.path.join(self.image_dir, self._file_names[i]),
            "caption": self._captions[c],
            "lang": "en",
            "boxes": self._boxes[start:end].tolist(),
            "labels": [self.category_names[j] for j in self._box_labels[start:end]],
            "synthetic_caption": None,
        }

    def __getitem__(self, c: int) -> Dict[str, Any]:
        """Record ``c`` in the order of iteration."""
        if not -len(self) <= c < len(self):
            raise IndexError(f"record {c} out of range ({len(self)} records)")
        c %= len(self)
        return self._record(c, int(np.searchsorted(self._caption_start, c, side="right")) - 1)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(self.num_images):
            for c in range(self._caption_start[i], self._caption_start[i + 1]):
                yield self._record(int(c), i)

    def records_of_image(self, image_id: int) -> List[Dict[str, Any]]:
        """The records of one image (its captions by caption id); KeyError for an image
        without captions."""
        i = self._image_index(image_id)
        return [self._record(c, i) for c in range(self._caption_start[i], self._caption_start[i + 1])]

    def records_for_images(self, image_ids: Sequence[int]) -> List[List[Dict[str, Any]]]:
        """:meth:`records_of_image` of each of ``image_ids``, in their order."""
        return [self.records_of_image(int(image_id)) for image_id in image_ids]
