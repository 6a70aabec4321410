"""The ``data:`` section of the config.

``root: null`` (the default) means the built-in offline dataset: Twemoji images with
bilingual emoji names plus two-object scenes, written once to ``builtin.out_dir`` and
then loaded like any user dataset (see :mod:`ernie_vilg2.data.jsonl` for the format).
Other roots are JSON lines, webdataset shards, a COCO folder or latent shards (:mod:`.sources`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from ..config import check
from .scenes import RELATIONS

LANGUAGES = ("zh", "en")
IMAGE_FITS = ("center_crop", "squash")
FORMATS = ("auto", "jsonl", "webdataset", "coco", "latents")
# Images with more pixels are skipped (data.max_image_pixels): 8192 x 8192, 192 MiB as RGB.
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass
class BuiltinDataConfig:
    # Where the built-in dataset is written; "{resolution}" is filled in, relative paths
    # are relative to the working directory. A folder built with other settings is rebuilt.
    out_dir: str = "data/emoji-{resolution}"
    # Single-emoji images: keep emoji whose English name matches any entry (whole words;
    # "=name" for an exact name; "@demo" expands to DEMO_EMOJI_FILTER). null keeps all.
    emoji_filter: Optional[List[str]] = None
    max_emoji: Optional[int] = None  # seeded subset of the filtered catalogue
    include_singles: bool = True
    single_scale: float = 0.85  # emoji side / image side for single-emoji images
    single_jitter: float = 0.0  # random shift, fraction of the image side (0: centred)
    num_scenes: int = 4000  # two-object training scenes
    num_val_scenes: int = 400  # held-out scenes (val.jsonl), drawn from another seed
    scene_classes: Optional[List[str]] = None  # exact English names; null: SCENE_CLASSES
    scene_relations: Optional[List[str]] = None  # some of left, right, above, below; null: all four
    scene_min_size: float = 0.4  # scene emoji side, fraction of the image side
    scene_max_size: float = 0.5
    background: List[int] = field(default_factory=lambda: [255, 255, 255])  # RGB
    seed: int = 0

    def __post_init__(self):
        check("{" not in self.out_dir.replace("{resolution}", ""), "data.builtin.out_dir",
              "the only placeholder allowed is {resolution}")
        check(bool(self.out_dir.strip()), "data.builtin.out_dir", "must not be empty")
        check(self.emoji_filter is None or all(s.strip() for s in self.emoji_filter),
              "data.builtin.emoji_filter", "entries must be non-empty strings")
        check(self.max_emoji is None or self.max_emoji >= 1, "data.builtin.max_emoji", "must be >= 1 or null")
        check(0.0 < self.single_scale <= 1.0, "data.builtin.single_scale", "must be in (0, 1]")
        check(0.0 <= self.single_jitter <= 0.5, "data.builtin.single_jitter", "must be in [0, 0.5]")
        check(self.num_scenes >= 0, "data.builtin.num_scenes", "must be >= 0")
        check(self.num_val_scenes >= 0, "data.builtin.num_val_scenes", "must be >= 0")
        check(self.include_singles or self.num_scenes > 0, "data.builtin",
              "include_singles is false and num_scenes is 0: the training set would be empty")
        check(self.scene_classes is None or len(set(self.scene_classes)) >= 2, "data.builtin.scene_classes",
              "needs at least 2 different classes (or null for the default list)")
        check(self.scene_relations is None or (len(self.scene_relations) > 0 and set(self.scene_relations) <= set(RELATIONS)),
              "data.builtin.scene_relations", f"must be a non-empty list of {', '.join(RELATIONS)} (or null for all)")
        check(0.0 < self.scene_min_size <= self.scene_max_size, "data.builtin.scene_min_size",
              "must be > 0 and <= scene_max_size")
        check(self.scene_max_size <= 0.5, "data.builtin.scene_max_size", "must be <= 0.5 so two emoji fit side by side")
        check(len(self.background) == 3 and all(0 <= c <= 255 for c in self.background),
              "data.builtin.background", "must be three integers 0-255 (RGB)")


@dataclass
class DataConfig:
    # A .jsonl file or a folder holding train.jsonl; webdataset shards: a folder of .tar files, a
    # pattern such as shards/{00000..00099}.tar or a .txt list of shard paths; a COCO folder
    # (annotations/captions_*.json); null: the built-in data.
    root: Optional[str] = None
    format: str = "auto"  # auto (from root), jsonl, webdataset, coco or latents (tools/encode_latents.py)
    resolution: int = 32  # images are resized/cropped to resolution x resolution
    val_root: Optional[str] = None  # .jsonl or folder for split "val"; null: val.jsonl beside root
    languages: List[str] = field(default_factory=lambda: ["zh", "en"])  # keep records in these
    image_fit: str = "center_crop"  # non-square images: "center_crop" or "squash"
    max_samples: Optional[int] = None  # keep only the first N valid records (quick runs)
    # Skip images with more pixels (decoding is bounded by it); null: only Pillow's own limit.
    max_image_pixels: Optional[int] = MAX_IMAGE_PIXELS
    # Shards: the caption is the sample's .txt member, or this field of its .json when set.
    caption_field: Optional[str] = None
    coco_split: Optional[str] = None  # e.g. train2014; null: the folder's only (or only train*) split
    num_workers: int = 0  # processes that read and decode batches (0: in the training process)
    prefetch: int = 2  # batches each worker prepares ahead
    shuffle_buffer: int = 1000  # shards: samples each worker's stream shuffles among (0: none)
    builtin: BuiltinDataConfig = field(default_factory=BuiltinDataConfig)

    def __post_init__(self):
        check(self.resolution >= 8, "data.resolution", "must be an integer >= 8")
        check(self.root is None or bool(self.root.strip()), "data.root", "must be a path or null")
        check(self.format in FORMATS, "data.format", f"must be one of {', '.join(FORMATS)}")
        check(self.format in ("auto", "jsonl") or self.root is not None, "data.format",
              f"{self.format} needs data.root (null is the built-in JSON-lines data)")
        check(self.caption_field is None or bool(self.caption_field.strip()), "data.caption_field",
              "must be a JSON field name or null")
        check(self.coco_split is None or bool(self.coco_split.strip()), "data.coco_split", "must be a name or null")
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.prefetch >= 1, "data.prefetch", "must be >= 1")
        check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        check(len(self.languages) > 0 and all(lang in LANGUAGES for lang in self.languages), "data.languages",
              f"must be a non-empty list of {', '.join(LANGUAGES)}")
        check(self.image_fit in IMAGE_FITS, "data.image_fit", f"must be one of {', '.join(IMAGE_FITS)}")
        check(self.max_samples is None or self.max_samples >= 1, "data.max_samples", "must be >= 1 or null")
        check(self.max_image_pixels is None or self.max_image_pixels >= 1, "data.max_image_pixels",
              "must be >= 1 or null")
