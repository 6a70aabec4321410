"""Scoring a detector on held-out data: VOC mAP@0.5 of the scenes (overall, per class, per
dataset folder) and, with single-emoji images, AP@0.5 of the held-out singles and the share
of held-out non-class emoji on which it reports something."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from ...knowledge.visual.detector import Detector
from ...knowledge.visual.metrics import image_false_positive_rate, voc_map
from ...knowledge.visual.salient import DEFAULT_SCORE_THRESHOLD
from .config import SingleEmojiData
from .data import SceneAnnotation, SingleEmojiSets, build_single_emoji_sets, dataset_resolutions, read_datasets


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


def evaluate_weights(config_path: str, data_dirs: Union[str, Sequence[str]], weights: str,
                     singles: Optional[SingleEmojiData] = None) -> Dict:
    """:func:`evaluate_all` of saved weights on the held-out data that
    :func:`~.loop.train_detector` with the same ``data_dirs`` and ``singles`` reports."""
    data_dirs = [data_dirs] if isinstance(data_dirs, str) else list(data_dirs)
    label_map, _, val_sets = read_datasets(data_dirs)
    sets = build_single_emoji_sets(singles, label_map, dataset_resolutions(val_sets)) if singles else None
    return evaluate_all(Detector(config_path, label_map, weights=weights), val_sets, sets)
