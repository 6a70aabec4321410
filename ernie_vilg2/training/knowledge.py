"""Turns a batch's records into model inputs: captions, token ids and knowledge tensors.

Per sample, in this order (all draws from the step's rng):
1. visual knowledge: caption replacement / label enrichment and the loss weight map;
2. caption dropout to "" (the unconditional branch of classifier-free guidance);
3. textual knowledge: POS tokens before key words and the key-token mask.
The models only ever see tensors: token ids, a key-token mask, a weight map.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional

import numpy as np

from ..data import dataset_path
from ..knowledge.annotations import read_annotations
from ..knowledge.textual import build_text_inputs
from ..knowledge.visual.knowledge import VisualKnowledge
from ..models.attention_processor import FastAttnProcessor
from ..text.tokenizer import tokenize
from .batches import stack_weight_maps

logger = logging.getLogger(__name__)


def _load_annotations(paths: List[Optional[str]]) -> Dict[int, dict]:
    """Merge precomputed knowledge files ({index: annotation}); later files add keys."""
    merged: Dict[int, dict] = {}
    for path in dict.fromkeys(p for p in paths if p):
        for index, ann in read_annotations(path).items():
            merged.setdefault(index, {}).update(ann)
    return merged


def _label_map_path(cfg) -> Optional[str]:
    """visual_knowledge.labels, else the labels.json beside the training data (built-in
    data writes one), else None."""
    vk = cfg.visual_knowledge
    if vk.labels or not vk.enabled:
        return vk.labels
    path = dataset_path(cfg.data)
    candidate = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "labels.json")
    return candidate if os.path.isfile(candidate) else None


class _RowDraws:
    """Stands in for the generator :func:`build_text_inputs` draws its per-caption POS-token coins
    from (one ``random(B)`` call): each row's coin was drawn from that row's own generator."""

    def __init__(self, draws: List[float]):
        self._draws = np.asarray(draws)

    def random(self, size: int) -> np.ndarray:
        if size != len(self._draws):
            raise ValueError(f"{len(self._draws)} rows' draws for {size} captions")
        return self._draws


class CaptionProcessor:
    def __init__(self, cfg, tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.max_length = cfg.model.text_encoder.max_length
        self.textual = cfg.textual_knowledge
        f = cfg.model.vae.scale_factor
        self.image_size = cfg.data.resolution
        self.visual = VisualKnowledge(cfg.visual_knowledge, cfg.data.resolution // f, _label_map_path(cfg))
        self.annotations = _load_annotations(
            [getattr(self.textual, "annotations", None), cfg.visual_knowledge.annotations]
            if (self.textual.enabled or cfg.visual_knowledge.enabled) else []
        )

    # -- attention processors ------------------------------------------------------------
    def install(self, unet, training: bool) -> None:
        """Key-word emphasis in every cross-attention of every expert, when it applies."""
        t = self.textual
        if not t.enabled:
            return
        active = training or t.apply_at_sampling
        unet.set_attn_processor(FastAttnProcessor(t.w_t if active else 0.0))

    # -- batches ---------------------------------------------------------------------------------
    def training_batch(self, metas: List[dict], rng: np.random.Generator, weight_shape) -> dict:
        """:meth:`training_rows` with one generator for all rows."""
        return self.training_rows(metas, [rng] * len(metas), weight_shape)

    def training_rows(self, metas: List[dict], rngs: List[np.random.Generator], weight_shape) -> dict:
        """Model inputs of a batch's records, each row's random choices drawn from its own generator.

        A record's knowledge is its own (a shard's sidecar, ``meta["knowledge"]``) or the
        annotation file's entry of its ``index``."""
        captions, maps, analyses, pos_draws = [], [], [], []
        pos_tokens = self.textual.enabled and self.textual.pos_tokens
        for meta, rng in zip(metas, rngs):
            sample = dict(meta)
            ann = meta.get("knowledge") or self.annotations.get(meta.get("index"))
            if ann and "objects" in ann:
                sample["objects"] = ann["objects"]
            caption, weight = self.visual(sample, rng, self.image_size)
            if rng.random() < self.cfg.train.caption_dropout:
                caption = ""
            captions.append(caption)
            maps.append(weight)
            # Precomputed key words are valid only for the unchanged caption.
            keep = ann is not None and "keywords" in ann and caption == meta["caption"]
            analyses.append(ann["keywords"] if keep else None)
            if pos_tokens:
                pos_draws.append(rng.random())
        draws = _RowDraws(pos_draws) if pos_tokens else None
        return {**self.text_inputs(captions, draws, analyses, training=True),
                "loss_weight": stack_weight_maps(maps, weight_shape)}

    def text_inputs(self, captions: List[str], rng: Optional[np.random.Generator] = None,
                    analyses: Optional[list] = None, training: bool = False) -> dict:
        if not self.textual.enabled:
            return {"input_ids": tokenize(self.tokenizer, captions, self.max_length), "key_token_mask": None}
        out = build_text_inputs(captions, self.tokenizer, self.max_length, self.textual,
                                rng if rng is not None else np.random.default_rng(0), analyses=analyses,
                                training=training)
        return {"input_ids": out["input_ids"], "key_token_mask": out["key_token_mask"]}
