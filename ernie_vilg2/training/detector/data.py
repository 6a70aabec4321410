"""The detector's training and held-out data: the scenes of dataset folders (records with
boxes; records without are skipped) and single-emoji images rendered in memory.

Scenes alone show only small objects (0.4-0.5 of the side) of the scene classes, and a
detector trained on them names any large or unknown emoji after some class, so the data
builder's functions also render images of one scene-class emoji at a random scale and
position, with its box, and negatives (one emoji of no scene class, no box) that teach the
head background. Held-out singles and negatives of other emoji are scored too.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...data.emoji_catalog import find_by_name, load_emoji_catalog
from ...data.render import new_canvas, paste_emoji, to_rgb
from ...knowledge.visual.detector import load_image_rgb
from ...knowledge.visual.labels import LabelMap
from .config import SingleEmojiData


@dataclass
class SceneAnnotation:
    image: str  # path of the image file (a name only, when ``pixels`` is set)
    boxes: np.ndarray  # float32 [K, 4] pixels (x0, y0, x1, y1); K may be 0 (a negative)
    class_ids: np.ndarray  # int64 [K]
    pixels: Optional[np.ndarray] = None  # uint8 RGB [H, W, 3] of an image rendered in memory

    def load(self) -> np.ndarray:
        return self.pixels if self.pixels is not None else load_image_rgb(self.image)


def read_scene_annotations(jsonl_path: str, label_map: LabelMap) -> List[SceneAnnotation]:
    """Records with boxes from a dataset .jsonl, one per image (each scene image appears
    twice, with a zh and an en caption). Image paths are relative to the .jsonl's folder."""
    if not os.path.isfile(jsonl_path):
        raise FileNotFoundError(f"dataset file not found: {jsonl_path}")
    root = os.path.dirname(os.path.abspath(jsonl_path))
    scenes: Dict[str, SceneAnnotation] = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{jsonl_path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: invalid JSON: {exc}") from None
            boxes = rec.get("boxes") or []
            if not boxes:
                continue
            labels = rec.get("labels") or []
            if len(labels) != len(boxes):
                raise ValueError(f"{where}: 'labels' must be parallel to 'boxes' ({len(labels)} vs {len(boxes)})")
            ids = label_map.ids_of(labels)
            if any(i is None for i in ids):
                unknown = [n for n, i in zip(labels, ids) if i is None]
                raise ValueError(f"{where}: labels {unknown} are not in {label_map.source}")
            path = os.path.normpath(os.path.join(root, rec["image"]))
            arr = np.asarray(boxes, np.float32).reshape(-1, 4)
            if path not in scenes:
                scenes[path] = SceneAnnotation(path, arr, np.asarray(ids, np.int64))
    return list(scenes.values())


def read_datasets(data_dirs: Sequence[str]):
    """(label map, train scenes, {data_dir: val scenes}); every folder must share labels.json."""
    label_map, train, val = None, [], {}
    for data_dir in data_dirs:
        labels = LabelMap.from_file(os.path.join(data_dir, "labels.json"))
        if label_map is None:
            label_map = labels
        elif (labels.en, labels.zh) != (label_map.en, label_map.zh):
            raise ValueError(f"{data_dir}/labels.json differs from {label_map.source}: "
                             "datasets trained together must share their classes")
        train += read_scene_annotations(os.path.join(data_dir, "train.jsonl"), labels)
        val[data_dir] = read_scene_annotations(os.path.join(data_dir, "val.jsonl"), labels)
        if not val[data_dir]:
            raise ValueError(f"{data_dir}/val.jsonl has no scene records with boxes to evaluate on")
    return label_map, train, val


def dataset_resolutions(val_sets: Dict[str, List[SceneAnnotation]]) -> Dict[str, int]:
    """Image side of each dataset folder, read from its first validation image (square)."""
    out = {}
    for folder, scenes in val_sets.items():
        h, w = scenes[0].load().shape[:2]
        if h != w:
            raise ValueError(f"{scenes[0].image}: single-emoji images need square datasets, got {w}x{h}")
        out[folder] = int(h)
    return out


# ---------------------------------------------------------------------------- single-emoji images
# Emoji of no scene class that look like one (a whole cat, a glowing star, a green apple,
# a tropical fish): naming them after the class is nearly right, so they are neither
# taught as background nor counted as false positives. Matched as whole words.
LOOKALIKE_WORDS = frozenset({
    "apple", "banana", "grape", "grapes", "watermelon", "strawberry", "tangerine", "eggplant", "broccoli",
    "carrot", "cat", "dog", "frog", "pig", "rabbit", "penguin", "fish", "octopus", "star", "mushroom",
})
# Every HELD_OUT_EVERY-th negative emoji (by name) is kept for evaluation only, so the
# false-positive rate is measured on emoji the detector never saw.
HELD_OUT_EVERY = 5


def negative_emoji(class_names: Sequence[str]) -> Tuple[list, list]:
    """(training, held-out) catalogue entries that are neither a scene class nor a
    lookalike (see ``LOOKALIKE_WORDS``); disjoint, each sorted by name."""

    classes = {n.lower() for n in class_names}
    entries = [e for e in load_emoji_catalog() if e.name_en.lower() not in classes
               and not LOOKALIKE_WORDS & set(re.findall(r"[a-z]+", e.name_en.lower()))]
    held = [e for k, e in enumerate(entries) if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [e for k, e in enumerate(entries) if k % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


def class_emoji(label_map: LabelMap) -> list:
    """The catalogue entry of each class (the built-in labels.json names emoji)."""

    entries = []
    for name in label_map.en:
        try:
            entries.append(find_by_name(name))
        except KeyError:
            raise ValueError(f"{label_map.source}: class {name!r} is no emoji name, so no single-emoji "
                             "images can be rendered for it (train without singles)") from None
    return entries


def render_single_annotations(entries: Sequence, class_ids: Optional[Sequence[int]], resolution: int, count: int,
                              scale: Tuple[float, float], seed: str) -> List[SceneAnnotation]:
    """``count`` images of one emoji each, cycling through ``entries`` in a seeded
    shuffle, at a random scale and position. With ``class_ids`` (parallel to
    ``entries``) each image carries the emoji's tight box; without, none (a negative)."""

    if count and not entries:
        raise ValueError("no emoji to render single-emoji images from")
    rng = random.Random(f"{seed}-{resolution}")
    order: List[int] = []
    out = []
    for k in range(count):
        if not order:
            order = list(range(len(entries)))
            rng.shuffle(order)
        i = order.pop()
        size = max(1, round(rng.uniform(*scale) * resolution))
        x, y = rng.randint(0, resolution - size), rng.randint(0, resolution - size)
        canvas = new_canvas(resolution)
        box = paste_emoji(canvas, entries[i].png_path, x, y, size)
        boxed = class_ids is not None
        out.append(SceneAnnotation(
            image=f"<{seed} {resolution}px #{k}: {entries[i].name_en}>",
            boxes=np.asarray([box] if boxed else [], np.float32).reshape(-1, 4),
            class_ids=np.asarray([class_ids[i]] if boxed else [], np.int64),
            pixels=np.asarray(to_rgb(canvas), np.uint8),
        ))
    return out


@dataclass
class SingleEmojiSets:
    train_singles: List[SceneAnnotation]
    train_negatives: List[SceneAnnotation]
    val_singles: Dict[str, List[SceneAnnotation]]  # per dataset folder
    val_negatives: Dict[str, List[SceneAnnotation]]


def build_single_emoji_sets(cfg: SingleEmojiData, label_map: LabelMap, resolutions: Dict[str, int]) -> SingleEmojiSets:
    """Render the training and held-out single-emoji images for each dataset folder
    (``resolutions``: folder -> image side in pixels)."""
    classes = class_emoji(label_map)
    ids = list(range(len(classes)))
    neg_train, neg_held = negative_emoji(label_map.en)
    sets = SingleEmojiSets([], [], {}, {})
    for folder, res in resolutions.items():
        seed = cfg.seed
        sets.train_singles += render_single_annotations(classes, ids, res, cfg.per_class * len(classes), cfg.scale,
                                                        f"singles-train-{seed}")
        sets.train_negatives += render_single_annotations(neg_train, None, res, cfg.negatives, cfg.scale,
                                                          f"negatives-train-{seed}")
        sets.val_singles[folder] = render_single_annotations(classes, ids, res, cfg.val_per_class * len(classes),
                                                             cfg.scale, f"singles-val-{seed}")
        sets.val_negatives[folder] = render_single_annotations(neg_held, None, res, cfg.val_negatives, cfg.scale,
                                                               f"negatives-val-{seed}")
    return sets
