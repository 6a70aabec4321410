"""``visual_knowledge:`` section of the config (paper: visual knowledge).

Example::

    visual_knowledge:
      enabled: true
      w_v: 0.1                 # loss weight inside salient boxes is 1 + w_v
      weight_prob: 0.5         # fraction of samples trained with the weighted loss
      enrich_captions: true    # append detected object names missing from the caption
      replace_prob: 0.0        # probability to train on the synthetic caption instead
      use_ground_truth: true   # use the dataset's own boxes where a record has them
      annotations: output/knowledge/annotations.jsonl   # boxes from tools/extract_knowledge.py
      detector_config: configs/detector/picodet_lcnet_tiny.yml
      detector_weights: output/detector/detector.safetensors
      labels: data/emoji-32/labels.json  # the built-in dataset's classes (any resolution)
      score_threshold: 0.35
      top_n: 3
      min_box_size: 0.05
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Optional

from ernie_vilg2.config import check

from .salient import DEFAULT_MIN_BOX_SIZE, DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_N

_SECTION = "visual_knowledge"
WEIGHT_SUFFIXES = (".pdparams", ".safetensors")


@dataclass
class VisualKnowledgeConfig:
    enabled: bool = False
    # Loss weights (paper: 1 + w_v inside salient boxes, w_v = 0.1, on 50% of samples).
    w_v: float = 0.1
    weight_prob: float = 0.5
    # Captions: append detected names missing from the caption; with probability
    # replace_prob train on the record's synthetic_caption (when it has one) instead.
    enrich_captions: bool = True
    replace_prob: float = 0.0
    # Detector (PaddleDetection YAML + weights + labels.json of its class ids); needed
    # only to detect (tools/extract_knowledge.py, annotate_images), not to train.
    detector_config: Optional[str] = None
    detector_weights: Optional[str] = None  # .safetensors or Paddle .pdparams state dict
    labels: Optional[str] = None  # labels.json: [{"id", "en", "zh"}], id = class id
    # Salient-object selection (rules and defaults documented in salient.py).
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    top_n: int = DEFAULT_TOP_N  # 0 keeps every box that passes the other rules
    min_box_size: float = DEFAULT_MIN_BOX_SIZE  # fraction of the image's shorter side
    # Where boxes come from at training time: the record's own ground-truth boxes when it
    # has them (use_ground_truth), else the detected objects stored in `annotations`.
    use_ground_truth: bool = True
    annotations: Optional[str] = None  # written by tools/extract_knowledge.py (may not exist yet)

    def __post_init__(self):
        for name in ("w_v", "weight_prob", "replace_prob", "score_threshold", "min_box_size"):
            check(math.isfinite(getattr(self, name)), f"{_SECTION}.{name}", "must be a finite number")
        check(self.w_v >= 0, f"{_SECTION}.w_v", f"must be >= 0, got {self.w_v}")
        for name in ("weight_prob", "replace_prob", "score_threshold"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{_SECTION}.{name}", f"must be in [0, 1], got {value}")
        check(0.0 <= self.min_box_size < 1.0, f"{_SECTION}.min_box_size",
              f"is a fraction of the image's shorter side: must be in [0, 1), got {self.min_box_size}")
        check(self.top_n >= 0, f"{_SECTION}.top_n", f"must be >= 0 (0 keeps all), got {self.top_n}")
        for name in ("detector_config", "detector_weights", "labels"):
            path = getattr(self, name)
            if path is not None:
                check(os.path.isfile(path), f"{_SECTION}.{name}", f"file not found: {path}")
        if self.detector_config is not None:
            check(self.detector_config.endswith((".yml", ".yaml")), f"{_SECTION}.detector_config",
                  f"expected a PaddleDetection .yml file, got {self.detector_config}")
        if self.detector_weights is not None:
            check(self.detector_weights.endswith(WEIGHT_SUFFIXES), f"{_SECTION}.detector_weights",
                  f"expected a {' or '.join(WEIGHT_SUFFIXES)} file, got {self.detector_weights}")
        if self.annotations is not None:
            # An output of tools/extract_knowledge.py before it is an input of training,
            # so it may not exist yet; it must not name a folder.
            check(self.annotations.strip() != "" and not os.path.isdir(self.annotations),
                  f"{_SECTION}.annotations", f"expected a file path, got {self.annotations!r}")
