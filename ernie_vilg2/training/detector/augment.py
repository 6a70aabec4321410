"""Random augmented training batches in the detector's input format (what ppdet's
training forward reads)."""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .data import SceneAnnotation


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
