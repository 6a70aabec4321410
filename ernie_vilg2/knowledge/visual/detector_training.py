"""Train the shipped detector on the built-in composed scenes and measure mAP@0.5.

No pretrained detector can be downloaded here, so the project trains its own on the
two-emoji scenes whose true boxes the data builder records (dataset records without
boxes are skipped). Scenes alone show only small objects (0.4-0.5 of the side) of the 20
classes, and a detector trained on them names any large or unknown emoji after some
class, so :class:`SingleEmojiData` adds images rendered in memory with the data
builder's functions: one scene-class emoji at a random scale and position, with its box,
and negatives (one emoji of no scene class, no box) that teach the head background.
Held-out singles and negatives of other emoji are scored too: AP@0.5 on the singles and
the share of negatives with a detection at the default score threshold.
``tools/train_detector.py`` is the command-line face.

Resumable: ``OUT/checkpoint.safetensors`` holds the model, the optimizer moments, the
step, the random state and the history, and is replaced atomically every
``checkpoint_every`` steps and at the end; a new run with the same ``out_dir`` continues
from it. The final weights go to ``OUT/detector.safetensors`` (loadable by
:class:`~.detector.Detector`) and the numbers to ``OUT/metrics.json``.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import paddle

from ernie_vilg2.utils.integrity import DamagedFileError, check_safetensors
from ernie_vilg2.utils.io import atomic_write_text

from .detector import Detector, _atomic_save_safetensors, load_image_rgb
from .labels import LabelMap
from .metrics import image_false_positive_rate, voc_map
from .salient import DEFAULT_SCORE_THRESHOLD

CHECKPOINT_NAME = "checkpoint.safetensors"
WEIGHTS_NAME = "detector.safetensors"
METRICS_NAME = "metrics.json"


# ---------------------------------------------------------------------------- data
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


@dataclass
class SingleEmojiData:
    """Single-emoji images rendered in memory at each dataset's resolution (white
    background, like the scenes): scene-class singles with their box and negatives
    without. Counts are per dataset folder; ``scale`` is the emoji side as a fraction of
    the image side, drawn uniformly; positions are uniform over the canvas."""

    per_class: int = 60  # training singles of each scene class
    negatives: int = 1200  # training negatives (emoji outside the held-out share)
    val_per_class: int = 10  # held-out singles of each class (another seed)
    val_negatives: int = 300  # held-out negatives, from held-out emoji only
    scale: Tuple[float, float] = (0.3, 0.95)
    single_fraction: float = 0.25  # expected share of each training batch
    negative_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        for name in ("per_class", "negatives", "val_per_class", "val_negatives"):
            if getattr(self, name) < 0:
                raise ValueError(f"singles.{name}: must be >= 0")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"singles.scale: need 0 < min <= max <= 1, got {self.scale}")
        if self.single_fraction < 0 or self.negative_fraction < 0 or self.single_fraction + self.negative_fraction >= 1:
            raise ValueError("singles.single_fraction, negative_fraction: must be >= 0 and sum to below 1")


def negative_emoji(class_names: Sequence[str]) -> Tuple[list, list]:
    """(training, held-out) catalogue entries that are neither a scene class nor a
    lookalike (see ``LOOKALIKE_WORDS``); disjoint, each sorted by name."""
    from ernie_vilg2.data.emoji_catalog import load_emoji_catalog

    classes = {n.lower() for n in class_names}
    entries = [e for e in load_emoji_catalog() if e.name_en.lower() not in classes
               and not LOOKALIKE_WORDS & set(re.findall(r"[a-z]+", e.name_en.lower()))]
    held = [e for k, e in enumerate(entries) if k % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    train = [e for k, e in enumerate(entries) if k % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    return train, held


def class_emoji(label_map: LabelMap) -> list:
    """The catalogue entry of each class (the built-in labels.json names emoji)."""
    from ernie_vilg2.data.emoji_catalog import find_by_name

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
    from ernie_vilg2.data.render import new_canvas, paste_emoji, to_rgb

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


class SceneBatcher:
    """Random augmented training batches in the detector's input format.

    Each batch item is a scene, or with probabilities ``single_fraction`` /
    ``negative_fraction`` an image from ``singles`` / ``negatives``. A batch always holds
    at least one image with boxes: ppdet's PicoDet loss accepts images without boxes (the
    assigners mask them with ``pad_gt_mask``) but divides by the batch's summed targets,
    which is 0 (loss NaN) when no image has one.

    Augmentation (scenes are emoji on white, so the canvas is refilled with white):
    random zoom by a factor in ``zoom`` with a random shift (boxes that keep less than
    half their area are dropped; a sample losing all boxes is used unaugmented), then a
    horizontal flip with probability 0.5.
    """

    def __init__(self, scenes: Sequence[SceneAnnotation], preprocess, rng: np.random.Generator,
                 augment: bool = True, zoom=(0.7, 1.3), singles: Sequence[SceneAnnotation] = (),
                 negatives: Sequence[SceneAnnotation] = (), single_fraction: float = 0.0,
                 negative_fraction: float = 0.0):
        if not scenes:
            raise ValueError("no scene records with boxes to train the detector on")
        if any(len(s.boxes) == 0 for s in scenes) or any(len(s.boxes) == 0 for s in singles):
            raise ValueError("scenes and singles must each have at least one box (negatives have none)")
        self.pools = [list(scenes), list(singles), list(negatives)]
        self.images = [[a.load() for a in pool] for pool in self.pools]
        self.fractions = (single_fraction if singles else 0.0, negative_fraction if negatives else 0.0)
        if sum(self.fractions) >= 1.0:
            raise ValueError("single_fraction + negative_fraction must be below 1 (scenes need a share)")
        self.preprocess = preprocess
        self.rng = rng
        self.augment = augment
        self.zoom = zoom

    @property
    def scenes(self) -> List[SceneAnnotation]:
        return self.pools[0]

    def _augment(self, image: np.ndarray, boxes: np.ndarray, ids: np.ndarray):
        import cv2

        h, w = image.shape[:2]
        s = self.rng.uniform(*self.zoom)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        dx = self.rng.uniform(min(0, w - nw), max(0, w - nw))
        dy = self.rng.uniform(min(0, h - nh), max(0, h - nh))
        m = np.float32([[nw / w, 0, dx], [0, nh / h, dy]])
        out = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
        moved = boxes * np.float32([nw / w, nh / h, nw / w, nh / h]) + np.float32([dx, dy, dx, dy])
        clipped = moved.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
        area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
        keep = area(clipped) >= 0.5 * np.maximum(area(moved), 1e-6)
        if len(boxes) and not keep.any():
            return image, boxes, ids
        out, boxes, ids = out, clipped[keep], ids[keep]
        if self.rng.random() < 0.5:
            out = np.ascontiguousarray(out[:, ::-1])
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
        return out, boxes, ids

    def sample(self, batch_size: int) -> Dict[str, np.ndarray]:
        u = self.rng.random(batch_size)
        single, negative = self.fractions
        pools = np.where(u < single, 1, np.where(u < single + negative, 2, 0))
        if (pools == 2).all():
            pools[0] = 0  # see the class docstring: a batch without boxes gives a NaN loss
        picks = [(int(p), int(self.rng.integers(0, len(self.pools[p])))) for p in pools]
        return self.collate([self._item(p, i) for p, i in picks], np.arange(batch_size))

    def _item(self, pool: int, i: int):
        ann = self.pools[pool][i]
        image, boxes, ids = self.images[pool][i], ann.boxes, ann.class_ids
        if self.augment:
            image, boxes, ids = self._augment(image, boxes, ids)
        h, w = image.shape[:2]
        sx, sy = self.preprocess.width / w, self.preprocess.height / h
        return self.preprocess(image), boxes * np.float32([sx, sy, sx, sy]), ids

    def collate(self, items, im_ids) -> Dict[str, np.ndarray]:
        """Pad the boxes to the batch maximum; ``pad_gt_mask`` marks the real ones.

        ``gt_class`` is int64 (ppdet's assigners fail on int32) and ``im_id`` is present
        (PicoDet's loss reads the batch size from it)."""
        n = len(items)
        k = max(1, max(len(b) for _, b, _ in items))
        gt_bbox = np.zeros((n, k, 4), np.float32)
        gt_class = np.zeros((n, k, 1), np.int64)
        pad = np.zeros((n, k, 1), np.float32)
        for j, (_, boxes, ids) in enumerate(items):
            gt_bbox[j, : len(boxes)] = boxes
            gt_class[j, : len(ids), 0] = ids
            pad[j, : len(boxes)] = 1.0
        h, w = self.preprocess.height, self.preprocess.width
        return {
            "image": np.stack([im for im, _, _ in items]).astype(np.float32),
            "gt_bbox": gt_bbox,
            "gt_class": gt_class,
            "pad_gt_mask": pad,
            "im_id": np.asarray(im_ids, np.int64).reshape(n, 1),
            "im_shape": np.tile(np.float32([[h, w]]), (n, 1)),
            "scale_factor": np.ones((n, 2), np.float32),
        }


def detector_losses(model: paddle.nn.Layer, batch: Dict[str, np.ndarray], epoch_id: int) -> Dict[str, paddle.Tensor]:
    """One training forward: ppdet's loss dict (``loss`` is the total)."""
    model.train()
    inputs = {k: paddle.to_tensor(v) for k, v in batch.items()}
    inputs["epoch_id"] = int(epoch_id)
    return model(inputs)


def evaluate_detector(detector: Detector, scenes: Sequence[SceneAnnotation], batch_size: int = 32,
                      groups: Optional[Dict[str, Sequence[int]]] = None) -> Dict:
    """VOC mAP@0.5 of ``detector`` on ``scenes`` (all its NMS outputs, no threshold).

    ``groups`` optionally names subsets (indices into ``scenes``) to score separately
    from the same predictions; their mAPs go to ``result["groups"]``.
    """
    images = [s.load() for s in scenes]
    dets = detector.predict(images, batch_size=batch_size)
    preds = [(d.boxes, d.class_ids, d.scores) for d in dets]
    gts = [(s.boxes, s.class_ids) for s in scenes]
    mean_ap, per_class = voc_map(preds, gts, detector.num_classes)
    result = {"map50": mean_ap, "ap50": {detector.label_map.en[c]: round(v, 4) for c, v in per_class.items()},
              "num_images": len(scenes)}
    if groups:
        result["groups"] = {name: voc_map([preds[i] for i in idx], [gts[i] for i in idx], detector.num_classes)[0]
                            for name, idx in groups.items()}
    return result


def evaluate_negatives(detector: Detector, negatives: Sequence[SceneAnnotation],
                       score_threshold: float = DEFAULT_SCORE_THRESHOLD, batch_size: int = 32) -> Dict:
    """Share of images without any object of a class (``negatives``) on which the
    detector reports something scoring at least ``score_threshold`` (the default of the
    salient-object filter), and the class names it most often reports there."""
    dets = detector.predict([n.load() for n in negatives], batch_size=batch_size)
    names: Dict[str, int] = {}
    for d in dets:
        if len(d) and d.scores[0] >= score_threshold:
            names[d.labels[0]] = names.get(d.labels[0], 0) + 1
    top = dict(sorted(names.items(), key=lambda kv: -kv[1])[:5])
    return {"fp_rate": image_false_positive_rate([d.scores for d in dets], score_threshold),
            "score_threshold": score_threshold, "num_images": len(negatives), "top_labels": top}


def evaluate_all(detector: Detector, val_sets: Dict[str, List[SceneAnnotation]],
                 singles: Optional[SingleEmojiSets] = None) -> Dict:
    """Scene mAP@0.5 (overall, per class, per folder) and, with ``singles``, held-out
    single-emoji AP@0.5 and the negatives' false-positive rate (overall and per folder)."""
    val = [s for scenes in val_sets.values() for s in scenes]
    bounds = np.cumsum([0] + [len(v) for v in val_sets.values()])
    groups = {d: range(bounds[i], bounds[i + 1]) for i, d in enumerate(val_sets)}
    scenes = evaluate_detector(detector, val, groups=groups)
    out = {"map50": scenes["map50"], "ap50": scenes["ap50"],
           "map50_per_dataset": {d: round(v, 4) for d, v in scenes["groups"].items()}, "val_images": len(val)}
    if singles is not None and any(singles.val_singles.values()):
        sets = singles.val_singles
        flat = [s for v in sets.values() for s in v]
        b = np.cumsum([0] + [len(v) for v in sets.values()])
        res = evaluate_detector(detector, flat, groups={d: range(b[i], b[i + 1]) for i, d in enumerate(sets)})
        out.update(single_ap50=res["map50"], single_ap50_per_class=res["ap50"],
                   single_ap50_per_dataset={d: round(v, 4) for d, v in res["groups"].items()},
                   val_single_images=len(flat))
    if singles is not None and any(singles.val_negatives.values()):
        per = {d: evaluate_negatives(detector, v) for d, v in singles.val_negatives.items() if v}
        n = sum(r["num_images"] for r in per.values())
        out.update(negative_fp_rate=sum(r["fp_rate"] * r["num_images"] for r in per.values()) / n,
                   negative_fp_rate_per_dataset={d: round(r["fp_rate"], 4) for d, r in per.items()},
                   negative_top_labels={d: r["top_labels"] for d, r in per.items()},
                   negative_score_threshold=DEFAULT_SCORE_THRESHOLD, val_negative_images=n)
    return out


def summary_line(result: Dict) -> str:
    """One line of the headline numbers of :func:`evaluate_all`."""
    text = f"scene mAP@0.5 = {result['map50']:.4f} {result['map50_per_dataset']}"
    if "single_ap50" in result:
        text += f"; single-emoji AP@0.5 = {result['single_ap50']:.4f} {result['single_ap50_per_dataset']}"
    if "negative_fp_rate" in result:
        text += (f"; non-class false-positive rate @{result['negative_score_threshold']} = "
                 f"{result['negative_fp_rate']:.4f} {result['negative_fp_rate_per_dataset']}")
    return text


# ---------------------------------------------------------------------------- checkpoints
def _optimizer_state(opt, model) -> Dict[str, np.ndarray]:
    """Optimizer tensors keyed by structured parameter name: Paddle's own keys use
    generated names (``conv2d_12.w_0``) that depend on creation order in the process."""
    by_name = {p.name: n for n, p in model.named_parameters()}
    out = {}
    for key, value in opt.state_dict().items():
        if not hasattr(value, "numpy"):
            continue
        prefix = max((p for p in by_name if key.startswith(p + "_")), key=len, default=None)
        if prefix is not None:
            out[by_name[prefix] + "::" + key[len(prefix) + 1 :]] = value.numpy()
    return out


def _restore_optimizer(opt, model, state: Dict[str, np.ndarray]) -> None:
    by_struct = {n: p.name for n, p in model.named_parameters()}
    restored = {}
    for key, value in state.items():
        struct, suffix = key.split("::", 1)
        if struct not in by_struct:
            raise ValueError(f"checkpoint optimizer state for unknown parameter {struct}")
        restored[f"{by_struct[struct]}_{suffix}"] = paddle.to_tensor(value)
    opt.set_state_dict(restored)


def save_checkpoint(path: str, detector: Detector, opt, meta: dict) -> None:
    tensors = {f"model/{k}": v for k, v in detector.state_dict_numpy().items()}
    tensors.update({f"optim/{k}": v for k, v in _optimizer_state(opt, detector.model).items()})
    _atomic_save_safetensors(tensors, path, {"meta": json.dumps(meta)})


def load_checkpoint(path: str, detector: Detector, opt) -> dict:
    from safetensors import safe_open

    hint = "delete it or pass --no-resume to start over"
    try:
        check_safetensors(path)
    except DamagedFileError as exc:
        raise DamagedFileError(path, f"{exc.reason}; {hint}") from None
    with safe_open(path, framework="np") as f:
        try:
            meta = json.loads((f.metadata() or {})["meta"])
        except (KeyError, json.JSONDecodeError):
            raise DamagedFileError(path, f"not a detector training checkpoint (no training state); {hint}") from None
        model_state = {k[len("model/") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model/")}
        optim_state = {k[len("optim/") :]: f.get_tensor(k) for k in f.keys() if k.startswith("optim/")}
    detector.load_state_numpy(model_state, source=path)
    _restore_optimizer(opt, detector.model, optim_state)
    return meta


def _atomic_write_json(path: str, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------------------- training
def learning_rate(step: int, base_lr: float, max_steps: int, warmup_steps: int, min_ratio: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``min_ratio * base_lr`` at ``max_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _read_datasets(data_dirs: Sequence[str]):
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


def evaluate_weights(config_path: str, data_dirs: Union[str, Sequence[str]], weights: str,
                     singles: Optional[SingleEmojiData] = None) -> Dict:
    """:func:`evaluate_all` of saved weights on the held-out data that
    :func:`train_detector` with the same ``data_dirs`` and ``singles`` reports."""
    data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
    label_map, _, val_sets = _read_datasets(data_dirs)
    sets = build_single_emoji_sets(singles, label_map, dataset_resolutions(val_sets)) if singles else None
    return evaluate_all(Detector(config_path, label_map, weights=weights), val_sets, sets)


def train_detector(
    config_path: str,
    data_dirs: Union[str, Sequence[str]],
    out_dir: str,
    *,
    max_steps: int = 1000,
    batch_size: int = 16,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    warmup_steps: int = 100,
    eval_every: int = 500,
    checkpoint_every: int = 100,
    max_minutes: Optional[float] = None,
    singles: Optional[SingleEmojiData] = None,
    seed: int = 0,
    resume: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train on the scenes of ``DIR/train.jsonl`` for each DIR in ``data_dirs`` (e.g. the
    built-in dataset at 32 and 64 px, sharing labels.json); report VOC mAP@0.5 on each
    ``DIR/val.jsonl`` and on their union (``map50``). With ``singles`` (classes must be
    emoji names, as in the built-in labels.json), single-emoji images and negatives are
    mixed into the batches and the held-out ones scored (see :func:`evaluate_all`).

    ``max_steps`` sets the learning-rate schedule and the end; ``max_minutes`` (wall time
    of the training loop including its periodic evaluations, summed over resumed runs)
    stops early with a checkpoint so a later run can go on. Returns the metrics dict also
    written to ``OUT/metrics.json`` (``train_seconds`` is that same wall time).
    """
    data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
    if not data_dirs:
        raise ValueError("data_dirs: give at least one dataset folder")
    label_map, train, val_sets = _read_datasets(data_dirs)
    val = [s for scenes in val_sets.values() for s in scenes]
    sets = build_single_emoji_sets(singles, label_map, dataset_resolutions(val_sets)) if singles else None
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)

    paddle.seed(seed)
    detector = Detector(config_path, label_map)
    model = detector.model
    opt = paddle.optimizer.AdamW(learning_rate=lr, parameters=model.parameters(), weight_decay=weight_decay,
                                 grad_clip=paddle.nn.ClipGradByGlobalNorm(10.0))
    rng = np.random.default_rng(seed)
    meta = {"step": 0, "train_seconds": 0.0, "history": []}
    if resume and os.path.isfile(ckpt_path):
        meta = load_checkpoint(ckpt_path, detector, opt)
        rng.bit_generator.state = meta["rng"]
        log(f"resumed from {ckpt_path} at step {meta['step']} ({meta['train_seconds']:.0f} s trained)")
    if sets is not None:
        batcher = SceneBatcher(train, detector.preprocess, rng, singles=sets.train_singles,
                               negatives=sets.train_negatives, single_fraction=singles.single_fraction,
                               negative_fraction=singles.negative_fraction)
        log(f"{len(sets.train_singles)} training singles, {len(sets.train_negatives)} training negatives; "
            f"held out: {sum(map(len, sets.val_singles.values()))} singles, "
            f"{sum(map(len, sets.val_negatives.values()))} negatives")
    else:
        batcher = SceneBatcher(train, detector.preprocess, rng)
    log(f"{len(train)} training scenes, {len(val)} validation scenes, {len(label_map)} classes, "
        f"input {detector.input_size}, {sum(int(p.size) for p in model.parameters())} parameters")

    def checkpoint():
        meta["rng"] = rng.bit_generator.state
        meta.update(config=os.path.abspath(config_path), data_dirs=[os.path.abspath(d) for d in data_dirs],
                    max_steps=max_steps, singles=asdict(singles) if singles else None)
        save_checkpoint(ckpt_path, detector, opt, meta)

    start = time.time()
    base_seconds = meta["train_seconds"]
    step = meta["step"]
    stopped_early = False
    window: List[float] = []
    while step < max_steps:
        if max_minutes is not None and base_seconds + time.time() - start >= max_minutes * 60:
            stopped_early = True
            break
        opt.set_lr(learning_rate(step, lr, max_steps, warmup_steps))
        epoch = step * batch_size // len(train)
        losses = detector_losses(model, batcher.sample(batch_size), epoch)
        losses["loss"].backward()
        opt.step()
        opt.clear_grad()
        step += 1
        window.append(float(losses["loss"]))
        meta["step"], meta["train_seconds"] = step, base_seconds + time.time() - start
        if step % 50 == 0 or step == max_steps:
            log(f"step {step}/{max_steps} loss {np.mean(window):.4f} lr {opt.get_lr():.2e} "
                f"({meta['train_seconds']:.0f} s)")
            window = []
        if step % eval_every == 0 and step < max_steps:
            result = evaluate_all(detector, val_sets, sets)
            meta["history"].append({"step": step, "train_seconds": round(meta["train_seconds"], 1),
                                    **{k: round(result[k], 4) for k in ("map50", "single_ap50", "negative_fp_rate")
                                       if k in result}})
            log(f"step {step}: {summary_line(result)}")
        if step % checkpoint_every == 0:
            checkpoint()
    checkpoint()

    result = evaluate_all(detector, val_sets, sets)
    weights_path = os.path.join(out_dir, WEIGHTS_NAME)
    detector.save_weights(weights_path, {"train_steps": str(step), "val_map50": f"{result['map50']:.4f}"})
    metrics = {
        **result,
        "train_images": len(train),
        "steps": step,
        "max_steps": max_steps,
        "finished": step >= max_steps and not stopped_early,
        "train_seconds": round(meta["train_seconds"], 1),
        "history": meta["history"],
        "weights": os.path.abspath(weights_path),
        "config": os.path.abspath(config_path),
        "labels": os.path.abspath(label_map.source),
        "data_dirs": [os.path.abspath(d) for d in data_dirs],
        "singles": asdict(singles) if singles else None,
    }
    _atomic_write_json(os.path.join(out_dir, METRICS_NAME), metrics)
    log(f"{summary_line(result)} after {step} steps, {meta['train_seconds'] / 60:.1f} min; weights: {weights_path}")
    return metrics
