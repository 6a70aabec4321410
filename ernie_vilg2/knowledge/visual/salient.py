"""Pick the salient objects among a detector's outputs.

Rules, in order (defaults are the VisualKnowledgeConfig defaults):

1. ``score >= score_threshold`` (default 0.35). Untrained or weak heads score everything
   near 0.01, so a threshold well above that is what keeps noise out.
2. Width and height both ``>= min_box_size * min(image_height, image_width)`` (default
   0.05: relative, so the same value works on 32-px training images and large photos).
3. Class-agnostic suppression: a box whose IoU with an already kept, higher-scoring box
   exceeds ``overlap_iou`` (0.7) is dropped (the same object found under two classes).
4. Rank by ``score * area`` (confident and large first) and keep the ``top_n`` best
   (default 3; ``top_n <= 0`` keeps all).
"""
from __future__ import annotations

import numpy as np

from .weight_map import as_boxes

DEFAULT_SCORE_THRESHOLD = 0.35
DEFAULT_TOP_N = 3
DEFAULT_MIN_BOX_SIZE = 0.05
DEFAULT_OVERLAP_IOU = 0.7


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of (x0, y0, x1, y1) boxes."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def select_salient(
    boxes,
    scores,
    image_size,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    top_n: int = DEFAULT_TOP_N,
    min_box_size: float = DEFAULT_MIN_BOX_SIZE,
    overlap_iou: float = DEFAULT_OVERLAP_IOU,
) -> np.ndarray:
    """Indices (int64, best first) of the salient detections; rules in the module docstring.

    ``image_size`` is (height, width) of the image the boxes are in pixels of (an int
    means a square image).
    """
    boxes = as_boxes(boxes)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"scores: expected {len(boxes)} values (one per box), got {len(scores)}")
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    min_side = float(min_box_size) * float(min(image_size))
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    keep = (scores >= score_threshold) & (w >= min_side) & (h >= min_side) & (w > 0) & (h > 0)
    idx = np.nonzero(keep)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    kept = []
    for i in idx:
        if kept and box_iou(boxes[i : i + 1], boxes[kept]).max() > overlap_iou:
            continue
        kept.append(i)
    kept = np.asarray(kept, dtype=np.int64)
    rank = scores[kept] * w[kept] * h[kept]
    kept = kept[np.argsort(-rank, kind="stable")]
    return kept[:top_n] if top_n > 0 else kept
