"""An evaluation's output folder: the generated images (resumable), ``generation.json``,
the features cache and ``report.json``.

``images/`` holds K images per prompt, prompt-major, named by their index. A run in a folder
that already holds images continues it when the settings that decide the images
(``IMAGE_SETTINGS``; the model by its files' SHA-256) are those recorded in
``generation.json``: the images there are kept and each missing one is made from its own noise.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import List, Sequence

from ..pipelines.generation import iter_images
from ..utils.integrity import sha256_file
from ..utils.io import atomic_save_image, atomic_write_text, disk_full_as_error

GENERATION_FILE = "generation.json"
REPORT_FILE = "report.json"
FEATURES_FILE = "features.npz"
IMAGES_DIR = "images"
# Settings that decide the images (the size is the model's): an OUT made with other values is not resumed.
IMAGE_SETTINGS = ("model", "model_sha256", "prompts", "num_images_per_prompt", "seed", "sampler", "steps",
                  "guidance")


def model_fingerprint(model_dir: str) -> str:
    """SHA-256 over the names and contents of the model folder's files."""

    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(model_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(f"{os.path.relpath(path, model_dir)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def image_names(count: int) -> List[str]:
    digits = max(5, len(str(count - 1)))
    return [f"{i:0{digits}d}.png" for i in range(count)]


def changed_settings(out: str, settings: dict) -> List[str]:
    """The ``IMAGE_SETTINGS`` in which ``out``'s generation.json differs from ``settings``
    (none for a new folder); an unreadable generation.json is a ValueError naming it."""
    path = os.path.join(out, GENERATION_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    return [k for k in IMAGE_SETTINGS if old.get(k) != settings[k]]


def write_json(path: str, record: dict) -> None:

    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")


def write_generation(out: str, settings: dict, names: Sequence[str], captions: Sequence[str]) -> None:
    """``generation.json``: the settings and which prompt each image shows."""
    write_json(os.path.join(out, GENERATION_FILE), {**settings, "images": dict(zip(names, captions))})


def generate_missing(pipe, settings: dict, names: Sequence[str], folder: str, batch_size: int) -> int:
    """Generate the images ``names`` (prompt-major, K per prompt) that ``folder`` lacks; return
    how many. ``iter_images`` gives each its own noise row, so a resumed run makes the images an
    uninterrupted one would (and tools/generate.py's for the same prompts, K and seed)."""
    from tqdm import tqdm


    missing = [i for i, name in enumerate(names) if not os.path.isfile(os.path.join(folder, name))]
    images = iter_images(pipe, settings["prompts"], images_per_batch=batch_size, seed=settings["seed"],
                         num_images_per_prompt=settings["num_images_per_prompt"], wanted=missing,
                         num_inference_steps=settings["steps"], guidance_scale=settings["guidance"],
                         height=settings["height"], width=settings["width"])
    needed = len(missing) * settings["height"] * settings["width"] * 3  # raw RGB: more than the PNGs take
    with disk_full_as_error(folder, needed):
        for i, image in tqdm(images, total=len(missing), desc="generating", unit="img", disable=not missing):
            atomic_save_image(image, os.path.join(folder, names[i]))
    return len(missing)
