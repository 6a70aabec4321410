"""Draw RGBA emoji onto a plain background at the training resolution.

Emoji are resized straight to their final pixel size with Lanczos. Pillow resizes RGBA
in premultiplied alpha, so the transparent border does not bleed a dark fringe into the
glyph. Boxes returned here are the tight box of the visible pixels (alpha above
``ALPHA_THRESHOLD``), in canvas pixels ``[x0, y0, x1, y1]`` with exclusive x1/y1.
"""
from __future__ import annotations

import functools
import random
from typing import List, Optional, Sequence, Tuple

from PIL import Image

# Pixels at most this opaque (0-255) are the glyph's antialiasing haze, not the object.
ALPHA_THRESHOLD = 16

Color = Tuple[int, int, int]
Box = List[int]


@functools.lru_cache(maxsize=256)
def _load_rgba(png_path: str) -> Image.Image:
    with Image.open(png_path) as img:
        return img.convert("RGBA")


@functools.lru_cache(maxsize=4096)
def resized_emoji(png_path: str, size: int) -> Image.Image:
    """The emoji as a ``size`` x ``size`` RGBA image (cached: scenes reuse few sizes)."""
    if size < 1:
        raise ValueError(f"emoji size must be at least 1 pixel, got {size}")
    img = _load_rgba(png_path)
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.LANCZOS)


def alpha_bbox(img: Image.Image, threshold: int = ALPHA_THRESHOLD) -> Optional[Tuple[int, int, int, int]]:
    """Tight box of the pixels with alpha > threshold, or None if there are none."""
    mask = img.getchannel("A").point(lambda a: 255 if a > threshold else 0)
    return mask.getbbox()


def new_canvas(resolution: int, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    return Image.new("RGBA", (resolution, resolution), tuple(int(c) for c in background) + (255,))


def paste_emoji(canvas: Image.Image, png_path: str, x: int, y: int, size: int) -> Box:
    """Composite the emoji with its top-left corner at (x, y); return its tight box."""
    glyph = resized_emoji(png_path, size)
    canvas.alpha_composite(glyph, dest=(x, y))
    bbox = alpha_bbox(glyph)
    if bbox is None:  # fully transparent glyph: fall back to the placement square
        bbox = (0, 0, size, size)
    return [x + bbox[0], y + bbox[1], x + bbox[2], y + bbox[3]]


def to_rgb(canvas: Image.Image) -> Image.Image:
    return canvas.convert("RGB")


def render_single(
    png_path: str,
    resolution: int,
    background: Sequence[int] = (255, 255, 255),
    scale: float = 0.85,
    jitter: float = 0.0,
    seed: int = 0,
) -> Tuple[Image.Image, Box]:
    """One emoji filling ``scale`` of the canvas side, centred, then shifted by up to
    ``jitter`` x resolution in each direction (seeded, so the same seed gives the same
    image). Returns (RGB image, tight box)."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    size = max(1, round(scale * resolution))
    free = resolution - size
    x = y = free // 2
    if jitter > 0 and free > 0:
        rng = random.Random(seed)
        max_shift = int(round(jitter * resolution))
        x = min(max(x + rng.randint(-max_shift, max_shift), 0), free)
        y = min(max(y + rng.randint(-max_shift, max_shift), 0), free)
    canvas = new_canvas(resolution, background)
    box = paste_emoji(canvas, png_path, x, y, size)
    return to_rgb(canvas), box
