"""Image helpers: a numpy/PIL image to PIL, and a grid of equally sized images."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]


def to_pil(image: ImageLike) -> Image.Image:
    """PIL images pass through; HWC (or HW) arrays in [0, 1] floats or uint8 are converted."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def make_grid(
    images: Sequence[ImageLike],
    cols: Optional[int] = None,
    padding: int = 2,
    background: Tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile ``images`` row by row into one RGB image.

    ``cols`` defaults to a near-square layout. All images must have the same size: a
    grid of mixed sizes is almost always a bug upstream (e.g. two resolutions mixed).
    """
    pils = [to_pil(im).convert("RGB") for im in images]
    if not pils:
        raise ValueError("make_grid: no images given")
    if cols is not None and cols < 1:
        raise ValueError(f"make_grid: cols must be >= 1, got {cols}")
    if padding < 0:
        raise ValueError(f"make_grid: padding must be >= 0, got {padding}")
    width, height = pils[0].size
    for i, im in enumerate(pils):
        if im.size != (width, height):
            raise ValueError(f"make_grid: image {i} is {im.size[0]}x{im.size[1]}, expected {width}x{height}")
    cols = min(cols or math.ceil(math.sqrt(len(pils))), len(pils))
    rows = math.ceil(len(pils) / cols)
    grid = Image.new(
        "RGB", (cols * width + (cols + 1) * padding, rows * height + (rows + 1) * padding), background
    )
    for i, im in enumerate(pils):
        r, c = divmod(i, cols)
        grid.paste(im, (padding + c * (width + padding), padding + r * (height + padding)))
    return grid
