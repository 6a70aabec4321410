"""Region weights for the denoising loss (paper: visual knowledge, w_v = 0.1).

The map is 1 outside the salient boxes and 1 + w_v inside their union, on the latent grid.
A latent cell that a box border cuts gets the area-weighted value
``1 + w_v * covered_fraction``, where ``covered_fraction`` is the exact share of the cell's
area inside the union of boxes. So the map does not depend on how finely the image is
sampled, and summing it over the grid counts each covered pixel once even where boxes
overlap.

Pure numpy: the data pipeline calls it per sample; the training loss applies it as
``sum(w * se) / sum(w * ones)``.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

Size = Union[int, Sequence[int]]


def _hw(size: Size, name: str) -> Tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise ValueError(f"{name}: expected an int or (height, width), got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: must be positive, got {size!r}")
    return h, w


def as_boxes(boxes) -> np.ndarray:
    """``boxes`` as float64 [K, 4] (x0, y0, x1, y1); None or empty gives [0, 4]."""
    if boxes is None:
        return np.zeros((0, 4), np.float64)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: expected shape [K, 4] (x0, y0, x1, y1), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes: contains NaN or infinity")
    return arr


def box_union_coverage(boxes, image_size: Size, grid_size: Size) -> np.ndarray:
    """Fraction (0..1) of each grid cell's area covered by the union of ``boxes``.

    ``boxes`` are pixels of an image of ``image_size`` ((h, w) or an int for square);
    the image is split into ``grid_size`` equal cells. Parts of boxes outside the image
    are clipped away; boxes with no area are ignored. Returns float64 [gh, gw].
    """
    img_h, img_w = _hw(image_size, "image_size")
    gh, gw = _hw(grid_size, "latent_size")
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0.0, img_w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0.0, img_h)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    if len(b) == 0:
        return np.zeros((gh, gw), np.float64)

    # Coordinate compression: the box edges and cell edges cut the image into elementary
    # rectangles that lie wholly inside or outside every box and every cell.
    cell_x = np.linspace(0.0, img_w, gw + 1)
    cell_y = np.linspace(0.0, img_h, gh + 1)
    xs = np.unique(np.concatenate([cell_x, b[:, 0], b[:, 2]]))
    ys = np.unique(np.concatenate([cell_y, b[:, 1], b[:, 3]]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside_x = (b[:, 0, None] <= cx[None]) & (cx[None] < b[:, 2, None])  # [K, nx]
    inside_y = (b[:, 1, None] <= cy[None]) & (cy[None] < b[:, 3, None])  # [K, ny]
    covered = (inside_y[:, :, None] & inside_x[:, None, :]).any(axis=0)  # [ny, nx]
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :] * covered

    # Sum elementary areas into the cell that contains them.
    col = np.clip(np.searchsorted(cell_x, cx, side="right") - 1, 0, gw - 1)
    row = np.clip(np.searchsorted(cell_y, cy, side="right") - 1, 0, gh - 1)
    # One-hot membership matrices turn the scatter-add into two small matmuls.
    row_onehot = (np.arange(gh)[:, None] == row[None, :]).astype(np.float64)  # [gh, ny]
    col_onehot = (col[:, None] == np.arange(gw)[None, :]).astype(np.float64)  # [nx, gw]
    per_cell = row_onehot @ area @ col_onehot
    cell_area = (img_h / gh) * (img_w / gw)
    return np.clip(per_cell / cell_area, 0.0, 1.0)


def loss_weight_map(boxes, image_size: Size, latent_size: Size, w_v: float) -> np.ndarray:
    """Loss weights on the latent grid: float32 [1, latent_size, latent_size].

    Args:
        boxes: [K, 4] boxes (x0, y0, x1, y1) in pixels of the image; None/empty allowed.
        image_size: side of the square image the boxes refer to (or (height, width)).
        latent_size: side of the latent grid (or (height, width)).
        w_v: extra weight inside the boxes (paper 0.1), >= 0.

    Returns 1 outside all boxes, ``1 + w_v`` inside their union and
    ``1 + w_v * covered_fraction`` on cells cut by a box border (see module docstring).
    No boxes (or none inside the image) gives all ones.
    """
    w_v = float(w_v)
    if not np.isfinite(w_v) or w_v < 0:
        raise ValueError(f"w_v: must be a finite number >= 0, got {w_v}")
    coverage = box_union_coverage(boxes, image_size, latent_size)
    return (1.0 + w_v * coverage).astype(np.float32)[None]
