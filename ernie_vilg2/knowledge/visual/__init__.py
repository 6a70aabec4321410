"""Visual knowledge (ERNIE-ViLG 2.0): salient objects found by a detector make the
denoising loss weigh their regions more, and their names enrich the captions.

Numpy-only parts (importing this package does not import paddle):
    loss_weight_map, enrich_caption, maybe_replace_caption, select_salient,
    VisualKnowledge, LabelMap, VisualKnowledgeConfig.
Detector parts (paddle + paddledet, imported on first use):
    annotate_images, ernie_vilg2.knowledge.visual.detector.Detector.
The detector is trained by ernie_vilg2.training.detector (tools/train_detector.py).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional

from ernie_vilg2.config import ConfigError

from .captions import enrich_caption, maybe_replace_caption
from .config import VisualKnowledgeConfig
from .knowledge import VisualKnowledge, apply_visual_knowledge, sample_objects, stack_weight_maps
from .labels import LabelMap
from .salient import select_salient
from .weight_map import box_union_coverage, loss_weight_map

logger = logging.getLogger(__name__)

__all__ = [
    "LabelMap",
    "VisualKnowledge",
    "VisualKnowledgeConfig",
    "annotate_images",
    "apply_visual_knowledge",
    "box_union_coverage",
    "enrich_caption",
    "load_detector",
    "loss_weight_map",
    "maybe_replace_caption",
    "sample_objects",
    "select_salient",
    "stack_weight_maps",
]

_DETECTORS: dict = {}


def load_detector(cfg: VisualKnowledgeConfig):
    """The configured :class:`~.detector.Detector` (the last one is cached)."""
    for name in ("detector_config", "detector_weights", "labels"):
        if getattr(cfg, name) is None:
            raise ConfigError(f"visual_knowledge.{name}", "required to run the detector")
    # File times are in the key so that retrained weights at the same path are reloaded.
    key = tuple((path, os.path.getmtime(path)) for path in (cfg.detector_config, cfg.detector_weights, cfg.labels))
    if key not in _DETECTORS:
        from .detector import Detector  # deferred: PaddleDetection and paddle

        _DETECTORS.clear()  # keep at most one model in memory
        _DETECTORS[key] = Detector(cfg.detector_config, cfg.labels, cfg.detector_weights)
    return _DETECTORS[key]


def annotate_images(image_paths: List[str], cfg: VisualKnowledgeConfig, batch_size: int = 16) -> List[Optional[dict]]:
    """Detect the salient objects of each image.

    Runs the detector of ``cfg`` (detector_config, detector_weights, labels) and the
    salient selection of ``cfg`` (score_threshold, top_n, min_box_size). Returns, per
    image in order, ``{"objects": [{"box": [x0, y0, x1, y1], "label": "red apple",
    "label_zh": "红苹果", "score": 0.93}, ...]}`` (boxes in pixels of that image, most
    salient first; an empty list when nothing passes), or None when the image cannot be
    decoded (logged as a warning).
    """
    from .detector import load_image_rgb  # deferred: the detector module imports paddle

    detector = load_detector(cfg)
    images, ok = [], []
    for path in image_paths:
        try:
            images.append(load_image_rgb(path))
            ok.append(True)
        except (ValueError, FileNotFoundError) as exc:
            logger.warning("skipping %s", exc)
            ok.append(False)
    dets = iter(detector.predict(images, batch_size=batch_size))
    results: List[Optional[dict]] = []
    for good, image in zip(ok, _iter_or_none(images, ok)):
        if not good:
            results.append(None)
            continue
        d = next(dets)
        keep = select_salient(d.boxes, d.scores, image.shape[:2], cfg.score_threshold, cfg.top_n, cfg.min_box_size)
        results.append({"objects": [
            {
                "box": [round(float(v), 2) for v in d.boxes[i]],
                "label": d.labels[i],
                "label_zh": d.labels_zh[i],
                "score": round(float(d.scores[i]), 4),
            }
            for i in keep
        ]})
    return results


def _iter_or_none(images, ok):
    it = iter(images)
    for good in ok:
        yield next(it) if good else None
