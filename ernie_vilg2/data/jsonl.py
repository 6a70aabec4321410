"""Image/caption datasets stored as JSON lines (the users' own data and the built-in set).

On-disk format
==============

A dataset is a UTF-8 ``.jsonl`` file, one JSON object per line (blank lines are
ignored), usually ``DIR/train.jsonl`` (and ``DIR/val.jsonl``) next to ``DIR/images/``::

    {"image": "images/000123.png", "caption": "红苹果在猫脸的左边", "lang": "zh",
     "boxes": [[3, 9, 15, 21], [18, 8, 31, 22]], "labels": ["red apple", "cat face"],
     "synthetic_caption": "左边是红苹果，右边是猫脸"}

``image`` (required, string)
    Path relative to the folder of the ``.jsonl`` file, or absolute. Any format Pillow
    reads; alpha is composited on white. Several records may share one image (e.g. one
    Chinese and one English caption).
``caption`` (required, non-empty string)
``lang`` (optional, ``"zh"`` or ``"en"``)
    Detected from the caption when missing: ``"zh"`` if it holds a CJK ideograph
    (:func:`ernie_vilg2.text.lang.detect_lang`).
``boxes`` (optional, list of ``[x0, y0, x1, y1]``)
    Object boxes in pixels of the stored image, x1 > x0 and y1 > y0.
``labels`` (optional, list of strings parallel to ``boxes``)
    Object names, English or Chinese. Default: empty strings.
``synthetic_caption`` (optional, string or null)
    A machine-written caption of the same image, used by caption replacement.

Other keys are kept in :attr:`JsonlDataset.records` and otherwise ignored.

Images are resized so the shorter side is ``resolution`` and centre-cropped
(``image_fit="center_crop"``), or stretched to a square (``"squash"``); boxes get the
same transform, are clipped to the image, and boxes cut away entirely are dropped
together with their labels. Images are never flipped: captions state left and right.

Large images are decoded near the size they are resized to (:mod:`.image_decode`), and
images with more than ``max_image_pixels`` pixels (``data.max_image_pixels``) are skipped at
load time: decoding a PNG takes time and memory in proportion to its full size.

Error handling (a long run must not die on one bad record): malformed JSON lines,
records missing ``image``/``caption`` or with wrong types, records whose image file
does not exist or is not a regular file (a directory, a device), images whose header
Pillow cannot read (not an image, empty, an unknown format) and oversized images are
skipped at load time with a warning ``FILE:LINE: reason``; they are
listed in :attr:`JsonlDataset.skipped` as ``(line_number, reason)`` and counted by kind
in one summary line (:attr:`JsonlDataset.summary`), e.g.
``data/train.jsonl: 1,234 records (skipped 7: 4 malformed JSON, 2 missing images,
1 undecodable image)``. The header check opens each distinct image once (20-50 us an
image here; decoding takes 0.05 ms at 32 px to 8 ms at 768x512, too slow to do up front);
an image whose header is fine but whose body is damaged (a truncated file) fails only
when an item is read: it is reported once, recorded in
:attr:`JsonlDataset.decode_failures`, and another valid item is returned in its place.
A ``.csv``/``.tsv`` file is refused, and if no valid record remains, loading raises
:class:`DatasetError` (a ValueError) naming the file.

``index`` of an item is the 0-based line number of its record in the file: stable across
runs and filters, so precomputed per-record annotations can be joined on it.
"""
from __future__ import annotations

import codecs
import json
import logging
import math
import os
import stat
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ErnieViLG2Error
from ..text.lang import detect_lang
from .config import MAX_IMAGE_PIXELS
from .image_decode import decode_rgb
from .samples import OVERSIZED_IMAGE, UNDECODABLE_IMAGE, fit_image, image_header_error, to_pixel_values

logger = logging.getLogger(__name__)


class DatasetError(ErnieViLG2Error, ValueError):
    """The dataset file as a whole is unusable (wrong format, no valid record); names the file."""


# Print at most this many per-line warnings per file, then one summary line.
MAX_LINE_WARNINGS = 20

# Kinds of skipped records, as the reasons start (anything else is an invalid record).
MALFORMED_JSON, MISSING_IMAGE, INVALID_RECORD = "malformed JSON", "missing image", "invalid record"
# Files that are certainly not JSON Lines (the content decides for any other name).
TABULAR_SUFFIXES = (".csv", ".tsv", ".tab")


def resolve_jsonl_path(path: str, split: str = "train") -> str:
    """``path`` itself if it is a file, else ``path/{split}.jsonl``; clear error otherwise."""
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        candidate = os.path.join(path, f"{split}.jsonl")
        if os.path.isfile(candidate):
            return candidate
        raise FileNotFoundError(f"dataset folder {path} has no {split}.jsonl")
    raise FileNotFoundError(f"dataset not found: {path} (expected a .jsonl file or a folder holding {split}.jsonl)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_fields(obj: dict, caption: str) -> Tuple[Optional[dict], Optional[str]]:
    """Validate the optional fields of a record (``lang``, ``boxes``, ``labels``,
    ``synthetic_caption``) of an object with ``caption``; return (normalised fields, None) or
    (None, reason). Shared by every source whose records carry these fields."""
    lang = obj.get("lang")
    if lang is None:
        lang = detect_lang(caption)
    elif lang not in ("zh", "en"):
        return None, f"'lang' must be \"zh\" or \"en\", got {lang!r}"
    boxes = obj.get("boxes")
    labels = obj.get("labels")
    if boxes is None:
        if labels:
            return None, "'labels' given without 'boxes'"
        boxes, labels = [], []
    else:
        if not isinstance(boxes, list):
            return None, "'boxes' must be a list of [x0, y0, x1, y1]"
        for k, box in enumerate(boxes):
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                return None, f"boxes[{k}] must be 4 numbers [x0, y0, x1, y1]"
            if not (box[2] > box[0] and box[3] > box[1]):
                return None, f"boxes[{k}] must have x1 > x0 and y1 > y0, got {box}"
        if labels is None:
            labels = [""] * len(boxes)
        if not isinstance(labels, list) or not all(isinstance(s, str) for s in labels):
            return None, "'labels' must be a list of strings"
        if len(labels) != len(boxes):
            return None, f"'labels' has {len(labels)} entries but 'boxes' has {len(boxes)}"
    synthetic = obj.get("synthetic_caption")
    if synthetic is not None and not isinstance(synthetic, str):
        return None, "'synthetic_caption' must be a string or null"
    return {"lang": lang, "boxes": [[float(v) for v in box] for box in boxes], "labels": list(labels),
            "synthetic_caption": synthetic}, None


def parse_record(obj: Any, base_dir: str) -> Tuple[Optional[dict], Optional[str]]:
    """Validate one decoded JSON value; return (normalised record, None) or (None, reason)."""
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}"
    image = obj.get("image")
    if not isinstance(image, str) or not image.strip():
        return None, "missing or non-string 'image'"
    caption = obj.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        return None, "missing, empty or non-string 'caption'"
    fields, reason = parse_fields(obj, caption)
    if fields is None:
        return None, reason
    record = dict(obj)
    record.update(
        image=image,
        image_path=image if os.path.isabs(image) else os.path.normpath(os.path.join(base_dir, image)),
        caption=caption,
        **fields,
    )
    return record, None


def parse_line(raw: bytes, base_dir: str) -> Tuple[Optional[dict], Optional[str]]:
    """(record, None) or (None, reason) of one line of a JSON-lines file (bytes; a line that is
    not UTF-8 is malformed, not an error of the whole file)."""
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"{MALFORMED_JSON} (not UTF-8 at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return None, f"{MALFORMED_JSON} ({exc.msg} at column {exc.colno})"
    return parse_record(obj, base_dir)


def skip_kind(reason: str) -> str:
    """The kind of a skip reason: malformed JSON, missing, undecodable or oversized image, or invalid record."""
    return next((k for k in (MALFORMED_JSON, MISSING_IMAGE, UNDECODABLE_IMAGE, OVERSIZED_IMAGE)
                 if reason.startswith(k)), INVALID_RECORD)


def count_skipped(skipped: Sequence[Tuple[int, str]]) -> str:
    """"4 malformed JSON, 2 missing images, 1 undecodable image" (kinds in a fixed order)."""
    kinds = [skip_kind(reason) for _, reason in skipped]
    parts = []
    for kind in (MALFORMED_JSON, INVALID_RECORD, MISSING_IMAGE, UNDECODABLE_IMAGE, OVERSIZED_IMAGE):
        n = kinds.count(kind)
        if n:
            parts.append(f"{n:,} {kind}{'s' if n > 1 and kind != MALFORMED_JSON else ''}")
    return ", ".join(parts)


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))


def _image_file_error(path: str) -> Optional[str]:
    """None if ``path`` is a regular file (or a link to one), else the skip reason. Not a
    regular file is not "not found": /dev/zero or a pipe would never finish reading."""
    if os.path.isfile(path):
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a broken link
        return f"{MISSING_IMAGE}: file not found: {path}"
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "another kind of file")
    target = f" -> {os.path.realpath(path)}" if os.path.islink(path) else ""
    return f"{MISSING_IMAGE}: not a regular file: {path}{target} ({kind})"


def read_jsonl_records(path: str, check_images: bool = True, verify_images: bool = False,
                       max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS) -> Tuple[List[dict], List[Tuple[int, str]]]:
    """Parse a dataset file. Returns (valid records, skipped as (line_number, reason)).

    Each record gets ``index`` (0-based line number) and ``image_path`` (resolved).
    ``check_images``: skip records whose image is missing or not a regular file;
    ``verify_images``: also those whose image header Pillow cannot read or whose image has
    more than ``max_image_pixels`` pixels (None: no limit; each distinct file opened once).
    Raises DatasetError for a .csv/.tsv file and when no line is a valid record.
    """
    check_tabular(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    records: List[dict] = []
    skipped: List[Tuple[int, str]] = []
    header_errors: Dict[str, Optional[str]] = {}  # image path -> error (several records share an image)
    with open(path, "rb") as f:
        for line_idx, line in enumerate(f):
            if line_idx == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            if not line.strip():
                continue
            record, reason = parse_line(line, base_dir)
            if record is not None and check_images:
                reason = _image_file_error(record["image_path"])
                record = None if reason else record
            if record is not None and verify_images:
                image = record["image_path"]
                if image not in header_errors:
                    header_errors[image] = image_header_error(image, image, max_image_pixels)
                if header_errors[image]:
                    record, reason = None, header_errors[image]
            if record is None:
                skipped.append((line_idx + 1, reason))
                continue
            record["index"] = line_idx
            records.append(record)
    report_skipped(path, len(records), skipped)
    return records, skipped


def check_tabular(path: str) -> None:
    """A .csv/.tsv file is certainly not JSON Lines: DatasetError naming it."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in TABULAR_SUFFIXES:
        raise DatasetError(f"{path}: expected a JSON Lines dataset (.jsonl, one JSON object per line with "
                           f"\"image\" and \"caption\"), got a {suffix} file")


def report_skipped(path: str, num_records: int, skipped: Sequence[Tuple[int, str]]) -> None:
    """Warn of the first skipped lines, then of how many more; DatasetError naming the file
    when no valid record is left."""
    for line_no, reason in skipped[:MAX_LINE_WARNINGS]:
        logger.warning("%s:%d: %s; record skipped", path, line_no, reason)
    if len(skipped) > MAX_LINE_WARNINGS:
        logger.warning("%s: %d more records skipped (see dataset.skipped)", path, len(skipped) - MAX_LINE_WARNINGS)
    if not num_records:
        if not skipped:
            raise DatasetError(f"{path}: no records (the file is empty)")
        raise DatasetError(f"{path}: no valid record in {len(skipped):,} lines ({count_skipped(skipped)}); expected "
                           "JSON Lines: one {\"image\": ..., \"caption\": ...} object per line")


class JsonlDataset:
    """Image/caption records from a ``.jsonl`` file (format in the module docstring).

    Args:
        path: a ``.jsonl`` file, or a folder holding ``{split}.jsonl``.
        resolution: side of the square images returned.
        split: file picked when ``path`` is a folder.
        languages: keep only records in these languages (None: all).
        image_fit: "center_crop" or "squash" for non-square images.
        max_samples: keep only the first N valid records.
        max_image_pixels: skip images with more pixels (None: no limit but Pillow's own).

    Counters are per process: with data workers, decode failures found in
    workers are logged there but not added to the parent's :attr:`decode_failures`.
    """

    def __init__(
        self,
        path: str,
        resolution: int,
        split: str = "train",
        languages: Optional[Sequence[str]] = None,
        image_fit: str = "center_crop",
        max_samples: Optional[int] = None,
        max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS,
    ):
        super().__init__()
        if resolution < 1:
            raise ValueError(f"resolution must be positive, got {resolution}")
        if image_fit not in ("center_crop", "squash"):
            raise ValueError(f"image_fit must be 'center_crop' or 'squash', got {image_fit!r}")
        self.path = resolve_jsonl_path(str(path), split)
        self.resolution = int(resolution)
        self.image_fit = image_fit
        records, self.skipped = read_jsonl_records(self.path, verify_images=True, max_image_pixels=max_image_pixels)
        valid = len(records)
        notes = [f"skipped {len(self.skipped):,}: {count_skipped(self.skipped)}" if self.skipped else "none skipped"]
        if languages is not None:
            records = [r for r in records if r["lang"] in languages]
            if not records:
                raise DatasetError(f"{self.path}: no records in languages {list(languages)}")
            if len(records) < valid:
                notes.append(f"{valid - len(records):,} not in data.languages")
        if max_samples is not None and len(records) > max_samples:
            notes.append(f"{len(records) - max_samples:,} past data.max_samples")
            records = records[:max_samples]
        self.records: List[dict] = records
        self.summary = f"{self.path}: {len(records):,} records ({'; '.join(notes)})"
        # Most lines bad is more likely the wrong file than a few bad records: say it louder.
        logger.log(logging.WARNING if len(self.skipped) > valid else logging.INFO, "%s", self.summary)
        self.decode_failures: List[Tuple[int, str, str]] = []  # (line_number, image_path, error)
        self._bad_items: set = set()

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def num_decode_failures(self) -> int:
        return len(self.decode_failures)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> str:
        return self.records[i]["image_path"]

    def load_item(self, i: int) -> Dict[str, Any]:
        """Item ``i``; decode errors propagate (``__getitem__`` substitutes another item)."""
        record = self.records[i]
        img, scale = decode_rgb(record["image_path"], min_side=self.resolution)
        boxes = np.asarray(record["boxes"], np.float32).reshape(-1, 4) / np.float32(scale)
        img, boxes, keep = fit_image(img, boxes, self.resolution, self.image_fit)
        return {
            "pixel_values": to_pixel_values(img),
            "caption": record["caption"],
            "lang": record["lang"],
            "boxes": boxes[keep],
            "labels": [label for label, k in zip(record["labels"], keep) if k],
            "synthetic_caption": record["synthetic_caption"],
            "index": record["index"],
        }

    def __getitem__(self, i: int) -> Dict[str, Any]:
        n = len(self.records)
        for step in range(n):
            j = (int(i) + step) % n
            if j in self._bad_items:
                continue
            try:
                return self.load_item(j)
            except Exception as exc:  # noqa: BLE001 - any decoder error must not end a long run
                self._bad_items.add(j)
                record = self.records[j]
                self.decode_failures.append((record["index"] + 1, record["image_path"], repr(exc)))
                logger.warning("%s:%d: cannot decode image %s (%s); using another item",
                               self.path, record["index"] + 1, record["image_path"], exc)
        raise RuntimeError(f"{self.path}: no image in the dataset could be decoded")


def collate_samples(samples: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack ``pixel_values`` to float32 [B, 3, R, R]; every other key becomes a list."""
    if not samples:
        raise ValueError("collate_samples got an empty batch")
    batch: Dict[str, Any] = {"pixel_values": np.stack([s["pixel_values"] for s in samples]).astype(np.float32)}
    for key in samples[0]:
        if key != "pixel_values":
            batch[key] = [s[key] for s in samples]
    return batch
