"""The paper's COCO zero-shot FID-30k (``tools/evaluate.py --protocol coco-fid30k``).

N captions of a COCO split (val2014 by default, as in most of the literature), one per image, so N
distinct images: the first N images of a permutation of the split's captioned images (by
ascending id) drawn with ``numpy.random.default_rng(protocol_seed)``, then one caption of each
drawn by the same generator (one draw per image of the split, so the choice of an image's
caption does not depend on N: the images and captions of a smaller N are the first ones of a
larger N). One image is generated per caption at the model's size; generated and real images
are both resized the same way (:class:`CenterCrop`: the shorter side to ``image_size`` with
PIL's antialiased bicubic, then a centre crop) before the FID network's own 299x299 resize,
and the FID is taken against exactly those N real images.

The real images' features are cached in the FID statistics cache (keyed by the files'
contents and the resize), so a second model evaluated on the same selection computes none.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.coco import CocoCaptions, CocoError
from ..data.jsonl import fit_image
from ..errors import ErnieViLG2Error
from .fid import FeatureExtractor, frechet_distance, reference_cache, statistics
from .output_folder import FEATURES_FILE, IMAGES_DIR, write_json

PROTOCOL = "coco-fid30k"
SELECTION_FILE = "coco_selection.json"
SELECTION_RULE = ("one caption per image: the first N images of numpy.random.default_rng(protocol_seed)"
                  ".permutation of the split's captioned images (ascending ids), then for each image its caption "
                  "number floor(u * count) (captions by ascending id), u the image's entry (by position) in the "
                  "same generator's next .random(num_images)")


class ProtocolError(ErnieViLG2Error, ValueError):
    """The protocol cannot run with these settings (e.g. more samples than images)."""


def resize_description(size: int) -> str:
    return (f"shorter side to {size} px with PIL bicubic (antialiased), centre crop {size}x{size}; "
            "generated and real images alike, before the FID network's 299x299 resize")


class CenterCrop:
    """The protocol's resize of a uint8 ``[H, W, 3]`` array: the shorter side to ``size``
    (PIL bicubic, antialiased), then a centre crop (the training data's resize,
    :func:`ernie_vilg2.data.jsonl.fit_image`). ``name`` keys the features cache."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"image size must be >= 1, got {size}")
        self.size = size
        self.name = f"center-crop-{size}-pil-bicubic"

    def __call__(self, array: np.ndarray) -> np.ndarray:
        image, _, _ = fit_image(Image.fromarray(array), np.zeros((0, 4), np.float32), self.size)
        return np.asarray(image)


@dataclasses.dataclass(frozen=True)
class CocoSelection:
    """The N chosen captions, one per image, in the order of the generated images."""

    split: str
    captions_json: str
    image_dir: str
    protocol_seed: int
    image_ids: Tuple[int, ...]
    keys: Tuple[str, ...]  # "{image_id}_{caption_id}" of each chosen caption
    captions: Tuple[str, ...]
    image_paths: Tuple[str, ...]

    def image_ids_sha256(self) -> str:
        """SHA-256 of the chosen image ids in order, comma-separated ("391895,522418,...")."""
        return hashlib.sha256(",".join(map(str, self.image_ids)).encode()).hexdigest()


def select_captions(coco: CocoCaptions, num_samples: int, seed: int) -> CocoSelection:
    """``num_samples`` captions of ``coco``, one per image (the rule in the module docstring)."""
    if not 1 <= num_samples <= coco.num_images:
        raise ProtocolError(f"{num_samples} samples need as many distinct images; {coco.captions_json} has captions "
                            f"of {coco.num_images:,} images")
    rng = np.random.default_rng(seed)
    order = rng.permutation(coco.num_images)[:num_samples]
    draws = rng.random(coco.num_images)
    chosen = [records[int(draws[i] * len(records))]
              for i, records in zip(order, coco.records_for_images(coco.image_ids[order]))]
    return CocoSelection(
        split=coco.split, captions_json=coco.captions_json, image_dir=coco.image_dir, protocol_seed=seed,
        image_ids=tuple(int(i) for i in coco.image_ids[order]), keys=tuple(r["key"] for r in chosen),
        captions=tuple(r["caption"] for r in chosen), image_paths=tuple(r["image"] for r in chosen))


def load_selection(root: str, split: str, num_samples: int, seed: int) -> CocoSelection:
    """The selection of a COCO folder's split (captions only: the boxes are not needed).
    CocoError names a missing or malformed file, ProtocolError too large a ``num_samples``."""
    return select_captions(CocoCaptions(root, split, instances=False), num_samples, seed)


def check_real_images(selection: CocoSelection) -> None:
    """Every chosen real image is a file whose header Pillow reads; else a CocoError naming
    the first that is not (before any image is generated)."""
    for path in selection.image_paths:
        if not os.path.isfile(path):
            raise CocoError(f"COCO image not found: {path}")
        try:
            with Image.open(path):
                pass
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            raise CocoError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def generation_settings(selection: CocoSelection) -> dict:
    """The prompt part of the output folder's settings: the chosen captions, one image each."""
    return {"prompts": list(selection.captions), "prompt_source": selection.captions_json,
            "num_images_per_prompt": 1}


def write_selection(out: str, selection: CocoSelection, names: Sequence[str]) -> None:
    """``OUT/coco_selection.json``: which COCO image and caption each generated image shows."""
    samples = [{"image": name, "coco_image_id": image_id, "key": key, "caption": caption, "real_image": path}
               for name, image_id, key, caption, path in zip(names, selection.image_ids, selection.keys,
                                                             selection.captions, selection.image_paths)]
    write_json(os.path.join(out, SELECTION_FILE), {
        "split": selection.split, "captions_file": selection.captions_json, "protocol_seed": selection.protocol_seed,
        "num_samples": len(samples), "image_ids_sha256": selection.image_ids_sha256(), "samples": samples})


def real_features_cache(selection: CocoSelection, image_size: int, cache_dir: Optional[str] = None) -> str:
    """The features cache of the selection's real images (the FID statistics cache by default)."""
    name = f"coco_{selection.split}_{selection.image_ids_sha256()[:16]}_{image_size}px_features.npz"
    return os.path.join(cache_dir or reference_cache(), name)


def coco_fid(out: str, names: Sequence[str], selection: CocoSelection, extractor: FeatureExtractor, image_size: int,
             cache_dir: Optional[str] = None, progress: bool = False) -> float:
    """FID of the generated images ``OUT/images/{names}`` against the selection's real images,
    both through :class:`CenterCrop` (``image_size``). Features are cached (``OUT/features.npz``;
    the real ones in :func:`real_features_cache`), so a rerun computes only what is new.
    An unreadable image is a ValueError naming it."""
    resize = CenterCrop(image_size)
    generated = extractor.file_features([os.path.join(out, IMAGES_DIR, n) for n in names],
                                        cache=os.path.join(out, FEATURES_FILE), progress=progress, prepare=resize)
    mu, sigma = statistics(generated)
    del generated  # 30,000 x 2048 features: one set in memory at a time
    real = extractor.file_features(list(selection.image_paths), cache=real_features_cache(selection, image_size,
                                                                                          cache_dir),
                                   progress=progress, prepare=resize)
    return frechet_distance(mu, sigma, *statistics(real))


def protocol_record(selection: CocoSelection, image_size: int) -> Dict[str, object]:
    """The report's ``protocol`` entry: every choice that makes the number comparable."""
    return {
        "name": PROTOCOL, "split": selection.split, "captions_file": selection.captions_json,
        "image_folder": selection.image_dir, "num_samples": len(selection.image_ids),
        "protocol_seed": selection.protocol_seed, "selection": SELECTION_RULE,
        "image_ids_sha256": selection.image_ids_sha256(), "selection_file": SELECTION_FILE,
        "image_size": image_size, "resize": resize_description(image_size),
        "reference": "the same N real images (one per caption), resized the same way",
    }

