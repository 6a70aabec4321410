"""Per-sample visual knowledge for training: which caption to use and the loss weight map.

The training data pipeline calls :class:`VisualKnowledge` once per sample; everything is
numpy and needs neither paddle nor the detector.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ernie_vilg2.config import ConfigError

from .captions import enrich_caption, maybe_replace_caption
from .config import VisualKnowledgeConfig
from .labels import LANGS, LabelMap
from .weight_map import as_boxes, loss_weight_map


def sample_objects(sample: dict, use_ground_truth: bool = True) -> Tuple[np.ndarray, List[str]]:
    """The (boxes [K, 4], label names) a sample's knowledge is built from.

    Ground truth (``sample["boxes"]`` with parallel ``sample["labels"]``) is used when
    ``use_ground_truth`` and the sample has at least one box; otherwise the detected
    objects in ``sample["objects"]`` (the list :func:`annotate_images` returns per image;
    None or missing means none).
    """
    boxes = sample.get("boxes")
    if use_ground_truth and boxes is not None and len(boxes) > 0:
        labels = list(sample.get("labels") or [])
        boxes = as_boxes(boxes)
        if len(labels) != len(boxes):
            raise ValueError(f"sample labels: expected {len(boxes)} names parallel to boxes, got {len(labels)}")
        return boxes, labels
    objects = sample.get("objects") or []
    if not objects:
        return np.zeros((0, 4), np.float64), []
    return as_boxes([o["box"] for o in objects]), [o["label"] for o in objects]


class VisualKnowledge:
    """Decides per sample: caption replacement, label enrichment, loss weights.

    Args:
        cfg: the ``visual_knowledge`` config section.
        latent_size: side of the latent grid the weight map is made for.
        label_map: LabelMap, path to labels.json or its list; defaults to ``cfg.labels``.
            Required when ``cfg.enrich_captions`` (Chinese names come from it).

    Call ``vk(sample, rng, image_size)`` with a sample dict holding ``caption``,
    ``lang`` ("zh" | "en"), optional ``boxes`` / ``labels`` (ground truth, pixels of the
    image), optional ``objects`` (detected, from the annotations file) and optional
    ``synthetic_caption``; ``image_size`` is the side (or (h, w)) of the image those
    boxes are in pixels of. Returns ``(caption, weight_map)`` where ``weight_map`` is
    float32 [1, latent_size, latent_size] or None meaning "plain loss" (all ones).

    Order and random draws (``rng.random()``, numpy Generator or random.Random):
    1. caption replacement (one draw, only if the sample has a synthetic caption and
       0 < replace_prob < 1);
    2. enrichment of the resulting caption with the object names (no draw);
    3. weight map with probability ``weight_prob`` (one draw when 0 < weight_prob < 1);
       None as well when the sample has no boxes.
    With ``cfg.enabled`` false it returns ``(sample["caption"], None)`` and draws nothing.
    """

    def __init__(self, cfg: VisualKnowledgeConfig, latent_size: int, label_map=None):
        self.cfg = cfg
        self.latent_size = int(latent_size)
        if self.latent_size <= 0:
            raise ValueError(f"latent_size: must be positive, got {latent_size}")
        if label_map is None and cfg.labels is not None:
            label_map = cfg.labels
        self.label_map: Optional[LabelMap] = LabelMap.coerce(label_map) if label_map is not None else None
        if cfg.enabled and cfg.enrich_captions and self.label_map is None:
            raise ConfigError("visual_knowledge.labels", "a labels.json is required when enrich_captions is true")

    def __call__(self, sample: dict, rng, image_size) -> Tuple[str, Optional[np.ndarray]]:
        caption = sample["caption"]
        if not self.cfg.enabled:
            return caption, None
        lang = sample.get("lang", "en")
        if lang not in LANGS:
            raise ValueError(f"sample lang: expected one of {LANGS}, got {lang!r}")
        boxes, labels = sample_objects(sample, self.cfg.use_ground_truth)

        caption = maybe_replace_caption(caption, sample.get("synthetic_caption"), self.cfg.replace_prob, rng)
        if self.cfg.enrich_captions and labels:
            caption = enrich_caption(caption, labels, lang, self.label_map)

        weight_map = None
        if self._draw(self.cfg.weight_prob, rng) and len(boxes) > 0:
            weight_map = loss_weight_map(boxes, image_size, self.latent_size, self.cfg.w_v)
        return caption, weight_map

    @staticmethod
    def _draw(prob: float, rng) -> bool:
        if prob <= 0.0:
            return False
        if prob >= 1.0:
            return True
        return rng.random() < prob


def apply_visual_knowledge(
    sample: dict,
    cfg: VisualKnowledgeConfig,
    rng,
    image_size,
    latent_size: int,
    label_map=None,
) -> Tuple[str, Optional[np.ndarray]]:
    """One-off form of :class:`VisualKnowledge` (builds it each call: prefer the class in loops)."""
    return VisualKnowledge(cfg, latent_size, label_map)(sample, rng, image_size)


def stack_weight_maps(maps: Sequence[Optional[np.ndarray]], latent_size: int) -> np.ndarray:
    """Batch per-sample maps into float32 [B, 1, L, L], None becoming all ones."""
    ones = np.ones((1, latent_size, latent_size), np.float32)
    return np.stack([ones if m is None else m for m in maps]).astype(np.float32)
