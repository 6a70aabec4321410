"""VOC-style average precision at one IoU threshold (default 0.5), in numpy.

Per class: all detections of that class over all images, best score first, are matched
greedily to the not-yet-matched ground-truth box of the same class in the same image with
the highest IoU; a match needs IoU >= threshold, otherwise (or when that box is already
taken) the detection is a false positive. AP is the area under the precision-recall
curve with precision made monotone (the "all points" rule of VOC2010 onwards). mAP is the
mean over classes that have at least one ground-truth box.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from .salient import box_iou


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the monotone precision envelope (recall ascending)."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_map(
    predictions: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
    ground_truths: Sequence[Tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> Tuple[float, Dict[int, float]]:
    """mAP and per-class AP.

    Args:
        predictions: per image (boxes [K, 4], class_ids [K], scores [K]).
        ground_truths: per image (boxes [G, 4], class_ids [G]), same order.
    Returns (mAP, {class_id: AP}) over classes with ground truth; (0.0, {}) when none.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"predictions: expected {len(ground_truths)} images, got {len(predictions)}")
    ap: Dict[int, float] = {}
    for cls in range(num_classes):
        gts = [np.asarray(b, np.float64).reshape(-1, 4)[np.asarray(c).reshape(-1) == cls] for b, c in ground_truths]
        n_gt = sum(len(g) for g in gts)
        if n_gt == 0:
            continue
        dets: List[Tuple[float, int, np.ndarray]] = []
        for img, (boxes, ids, scores) in enumerate(predictions):
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            mask = np.asarray(ids).reshape(-1) == cls
            for box, score in zip(boxes[mask], np.asarray(scores, np.float64).reshape(-1)[mask]):
                dets.append((float(score), img, box))
        dets.sort(key=lambda d: -d[0])
        taken = [np.zeros(len(g), bool) for g in gts]
        tp = np.zeros(len(dets))
        for i, (_, img, box) in enumerate(dets):
            if len(gts[img]) == 0:
                continue
            ious = box_iou(box[None], gts[img])[0]
            best = int(np.argmax(ious))
            if ious[best] >= iou_threshold and not taken[img][best]:
                taken[img][best] = True
                tp[i] = 1.0
        ctp = np.cumsum(tp)
        recall = ctp / n_gt
        precision = ctp / np.arange(1, len(dets) + 1) if len(dets) else np.zeros(0)
        ap[cls] = average_precision(recall, precision)
    return (float(np.mean(list(ap.values()))) if ap else 0.0), ap


def image_false_positive_rate(scores_per_image: Sequence[np.ndarray], score_threshold: float) -> float:
    """Share of images, each known to hold no object of any class, with at least one
    detection scoring ``>= score_threshold``; 0.0 for no images."""
    if not len(scores_per_image):
        return 0.0
    hits = [np.any(np.asarray(s, np.float64).reshape(-1) >= score_threshold) for s in scores_per_image]
    return float(np.mean(hits))
