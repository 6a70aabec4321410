"""Single-object prompts judged by the detector: is the one named object in the image?

A prompt is a single-object prompt when it is one label name of the judge, in English or
Chinese, optionally with an article (a/an/the/one) or a Chinese measure word (一个/一只/…):
"red apple", "a banana", "红苹果", "一根香蕉". Case, repeated spaces and end punctuation do
not matter, as for the scene prompts of :mod:`.composition`. The object is present when the
detector finds a box of its class scoring at least the threshold (the composition score's
rule for one object of a scene).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ernie_vilg2.knowledge.visual.labels import LabelMap

from .composition import DEFAULT_SCORE_THRESHOLD, EN_ARTICLE, ZH_MEASURE, normalize_prompt, summarize_values

OBJECT_METRICS = ("present",)


@dataclass(frozen=True)
class ObjectPrompt:
    """A prompt naming one object: ``name`` is its English label name."""

    name: str
    lang: str


@functools.lru_cache(maxsize=8)
def _lookups(names_en: tuple, names_zh: tuple):
    en = {" ".join(n.lower().split()): n for n in names_en}
    zh = {"".join(z.split()): n for n, z in zip(names_en, names_zh)}
    return en, zh


def parse_object_prompt(prompt: str, labels) -> Optional[ObjectPrompt]:
    """The object a single-object prompt names, or None if the prompt is anything else.

    ``labels``: a LabelMap, a labels.json path or its list."""
    if not isinstance(prompt, str):
        return None
    label_map = LabelMap.coerce(labels)
    en, zh = _lookups(tuple(label_map.en), tuple(label_map.zh))
    text, lang = normalize_prompt(prompt)
    lookup, article = (zh, ZH_MEASURE) if lang == "zh" else (en, EN_ARTICLE)
    name = re.sub(f"^{article}", "", text, count=1)
    return ObjectPrompt(lookup[name], lang) if name in lookup else None


def object_present(detections, obj: ObjectPrompt, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> bool:
    """Whether ``detections`` (boxes, scores, English labels) hold ``obj``'s class at or above
    the threshold."""
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    if len(scores) != len(detections.labels):
        raise ValueError(f"detections: {len(scores)} scores and {len(detections.labels)} labels; "
                         "expected one of each per detection")
    return any(label == obj.name and score >= score_threshold for label, score in zip(detections.labels, scores))


def judge_object_images(detector, images: Sequence, objects: Sequence[ObjectPrompt],
                        score_threshold: float = DEFAULT_SCORE_THRESHOLD, batch_size: int = 16) -> List[bool]:
    """Detect objects in ``images`` and say for each whether its prompt's object is there."""
    if len(images) != len(objects):
        raise ValueError(f"objects: expected one per image ({len(images)}), got {len(objects)}")
    detections = detector.predict(list(images), batch_size=batch_size) if len(images) else []
    return [object_present(d, o, score_threshold) for d, o in zip(detections, objects)]


def summarize_objects(present: Sequence[bool], langs: Sequence[str], n_boot: int = 1000, seed: int = 0,
                      groups: Optional[Sequence] = None) -> dict:
    """Per language and overall: {"present": {"mean", "low", "high", "n"}} with a seeded
    percentile bootstrap 95% interval over ``groups`` (e.g. the prompts), as
    :func:`.composition.summarize`."""
    return summarize_values([[p] for p in present], OBJECT_METRICS, langs, n_boot, seed, groups)
