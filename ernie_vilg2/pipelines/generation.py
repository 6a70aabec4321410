"""Batch generation for many prompts and writing a grid plus single images."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..text.tokenizer import check_prompts, report_truncation
from ..utils.images import make_grid
from ..utils.io import atomic_save_image, atomic_write_text


def generate_images(
    pipe,
    prompts: Sequence[str],
    batch_size: int = 4,
    seed: Optional[int] = 0,
    num_images_per_prompt: int = 1,
    negative_prompt: Optional[str] = None,
    key_token_mask: Optional[np.ndarray] = None,
    **call_kwargs,
) -> List:
    """Run ``pipe`` over ``prompts`` in batches of ``batch_size`` prompts.

    One NumPy generator seeded once feeds every batch, and NumPy draws the noise in
    row order, so image ``i`` gets the same initial noise whatever the batch size.
    Images come back prompt-major: prompt 0's images first. ``key_token_mask`` holds one
    row per prompt (key-word emphasis at sampling) and is split with the batches.
    Everything is checked before the first batch runs, and prompts cut to the text
    encoder's length get one summary warning for the whole run.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    prompts = check_prompts(prompts)
    checked = {k: call_kwargs[k] for k in ("num_inference_steps", "guidance_scale", "height", "width", "output_type")
               if k in call_kwargs}
    pipe.check_inputs(num_images_per_prompt=num_images_per_prompt, seed=seed, **checked)
    report_truncation(pipe.tokenizer, prompts, pipe.max_length)  # the batches then stay silent
    rng = np.random.default_rng(seed)
    images: List = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        out = pipe(
            chunk,
            negative_prompt=negative_prompt,
            generator=rng,
            num_images_per_prompt=num_images_per_prompt,
            key_token_mask=None if key_token_mask is None else key_token_mask[start : start + batch_size],
            **call_kwargs,
        )
        images.extend(out.images)
    return images


def save_generation(
    images: Sequence,
    captions: Sequence[str],
    out_png: str,
    cols: Optional[int] = None,
    metadata: Optional[Dict] = None,
) -> Dict[str, object]:
    """Write the grid to ``out_png``, each image to ``<stem>_000.png`` ... beside it and
    ``<stem>.json`` (``{"images": {file: caption}, ...metadata}``). All writes are atomic.
    The index has as many digits as the image count (at least 3: 1,000 images are
    ``<stem>_0000.png`` ... ``<stem>_0999.png``), so the names sort in generation order.

    Returns the written paths: ``{"grid": ..., "images": [...], "captions": ...}``.
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not out_png.lower().endswith(".png"):
        raise ValueError(f"out: expected a .png file name, got {out_png}")
    folder, name = os.path.split(os.path.abspath(out_png))
    stem = os.path.splitext(name)[0]
    singles = []
    digits = max(3, len(str(len(images))))
    for i, image in enumerate(images):
        path = os.path.join(folder, f"{stem}_{i:0{digits}d}.png")
        atomic_save_image(image, path)
        singles.append(path)
    grid_path = str(atomic_save_image(make_grid(images, cols=cols), out_png))
    record = dict(metadata or {})
    record["grid"] = os.path.basename(out_png)
    record["images"] = {os.path.basename(p): c for p, c in zip(singles, captions)}
    captions_path = str(
        atomic_write_text(os.path.join(folder, f"{stem}.json"), json.dumps(record, ensure_ascii=False, indent=2))
    )
    return {"grid": grid_path, "images": singles, "captions": captions_path}
