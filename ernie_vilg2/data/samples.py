"""A record of the project's form -> a training sample: the image decoded, resized and
cropped, its boxes mapped the same way.

Every source (JSON lines, COCO, webdataset shards) and both places that decode (the loader's
worker processes and the in-memory latent cache) go through :func:`decode_sample`, so a record
gives the same sample wherever it is read. The image is a path or the encoded bytes.

Images are resized so the shorter side is ``resolution`` and centre-cropped
(``"center_crop"``), or stretched to a square (``"squash"``); boxes get the same transform,
are clipped to the image, and boxes cut away entirely are dropped with their labels. The
stored objects of a sample's knowledge (``record["knowledge"]["objects"]``, in pixels of the
stored image as the detector saw it) are mapped the same way. Images are never flipped:
captions state left and right.
"""
from __future__ import annotations

import io
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .image_decode import decode_rgb

# Kinds of unusable images (the reasons start with them).
UNDECODABLE_IMAGE, OVERSIZED_IMAGE = "undecodable image", "oversized image"

ImageSource = Union[str, bytes]


class SampleError(ValueError):
    """A record that cannot become a sample; the message is the reason."""


def _open(image: ImageSource):
    return io.BytesIO(image) if isinstance(image, (bytes, bytearray, memoryview)) else image


def image_header_error(image, name: str, max_pixels: Optional[int]) -> Optional[str]:
    """None if Pillow can read the header (format, size) of ``image`` (a path, bytes or a binary
    file) and the image has at most ``max_pixels`` pixels (None: no limit), else the reason,
    starting with its kind. ``name`` is how the reason names the image."""
    try:
        with warnings.catch_warnings():  # Pillow warns of large images; our limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_open(image)) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit
        return f"{OVERSIZED_IMAGE} {name} ({exc})"
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"{UNDECODABLE_IMAGE} {name} ({type(exc).__name__}: {exc})"
    if max_pixels is not None and width * height > max_pixels:
        return (f"{OVERSIZED_IMAGE} {name} ({width}x{height} = {width * height:,} pixels, more than "
                f"data.max_image_pixels {max_pixels:,})")
    return None


def fit_image(img: Image.Image, boxes: np.ndarray, resolution: int, mode: str = "center_crop"):
    """Resize ``img`` to resolution x resolution and map ``boxes`` [K, 4] the same way.

    Returns (image, boxes, keep) where ``keep`` marks the boxes that survive the crop.
    """
    w, h = img.size
    if mode == "squash":
        sx, sy, left, top = resolution / w, resolution / h, 0.0, 0.0
        new_size = (resolution, resolution)
    elif mode == "center_crop":
        scale = resolution / min(w, h)
        new_size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        sx, sy = new_size[0] / w, new_size[1] / h
        left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
    else:
        raise ValueError(f"image_fit must be 'center_crop' or 'squash', got {mode!r}")
    if new_size != (w, h):
        img = img.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=None)
    if new_size != (resolution, resolution):
        img = img.crop((left, top, left + resolution, top + resolution))
    if len(boxes):
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32) - np.array([left, top, left, top], np.float32)
        boxes = np.clip(boxes, 0, resolution)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    else:
        keep = np.zeros([0], bool)
    return img, boxes.astype(np.float32).reshape(-1, 4), keep


def to_pixel_values(img) -> np.ndarray:
    """RGB image (or uint8 [H, W, 3]) -> float32 [3, H, W] in [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32)
    return (arr / 127.5 - 1.0).transpose(2, 0, 1).copy()


def batch_pixel_values(pixels: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1] (as :func:`to_pixel_values` per image)."""
    return (pixels.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2).copy()


def _map_objects(objects: Sequence[dict], boxes: np.ndarray, keep: np.ndarray) -> List[dict]:
    return [{**obj, "box": [round(float(v), 2) for v in box]} for obj, box, k in zip(objects, boxes, keep) if k]


def decode_sample(record: Dict[str, Any], resolution: int, image_fit: str = "center_crop",
                  max_image_pixels: Optional[int] = None) -> Dict[str, Any]:
    """The training sample of ``record``: ``pixels`` uint8 [R, R, 3], ``boxes`` float32 [K, 4]
    and ``labels`` of the boxes that survive the crop, the record's other fields as they are
    (its knowledge with the objects mapped). Raises :class:`SampleError` when the image
    cannot be used."""
    image = record["image"]
    name = record.get("image_name") or (image if isinstance(image, str) else record.get("key", "image"))
    reason = image_header_error(image, name, max_image_pixels)
    if reason:
        raise SampleError(reason)
    try:
        img, scale = decode_rgb(_open(image), min_side=resolution)
    except Exception as exc:  # noqa: BLE001 - a damaged body: any decoder error
        raise SampleError(f"{UNDECODABLE_IMAGE} {name} ({type(exc).__name__}: {exc})") from None
    boxes = np.asarray(record.get("boxes") or [], np.float32).reshape(-1, 4)
    knowledge = record.get("knowledge")
    objects = list((knowledge or {}).get("objects") or [])
    object_boxes = np.asarray([o["box"] for o in objects], np.float32).reshape(-1, 4)
    img, mapped, keep = fit_image(img, np.concatenate([boxes, object_boxes]) / np.float32(scale), resolution,
                                  image_fit)
    n = len(boxes)
    sample = {k: v for k, v in record.items() if k not in ("image", "image_name", "boxes", "labels", "knowledge")}
    sample.update(
        pixels=np.asarray(img, dtype=np.uint8),
        boxes=mapped[:n][keep[:n]],
        labels=[label for label, k in zip(record.get("labels") or [""] * n, keep[:n]) if k],
    )
    if knowledge is not None:
        sample["knowledge"] = {**knowledge, "objects": _map_objects(objects, mapped[n:], keep[n:])} \
            if "objects" in knowledge else dict(knowledge)
    return sample
