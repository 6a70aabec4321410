"""Composition score: a detector judges whether generated images show what a two-object
scene prompt says (in the spirit of GenEval, with the project's own detector as the judge).

Prompts. :func:`parse_scene_prompt` reads "A <relation> B" prompts in English or Chinese
into a :class:`ScenePrompt` with the English label names: the built-in templates ("a red
apple to the left of a cat face" / "红苹果在猫脸的左边") and a small table of common
paraphrases (``EN_RELATIONS`` / ``ZH_RELATIONS``). Both objects must be label names (the
longest name wins; articles a/an/the and Chinese measure words 一个/一只/... are skipped);
anything else is not a scene (None).

Judging one image (:func:`score_image`). For each object the judge takes its best detection
of that class with a score >= ``score_threshold``; a detection that is the best box of both
classes (IoU > ``SAME_OBJECT_IOU``) is one object: the higher score keeps it and the other
class takes its next box elsewhere (a scene naming one class twice needs two such boxes).
Then: ``a_present``, ``b_present``, ``both_present``, and ``relation_correct`` = both
present and the relation holds between the two boxes by :func:`centre_relation_holds`.

The relation rule is centre-based, like GenEval's, not the data's strict
``ernie_vilg2.data.scenes.relation_holds`` (boxes disjoint along the axis): a detector's
boxes on small generated images bleed by a pixel or two, and a slight overlap of two
objects that clearly stand side by side should not fail. "a left of b" holds when b's
centre lies to the right of a's centre by more than ``margin`` (0.1) x the sum of the two
box widths (GenEval's position threshold) and by more than the vertical distance of the
centres (the horizontal axis dominates, so at most one of the four relations holds;
GenEval accepts anything within 60 degrees of the axis, which makes a diagonal pair both
"left of" and "above"). Every box pair the data's strict rule accepts also passes this one.

Summaries (:func:`summarize`): per language and overall, each accuracy with a seeded
percentile bootstrap 95% interval. The bootstrap resamples whole groups (``groups``: pass
the prompt of each image, so that the K images of a prompt move together); without groups
it resamples images.

The judge's own accuracy (:func:`judge_accuracy`) is measured on real held-out scenes,
whose captions are true by construction: its four accuracies there are the ceiling of the
instrument. The same images flipped left-right make every left/right caption false, so
relation accuracy on those must collapse while above/below stays: proof that the judge
reads layout.

Numpy only; the detector is any object with ``predict(images, batch_size)`` returning
per image ``boxes`` [K, 4] (pixels, x0 y0 x1 y1), ``scores`` [K] and ``labels`` (English
names), as :class:`ernie_vilg2.knowledge.visual.detector.Detector` does.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ernie_vilg2.data.image_decode import load_rgb
from ernie_vilg2.data.scenes import RELATIONS
from ernie_vilg2.knowledge.visual.labels import LabelMap
from ernie_vilg2.knowledge.visual.salient import box_iou
from ernie_vilg2.text.lang import detect_lang

DEFAULT_SCORE_THRESHOLD = 0.35  # as the visual knowledge's salient objects
SAME_OBJECT_IOU = 0.7  # two boxes overlapping more than this are one object
POSITION_MARGIN = 0.1  # GenEval's POSITION_THRESHOLD
METRICS = ("a_present", "b_present", "both_present", "relation_correct")

# The phrases users type for each relation (the built-in templates among them).
EN_RELATIONS = {
    "left": ("to the left of", "on the left of", "to the left side of", "on the left side of", "left of"),
    "right": ("to the right of", "on the right of", "to the right side of", "on the right side of", "right of"),
    "above": ("above", "on top of", "over"),
    "below": ("below", "under", "underneath", "beneath"),
}
ZH_RELATIONS = {
    "left": ("左边", "左侧", "左面", "左方"),
    "right": ("右边", "右侧", "右面", "右方"),
    "above": ("上面", "上方", "上边", "之上"),
    "below": ("下面", "下方", "下边", "之下", "底下"),
}
EN_ARTICLE = "(?:(?:a|an|the|one) )?"
_EN_VERB = "(?:(?:is|are|sits|stands) )?"
ZH_MEASURE = "(?:一[个只串根条颗朵片块])?"


@dataclass(frozen=True)
class ScenePrompt:
    """"a <relation> b": a and b are English label names; lang is the prompt's language."""

    a: str
    b: str
    relation: str
    lang: str


@dataclass(frozen=True)
class ImageScore:
    """The judge's verdict on one image of a scene prompt."""

    a_present: bool
    b_present: bool
    both_present: bool
    relation_correct: bool


# ---------------------------------------------------------------------------- prompts
def _alternation(phrases: Sequence[str]) -> str:
    """Regex alternation, longest first so that the longest name matches."""
    return "|".join(re.escape(p) for p in sorted(set(phrases), key=len, reverse=True))


def _relation_groups(table: Dict[str, Sequence[str]]) -> str:
    return "|".join(f"(?P<{rel}>{_alternation(table[rel])})" for rel in RELATIONS)


@functools.lru_cache(maxsize=8)
def _patterns(names_en: tuple, names_zh: tuple):
    """English and Chinese regexes, each with {name as matched: English label name}."""
    # The English text is lower-cased with single spaces, the Chinese one has no spaces.
    en_lookup = {" ".join(en.lower().split()): en for en in names_en}
    zh_lookup = {"".join(zh.split()): en for en, zh in zip(names_en, names_zh)}
    en_names, zh_names = _alternation(list(en_lookup)), _alternation(list(zh_lookup))
    en = re.compile(rf"{EN_ARTICLE}(?P<obj_a>{en_names}) {_EN_VERB}(?:{_relation_groups(EN_RELATIONS)})"
                    rf" {EN_ARTICLE}(?P<obj_b>{en_names})")
    zh = re.compile(rf"{ZH_MEASURE}(?P<obj_a>{zh_names})是?在{ZH_MEASURE}(?P<obj_b>{zh_names})的?"
                    rf"(?:{_relation_groups(ZH_RELATIONS)})")
    return (en, en_lookup), (zh, zh_lookup)


def normalize_prompt(prompt: str) -> Tuple[str, str]:
    """(text, lang) of a prompt as the parsers read it: NFKC (full-width letters and
    punctuation typed in Chinese input modes become ASCII), end punctuation stripped;
    Chinese without spaces, English lower-cased with single spaces."""
    text = unicodedata.normalize("NFKC", prompt).strip().strip(".!?;,。！？；，").strip()
    lang = detect_lang(text)
    return (re.sub(r"\s+", "", text) if lang == "zh" else re.sub(r"\s+", " ", text.lower())), lang


def parse_scene_prompt(prompt: str, labels) -> Optional[ScenePrompt]:
    """(a, b, relation, lang) of a two-object scene prompt, or None if it is not one.

    ``labels``: a LabelMap, a labels.json path or its list. The language is Chinese when
    the prompt holds a Chinese character. Case, repeated spaces and end punctuation do
    not matter; both objects must be label names of that language.
    """
    if not isinstance(prompt, str):
        return None
    label_map = LabelMap.coerce(labels)
    english, chinese = _patterns(tuple(label_map.en), tuple(label_map.zh))
    text, lang = normalize_prompt(prompt)
    pattern, lookup = chinese if lang == "zh" else english
    match = pattern.fullmatch(text)
    if match is None:
        return None
    relation = next(rel for rel in RELATIONS if match.group(rel) is not None)
    return ScenePrompt(a=lookup[match.group("obj_a")], b=lookup[match.group("obj_b")], relation=relation, lang=lang)


# ---------------------------------------------------------------------------- one image
def centre_relation_holds(box_a, box_b, relation: str, margin: float = POSITION_MARGIN) -> bool:
    """Whether box a is ``relation`` (left/right/above/below) box b, judged from the box
    centres: the offset along the relation's axis points the right way, exceeds ``margin``
    x the two boxes' summed extents along that axis, and exceeds the offset across it."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}")
    a = np.asarray(box_a, np.float64)
    b = np.asarray(box_b, np.float64)
    offset = (b[:2] + b[2:]) / 2 - (a[:2] + a[2:]) / 2  # from a's centre to b's (y down)
    axis = 0 if relation in ("left", "right") else 1
    along = offset[axis] if relation in ("left", "above") else -offset[axis]
    extent = (a[axis + 2] - a[axis]) + (b[axis + 2] - b[axis])
    return bool(along > margin * extent and along > abs(offset[1 - axis]))


def _candidates(detections, name: str, score_threshold: float) -> List[int]:
    """Indices of ``name``'s detections scoring >= threshold, best first."""
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    idx = [i for i, label in enumerate(detections.labels) if label == name and scores[i] >= score_threshold]
    return sorted(idx, key=lambda i: -scores[i])


def _overlaps(boxes: np.ndarray, i: int, j: int) -> bool:
    return bool(box_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] > SAME_OBJECT_IOU)


def score_image(detections, scene: ScenePrompt, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> ImageScore:
    """Judge one image's ``detections`` (boxes, scores, English labels) against ``scene``."""
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    if not (len(boxes) == len(scores) == len(detections.labels)):
        raise ValueError(f"detections: {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(detections.labels)} labels; expected one of each per detection")
    cand_a = _candidates(detections, scene.a, score_threshold)
    if scene.a == scene.b:  # "a cat face left of a cat face": two separate boxes, either order
        picks: List[int] = []
        for i in cand_a:
            if all(not _overlaps(boxes, i, j) for j in picks):
                picks.append(i)
        a = picks[0] if picks else None
        b = picks[1] if len(picks) > 1 else None
        relation = a is not None and b is not None and (
            centre_relation_holds(boxes[a], boxes[b], scene.relation)
            or centre_relation_holds(boxes[b], boxes[a], scene.relation))
    else:
        cand_b = _candidates(detections, scene.b, score_threshold)
        a = cand_a[0] if cand_a else None
        b = cand_b[0] if cand_b else None
        if a is not None and b is not None and _overlaps(boxes, a, b):
            # One object read as both classes: the better score keeps it, the other class
            # needs a box elsewhere.
            if scores[a] >= scores[b]:
                b = next((j for j in cand_b if not _overlaps(boxes, a, j)), None)
            else:
                a = next((i for i in cand_a if not _overlaps(boxes, b, i)), None)
        relation = a is not None and b is not None and centre_relation_holds(boxes[a], boxes[b], scene.relation)
    return ImageScore(a_present=a is not None, b_present=b is not None,
                      both_present=a is not None and b is not None, relation_correct=bool(relation))


def judge_images(detector, images: Sequence, scenes: Sequence[ScenePrompt],
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, batch_size: int = 16) -> List[ImageScore]:
    """Detect objects in ``images`` (arrays or PIL images) and score each against its scene."""
    if len(images) != len(scenes):
        raise ValueError(f"scenes: expected one per image ({len(images)}), got {len(scenes)}")
    detections = detector.predict(list(images), batch_size=batch_size) if len(images) else []
    return [score_image(d, s, score_threshold) for d, s in zip(detections, scenes)]


# ---------------------------------------------------------------------------- summaries
def _bootstrap(values: np.ndarray, groups: np.ndarray, n_boot: int, rng: np.random.Generator,
               metrics: Sequence[str]) -> dict:
    """Mean of ``values`` [N, M] per column (named ``metrics``), with 95% percentile intervals
    from resampling whole groups (a group's images enter a resample together)."""
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)  # [B, G]
    boot = (draws @ sums) / (draws @ counts)[:, None]  # [B, M]
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    means = values.mean(axis=0)
    return {name: {"mean": round(float(means[k]), 4), "low": round(float(min(low[k], means[k])), 4),
                   "high": round(float(max(high[k], means[k])), 4), "n": int(len(values))}
            for k, name in enumerate(metrics)}


def summarize(scores: Sequence[ImageScore], langs: Sequence[str], n_boot: int = 1000, seed: int = 0,
              groups: Optional[Sequence] = None) -> dict:
    """Per language and overall ("all"): each of ``METRICS`` as {"mean", "low", "high", "n"}
    (a seeded percentile bootstrap 95% interval, n images). ``groups``: the unit to
    resample per image (e.g. its prompt, so that its K images move together); None
    resamples images. Languages without images are left out."""
    values = [[getattr(s, m) for m in METRICS] for s in scores]
    return summarize_values(values, METRICS, langs, n_boot, seed, groups)


def summarize_values(values: Sequence[Sequence[bool]], metrics: Sequence[str], langs: Sequence[str],
                     n_boot: int = 1000, seed: int = 0, groups: Optional[Sequence] = None) -> dict:
    """:func:`summarize` of any per-image verdicts: ``values`` [N, M], one column per name of
    ``metrics``."""
    if len(langs) != len(values):
        raise ValueError(f"langs: expected one per score ({len(values)}), got {len(langs)}")
    if groups is not None and len(groups) != len(values):
        raise ValueError(f"groups: expected one per score ({len(values)}), got {len(groups)}")
    if n_boot < 1:
        raise ValueError(f"n_boot: must be >= 1, got {n_boot}")
    values = np.array(values, dtype=np.float64).reshape(-1, len(metrics))
    group_ids = np.asarray(list(groups) if groups is not None else range(len(values)), dtype=object).astype(str)
    langs = np.asarray(langs, dtype=object)
    out = {}
    for subset in sorted(set(langs.tolist())) + ["all"]:
        mask = np.ones(len(langs), bool) if subset == "all" else langs == subset
        if mask.any():
            # A fresh generator per subset: one language's interval does not depend on the others.
            out[subset] = _bootstrap(values[mask], group_ids[mask], n_boot, np.random.default_rng(seed), metrics)
    return out


def summarize_records(records: Sequence[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """:func:`summarize` over per-image records as tools/evaluate.py writes them (dicts with
    "prompt", "lang" and the ``METRICS``), resampling prompts."""
    scores = [ImageScore(**{m: bool(r[m]) for m in METRICS}) for r in records]
    return summarize(scores, [r["lang"] for r in records], n_boot, seed, groups=[r["prompt"] for r in records])


# ---------------------------------------------------------------------------- the judge's ceiling
def load_scene_records(path: str, split: str = "val") -> List[dict]:
    """Records of a dataset folder's ``{split}.jsonl`` (or a .jsonl file), with ``image_path``."""
    from ernie_vilg2.data.jsonl import read_jsonl_records, resolve_jsonl_path  # deferred: imports paddle

    records, _ = read_jsonl_records(resolve_jsonl_path(path, split))
    return records


def _relation_axis(relation: str) -> str:
    return "left/right" if relation in ("left", "right") else "above/below"


def _scenes_of_other_objects(scenes: Sequence[ScenePrompt]) -> List[Optional[ScenePrompt]]:
    """For each scene the next one (cyclically) naming neither of its objects, or None."""
    out = []
    for k, scene in enumerate(scenes):
        later = list(scenes[k + 1 :]) + list(scenes[:k])
        out.append(next((s for s in later if not {s.a, s.b} & {scene.a, scene.b}), None))
    return out


def _rates(pairs) -> Dict[str, float]:
    """{key: share of True} over (key, bool) pairs, keys sorted."""
    hits: Dict[str, List[bool]] = {}
    for key, ok in pairs:
        hits.setdefault(key, []).append(bool(ok))
    return {key: round(float(np.mean(v)), 4) for key, v in sorted(hits.items())}


def judge_accuracy(detector, records: Sequence[dict], labels=None,
                   score_threshold: float = DEFAULT_SCORE_THRESHOLD, batch_size: int = 16,
                   n_boot: int = 1000, seed: int = 0) -> dict:
    """The judge on real scenes whose captions are true: its accuracy ceiling.

    ``records``: dataset records with ``image_path`` (or an absolute ``image``), ``caption``
    and ``lang`` (e.g. :func:`load_scene_records`); records whose caption is not a scene
    prompt are counted and left out. ``labels``: default ``detector.label_map``. Each image
    is detected once (the Chinese and English captions of an image share it) and once
    flipped left-right. Returns a dict with
      "records", "images", "not_scenes", "caption_mismatches" (parsed scene differs from the
      record's own labels/relation), "score_threshold";
      "judge", "flipped": :func:`summarize` of the images and of their mirror images;
      "presence_by_class": {English name: share of its appearances detected};
      "false_presence": share of objects reported present although absent (each image
      judged against the caption of another scene naming two other classes);
      "relation_by_axis": {"original" | "flipped": {"above/below" | "left/right": accuracy}};
      "bootstrap": how the intervals were drawn (images resampled, both captions together).
    """

    label_map = LabelMap.coerce(labels if labels is not None else detector.label_map)
    scenes, kept = [], []
    mismatches = 0
    for rec in records:
        scene = parse_scene_prompt(rec["caption"], label_map)
        if scene is None:
            continue
        if rec.get("relation") and len(rec.get("labels") or []) == 2:  # the data's own truth
            ids = label_map.ids_of(rec["labels"])
            mismatches += (label_map.id_of(scene.a), label_map.id_of(scene.b), scene.relation) != (*ids, rec["relation"])
        scenes.append(scene)
        kept.append(rec)
    paths = [rec.get("image_path") or rec["image"] for rec in kept]
    unique = list(dict.fromkeys(paths))
    images = [np.asarray(load_rgb(path)) for path in unique]
    flipped = [np.ascontiguousarray(im[:, ::-1]) for im in images]
    row = {path: k for k, path in enumerate(unique)}
    result = {"records": len(kept), "images": len(unique), "not_scenes": len(records) - len(kept),
              "caption_mismatches": mismatches, "score_threshold": score_threshold}
    langs = [s.lang for s in scenes]
    by_axis = {}
    for name, batch in (("judge", images), ("flipped", flipped)):
        dets = detector.predict(batch, batch_size=batch_size) if batch else []
        scores = [score_image(dets[row[p]], s, score_threshold) for p, s in zip(paths, scenes)]
        result[name] = summarize(scores, langs, n_boot=n_boot, seed=seed, groups=paths)
        by_axis["original" if name == "judge" else name] = _rates(
            (_relation_axis(s.relation), sc.relation_correct) for s, sc in zip(scenes, scores))
        if name == "judge":
            # Which objects it misses, and how often it "finds" two objects that are not there
            # (the caption of another scene with two other classes).
            result["presence_by_class"] = _rates(
                [(s.a, sc.a_present) for s, sc in zip(scenes, scores)] + [(s.b, sc.b_present) for s, sc in zip(scenes, scores)])
            wrong = [score_image(dets[row[p]], other, score_threshold)
                     for p, other in zip(paths, _scenes_of_other_objects(scenes)) if other is not None]
            result["false_presence"] = round(float(np.mean(
                [sc.a_present for sc in wrong] + [sc.b_present for sc in wrong])), 4) if wrong else None
    result["relation_by_axis"] = by_axis
    result["bootstrap"] = f"percentile 95%, {n_boot} resamples of images (seed {seed})"
    return result
