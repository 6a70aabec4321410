"""Decode image files to RGB on white, large ones near the size they are needed at (a
JPEG at 1/2 to 1/8 scale, other formats decoded in full, then reduced by whole blocks)."""
from __future__ import annotations

from typing import Optional, Tuple

from PIL import Image

# Large images are decoded or reduced to no less than this many times the side they are
# resized to (Pillow's reducing_gap): the resize from there looks as from the full image.
REDUCING_GAP = 3


def decode_rgb(path: str, min_side: Optional[int] = None) -> Tuple[Image.Image, int]:
    """Decode an image as RGB, compositing any transparency on white; return it and its scale
    (stored pixels per pixel of the returned image, on both axes).

    With ``min_side``, a large image comes back reduced by an integer factor, to no less than
    ``REDUCING_GAP * min_side`` on the shorter side: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
    (Pillow's ``draft``), any image is then reduced (``reduce``, a box filter). Only whole
    blocks are kept (a right column or bottom row of fewer than ``scale`` stored pixels is
    dropped), so stored pixel x is exactly x / scale in the returned image.
    """
    with Image.open(path) as img:
        width, height = img.size
        drafted = img.draft(None, (REDUCING_GAP * min_side,) * 2) if min_side else None
        img.load()
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        img = img.convert("RGBA" if has_alpha else "RGB")
    scale = round(width / drafted[1][2]) if drafted else 1  # draft's box: the stored size / its scale
    factor = max(1, min(width // scale, height // scale) // (REDUCING_GAP * min_side)) if min_side else 1
    if scale * factor > 1:
        blocks = scale * factor
        img = img.reduce(factor, box=(0, 0, width // blocks * factor, height // blocks * factor))
    if has_alpha:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img).convert("RGB")
    return img, scale * factor


def load_rgb(path: str) -> Image.Image:
    """Decode an image at full size as RGB, compositing any transparency on white."""
    return decode_rgb(path)[0]
