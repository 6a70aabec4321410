"""Batch generation for many prompts and writing a grid plus single images."""
from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Collection, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..text.tokenizer import check_prompts, report_truncation
from ..utils.images import make_grid
from ..utils.io import atomic_save_image, atomic_write_text, disk_full_as_error


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
    _check_batch_size("batch_size", batch_size)
    return [image for _, image in iter_images(
        pipe, prompts, images_per_batch=batch_size * num_images_per_prompt, seed=seed,
        num_images_per_prompt=num_images_per_prompt, negative_prompt=negative_prompt,
        key_token_mask=key_token_mask, **call_kwargs)]


def iter_images(
    pipe,
    prompts: Sequence[str],
    images_per_batch: int = 4,
    seed: Optional[int] = 0,
    num_images_per_prompt: int = 1,
    wanted: Optional[Collection[int]] = None,
    negative_prompt: Optional[str] = None,
    key_token_mask: Optional[np.ndarray] = None,
    **call_kwargs,
) -> Iterator[Tuple[int, object]]:
    """Yield ``(i, image)`` as each batch of ``images_per_batch`` images finishes; image ``i``
    is prompt-major (prompt ``i // num_images_per_prompt``) and starts from row ``i`` of one
    NumPy stream seeded with ``seed``: the images of :func:`generate_images`.

    ``wanted`` (image indices; default all) makes only those, each from its own noise row, so
    a run that skips the images it already has gives those of an uninterrupted run; a batch
    without wanted images calls ``pipe`` not at all. Checked before the first batch runs.
    """
    prompts = check_prompts(prompts)
    checked = {k: call_kwargs[k] for k in ("num_inference_steps", "guidance_scale", "height", "width", "output_type")
               if k in call_kwargs}
    pipe.check_inputs(num_images_per_prompt=num_images_per_prompt, seed=seed, **checked)
    _check_batch_size("images_per_batch", images_per_batch)
    report_truncation(pipe.tokenizer, prompts, pipe.max_length)  # the batches then stay silent
    count = len(prompts) * num_images_per_prompt
    wanted = range(count) if wanted is None else set(wanted)
    outside = sorted(i for i in wanted if not 0 <= i < count)
    if outside:
        raise ValueError(f"wanted: image indices must be in [0, {count}), got {outside}")
    noise = _NoiseRows(seed)
    for start in range(0, count, images_per_batch):
        rows = [i for i in range(start, min(start + images_per_batch, count)) if i in wanted]
        if not rows:
            continue
        noise.rows = rows
        of_prompt = [i // num_images_per_prompt for i in rows]
        out = pipe(
            [prompts[p] for p in of_prompt],  # one image per row: as pipe(prompt, num_images_per_prompt=K)
            negative_prompt=negative_prompt,
            generator=noise,
            key_token_mask=None if key_token_mask is None else np.asarray(key_token_mask)[of_prompt],
            **call_kwargs,
        )
        yield from zip(rows, out.images)


class _NoiseRows:
    """The generator a pipeline draws its initial noise from, giving it rows ``rows`` of one
    stream: ``standard_normal([len(rows), C, h, w])`` returns the ``rows`` of
    ``default_rng(seed).standard_normal([n, C, h, w])``. NumPy fills in row order, so the rows
    before them are drawn (and dropped) only when a later row needs them, a batch's span at a time."""

    def __init__(self, seed: Optional[int]):
        self._rng = np.random.default_rng(seed)
        self._next = 0  # the stream's first row not drawn yet
        self.rows: List[int] = []  # ascending, >= _next

    def standard_normal(self, shape):
        if not self.rows or shape[0] != len(self.rows):  # one draw per pipeline call, a row per image
            raise ValueError(f"noise of shape {list(shape)} asked for rows {self.rows}")
        first, end = self.rows[0], self.rows[-1] + 1
        while self._next < first:
            skipped = min(first - self._next, end - first)
            self._rng.standard_normal([skipped, *shape[1:]])
            self._next += skipped
        block = self._rng.standard_normal([end - first, *shape[1:]])
        self._next, rows, self.rows = end, self.rows, []
        return block[[i - first for i in rows]]


def _check_batch_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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
    Then the numbered images of an earlier run with the same ``out_png`` that this one did
    not write are removed (see :func:`_remove_stale_singles`), so the folder matches the JSON.
    A full disk is a :class:`~ernie_vilg2.utils.io.DiskFullError` naming the folder.

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
    # Raw pixels of the singles and the grid: more than the PNGs take.
    needed = 2 * sum(image.width * image.height * len(image.getbands()) for image in images)
    with disk_full_as_error(folder, needed):
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
    _remove_stale_singles(folder, stem, {os.path.basename(p) for p in singles})
    return {"grid": grid_path, "images": singles, "captions": captions_path}


def _remove_stale_singles(folder: str, stem: str, written: Collection[str]) -> None:
    """Remove ``<stem>_<digits>.png`` files of ``folder`` not in ``written``: the single
    images of an earlier run with more images (or more index digits). A match that has its
    own ``<name>.json`` beside it is the grid of another run (``--out <stem>_001.png``) and stays."""
    single = re.compile(re.escape(stem) + r"_\d+\.png")
    for name in os.listdir(folder):
        if (single.fullmatch(name) and name not in written
                and not os.path.exists(os.path.join(folder, name[: -len(".png")] + ".json"))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, name))
